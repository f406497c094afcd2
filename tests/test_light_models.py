"""Real architectures: the "light" models that ship in the onnx wheel (ResNet-50, SqueezeNet, ShuffleNet,
DenseNet-121, Inception v1/v2, VGG-19, AlexNet, ZFNet) convert to float TFLite, and LiteRT and our runtime
agree with onnxruntime on them; quantized to int8, our runtime gives the very integers of LiteRT's
reference kernels (BUILTIN_REF) in every tensor.

The shipped models fill every weight with one constant (0.02), which would hide any mix-up of channels,
so besides the shipped expected outputs each model is also checked with seeded random weights.

Each model is converted once per test run: the tests of one model run one after the other on
module-scoped conversions, which are dropped before the next model's, so the weights of only one
model are held at a time (VGG-19's alone are 550 MB in every copy).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq.converter.calibrate import calibrate
from edgeq.converter.onnx_import import import_onnx
from edgeq.converter.quantize import quantize_int8
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import (
    integer_tensor_mismatches,
    litert_tensors,
    nchw_to_nhwc,
    relative_max_error,
    run_edgeq,
    run_litert,
    run_onnxruntime,
)
from edgeq.runtime.interpreter import Interpreter
from edgeq.testing.light_models import LIGHT_DIR, load_light_model, with_random_weights

LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))
# Every light model but Inception v1: LiteRT's reference int8 SOFTMAX aborts the process on its
# 1000 near-equal logits (input scale 0.0047); the graph up to the softmax equals ours, and LiteRT's
# default kernels run the whole model.
LIGHT_INT8_MODELS = ["bvlc_alexnet", "densenet121", "inception_v2", "resnet50", "shufflenet", "squeezenet",
                     "vgg19", "zfnet512"]
# TRANSPOSE ops the model's own semantics need: ShuffleNet's 16 channel shuffles, one each.
NEEDED_TRANSPOSES = {"shufflenet": 16}
# float32 summation order differs between engines; through 50-120 layers it stays well below this.
FLOAT_TOLERANCE = 1e-4
# The random-weights variants narrow the hidden fully connected layers of AlexNet, ZFNet and VGG-19
# from 4096 outputs to this many. Those layers hold 80-90% of the weights (VGG-19's first alone is
# 25088 x 4096), and the converter's copies of them took gigabytes. What the random weights are
# there to check stays whole: every convolution is as shipped, and the first of these layers keeps
# all its inputs (25088, 9216, 18432), the flattened feature map whose NCHW -> NHWC permutation is
# folded into its weights; VGG-19's (25088 x 1024) is still a layer so big that int8 chunks its
# exact float32 GEMM by column maxima. The shipped-weights checks run the models whole.
RANDOM_WEIGHTS_CLASSIFIER_WIDTH = 1024

# Every test here converts or runs an ImageNet-size model: the slow tier.
pytestmark = pytest.mark.slow
# The tests of one model run one after the other (a module-scoped parameter), so the module-scoped
# fixtures below hold one model's conversions at a time.
each_light_model = pytest.mark.parametrize("name", LIGHT_MODELS, scope="module")


def graph_input(model: onnx.ModelProto):
    initializers = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in initializers)


def dummy_input(model: onnx.ModelProto) -> np.ndarray:
    """The input onnx's backend tests feed these models (arange / n), so the shipped outputs apply."""
    shape = tuple(d.dim_value or 1 for d in graph_input(model).type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def with_narrow_classifier(model: onnx.ModelProto, width: int) -> onnx.ModelProto:
    """The model with each Gemm that feeds another Gemm cut to at most ``width`` outputs (and the next
    Gemm's inputs with it). The light models' Gemm weights are ConstantOfShape fills ([outputs,
    inputs], transB=1), so only the fills' shapes change."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    shapes = {t.name: t for t in model.graph.initializer}
    fill_shape = {node.output[0]: shapes[node.input[0]] for node in model.graph.node
                  if node.op_type == "ConstantOfShape" and node.input[0] in shapes}
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]

    def set_dim(tensor: str, axis: int, size: int) -> None:
        shape_tensor = fill_shape[tensor]
        dims = numpy_helper.to_array(shape_tensor).copy()
        dims[axis] = size
        shape_tensor.CopyFrom(numpy_helper.from_array(dims, shape_tensor.name))

    for layer, following in zip(gemms, gemms[1:]):
        assert all(a.i == 1 for node in (layer, following) for a in node.attribute if a.name == "transB")
        outputs = int(numpy_helper.to_array(fill_shape[layer.input[1]])[0])
        if outputs > width:
            set_dim(layer.input[1], 0, width)
            set_dim(layer.input[2], 0, width)
            set_dim(following.input[1], 1, width)
    return model


@pytest.fixture(scope="module")
def shipped(name):
    """The shipped model (every weight 0.02) converted: the ONNX model, the .tflite bytes, the tensor
    the final SOFTMAX reads and the TRANSPOSE count. The IR graph is let go once they are taken, so
    only one copy of the weights stays."""
    model = load_light_model(name)
    graph = import_onnx(model)
    facts = {"model": model, "logits": softmax_input(graph),
             "transposes": sum(op.type == "TRANSPOSE" for op in graph.ops)}
    content = write_tflite(graph)
    del graph
    return SimpleNamespace(content=content, **facts)


@pytest.fixture(scope="module")
def random_weights(name):
    """The model with seeded random weights (narrow classifier layers, see
    RANDOM_WEIGHTS_CLASSIFIER_WIDTH): the ONNX model, its IR graph and the float .tflite bytes."""
    model = with_random_weights(with_narrow_classifier(load_light_model(name), RANDOM_WEIGHTS_CLASSIFIER_WIDTH))
    graph = import_onnx(model)
    return SimpleNamespace(model=model, graph=graph, content=write_tflite(graph))


@each_light_model
def test_light_model_gives_the_shipped_expected_output(name, shipped):
    """With every weight 0.02, the logits are huge and nearly equal, and the final softmax turns a
    one-ulp difference in summation order into a large one. So LiteRT and onnxruntime are held to
    the shipped output, and our runtime is compared with LiteRT on the softmax's input."""
    model, content, logits = shipped.model, shipped.content, shipped.logits
    x = dummy_input(model)
    shipped_output = numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_0.pb")))
    (expected,) = run_onnxruntime(model, {graph_input(model).name: x})
    (litert,) = run_litert(content, [nchw_to_nhwc(x)])
    np.testing.assert_allclose(expected, shipped_output, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(litert.reshape(shipped_output.shape), shipped_output, rtol=1e-3, atol=1e-7)
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


@each_light_model
def test_light_model_keeps_only_the_transposes_it_needs(name, shipped):
    assert shipped.transposes == NEEDED_TRANSPOSES.get(name, 0)


@each_light_model
def test_light_model_with_random_weights_matches_onnxruntime(name, random_weights):
    model, content = random_weights.model, random_weights.content
    x = dummy_input(model)
    (expected,) = run_onnxruntime(model, {graph_input(model).name: x})
    (litert,) = run_litert(content, [nchw_to_nhwc(x)])
    (ours,) = run_edgeq(content, [nchw_to_nhwc(x)])
    litert_error = relative_max_error(litert.reshape(expected.shape), expected)
    ours_error = relative_max_error(ours, litert)
    print(f"LiteRT vs onnxruntime {litert_error:.2e}; edgeq vs LiteRT {ours_error:.2e}")
    assert litert_error <= FLOAT_TOLERANCE
    assert ours_error <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", LIGHT_INT8_MODELS, scope="module")
def test_light_int8_model_equals_litert_reference_in_every_tensor(name, random_weights):
    graph = random_weights.graph
    shape = (4,) + tuple(graph[graph.inputs[0]].shape[1:])
    calibration = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    ranges = calibrate(graph, {graph.inputs[0]: calibration}, progress=False)
    content = write_tflite(quantize_int8(graph, ranges))
    counts = integer_tensor_mismatches(content, [calibration[:1]])
    print(f"{name}: {len(counts)} integer tensors, {sum(counts.values())} mismatching elements")
    assert counts and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
