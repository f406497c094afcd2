"""Export of the real-world test models (tests/models/) from PyTorch, shared by
scripts/make_real_world_models.py and scripts/make_hf_models.py: the export and its checks against
onnxruntime and torch, the data layout (uint8 images), and the folder's README. torch is imported
only by the functions that need it."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

# The models live in the source tree (tests/models/), beside this package in a checkout.
OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "models"
OPSET = 17


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def model_inputs(data: dict, names, prefix: str) -> dict:
    return {n: from_uint8(data[f"{prefix}_{n}"]) if data[f"{prefix}_{n}"].dtype == np.uint8
            else data[f"{prefix}_{n}"] for n in names}


def export(name, model, dummy, input_names, output_names, axes, data) -> dict:
    path = OUT_DIR / f"{name}.onnx"
    import onnxruntime as ort
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, dummy, str(path), dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names, dynamic_axes=axes,
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    np.savez_compressed(OUT_DIR / f"{name}_data.npz", **data)
    feeds = model_inputs(data, input_names, "eval")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(None, feeds)
    with torch.no_grad():
        torch_outputs = model(*(torch.from_numpy(feeds[n]) for n in input_names))
    if isinstance(torch_outputs, torch.Tensor):
        torch_outputs = (torch_outputs,)
    error = max(float(np.max(np.abs(o - t.numpy())) / np.max(np.abs(t.numpy())))
                for o, t in zip(onnx_outputs, torch_outputs))
    ops = sorted({node.op_type for node in onnx.load(str(path)).graph.node})
    return {"bytes": path.stat().st_size, "data_bytes": (OUT_DIR / f"{name}_data.npz").stat().st_size,
            "params": sum(p.numel() for p in model.parameters()), "ops": ops,
            "onnx_vs_torch": error, "outputs": onnx_outputs}


# The models scripts/make_real_world_models.py writes, in the manifest's order; those of
# scripts/make_hf_models.py carry their description in the manifest.
DESCRIPTIONS = {
    "yolo_detector": """YOLOv8-style detector, trained (about a minute on one thread) on 2000 synthetic 64x64 images holding 1-3
non-overlapping rectangles or ellipses coloured red (class 0), green (1) or blue (2) on a grey
gradient. Backbone: stride-2 Conv+BN+SiLU stem, C2f blocks (1x1 conv, Split in halves, residual
bottleneck, Concat, 1x1 conv) at strides 4, 8, 16; FPN: nearest Resize x2 of stride 16 + skip Concat
with stride 8 + C2f. Decoupled heads on strides 8 and 16 (64 + 16 = 80 anchors at 64x64): box branch
to 4 x 8 DFL bins, class branch to 3 logits. Output as ultralytics exports it: DFL (Reshape to
[B, 4, 8, A], Transpose, Softmax over the 8 bins, 1x1 conv with weights 0..7), anchor points and
strides made from the feature maps' shapes (Shape/Range arithmetic under dynamic axes), distances to
(cx, cy, w, h) in pixels, Sigmoid class scores, Concat to `detections` [B, 4 + 3, A]: pixel-scale
boxes and 0..1 probabilities in one tensor, the layout that makes int8 hard. Training: anchors whose
centre lies inside a box learn it (DFL + L1 on distances), class targets are the IoU of the
predicted box (task-aligned, so scores are not saturated). Data: `eval_boxes` [N, 3, 4] xyxy pixels
and `eval_classes` [N, 3], padded with -1.""",
    "crnn_text": """CRNN text recogniser trained (about a minute) with CTC on 3000 synthetic text lines: 3-5
scikit-learn digits (8x8, scaled to 18-26 x 14-20 pixels, ink level 0.45-1, gaps of -4..3 pixels so
digits may touch, vertical jitter) on a 32 x 128 dark background of random level with pixel noise.
The lines for training and calibration use the digits' train split, the evaluation lines its test
split (sample_models/digits_cnn_test.npz), split as sample_models/ does.
Conv+BN+ReLU / MaxPool x3 and a (4, 1) conv to height 1, Reshape [B, C*H, W] (Shape/Gather/Concat
chain) and permute to a width sequence, bidirectional `nn.LSTM` (hidden 32, ONNX LSTM op), Linear to
11 CTC classes (0 = blank, 1 + d = digit d): `logits` [B, W/4, 11], raw scores. Data:
`eval_labels` [N, 5] digits padded with -1.""",
    "unet_segmenter": """U-Net-style segmenter trained (about a minute) on 960 synthetic 64x64 images of 1-3
rectangles (class 1) and ellipses (class 2) of random colours on a grey gradient (class 0), so
the classes differ by shape only.
Encoder: two Conv+BN+ReLU per level at 16, 32, 64 channels with MaxPool between; decoder:
ConvTranspose 2x2 stride 2 + skip Concat, then Resize (bilinear, align_corners False) to the skip's size
+ 1x1 conv + skip Concat; 1x1 conv head to `logits` [B, 3, H, W]. Data: `eval_masks` [N, 64, 64]
uint8 class per pixel.""",
    "bert_encoder": """2-layer BERT-style encoder with random weights (its metric is fidelity to float):
vocabulary 100, hidden 32, 4 heads, FFN 64 with exact (erf) GELU. Token `nn.Embedding` Gather plus
position Gather of a sliced `position_ids` buffer (as Hugging Face writes it), LayerNormalization,
self-attention with head split/merge by view + permute (Shape/Gather/Concat/Reshape chains),
MatMul, additive mask `(1 - attention_mask) * -10000`, Softmax; post-LN residuals; output the
attention-mask-weighted mean of the last hidden states, `embedding` [B, 32]. Inputs `input_ids`,
`attention_mask` [B, S] int64: sentences of 4-16 random tokens padded with 0 to 16.""",
}


def readme(manifest: dict) -> str:
    """tests/models/README.md for ``manifest``."""
    import torch

    lines = ["# Real-world test models", "",
             "Small architectures exported from PyTorch the way real models are, for",
             "tests/test_real_world_models.py: four written here (`scripts/make_real_world_models.py`) and",
             "five Hugging Face transformers models built from small configs with random weights",
             "(`scripts/make_hf_models.py`, the `hf_` ones). Do not edit by hand. To regenerate (seeded, one",
             "thread, deterministic; nothing is downloaded):", "",
             "    python3 -m venv /tmp/torchvenv",
             "    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy onnxruntime scikit-learn",
             "    /tmp/torchvenv/bin/pip install -e .   # edgeq.testing: the export, the task metrics",
             "    /tmp/torchvenv/bin/pip install transformers==5.24.0   # for the hf_ models; keeps torch 2.13.0",
             "    /tmp/torchvenv/bin/python scripts/make_real_world_models.py [model ...]",
             "    HF_HUB_OFFLINE=1 /tmp/torchvenv/bin/python scripts/make_hf_models.py [model ...]", "",
             f"Export: torch {torch.__version__} TorchScript exporter (`torch.onnx.export(..., dynamo=False)`),",
             f"opset {OPSET}, `do_constant_folding=True`, eval mode (BatchNorm folded into the convs by the",
             "exporter), dynamic axes as listed: the batch everywhere, and the spatial or sequence dims where",
             "the architecture allows them, so the graphs carry Shape/Gather/Concat/Reshape arithmetic. The",
             "converter needs `input_shapes` (`--input-shape`) to fix them, e.g. `images:1,3,64,64`.", "",
             "`<name>_data.npz`: `calib_<input>` (32 samples, generated apart from training), `eval_<input>`",
             "(64 samples) and the evaluation targets. Images are stored as uint8: the model input is",
             "`value / 255` (float32, NCHW, in [0, 1]). `manifest.json` holds the facts below as JSON.", "",
             "What is checked: `pytest -s tests/test_real_world_models.py` (float vs onnxruntime at two input",
             "sizes, TRANSPOSE count, int8 integers vs LiteRT's reference kernels, int8 fidelity and task",
             "metrics); `python scripts/real_world_report.py` prints the figures as a markdown table.", "",
             "| model | inputs (dynamic dims named) | parameters | ONNX bytes | data bytes | float quality on eval |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, facts in manifest.items():
        inputs = ", ".join(f"`{n}` [{', '.join(map(str, dims))}]" for n, dims in facts["inputs"].items())
        lines.append(f"| `{name}` | {inputs} | {facts['params']:,} | {facts['bytes']:,} | "
                     f"{facts['data_bytes']:,} | {facts['float_metric']} |")
    for name, facts in manifest.items():
        lines += ["", f"## {name}", "", DESCRIPTIONS.get(name, facts.get("description", "")), "",
                  "ONNX ops: " + ", ".join(facts["ops"]) + "."]
    return "\n".join(lines) + "\n"
