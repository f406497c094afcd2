"""Build the small .tflite files in tests/models/ that are laid out as on-device frameworks ship them.

    python scripts/make_model_files.py [name ...]

* ``fp16_cnn.tflite``: a small CNN whose weights and biases are float16 constants, each feeding a
  DEQUANTIZE to float32 before the op that reads it (all DEQUANTIZEs first): the layout of float16
  on-device vision models.

Seeded and deterministic: rerunning reproduces every file byte for byte.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgeq.converter.quantize import quantize_float16
from edgeq.runtime.ir import Graph, Op, Tensor
from edgeq.runtime.tflite_format.writer import write_tflite

MODELS_DIR = Path(__file__).resolve().parent.parent / "tests" / "models"


def _weights(rng, shape, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng, size: int) -> np.ndarray:
    return (rng.standard_normal(size) * 0.1).astype(np.float32)


def float_cnn() -> Graph:
    """[1, 24, 24, 3] -> conv 3x3/2 (16, RELU) -> depthwise 3x3 (RELU6) -> conv 1x1 (24, RELU)
    -> conv 5x5/2 (32, RELU) -> MEAN over H, W -> FULLY_CONNECTED 10 -> SOFTMAX."""
    rng = np.random.default_rng(2026)
    tensors = [
        Tensor("image", (1, 24, 24, 3)),
        Tensor("stem_w", (16, 3, 3, 3), data=_weights(rng, (16, 3, 3, 3), 27)),
        Tensor("stem_b", (16,), data=_bias(rng, 16)),
        Tensor("stem", (1, 12, 12, 16)),
        Tensor("dw_w", (1, 3, 3, 16), data=_weights(rng, (1, 3, 3, 16), 9)),
        Tensor("dw_b", (16,), data=_bias(rng, 16)),
        Tensor("dw", (1, 12, 12, 16)),
        Tensor("expand_w", (24, 1, 1, 16), data=_weights(rng, (24, 1, 1, 16), 16)),
        Tensor("expand_b", (24,), data=_bias(rng, 24)),
        Tensor("expand", (1, 12, 12, 24)),
        Tensor("down_w", (32, 5, 5, 24), data=_weights(rng, (32, 5, 5, 24), 600)),
        Tensor("down_b", (32,), data=_bias(rng, 32)),
        Tensor("down", (1, 6, 6, 32)),
        Tensor("pool_axes", (2,), np.int32, np.array([1, 2], np.int32)),
        Tensor("pooled", (1, 32)),
        Tensor("fc_w", (10, 32), data=_weights(rng, (10, 32), 32)),
        Tensor("fc_b", (10,), data=_bias(rng, 10)),
        Tensor("logits", (1, 10)),
        Tensor("probs", (1, 10)),
    ]

    def conv(stride, activation):
        return {"padding": "SAME", "stride_w": stride, "stride_h": stride, "fused_activation_function": activation}

    ops = [
        Op("CONV_2D", ["image", "stem_w", "stem_b"], ["stem"], conv(2, "RELU")),
        Op("DEPTHWISE_CONV_2D", ["stem", "dw_w", "dw_b"], ["dw"], {**conv(1, "RELU6"), "depth_multiplier": 1}),
        Op("CONV_2D", ["dw", "expand_w", "expand_b"], ["expand"], conv(1, "RELU")),
        Op("CONV_2D", ["expand", "down_w", "down_b"], ["down"], conv(2, "RELU")),
        Op("MEAN", ["down", "pool_axes"], ["pooled"], {"keep_dims": False}),
        Op("FULLY_CONNECTED", ["pooled", "fc_w", "fc_b"], ["logits"]),
        Op("SOFTMAX", ["logits"], ["probs"], {"beta": 1.0}),
    ]
    return Graph(tensors, ops, ["image"], ["probs"])


def fp16_cnn() -> bytes:
    return write_tflite(quantize_float16(float_cnn()), description="fp16 weights")


BUILDERS = {
    "fp16_cnn.tflite": fp16_cnn,
}


def main(names) -> None:
    for name in names or BUILDERS:
        content = BUILDERS[name]()
        (MODELS_DIR / name).write_bytes(content)
        print(f"{name}: {len(content):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
