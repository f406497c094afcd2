"""The "light" models that ship inside the onnx wheel (ResNet-50, SqueezeNet, ShuffleNet, DenseNet-121,
Inception v1/v2, VGG-19, AlexNet, ZFNet), and seeded random weights for them: the shipped models fill
every weight with one constant (0.02), which would hide any mix-up of channels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def load_light_model(name: str) -> onnx.ModelProto:
    return onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace each ConstantOfShape-filled weight by seeded random values of a sensible scale."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    role = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            role.setdefault(name, (node.op_type, position))
    kept_nodes, new_weights = [], []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept_nodes.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        new_weights.append(numpy_helper.from_array(_random_weight(rng, shape, role.get(node.output[0])), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    model.graph.initializer.extend(new_weights)
    return model


def _random_weight(rng, shape, role) -> np.ndarray:
    op_type, position = role or ("", 0)
    if len(shape) >= 2:  # He initialisation keeps activations at a steady scale through depth
        fan_in = int(np.prod(shape[1:])) if op_type != "Gemm" else shape[-1]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
    if (op_type == "BatchNormalization" and position == 3) or position == 2:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)  # means and biases
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # scales and variances
