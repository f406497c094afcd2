#!/usr/bin/env python3
"""Build two small test models whose weights and activations have the statistics of pretrained models,
the statistics that make plain min/max int8 fail, for tests/test_ptq_passes.py (written to tests/models/
with the other real-world models, and listed in their manifest.json and README.md):

    mobile_dwsep     [B, 3, H, W] image in [0, 1] -> [B, 10] logits: a depthwise-separable CNN
                     (MobileNetV3 / PicoDet blocks: hard-swish, PReLU, depthwise 3x3 + pointwise 1x1)
    outlier_encoder  input_ids, attention_mask [B, S] int64 -> [B, 64] mean-pooled embedding: a 2-layer
                     post-LN BERT whose LayerNorms put a few hidden channels 20-100x above the rest

Why random weights are not enough. A randomly initialised net has BatchNorm running statistics of 0 / 1
and LayerNorm gamma 1 / beta 0, so every channel has the same range; a trained one does not:

* Depthwise convolutions in trained MobileNets / PicoDets end with BatchNorms whose running variance
  spans orders of magnitude across channels (channels that barely respond have tiny variances) while
  gamma stays O(1). Folding gamma / sqrt(var) into the depthwise weights then gives per-channel weight
  ranges that differ 50-100x (a real PicoDet: 72.8 against neighbours under 1), and channels whose gamma
  went to ~0 during training (near-dead channels) output only their bias. Here each depthwise BatchNorm
  gets a log-uniform running variance over [1e-3, 10] (x0.5-2 jitter of gamma) and 1 channel in 8 a
  gamma of 1e-3; every other BatchNorm gets running means / variances measured on the calibration
  images (as training leaves them), so activations keep realistic scales.
* BERT-family models put a few hidden dimensions ("outlier features") 20-100x above the median after
  every LayerNorm: those channels' gamma and beta are large, and the post-LN residual stream carries
  them from layer to layer. Here 3 of 64 channels get LayerNorm gamma ~3, 5, 8 and beta 8, -16, 30 in
  every LayerNorm but the last (kept ordinary so the pooled embedding is not three numbers); the
  residual stream then carries them into the next LayerNorm, where they dominate the variance. The
  measured absolute maxima after the LayerNorms: outlier channels 11-35x the median channel's after
  the embedding LayerNorm, 15-125x after the layers' ones.
  The linear layers reading a LayerNorm's output weigh those channels by 1/gamma: in trained BERTs
  they act as near-constant biases, and the information is in the ordinary channels.

The CNN is not trained (its metric is fidelity to float: output SQNR); the encoder has random weights
(metric: embedding cosine to float). Everything is seeded; torch runs on one thread.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy onnxruntime scikit-learn
    /tmp/torchvenv/bin/python scripts/make_ptq_models.py [model ...]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

from edgeq.testing.model_export import OUT_DIR, export, from_uint8, to_uint8

SEED = 0
CALIB_SAMPLES = 32  # as scripts/make_real_world_models.py
EVAL_SAMPLES = 64


def seed_everything(seed: int = SEED) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# ----------------------------------------------------------------------------- mobile_dwsep

class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 + BN + activation, pointwise 1x1 + BN + activation (MobileNetV3 / PicoDet's unit)."""

    def __init__(self, c_in, c_out, stride, depthwise_act, pointwise_act):
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                                       nn.BatchNorm2d(c_in), depthwise_act)
        self.pointwise = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), pointwise_act)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class MobileDwSep(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            DepthwiseSeparable(16, 24, 1, nn.Identity(), nn.Hardswish()),   # hard-swish -> depthwise (PicoDet)
            DepthwiseSeparable(24, 32, 2, nn.ReLU(), nn.PReLU(32)),
            DepthwiseSeparable(32, 32, 1, nn.PReLU(32), nn.Hardswish()),
            DepthwiseSeparable(32, 48, 2, nn.Identity(), nn.ReLU()),
            DepthwiseSeparable(48, 48, 1, nn.Hardswish(), nn.Hardswish()),
        )
        self.head = nn.Linear(48, 10)

    def forward(self, images):
        features = self.blocks(self.stem(images))
        return self.head(features.mean((2, 3)))


def image_dataset(rng, n, size=32):
    """Smooth random images: a colour gradient, a few blobs and pixel noise, in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        base = rng.uniform(0.2, 0.8, (3, 1, 1)) + rng.uniform(-0.3, 0.3, (3, 1, 1)) * (x if rng.random() < 0.5 else y)
        for _ in range(rng.integers(1, 4)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
            base = base + rng.uniform(-0.5, 0.5, (3, 1, 1)) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / r ** 2)
        images[i] = np.clip(base + rng.normal(0, 0.03, (3, size, size)), 0, 1)
    return images


def set_pretrained_statistics(model: MobileDwSep, images: torch.Tensor, rng) -> None:
    """Give every BatchNorm the statistics of a trained model (see the module docstring): measured
    means / variances for ordinary ones; for the depthwise ones, variances spanning four decades and
    near-dead channels."""
    depthwise_bns = {block.depthwise[1] for block in model.blocks}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        for module in model.modules():  # in forward order: each BN's statistics see the earlier ones set
            if not isinstance(module, nn.BatchNorm2d):
                continue
            captured = {}
            handle = module.register_forward_hook(lambda m, inp, out: captured.setdefault("x", inp[0]))
            model.eval()
            model(images)
            handle.remove()
            x = captured["x"]
            module.running_mean.copy_(x.mean((0, 2, 3)))
            variance = x.var((0, 2, 3))
            channels = len(variance)
            if module in depthwise_bns:
                # a trained depthwise BN: the scale gamma / sqrt(var) spans ~100x across channels
                spread = torch.from_numpy(10 ** rng.uniform(-3, 1, channels)).float()
                module.running_var.copy_(variance * spread)
                gamma = torch.from_numpy(rng.uniform(0.5, 2.0, channels)).float()
                gamma[torch.from_numpy(rng.permutation(channels)[:max(1, channels // 8)])] = 1e-3  # near-dead
                module.weight.copy_(gamma)
                module.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, channels)).float())
            else:
                module.running_var.copy_(variance)
                module.weight.copy_(torch.from_numpy(rng.uniform(0.6, 1.5, channels)).float())
                module.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, channels)).float())
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.copy_(torch.from_numpy(rng.uniform(0.05, 0.4, module.weight.shape)).float())


def build_mobile_dwsep(rng):
    model = MobileDwSep()
    calib, evaluation = image_dataset(rng, CALIB_SAMPLES), image_dataset(rng, EVAL_SAMPLES)
    set_pretrained_statistics(model, torch.from_numpy(np.concatenate([calib, evaluation])), rng)
    model.eval()
    data = {"calib_images": to_uint8(calib), "eval_images": to_uint8(evaluation)}
    # the stored images are what the model sees
    dummy = (torch.from_numpy(from_uint8(data["calib_images"][:1])),)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
    return model, dummy, ["images"], ["logits"], axes, data


# ----------------------------------------------------------------------------- outlier_encoder

OUTLIER_CHANNELS = (5, 22, 47)
OUTLIER_GAMMA = (3.0, 5.0, 8.0)
OUTLIER_BETA = (8.0, -16.0, 30.0)
# the outliers dominate the next LayerNorm's variance and shrink its ordinary channels (64 of them dilute
# less than BERT-base's 768): deeper LayerNorms' ordinary gammas are raised to keep the median near 1-3
ORDINARY_GAMMA = (0.5, 1.5, 5.0, 6.0)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer (BERT): x = LN(x + attention(x)); x = LN(x + FFN(x))."""

    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x, additive_mask):
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (h // self.heads) ** 0.5 + additive_mask
        context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, s, h)
        x = self.norm1(x + self.out(context))
        return self.norm2(x + self.ffn(x))


class OutlierEncoder(nn.Module):
    def __init__(self, vocab=100, hidden=64, heads=4, ffn=128, layers=2, max_len=16):
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        self.register_buffer("position_ids", torch.arange(max_len)[None])
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids, attention_mask):
        positions = self.positions(self.position_ids[:, :input_ids.shape[1]])
        x = self.norm(self.tokens(input_ids) + positions)
        mask = attention_mask.to(x.dtype)
        additive = ((1.0 - mask) * -10000.0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, additive)
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def set_outlier_features(model: OutlierEncoder, rng) -> None:
    """Outlier channels as in pretrained BERTs (see the module docstring)."""
    norms = [model.norm] + [n for layer in model.layers for n in (layer.norm1, layer.norm2)]
    with torch.no_grad():
        for norm, ordinary in zip(norms[:-1], ORDINARY_GAMMA):  # the last LayerNorm makes the embedding
            norm.weight.copy_(torch.from_numpy(rng.uniform(0.7, 1.3, norm.weight.shape) * ordinary).float())
            norm.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, norm.bias.shape)).float())
            for channel, gamma, beta in zip(OUTLIER_CHANNELS, OUTLIER_GAMMA, OUTLIER_BETA):
                norm.weight[channel] = gamma * rng.uniform(0.8, 1.2)
                norm.bias[channel] = beta
        for layer in model.layers:  # trained attention / FFN weights are smaller than the init's
            for linear in (layer.qkv, layer.out, layer.ffn[0], layer.ffn[2]):
                linear.weight.mul_(0.5)
                linear.bias.copy_(torch.from_numpy(rng.normal(0, 0.05, linear.bias.shape)).float())
            # trained layers read the outlier channels with small weights (they act as biases), so the
            # layers' outputs are driven by the ordinary channels that int8 resolves coarsely
            for linear in (layer.qkv, layer.ffn[0]):
                for channel, gamma in zip(OUTLIER_CHANNELS, OUTLIER_GAMMA):
                    linear.weight[:, channel] /= gamma


def token_dataset(rng, n, vocab=100, length=16):
    ids = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    for i in range(n):
        used = rng.integers(4, length + 1)
        ids[i, :used] = rng.integers(1, vocab, used)
        mask[i, :used] = 1
    return ids, mask


def build_outlier_encoder(rng):
    model = OutlierEncoder()
    set_outlier_features(model, rng)
    model.eval()
    calib_ids, calib_mask = token_dataset(rng, CALIB_SAMPLES)
    eval_ids, eval_mask = token_dataset(rng, EVAL_SAMPLES)
    data = {"calib_input_ids": calib_ids, "calib_attention_mask": calib_mask,
            "eval_input_ids": eval_ids, "eval_attention_mask": eval_mask}
    dummy = (torch.from_numpy(calib_ids[:1]), torch.from_numpy(calib_mask[:1]))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "embedding": {0: "batch"}}
    return model, dummy, ["input_ids", "attention_mask"], ["embedding"], axes, data


BUILDERS = {"mobile_dwsep": build_mobile_dwsep, "outlier_encoder": build_outlier_encoder}
DESCRIPTIONS = {
    "mobile_dwsep": """Depthwise-separable CNN (MobileNetV3 / PicoDet units) with the BatchNorm statistics of a
pretrained model, untrained otherwise (its metric is fidelity to float). Conv 3x3 stride 2 + BN +
hard-swish stem, five depthwise 3x3 + BN (+ none, ReLU, PReLU or hard-swish) / pointwise 1x1 + BN +
hard-swish, PReLU or ReLU blocks (16 -> 48 channels, strides 2, 2), global mean, Linear to 10 `logits`.
Each depthwise BatchNorm has running variances log-uniform over [1e-3, 10] times the measured ones and
1 channel in 8 near-dead (gamma 1e-3), so the BN-folded depthwise weights span ~100x across channels as
in trained PicoDets; other BatchNorms hold the statistics measured on the images. Images: smooth
random 32x32 gradients with blobs and noise.""",
    "outlier_encoder": """2-layer post-LN BERT-style encoder (hidden 64, 4 heads, FFN 128, exact GELU) with random
weights and the outlier features of pretrained BERTs: channels 5, 22 and 47 get LayerNorm gamma ~3,
~5 and ~8 and beta 8, -16, 30 in every LayerNorm but the last, and the post-LN residual stream carries
them on, so those channels sit 11-125x above the median channel after each LayerNorm; the linear
layers after a LayerNorm read those channels with weights divided by their gamma, as trained ones do. Output: the
attention-mask-weighted mean of the last hidden states, `embedding` [B, 64]. Inputs `input_ids`,
`attention_mask` [B, S] int64: 4-16 random tokens padded with 0 to 16.""",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(BUILDERS), help="subset of " + ", ".join(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    manifest_path = OUT_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in args.models:
        seed_everything()
        rng = np.random.default_rng(SEED)
        model, dummy, input_names, output_names, axes, data = BUILDERS[name](rng)
        facts = export(name, model, dummy, input_names, output_names, axes, data)
        output = facts.pop("outputs")[0]
        facts["float_metric"] = (f"untrained; logits std {output.std():.3f}" if name == "mobile_dwsep" else
                                 f"random weights; embedding norm mean {np.linalg.norm(output, axis=1).mean():.3f}")
        facts["inputs"] = {n: [axes[n].get(i, d) for i, d in enumerate(dummy[k].shape)]
                           for k, n in enumerate(input_names)}
        facts["data_keys"] = {k: list(v.shape) for k, v in data.items()}
        facts["description"] = DESCRIPTIONS[name]
        manifest[name] = facts
        print(f"{name}: {facts['params']:,} parameters, ONNX {facts['bytes']:,} bytes, "
              f"onnxruntime vs torch {facts['onnx_vs_torch']:.1e}\n  ops: {', '.join(facts['ops'])}")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    readme_path = OUT_DIR / "README.md"
    readme_path.write_text(with_model_entries(readme_path.read_text(), manifest))


def with_model_entries(readme: str, manifest: dict) -> str:
    """``readme`` with these models' table rows after the models table and their sections after the
    last model section (before the sections other scripts write), replacing any earlier entries."""
    lines = readme.split("\n")
    for name in BUILDERS:  # drop an earlier entry: its table row and its section up to the next heading
        lines = [line for line in lines if not line.startswith(f"| `{name}` |")]
        if f"## {name}" in lines:
            start = lines.index(f"## {name}")
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            lines[start:end] = []
    last_row = next(i for i, line in enumerate(lines) if line.startswith("| `"))
    while lines[last_row + 1].startswith("| `"):  # the end of the first (the models') table
        last_row += 1
    rows = []
    for name in BUILDERS:
        facts = manifest[name]
        inputs = ", ".join(f"`{n}` [{', '.join(map(str, dims))}]" for n, dims in facts["inputs"].items())
        rows.append(f"| `{name}` | {inputs} | {facts['params']:,} | {facts['bytes']:,} | "
                    f"{facts['data_bytes']:,} | {facts['float_metric']} |")
    lines[last_row + 1:last_row + 1] = rows
    model_sections = [i for i, line in enumerate(lines) if line.startswith("## ") and line[3:] in manifest]
    end = next((i for i in range(model_sections[-1] + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    sections = []
    for name in BUILDERS:
        sections += [f"## {name}", "", DESCRIPTIONS[name], "", "Made by `scripts/make_ptq_models.py`.", "",
                     "ONNX ops: " + ", ".join(manifest[name]["ops"]) + ".", ""]
    lines[end:end] = sections
    return "\n".join(lines)


if __name__ == "__main__":
    main()
