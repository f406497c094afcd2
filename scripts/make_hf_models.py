#!/usr/bin/env python3
"""Build small Hugging Face transformers models from their configs (random weights, fixed seed,
nothing downloaded) and export them to ONNX the way users export them, for
tests/test_real_world_models.py:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy onnxruntime scikit-learn
    /tmp/torchvenv/bin/pip install -e .   # edgeq.testing: the export, the task metrics
    /tmp/torchvenv/bin/pip install transformers==5.24.0
    HF_HUB_OFFLINE=1 /tmp/torchvenv/bin/python scripts/make_hf_models.py [model ...]

    hf_bert        input_ids, attention_mask, token_type_ids [B, S] int64
                   -> last_hidden_state [B, S, 64], pooler_output [B, 64]   (BertModel)
    hf_bert_eager  hf_bert with eager attention: the additive mask is (1 - mask) * finfo(float32).min
    hf_distilbert  input_ids, attention_mask [B, S] int64 -> last_hidden_state [B, S, 64]
                   (DistilBertModel)
    hf_vit         pixel_values [B, 3, 32, 32] in [0, 1] -> last_hidden_state [B, 17, 64],
                   pooler_output [B, 64]   (ViTModel, patch 8)
    hf_convnext    pixel_values [B, 3, H, W] in [0, 1] -> last_hidden_state [B, 32, H/8, W/8],
                   pooler_output [B, 32]   (ConvNextModel, 2 stages)
    hf_whisper_encoder  input_features [B, 16, 32] -> last_hidden_state [B, 16, 64]
                   (the Whisper encoder: Conv1d front end, 16 learned positions)

Each model gets tests/models/<name>.onnx and tests/models/<name>_data.npz: calibration inputs
(calib_<input name>, 32 samples) and evaluation inputs (eval_<input name>, 64 samples); images are
stored as uint8 (divide by 255 to get the model input). This script also writes these models' entries
of tests/models/manifest.json and regenerates tests/models/README.md.

Export: ``torch.onnx.export(dynamo=False)``, opset 17, dynamic axes for the batch and the sequence,
the model in eval mode with its default attention implementation (sdpa for the text models). Torch and transformers are needed by
this script only; edgeq imports torch only inside edgeq.testing.model_export's export and readme.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from edgeq.testing import model_export  # noqa: E402

SEED = 0
OUT_DIR = model_export.OUT_DIR
CALIB_SAMPLES = 32
EVAL_SAMPLES = 64
VOCAB, HIDDEN, HEADS, FFN, LAYERS, SEQ_LEN = 512, 64, 4, 128, 2, 16


def token_dataset(rng, n, token_types=False):
    """Sentences of 4..SEQ_LEN random tokens (ids 5..VOCAB-1) after a [CLS]-like id 2, padded with 0
    at the end; masks 1 over the tokens; token types 0 for a first segment and 1 for the rest."""
    ids = rng.integers(5, VOCAB, (n, SEQ_LEN)).astype(np.int64)
    ids[:, 0] = 2
    lengths = rng.integers(4, SEQ_LEN + 1, n)
    lengths[: n // 4] = SEQ_LEN  # some rows without padding
    positions = np.arange(SEQ_LEN)[None]
    mask = (positions < lengths[:, None]).astype(np.int64)
    data = {"input_ids": ids * mask, "attention_mask": mask}
    if token_types:
        split = rng.integers(2, SEQ_LEN, n)
        data["token_type_ids"] = ((positions >= split[:, None]) & (mask == 1)).astype(np.int64)
    return data


def splits(rng, make) -> dict:
    calib, evaluation = make(rng, CALIB_SAMPLES), make(rng, EVAL_SAMPLES)
    return {**{f"calib_{k}": v for k, v in calib.items()}, **{f"eval_{k}": v for k, v in evaluation.items()}}


def build_bert(rng):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=FFN,
                                     max_position_embeddings=64, type_vocab_size=2)
    model = transformers.BertModel(config).eval()
    data = splits(rng, lambda r, n: token_dataset(r, n, token_types=True))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"}, pooler_output={0: "batch"})
    return model, names, ["last_hidden_state", "pooler_output"], axes, data


def build_bert_eager(rng):
    """hf_bert with eager attention: the export adds (1 - mask) * finfo(float32).min to the scores."""
    model, names, outputs, axes, data = build_bert(rng)
    model.set_attn_implementation("eager")
    return model, names, outputs, axes, data


def build_distilbert(rng):
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS,
                                           hidden_dim=FFN, max_position_embeddings=64)
    model = transformers.DistilBertModel(config).eval()
    data = splits(rng, token_dataset)
    names = ["input_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"})
    return model, names, ["last_hidden_state"], axes, data


def image_dataset(rng, n):
    """Random images in [0, 1]: a colour gradient and a few flat rectangles (uint8)."""
    size = 32
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        base = rng.uniform(0.1, 0.9, (3, 1, 1)) + rng.uniform(-0.3, 0.3, (3, 1, 1)) * (x + y) / 2
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 6, 2)
            h, w = rng.integers(4, 16, 2)
            base = np.broadcast_to(base, (3, size, size)).copy()
            base[:, top:top + h, left:left + w] = rng.uniform(0, 1, (3, 1, 1))
        images[i] = np.clip(base, 0, 1)
    return {"pixel_values": model_export.to_uint8(images)}


def build_vit(rng):
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=HIDDEN,
                                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN)
    model = transformers.ViTModel(config).eval()
    data = splits(rng, image_dataset)
    names = ["pixel_values"]
    axes = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}, "pooler_output": {0: "batch"}}
    return model, names, ["last_hidden_state", "pooler_output"], axes, data


def build_convnext(rng):
    config = transformers.ConvNextConfig(num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[16, 32],
                                         depths=[1, 1], image_size=32)
    model = transformers.ConvNextModel(config).eval()
    data = splits(rng, image_dataset)
    names = ["pixel_values"]
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "last_hidden_state": {0: "batch"},
            "pooler_output": {0: "batch"}}
    return model, names, ["last_hidden_state", "pooler_output"], axes, data


def audio_features(rng, n):
    """Log-mel-like features [n, 16, 32]: smooth random spectra over time, about zero mean."""
    frames = np.cumsum(rng.normal(0, 0.3, (n, 16, 32)), axis=2)
    frames -= frames.mean(axis=(1, 2), keepdims=True)
    return {"input_features": (frames / (frames.std(axis=(1, 2), keepdims=True) + 1e-6)).astype(np.float32)}


def build_whisper_encoder(rng):
    config = transformers.WhisperConfig(vocab_size=VOCAB, num_mel_bins=16, d_model=HIDDEN, encoder_layers=LAYERS,
                                        encoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_layers=1,
                                        decoder_attention_heads=HEADS, decoder_ffn_dim=FFN,
                                        max_source_positions=16, max_target_positions=16, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    model = transformers.models.whisper.modeling_whisper.WhisperEncoder(config).eval()
    data = splits(rng, audio_features)
    names = ["input_features"]
    axes = {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}}
    return model, names, ["last_hidden_state"], axes, data


BUILDERS = {"hf_bert": build_bert, "hf_bert_eager": build_bert_eager, "hf_distilbert": build_distilbert, "hf_vit": build_vit,
            "hf_convnext": build_convnext, "hf_whisper_encoder": build_whisper_encoder}


class TupleOutputs(torch.nn.Module):
    """The model called with keyword inputs, returning its named outputs as a tuple, as
    ``torch.onnx.export`` wants them."""

    def __init__(self, model, input_names, output_names):
        super().__init__()
        self.model, self.input_names, self.output_names = model, input_names, output_names

    def forward(self, *inputs):
        outputs = self.model(**dict(zip(self.input_names, inputs)))
        return tuple(outputs[n] for n in self.output_names)


def export(name, model, input_names, output_names, axes, data) -> dict:
    """model_export's export of the model behind a tuple-returning wrapper, plus the facts
    the manifest keeps for a Hugging Face model."""
    wrapper = TupleOutputs(model, input_names, output_names).eval()
    feeds = model_export.model_inputs(data, input_names, "eval")
    dummy = tuple(torch.from_numpy(feeds[n][:2]) for n in input_names)
    facts = model_export.export(name, wrapper, dummy, input_names, output_names, axes, data)
    outputs = facts.pop("outputs")
    facts.update({
        "float_metric": "random weights; last_hidden_state std %.3f" % float(outputs[0].std()),
        "inputs": {n: [axes[n].get(i, d) for i, d in enumerate(feeds[n].shape)] for n in input_names},
        "outputs": output_names,
        "data_keys": {k: list(v.shape) for k, v in data.items()},
    })
    return facts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(BUILDERS), help="subset of " + ", ".join(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in args.models:
        torch.manual_seed(SEED)
        rng = np.random.default_rng(SEED)
        start = time.time()
        model, input_names, output_names, axes, data = BUILDERS[name](rng)
        facts = export(name, model, input_names, output_names, axes, data)
        facts["built_with"] = f"torch {torch.__version__}, transformers {transformers.__version__}"
        facts["description"] = DESCRIPTIONS[name] + f"\nBuilt with {facts['built_with']}."
        manifest[name] = facts
        print(f"{name}: {facts['params']:,} parameters, ONNX {facts['bytes']:,} bytes, data "
              f"{facts['data_bytes']:,} bytes, onnxruntime vs torch {facts['onnx_vs_torch']:.1e}, "
              f"{time.time() - start:.0f} s\n  ops: {', '.join(facts['ops'])}")
    order = list(model_export.DESCRIPTIONS) + list(BUILDERS)
    manifest = {name: manifest[name] for name in order if name in manifest}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    (OUT_DIR / "README.md").write_text(model_export.readme(manifest))


DESCRIPTIONS = {
    "hf_bert": """`transformers.BertModel(BertConfig(...))` with random weights (its metric is fidelity to float):
vocabulary 512, hidden 64, 2 layers, 4 heads, intermediate 128, exact (erf) GELU, the default (sdpa)
attention. Inputs `input_ids`, `attention_mask`, `token_type_ids` [B, S] int64: a start id 2 and 3-15
random ids in 5..511 padded with 0 to 16 (a quarter of the rows unpadded), token types 1 after a
random split point. Outputs `last_hidden_state` [B, S, 64] and `pooler_output` [B, 64] (Tanh).
The export builds the boolean mask by flattening the [B, S] mask and gathering with index
arithmetic, adds Where(mask, 0, -inf) to the scores and guards the softmax with
Where(IsNaN(p), 0, p).""",
    "hf_bert_eager": """`hf_bert` with eager attention (`set_attn_implementation("eager")`), the same weights and
data. The export builds the additive mask as `(1 - mask) * finfo(float32).min` (a Where of two constants
on the boolean mask after gathering it, a LogicalAnd and an Expand) and adds it to the scores; int8
conversion keeps that addition and the softmax reading it in float (no int8 scale that LiteRT can
requantize holds -3.4e38).""",
    "hf_distilbert": """`transformers.DistilBertModel(DistilBertConfig(...))` with random weights: vocabulary 512,
dim 64, 2 layers, 4 heads, hidden 128, the same sdpa mask pattern as `hf_bert`. Inputs `input_ids`,
`attention_mask` [B, S] int64 (as `hf_bert`); output `last_hidden_state` [B, S, 64].""",
    "hf_vit": """`transformers.ViTModel(ViTConfig(...))` with random weights: 32 x 32 RGB images, patch 8 (a
Conv patch embedding to 16 patches), hidden 64, 2 layers, 4 heads, intermediate 128; class token
Concat, learned position embeddings, pre-LN blocks, pooler (Dense + Tanh on the class token).
Input `pixel_values` [B, 3, 32, 32] in [0, 1]: a colour gradient with 1-3 flat rectangles of random
colours. Outputs `last_hidden_state` [B, 17, 64] and `pooler_output` [B, 64].""",
    "hf_convnext": """`transformers.ConvNextModel(ConvNextConfig(...))` with random weights: patchify Conv 4 x 4,
two stages of one block (hidden 16, 32): depthwise 7 x 7 conv, LayerNorm over channels
(channels-last through permutes), pointwise Linear 4x, GELU, Linear, layer scale, residual;
LayerNorm + stride-2 conv downsampling between the stages; mean-pooled LayerNorm output.
Input `pixel_values` [B, 3, H, W] (images as `hf_vit`); outputs `last_hidden_state`
[B, 32, H/8, W/8] and `pooler_output` [B, 32].""",
    "hf_whisper_encoder": """The Whisper encoder (`WhisperEncoder(WhisperConfig(...))`) with random weights: 16 mel bins,
32 frames, Conv1d(3) + GELU and Conv1d(3, stride 2) + GELU front end, 16 learned positions,
d_model 64, 2 pre-LN layers, 4 heads, FFN 128, final LayerNorm. Input `input_features` [B, 16, 32]:
smooth random walks over time, normalised per sample. Output `last_hidden_state` [B, 16, 64].""",
}


if __name__ == "__main__":
    main()
