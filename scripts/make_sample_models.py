#!/usr/bin/env python3
"""Train the sample models on scikit-learn's digits and export them to ONNX.

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python scripts/make_sample_models.py            # writes sample_models/

Three classifiers of increasing structural variety, so that the converter
meets the op patterns of real networks on data that ships offline:

    digits_mlp          [N, 64] flattened 8x8 pixels in [0, 1]     Gemm + Relu
    digits_cnn          [N, 1, 8, 8] pixels in [0, 1]              Conv + BN + Relu, MaxPool, Flatten, Gemm
    digits_mobilenetv2  [N, 3, 32, 32] ImageNet-normalised RGB     MobileNetV2 inverted residuals

Split: sklearn.model_selection.train_test_split(test_size=0.25, random_state=0,
stratify=y) over the 1797 images: 1347 train, 450 test. Calibration data is
200 train images (never test images), picked with a fixed seed.

Writes <name>.onnx, <name>_calib.npz, <name>_test.npz for each model, plus
manifest.json and README.md describing them.

Everything is seeded and torch runs deterministic algorithms on one thread, so
a rerun gives the same weights, the same accuracies and the same ONNX bytes.
Torch is needed by this script only; the edgeq package never imports it.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
TEST_SIZE = 0.25
NUM_CLASSES = 10
CALIB_SAMPLES = 200
OPSET = 13
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MOBILENET_SIDE = 32


# ----------------------------------------------------------------------------- data

def load_split():
    """Digits as float32 8x8 images in [0, 1], split as documented above."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=SEED, stratify=labels)
    return x_train, x_test, y_train, y_test


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Shift each 8x8 image by up to max_shift pixels; the digits are not centred
    identically, so this is the augmentation that matches the data's variance."""
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    shifts = rng.integers(0, 2 * max_shift + 1, size=(len(images), 2))
    side = images.shape[1]
    return np.stack([p[dy:dy + side, dx:dx + side] for p, (dy, dx) in zip(padded, shifts)])


def to_mlp_input(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32)


def to_cnn_input(images: np.ndarray) -> np.ndarray:
    return images[:, None, :, :].astype(np.float32)


def to_mobilenet_input(images: np.ndarray) -> np.ndarray:
    """Bilinear upsampling to 32x32 (align_corners=False), grey repeated to
    three channels, then per-channel ImageNet normalisation: the input a
    MobileNetV2 ported from an ImageNet pipeline would expect."""
    with torch.no_grad():
        grey = torch.from_numpy(images[:, None, :, :].astype(np.float32))
        big = F.interpolate(grey, size=(MOBILENET_SIDE, MOBILENET_SIDE),
                            mode="bilinear", align_corners=False)
        rgb = big.repeat(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((rgb - mean) / std).numpy().astype(np.float32)


# ----------------------------------------------------------------------------- models

def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, NUM_CLASSES))


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def make_cnn() -> nn.Module:
    return nn.Sequential(
        *conv_bn_relu(1, 16),
        *conv_bn_relu(16, 32),
        nn.MaxPool2d(2),                          # 8x8 -> 4x4
        *conv_bn_relu(32, 32),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, NUM_CLASSES))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += conv_bn(hidden, cout, 1)
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.use_residual else self.body(x)


# (expand ratio, output channels, repeats, stride of the first repeat), as in
# the MobileNetV2 paper's table 2, narrowed and shortened for a 32x32 input.
MOBILENET_BLOCKS = [
    (1, 16, 1, 1),    # 16x16
    (6, 24, 2, 2),    # 8x8
    (6, 32, 3, 2),    # 4x4
    (6, 64, 2, 2),    # 2x2
    (6, 96, 1, 1),
]
MOBILENET_STEM = 16
MOBILENET_HEAD = 256


class MobileNetV2Small(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, MOBILENET_STEM, 3, stride=2), nn.ReLU6()]
        cin = MOBILENET_STEM
        for expand_ratio, cout, repeats, first_stride in MOBILENET_BLOCKS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, first_stride if i == 0 else 1, expand_ratio))
                cin = cout
        layers += [*conv_bn(cin, MOBILENET_HEAD, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(MOBILENET_HEAD, NUM_CLASSES)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    make_model: Callable[[], nn.Module]
    to_input: Callable[[np.ndarray], np.ndarray]
    layout: str
    preprocessing: str
    epochs: int
    learning_rate: float
    max_shift: int  # pixels of random shift; 0 for the MLP, which has no translation invariance to gain


PIXELS_01 = "pixel / 16, so values in [0, 1]"

SPECS = [
    ModelSpec("digits_mlp", make_mlp, to_mlp_input, "NC",
              f"{PIXELS_01}; the 8x8 image flattened row-major to 64 values",
              60, 5e-3, max_shift=0),
    ModelSpec("digits_cnn", make_cnn, to_cnn_input, "NCHW",
              f"{PIXELS_01}; one channel", 30, 3e-3, max_shift=1),
    ModelSpec("digits_mobilenetv2", MobileNetV2Small, to_mobilenet_input, "NCHW",
              f"{PIXELS_01}; bilinear resize to 32x32 (align_corners=False, as torch's "
              f"F.interpolate); grey repeated to 3 channels; (x - mean) / std per channel with "
              f"ImageNet mean {IMAGENET_MEAN} and std {IMAGENET_STD}", 30, 3e-3, max_shift=1),
]


# ----------------------------------------------------------------------------- training

def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def train(model: nn.Module, spec: ModelSpec, x_train, y_train, epochs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lr = spec.learning_rate
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batch_size = 64
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    labels = torch.from_numpy(y_train)
    model.train()
    for _ in range(epochs):
        images = random_shift(x_train, rng, spec.max_shift) if spec.max_shift else x_train
        inputs = torch.from_numpy(spec.to_input(images))
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch_size):
            batch = torch.from_numpy(order[start:start + batch_size])
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def torch_accuracy(model: nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    return float(np.mean(logits.argmax(1) == labels))


# ----------------------------------------------------------------------------- export

def export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """The TorchScript exporter gives small graphs of standard ops. With
    TrainingMode.EVAL it would fuse every BatchNormalization into its Conv;
    PRESERVE on a model already in eval mode keeps BN as an inference-mode node,
    so the converter's own BN folding is exercised by the samples."""
    assert not model.training
    with warnings.catch_warnings():
        # Both warnings are about choices made on purpose here: the legacy
        # exporter, and constant folding with PRESERVE (harmless in eval mode).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(
            model, (torch.from_numpy(example),), str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx_model.producer_name = "edgeq/scripts/make_sample_models.py"
    onnx.save(onnx_model, str(path))


def onnxruntime_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": inputs})[0]


def op_types(path: Path) -> list[str]:
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


# ----------------------------------------------------------------------------- main

def build_model(spec: ModelSpec, split, out_dir: Path, epochs_scale: float) -> dict:
    name, to_input, layout = spec.name, spec.to_input, spec.layout
    x_train, x_test, y_train, y_test = split
    seed_everything(SEED)
    model = spec.make_model()
    params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    epochs = max(1, round(spec.epochs * epochs_scale))
    train(model, spec, x_train, y_train, epochs, SEED)
    seconds = time.perf_counter() - started

    test_inputs = to_input(x_test)
    onnx_path = out_dir / f"{name}.onnx"
    export_onnx(model, test_inputs[:1], onnx_path)
    ort_logits = onnxruntime_logits(onnx_path, test_inputs)
    ort_acc = float(np.mean(ort_logits.argmax(1) == y_test))
    torch_acc = torch_accuracy(model, test_inputs, y_test)
    if ort_acc != torch_acc:
        raise SystemExit(f"{name}: onnxruntime accuracy {ort_acc} != torch accuracy {torch_acc}")
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(test_inputs)).numpy()
    max_diff = float(np.abs(ort_logits - torch_logits).max())

    calib_rows = np.sort(np.random.default_rng(SEED).choice(len(x_train), CALIB_SAMPLES, replace=False))
    np.savez_compressed(out_dir / f"{name}_calib.npz", input=to_input(x_train[calib_rows]))
    np.savez_compressed(out_dir / f"{name}_test.npz", input=test_inputs, y=y_test.astype(np.int64))

    print(f"{name}: {params} params, trained in {seconds:.1f}s, test accuracy "
          f"torch {torch_acc:.4f} onnxruntime {ort_acc:.4f}, max |logit diff| {max_diff:.2e}, "
          f"{onnx_path.stat().st_size} bytes, ops {op_types(onnx_path)}")
    return {
        "name": name,
        "file": onnx_path.name,
        "calib_file": f"{name}_calib.npz",
        "test_file": f"{name}_test.npz",
        "input_name": "input",
        "output_name": "logits",
        "input_shape": [1, *test_inputs.shape[1:]],
        "layout": layout,
        "preprocessing": spec.preprocessing,
        "num_classes": NUM_CLASSES,
        "parameters": params,
        "epochs": epochs,
        "file_bytes": onnx_path.stat().st_size,
        "float_test_accuracy": ort_acc,
        "test_samples": len(y_test),
        "onnx_ops": op_types(onnx_path),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("sample_models"), help="output directory")
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="scale every model's default epoch count (for quick trial runs)")
    parser.add_argument("--only", nargs="*", help="build only these models (manifest lists only them)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    specs = [s for s in SPECS if not args.only or s.name in args.only]
    entries = [build_model(spec, split, args.out, args.epochs) for spec in specs]
    manifest = {
        "dataset": "sklearn.datasets.load_digits",
        "onnx_opset": OPSET,
        "batch_dim": "dynamic, named 'batch' (input_shape below fixes it to 1)",
        "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SEED}, stratify=y)",
        "train_samples": len(split[0]),
        "test_samples": len(split[1]),
        "models": entries,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out / "README.md").write_text(readme_text(manifest))


REGENERATE = "pip install torch==2.13.0 scikit-learn onnx onnxruntime && python scripts/make_sample_models.py"

DESCRIPTIONS = {
    "digits_mlp": "MLP 64-128-64-10 with ReLU (Gemm, Relu).",
    "digits_cnn": ("Small CNN: three 3x3 convs (16, 32, 32 channels, pad 1) each with BatchNorm + ReLU, "
                   "a 2x2 MaxPool after the second, Flatten, one Linear 512 -> 10."),
    "digits_mobilenetv2": (
        f"MobileNetV2-style: stem 3x3 stride-2 conv ({MOBILENET_STEM} ch) + BN + ReLU6; inverted residual "
        "blocks ([1x1 expand + BN + ReLU6, absent when expand is 1], 3x3 depthwise + BN + ReLU6, 1x1 linear project + BN, residual Add "
        "where stride 1 and channels match) with (expand, channels, repeats, stride) = "
        + ", ".join(str(b) for b in MOBILENET_BLOCKS)
        + f"; 1x1 conv to {MOBILENET_HEAD} + BN + ReLU6; global average pool; Flatten; Linear -> 10."),
}


def readme_text(manifest: dict) -> str:
    """README generated with the files, so its numbers cannot drift from them."""
    lines = [
        "# Sample models",
        "",
        "Small classifiers trained on scikit-learn's digits (`sklearn.datasets.load_digits`: 1797 grey",
        "8x8 images, pixel values 0..16, ships with scikit-learn so no download is needed), exported to",
        "ONNX, with calibration and test data. They are the accuracy benchmark for the converter.",
        "",
        "Generated by `scripts/make_sample_models.py`; do not edit by hand. To regenerate (deterministic:",
        "seeded, one thread, deterministic torch algorithms; a rerun gives byte-identical files on the same",
        "torch/onnx versions):",
        "",
        f"    {REGENERATE}",
        "",
        "## Data",
        "",
        f"- Split: `sklearn.model_selection.{manifest['split']}` -> "
        f"{manifest['train_samples']} train, {manifest['test_samples']} test images.",
        f"- `<name>_calib.npz`: key `input`, {CALIB_SAMPLES} images from the train split (never test),",
        f"  float32, in the model's input layout (rows chosen by `default_rng({SEED}).choice`, sorted).",
        "- `<name>_test.npz`: key `input`, the whole test split, float32, in the model's input layout;",
        "  key `y`, int64 labels 0..9.",
        "- Training used the train split only: AdamW with a one-cycle schedule, batch 64, epochs as in",
        "  the table; the CNN and MobileNetV2 saw random shifts of up to 1 pixel (on the 8x8 image) as",
        "  augmentation. About two minutes on one CPU thread for all three.",
        "",
        "## Export",
        "",
        f"ONNX opset {manifest['onnx_opset']}, torch's TorchScript exporter (`dynamo=False`), model in eval mode,",
        "`training=TrainingMode.PRESERVE`, `do_constant_folding=True`. Input `input`, output `logits`",
        "(raw scores, no Softmax), batch dimension dynamic and named `batch`: the converter fixes it to 1",
        "by default or takes it from `--input-shape`. BatchNormalization is **not** folded: it stays a node",
        "after each Conv (with `TrainingMode.EVAL` the exporter would fuse it into the Conv), so the",
        "converter's own BN folding is exercised. ReLU6 is exported as `Clip(x, 0, 6)` whose bounds are",
        "`Constant` nodes. Accuracy below is from onnxruntime on the exported file, and equals torch's.",
        "",
        "`manifest.json` lists the same facts in machine-readable form.",
        "",
        "## Models",
        "",
        "| model | input (batch 1) | layout | parameters | epochs | ONNX bytes | float test accuracy | ONNX ops |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in manifest["models"]:
        lines.append(f"| `{m['name']}` | {m['input_shape']} | {m['layout']} | {m['parameters']:,} | {m['epochs']} | "
                     f"{m['file_bytes']:,} | {m['float_test_accuracy']:.4f} | {', '.join(m['onnx_ops'])} |")
    lines.append("")
    for m in manifest["models"]:
        lines += [f"### {m['name']}", "", DESCRIPTIONS[m["name"]], "",
                  f"Input preprocessing: {m['preprocessing']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
