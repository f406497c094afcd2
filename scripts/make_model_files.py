"""Build the small .tflite files in tests/models/ that are laid out as on-device frameworks ship them.

    python scripts/make_model_files.py [name ...]

* ``fp16_cnn.tflite``: a small CNN whose weights and biases are float16 constants, each feeding a
  DEQUANTIZE to float32 before the op that reads it (all DEQUANTIZEs first): the layout of float16
  on-device vision models.

* ``transpose_conv_bias.tflite``: a small decoder with MediaPipe's custom op
  Convolution2DTransposeBias (a transposed convolution with a bias; custom options: a TfLite params
  struct starting with padding, stride_width, stride_height as int32), float16 weights as above.

Seeded and deterministic: rerunning reproduces every file byte for byte.
"""
from __future__ import annotations

import struct
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


TFLITE_PADDING = {"SAME": 1, "VALID": 2}  # TfLitePadding, the C API's enum (not the schema's)


def transpose_conv_bias_options(padding: str, stride: int, filter_size: int = 0, full_struct: bool = False) -> bytes:
    """Custom options as the C struct's bytes: padding, stride_width, stride_height; ``full_struct``
    adds the rest of a TfLitePoolParams (filter width and height, activation, computed padding)."""
    raw = struct.pack("<3i", TFLITE_PADDING[padding], stride, stride)
    return raw + struct.pack("<7i", filter_size, filter_size, 0, 0, 0, 0, 0) if full_struct else raw


def float_decoder() -> Graph:
    """[1, 5, 7, 3] -> conv 3x3 (8, RELU) -> Convolution2DTransposeBias 3x3/2 SAME (6) -> [1, 9, 13, 6]
    -> Convolution2DTransposeBias 2x2/2 VALID (2) -> [1, 18, 26, 2]."""
    rng = np.random.default_rng(2027)
    tensors = [
        Tensor("features", (1, 5, 7, 3)),
        Tensor("conv_w", (8, 3, 3, 3), data=_weights(rng, (8, 3, 3, 3), 27)),
        Tensor("conv_b", (8,), data=_bias(rng, 8)),
        Tensor("conv", (1, 5, 7, 8)),
        Tensor("up1_w", (6, 3, 3, 8), data=_weights(rng, (6, 3, 3, 8), 72)),
        Tensor("up1_b", (6,), data=_bias(rng, 6)),
        Tensor("up1", (1, 9, 13, 6)),
        Tensor("up2_w", (2, 2, 2, 6), data=_weights(rng, (2, 2, 2, 6), 24)),
        Tensor("up2_b", (2,), data=_bias(rng, 2)),
        Tensor("mask", (1, 18, 26, 2)),
    ]
    ops = [
        Op("CONV_2D", ["features", "conv_w", "conv_b"], ["conv"],
           {"padding": "SAME", "stride_w": 1, "stride_h": 1, "fused_activation_function": "RELU"}),
        Op("CUSTOM", ["conv", "up1_w", "up1_b"], ["up1"],
           {"custom_code": "Convolution2DTransposeBias", "custom_options": transpose_conv_bias_options("SAME", 2)}),
        Op("CUSTOM", ["up1", "up2_w", "up2_b"], ["mask"],
           {"custom_code": "Convolution2DTransposeBias",
            "custom_options": transpose_conv_bias_options("VALID", 2, 2, full_struct=True)}),
    ]
    return Graph(tensors, ops, ["features"], ["mask"])


def transpose_conv_bias() -> bytes:
    return write_tflite(quantize_float16(float_decoder()), description="custom op, fp16 weights")


BUILDERS = {
    "fp16_cnn.tflite": fp16_cnn,
    "transpose_conv_bias.tflite": transpose_conv_bias,
}


def main(names) -> None:
    for name in names or BUILDERS:
        content = BUILDERS[name]()
        (MODELS_DIR / name).write_bytes(content)
        print(f"{name}: {len(content):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
