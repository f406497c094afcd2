"""A standard MobileNetV2 as an ONNX model, built with ``onnx.helper`` (no torch), random weights.

The topology is the edge benchmark one (Sandler et al. 2018, torchvision's ``mobilenet_v2``): a 3x3/2
stem convolution, the 17 inverted-residual blocks, a 1x1 convolution to 1280 channels, global average
pooling and a 1000-way Gemm. Every convolution is written as an exporter writes it: Conv (no bias),
BatchNormalization (random statistics), and Clip(0, 6) where the network has ReLU6; blocks with equal
input and output shapes add their input back. Weights are He-initialised from a fixed seed, so the
same arguments always give the same model.

    python -m edgeq.testing.mobilenet_v2 mobilenet_v2.onnx [--resolution 224] [--width 1.0] [--seed 0]

The benchmark scripts take ``build_mobilenet_v2`` from here.
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
NUM_CLASSES = 1000
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never more than 10% below ``value`` (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique names and seeded random weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def he_normal(self, shape: tuple, fan_in: int) -> np.ndarray:
        return self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)

    def conv_bn(self, x: str, in_channels: int, out_channels: int, kernel: int, stride: int,
                groups: int = 1, relu6: bool = True) -> str:
        """Conv (no bias) -> BatchNormalization -> optional Clip(0, 6), as torch.onnx exports them."""
        fan_in = in_channels // groups * kernel * kernel
        weight = self.constant("conv_w", self.he_normal((out_channels, in_channels // groups, kernel, kernel), fan_in))
        conv = self.name("conv")
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, weight], [conv], name=conv, kernel_shape=[kernel, kernel],
            strides=[stride, stride], pads=[pad, pad, pad, pad], group=groups, dilations=[1, 1]))
        bn = self.batch_norm(conv, out_channels)
        if not relu6:
            return bn
        low, high = self.constant("clip_min", np.array(0.0)), self.constant("clip_max", np.array(6.0))
        clip = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [bn, low, high], [clip], name=clip))
        return clip

    def batch_norm(self, x: str, channels: int) -> str:
        scale = self.constant("bn_scale", self.rng.uniform(0.5, 1.5, channels))
        bias = self.constant("bn_bias", self.rng.normal(0.0, 0.1, channels))
        mean = self.constant("bn_mean", self.rng.normal(0.0, 0.1, channels))
        var = self.constant("bn_var", self.rng.uniform(0.5, 1.5, channels))
        out = self.name("bn")
        self.nodes.append(helper.make_node(
            "BatchNormalization", [x, scale, bias, mean, var], [out], name=out, epsilon=1e-5, momentum=0.9))
        return out

    def inverted_residual(self, x: str, in_channels: int, out_channels: int, stride: int, expansion: int) -> str:
        hidden = in_channels * expansion
        y = x
        if expansion != 1:
            y = self.conv_bn(y, in_channels, hidden, 1, 1)
        y = self.conv_bn(y, hidden, hidden, 3, stride, groups=hidden)
        y = self.conv_bn(y, hidden, out_channels, 1, 1, relu6=False)
        if stride == 1 and in_channels == out_channels:
            out = self.name("add")
            self.nodes.append(helper.make_node("Add", [x, y], [out], name=out))
            return out
        return y

    def classifier(self, x: str, in_features: int, num_classes: int) -> str:
        pooled, flat, logits = self.name("pool"), self.name("flatten"), "logits"
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        bound = 1.0 / np.sqrt(in_features)
        weight = self.constant("fc_w", self.rng.uniform(-bound, bound, (num_classes, in_features)))
        bias = self.constant("fc_b", self.rng.uniform(-bound, bound, num_classes))
        self.nodes.append(helper.make_node("Gemm", [flat, weight, bias], [logits], name="classifier", transB=1))
        return logits


def build_mobilenet_v2(resolution: int = 224, width: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 (``width`` multiplier, square ``resolution`` input, NCHW, batch 1) with random weights."""
    builder = _GraphBuilder(seed)
    channels = make_divisible(STEM_CHANNELS * width)
    x = builder.conv_bn("input", 3, channels, 3, 2)
    for expansion, c, repeats, first_stride in INVERTED_RESIDUAL_SETTINGS:
        out_channels = make_divisible(c * width)
        for i in range(repeats):
            x = builder.inverted_residual(x, channels, out_channels, first_stride if i == 0 else 1, expansion)
            channels = out_channels
    last_channels = make_divisible(LAST_CHANNELS * max(1.0, width))
    x = builder.conv_bn(x, channels, last_channels, 1, 1)
    logits = builder.classifier(x, last_channels, NUM_CLASSES)

    graph = helper.make_graph(
        builder.nodes,
        f"mobilenet_v2_{width}_{resolution}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [1, NUM_CLASSES])],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeq")
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = build_mobilenet_v2(args.resolution, args.width, args.seed)
    onnx.save(model, args.output)
    parameters = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    print(f"{args.output}: {len(model.graph.node)} nodes, {parameters:,} parameters")


if __name__ == "__main__":
    main()
