"""Real architectures: the "light" models that ship in the onnx wheel (ResNet-50, SqueezeNet, ShuffleNet,
DenseNet-121, Inception v1/v2, VGG-19, AlexNet, ZFNet) convert to float TFLite, and LiteRT and our runtime
agree with onnxruntime on them.

The shipped models fill every weight with one constant (0.02), which would hide any mix-up of channels,
so besides the shipped expected outputs each model is also checked with seeded random weights.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.converter.onnx_import import import_onnx
from edgeq.runtime.tflite_format.writer import write_tflite
from referees import (
    litert_tensors,
    nchw_to_nhwc,
    relative_max_error,
    run_edgeq,
    run_litert,
    run_onnxruntime,
)
from edgeq.runtime.interpreter import Interpreter

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))
# TRANSPOSE ops the model's own semantics need: ShuffleNet's 16 channel shuffles, one each.
NEEDED_TRANSPOSES = {"shufflenet": 16}
# float32 summation order differs between engines; through 50-120 layers it stays well below this.
FLOAT_TOLERANCE = 1e-4


def load_light_model(name: str) -> onnx.ModelProto:
    return onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))


@lru_cache(maxsize=None)
def converted_light_model(name: str, random_weights: bool) -> tuple:
    """(ONNX model, IR graph, .tflite bytes), converted once per test session."""
    model = load_light_model(name)
    if random_weights:
        model = with_random_weights(model)
    graph = import_onnx(model)
    return model, graph, write_tflite(graph)


def graph_input(model: onnx.ModelProto):
    initializers = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def dummy_input(model: onnx.ModelProto) -> np.ndarray:
    """The input onnx's backend tests feed these models (arange / n), so the shipped outputs apply."""
    shape = tuple(d.dim_value or 1 for d in graph_input(model).type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


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


def check_against_onnxruntime(name: str, random_weights: bool):
    model, graph, content = converted_light_model(name, random_weights)
    x = dummy_input(model)
    (expected,) = run_onnxruntime(model, {graph_input(model).name: x})
    (litert,) = run_litert(content, [nchw_to_nhwc(x)])
    (ours,) = run_edgeq(content, [nchw_to_nhwc(x)])
    litert_error = relative_max_error(litert.reshape(expected.shape), expected)
    ours_error = relative_max_error(ours, litert)
    print(f"LiteRT vs onnxruntime {litert_error:.2e}; edgeq vs LiteRT {ours_error:.2e}")
    assert litert_error <= FLOAT_TOLERANCE
    assert ours_error <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_with_random_weights_matches_onnxruntime(name):
    check_against_onnxruntime(name, random_weights=True)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_gives_the_shipped_expected_output(name):
    """With every weight 0.02, the logits are huge and nearly equal, and the final softmax turns a
    one-ulp difference in summation order into a large one. So LiteRT and onnxruntime are held to
    the shipped output, and our runtime is compared with LiteRT on the softmax's input."""
    model, graph, content = converted_light_model(name, random_weights=False)
    x = dummy_input(model)
    shipped = numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_0.pb")))
    (expected,) = run_onnxruntime(model, {graph_input(model).name: x})
    (litert,) = run_litert(content, [nchw_to_nhwc(x)])
    np.testing.assert_allclose(expected, shipped, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(litert.reshape(shipped.shape), shipped, rtol=1e-3, atol=1e-7)
    logits = softmax_input(graph)
    ours = Interpreter(model_content=content).run([nchw_to_nhwc(x)], keep={logits})[logits]
    reference = litert_tensors(content, [nchw_to_nhwc(x)], [logits])[logits]
    # all-positive sums of up to 25k terms of 1e31: onnx's own tolerance for these models
    assert relative_max_error(ours, reference) <= 1e-3


def softmax_input(graph) -> str:
    """The tensor the model's final SOFTMAX reads, looking through reshapes after it."""
    producers = graph.producers()
    name = graph.outputs[0]
    while name in producers and producers[name].type in ("RESHAPE", "SQUEEZE", "SOFTMAX"):
        op = producers[name]
        name = op.inputs[0]
        if op.type == "SOFTMAX":
            return name
    return graph.outputs[0]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_keeps_only_the_transposes_it_needs(name):
    _, graph, _ = converted_light_model(name, random_weights=False)
    transposes = sum(op.type == "TRANSPOSE" for op in graph.ops)
    assert transposes == NEEDED_TRANSPOSES.get(name, 0)
