"""Every kernel with a native twin (runtime.native) against the numpy kernels and LiteRT.

Each runs on the numpy path and on every native variant this machine has: int8 results must equal
LiteRT's BUILTIN_REF integers every time; float results must equal the numpy path's, exactly where
the native loop does the same operations in the same order (pools, im2col), and within a few float32
roundings where it fuses multiply and add (depthwise convolution). The native half is skipped where the
extension is not built.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeq.runtime.fixedpoint import multiply_by_quantized_multiplier
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.padding import output_size
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor

pytest.importorskip("ai_edge_litert")

from edgeq.testing.int8_graphs import (  # noqa: E402
    BINARY_CASES,
    PARAMS,
    binary_graph,
    random_int8,
    unary_graph,
    weighted_op,
)
from edgeq.testing.referees import assert_exact, mismatches_in_every_tensor  # noqa: E402



@pytest.fixture(params=native.supported_isas() or ["none"])
def native_variant(request, monkeypatch):
    """One native variant the machine runs (the numpy path is the reference each is compared to)."""
    if request.param == "none":
        pytest.skip(f"no native kernels: {native.describe()}")
    monkeypatch.setattr(native, "_isa", request.param)
    return request.param


def outputs_on_both_paths(graph: Graph, inputs, monkeypatch) -> tuple:
    """Every non-constant tensor of one run, on the numpy path and on the native one."""
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(native, "ENABLED", enabled)
        results.append(Interpreter.from_graph(graph).run(inputs, keep="all"))
    return tuple(results)


def assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=0.0):
    """The native path's tensors equal the numpy path's: exactly, or within ``rtol`` of the tensor's
    largest magnitude, at least of 1 (the float32 roundings a fused multiply-add changes; an activation
    that clamps to [-1, 1] hides how large the sums it clamps were)."""
    numpy_outputs, native_outputs = outputs_on_both_paths(graph, inputs, monkeypatch)
    assert numpy_outputs.keys() == native_outputs.keys()
    for name, expected in numpy_outputs.items():
        got = native_outputs[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if rtol == 0.0:
            assert np.array_equal(got, expected), f"{name}: {np.count_nonzero(got != expected)} elements differ"
        else:
            scale = max(float(np.max(np.abs(expected), initial=0.0)), 1.0)
            np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale, err_msg=name)


# What summing a few dozen products of order 1-10 with fused multiply-adds instead of separate ones
# can change, relative to the largest output: a few dozen float32 roundings (2^-23 each).
FMA_RTOL = 1e-5


# -- int8: equal to LiteRT's reference kernels on both paths ------------------------------------------

DEPTHWISE_GEOMETRIES = list(itertools.product([1, 3, 5], [1, 2], [1, 2], ["SAME", "VALID"]))


@pytest.mark.parametrize("k, stride, dilation, padding", DEPTHWISE_GEOMETRIES)
def test_depthwise_conv_2d_int8_geometries(kernel_path, k, stride, dilation, padding):
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (2, 11, 9, 6), *PARAMS["typical"], k=k, stride=stride,
                                dilation=dilation, padding=padding, out_c=6, act="RELU6")
    assert_exact(graph, inputs)


@pytest.mark.parametrize("params", sorted(PARAMS))
@pytest.mark.parametrize("multiplier", [1, 3])
def test_depthwise_conv_2d_int8_params_and_multiplier(kernel_path, params, multiplier):
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (1, 8, 8, 4), *PARAMS[params], out_c=4 * multiplier, seed=3)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("params", sorted(PARAMS))
@pytest.mark.parametrize("k, stride", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_conv_2d_int8_requantization(kernel_path, params, k, stride):
    graph, inputs = weighted_op("CONV_2D", (2, 9, 7, 5), *PARAMS[params], k=k, stride=stride, out_c=7,
                                act="RELU", seed=4)
    assert_exact(graph, inputs)


def test_conv_2d_int8_deep_patch_float64_gemm(kernel_path):
    graph, inputs = weighted_op("CONV_2D", (1, 5, 5, 160), *PARAMS["typical"], out_c=4, seed=2)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
def test_add_sub_int8(kernel_path, op_type, case):
    graph, inputs = binary_graph(op_type, *BINARY_CASES[case])
    assert_exact(graph, inputs)


@pytest.mark.parametrize("k, stride, padding, act", list(itertools.product([2, 3], [1, 2], ["SAME", "VALID"],
                                                                           ["NONE", "RELU6"])))
def test_max_pool_int8(kernel_path, k, stride, padding, act):
    q = (0.05, 3)
    y_shape = (2, output_size(padding, 9, k, stride), output_size(padding, 8, k, stride), 3)
    options = {"padding": padding, "stride_w": stride, "stride_h": stride, "filter_width": k,
               "filter_height": k, "fused_activation_function": act}
    graph, inputs = unary_graph("MAX_POOL_2D", (2, 9, 8, 3), y_shape, q, q, options)
    assert_exact(graph, inputs)


SOFTMAX_OUTPUT = {np.int8: (1.0 / 256, -128), np.int16: (1.0 / 65536, -32768)}


@pytest.mark.parametrize("depth", [1, 7, 64, 256])
@pytest.mark.parametrize("input_scale, beta", [(0.05, 1.0), (0.3, 0.7), (0.004, 2.0), (2.0, 1.0)])
def test_softmax_int8(kernel_path, depth, input_scale, beta):
    graph, [x] = unary_graph("SOFTMAX", (3, depth), (3, depth), (input_scale, 5), SOFTMAX_OUTPUT[np.int8],
                             {"beta": beta}, seed=depth)
    x[1] = -128  # a row of equal values, and one that spans the whole int8 range
    x[2, ::2], x[2, 1::2] = 127, -128
    assert_exact(graph, [x])


@pytest.mark.parametrize("input_scale", [0.5, 3.0])
def test_softmax_int8_classifier_rows(kernel_path, input_scale):
    # LiteRT's reference kernel aborts on long rows whose sum of exponentials needs a shift > 31; coarse
    # input scales (as a classifier's logits have) keep it within reach.
    graph, inputs = unary_graph("SOFTMAX", (2, 1000), (2, 1000), (input_scale, -20), SOFTMAX_OUTPUT[np.int8],
                                {"beta": 1.0}, seed=9)
    assert_exact(graph, inputs)


def test_softmax_int8_to_int16(kernel_path):
    graph, inputs = unary_graph("SOFTMAX", (2, 3, 50), (2, 3, 50), (0.1, -3), SOFTMAX_OUTPUT[np.int16],
                                {"beta": 1.0, "_out_dtype": np.int16}, seed=5)
    assert_exact(graph, inputs)


MEAN_CASES = {  # shape, axes, keep_dims, (input scale, zero point), (output scale, zero point)
    "global_pool": ((1, 13, 13, 100), (1, 2), True, (0.05, 3), (0.02, -5)),
    "global_pool_flat": ((2, 7, 7, 40), (2, 1), False, (0.5, -128), (0.001, 127)),
    "one_axis": ((2, 5, 7, 6), (2,), True, (0.01, 127), (3.0, 0)),
    "last_axis": ((2, 5, 7, 6), (-1,), False, (0.02, 0), (0.02, 0)),
    "three_axes": ((2, 5, 7, 6), (1, 2, 3), False, (0.05, -7), (0.03, 9)),
    "batch_axis": ((3, 5, 7, 6), (0, 1), True, (0.05, 3), (0.02, -5)),  # numpy's form on every path
    "apart": ((2, 5, 7, 6), (1, 3), True, (0.05, 3), (0.02, -5)),  # not adjacent: numpy's form too
}


@pytest.mark.parametrize("case", sorted(MEAN_CASES))
def test_mean_int8(kernel_path, case):
    shape, axes, keep, q_in, q_out = MEAN_CASES[case]
    rank, reduced = len(shape), {a % len(shape) for a in axes}
    y_shape = tuple(1 if i in reduced else d for i, d in enumerate(shape) if keep or i not in reduced)
    graph, inputs = unary_graph("MEAN", shape, y_shape, q_in, q_out, {"keep_dims": keep},
                                [("axis", np.array(axes, np.int32))], seed=rank)
    assert_exact(graph, inputs)


def concatenation_graph(shapes, axis, q=(0.05, 3), dtype=np.int8, seed=0):
    rng = np.random.default_rng(seed)
    g = Graph()
    names = [f"x{k}" for k in range(len(shapes))]
    quant = QuantParams(*q) if q else None
    for name, shape in zip(names, shapes):
        g.add_tensor(Tensor(name, shape, dtype, quant=quant))
    out_shape = list(shapes[0])
    out_shape[axis] = sum(shape[axis] for shape in shapes)
    g.add_tensor(Tensor("y", tuple(out_shape), dtype, quant=quant))
    g.add_op(Op("CONCATENATION", names, ["y"], {"axis": axis, "fused_activation_function": "NONE"}))
    g.inputs, g.outputs = names, ["y"]
    return g, [random_int8(rng, shape) if q else rng.standard_normal(shape).astype(dtype) for shape in shapes]


@pytest.mark.parametrize("shapes, axis", [
    (((1, 5, 5, 3), (1, 5, 5, 4)), 3),
    (((2, 5, 5, 3), (2, 5, 5, 4), (2, 5, 5, 1)), -1),
    (((2, 2, 5, 3), (2, 3, 5, 3)), 1),
    (((2, 5), (2, 7)), 1),
    (((2, 5), (3, 5)), 0),
])
def test_concatenation_int8(kernel_path, shapes, axis):
    assert_exact(*concatenation_graph(shapes, axis))


def test_softmax_mean_and_concatenation_prepare_native_kernels(native_variant, monkeypatch):
    from edgeq.runtime.kernels import REGISTRY, load_all_kernels

    monkeypatch.setattr(native, "ENABLED", True)
    load_all_kernels()
    graphs = [unary_graph("SOFTMAX", (1, 10), (1, 10), (0.05, 3), SOFTMAX_OUTPUT[np.int8], {"beta": 1.0})[0],
              unary_graph("MEAN", (1, 3, 3, 4), (1, 1, 1, 4), (0.05, 3), (0.02, 1), {"keep_dims": True},
                          [("axis", np.array([1, 2], np.int32))])[0],
              concatenation_graph(((1, 2, 2, 3), (1, 2, 2, 5)), 3)[0],
              concatenation_graph(((1, 2, 2, 3), (1, 2, 2, 5)), 3, q=None, dtype=np.float32)[0]]
    for graph in graphs:
        op = graph.ops[0]
        assert REGISTRY[op.type](op, graph).__name__.endswith("_native"), op.type


def test_float_concatenation_identical(native_variant, monkeypatch):
    graph, inputs = concatenation_graph(((2, 3, 4, 5), (2, 3, 4, 2)), 3, q=None, dtype=np.float32)
    assert_equal_on_both_paths(graph, inputs, monkeypatch)


def test_native_concatenation_refuses_inputs_of_different_batches(native_variant, monkeypatch):
    monkeypatch.setattr(native, "ENABLED", True)
    graph, _ = concatenation_graph(((1, 2, 2, 3), (1, 2, 2, 5)), 3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cannot be joined"):
        Interpreter.from_graph(graph).run([random_int8(rng, (2, 2, 2, 3)), random_int8(rng, (3, 2, 2, 5))])


# -- float: the native path gives the numpy path's values ---------------------------------------------

def float_depthwise_graph(x_shape, k, stride, dilation, padding, multiplier, act, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    n, h, w, in_c = x_shape
    out_c = in_c * multiplier
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.float32))
    names = ["x", g.add_constant("w", rng.standard_normal((1, k, k, out_c)).astype(np.float32))]
    if bias:
        names.append(g.add_constant("b", rng.standard_normal(out_c).astype(np.float32)))
    y_shape = (n, output_size(padding, h, k, stride, dilation), output_size(padding, w, k, stride, dilation),
               out_c)
    g.add_tensor(Tensor("y", y_shape, np.float32))
    g.add_op(Op("DEPTHWISE_CONV_2D", names, ["y"], {
        "padding": padding, "stride_h": stride, "stride_w": stride, "dilation_h_factor": dilation,
        "dilation_w_factor": dilation, "depth_multiplier": multiplier, "fused_activation_function": act}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [(rng.standard_normal(x_shape) * 3).astype(np.float32)]


@pytest.mark.parametrize("k, stride, dilation, padding", DEPTHWISE_GEOMETRIES)
@pytest.mark.parametrize("multiplier, act", [(1, "RELU6"), (2, "NONE"), (1, "RELU_N1_TO_1")])
def test_depthwise_conv_2d_float(native_variant, monkeypatch, k, stride, dilation, padding, multiplier, act):
    graph, inputs = float_depthwise_graph((2, 10, 9, 5), k, stride, dilation, padding, multiplier, act)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


@pytest.mark.parametrize("channels", [1, 7, 16, 31, 32, 33, 64, 70, 144])
def test_depthwise_conv_2d_float_every_channel_block_and_tail(native_variant, monkeypatch, channels):
    graph, inputs = float_depthwise_graph((1, 9, 8, channels), 3, 1, 1, "SAME", 1, "RELU6", seed=channels)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


@pytest.mark.parametrize("stride, dilation, padding", list(itertools.product([1, 2], [1, 2], ["SAME", "VALID"])))
@pytest.mark.parametrize("channels", [37, 83])
def test_depthwise_conv_2d_float_3x3_rows_longer_than_a_pixel_tile(native_variant, monkeypatch, stride, dilation,
                                                                   padding, channels):
    # 3x3 filters run in tiles of pixels along a row: 45 columns make several tiles and a partial one;
    # 37 channels (blocks inside a pixel tile) and 83 (pixel by pixel), each whole blocks and a tail.
    graph, inputs = float_depthwise_graph((2, 11, 45, channels), 3, stride, dilation, padding, 1, "RELU6",
                                          seed=stride)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


def test_depthwise_conv_2d_float_without_bias(native_variant, monkeypatch):
    graph, inputs = float_depthwise_graph((1, 7, 7, 16), 3, 1, 1, "SAME", 1, "RELU", bias=False)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


def test_depthwise_conv_2d_float_prepares_the_native_kernel(native_variant, monkeypatch):
    from edgeq.runtime.kernels import REGISTRY, load_all_kernels

    load_all_kernels()
    monkeypatch.setattr(native, "ENABLED", True)
    graph, _ = float_depthwise_graph((1, 7, 7, 16), 3, 1, 1, "SAME", 1, "RELU6")
    assert REGISTRY["DEPTHWISE_CONV_2D"](graph.ops[0], graph).__name__ == "depthwise_conv_2d_native"


def test_depthwise_conv_2d_float_tanh_stays_on_numpy(native_variant, monkeypatch):
    # TANH is not a clamp: the numpy kernel and its activation run.
    graph, inputs = float_depthwise_graph((1, 7, 7, 8), 3, 1, 1, "SAME", 1, "TANH")
    assert_equal_on_both_paths(graph, inputs, monkeypatch)


def test_depthwise_conv_2d_float_same_on_two_threads(native_variant, monkeypatch):
    monkeypatch.setattr(native, "ENABLED", True)
    graph, inputs = float_depthwise_graph((2, 40, 40, 64), 3, 1, 1, "SAME", 1, "RELU6")
    one = Interpreter.from_graph(graph, num_threads=1).run(inputs)["y"]
    two = Interpreter.from_graph(graph, num_threads=2).run(inputs)["y"]
    assert np.array_equal(one, two)


POOL_CASES = list(itertools.product([2, 3], [1, 2], ["SAME", "VALID"], ["NONE", "RELU"]))


def pool_graph(op_type, k, stride, padding, act, dtype, q=None, channels=3):
    y_shape = (2, output_size(padding, 9, k, stride), output_size(padding, 8, k, stride), channels)
    options = {"padding": padding, "stride_w": stride, "stride_h": stride, "filter_width": k,
               "filter_height": k, "fused_activation_function": act}
    return unary_graph(op_type, (2, 9, 8, channels), y_shape, q, q, options, dtype=dtype)


@pytest.mark.parametrize("k, stride, padding, act", POOL_CASES)
@pytest.mark.parametrize("op_type", ["MAX_POOL_2D", "AVERAGE_POOL_2D"])
def test_pool_float_identical(native_variant, monkeypatch, op_type, k, stride, padding, act):
    graph, inputs = pool_graph(op_type, k, stride, padding, act, np.float32, channels=19)
    assert_equal_on_both_paths(graph, inputs, monkeypatch)


@pytest.mark.parametrize("k, stride, padding, act", POOL_CASES)
def test_average_pool_int8(kernel_path, k, stride, padding, act):
    graph, inputs = pool_graph("AVERAGE_POOL_2D", k, stride, padding, act, np.int8, q=(0.05, 3), channels=5)
    assert_exact(graph, inputs)


def pointwise_conv_graph(x_shape, out_c, act, bias=True, seed=21):
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.float32))
    names = ["x", g.add_constant("w", rng.standard_normal((out_c, 1, 1, x_shape[3])).astype(np.float32))]
    names.append(g.add_constant("b", rng.standard_normal(out_c).astype(np.float32)) if bias else "")
    g.add_tensor(Tensor("y", x_shape[:3] + (out_c,), np.float32))
    g.add_op(Op("CONV_2D", names, ["y"], {"padding": "SAME", "stride_h": 1, "stride_w": 1,
                                           "fused_activation_function": act}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [rng.standard_normal(x_shape).astype(np.float32)]


@pytest.mark.parametrize("act", ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_2d_float_bias_and_activation(native_variant, monkeypatch, act, bias):
    # A 1x1 convolution is the GEMM alone: bias and clamp in its output stage (or the native pass after BLAS).
    graph, inputs = pointwise_conv_graph((2, 6, 5, 12), 37, act, bias)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


@pytest.mark.parametrize("in_c", [1, 16, 33, 200])
@pytest.mark.parametrize("out_c", [1, 15, 16, 17, 31, 32, 33, 70])
def test_pointwise_conv_2d_float_every_tile_and_tail(native_variant, monkeypatch, in_c, out_c):
    # 7 x 9 = 63 pixels: a partial row tile for every micro-kernel height (4, 6, 8).
    graph, inputs = pointwise_conv_graph((1, 7, 9, in_c), out_c, "RELU6", seed=in_c * 100 + out_c)
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


def test_pointwise_conv_2d_float_with_weights_too_large_to_run_row_block_by_row_block(native_variant, monkeypatch):
    # Past 512 KiB of packed weights the GEMM runs panel by panel instead of row block by row block.
    graph, inputs = pointwise_conv_graph((1, 7, 9, 1200), 120, "RELU6")
    assert_equal_on_both_paths(graph, inputs, monkeypatch, rtol=FMA_RTOL)


def test_float_conv_2d_takes_the_native_gemm_with_avx512(monkeypatch):
    if "avx512vnni" not in native.supported_isas():
        pytest.skip("needs AVX-512")
    from edgeq.runtime.kernels import REGISTRY, load_all_kernels

    load_all_kernels()
    monkeypatch.setattr(native, "ENABLED", True)
    monkeypatch.setattr(native, "_isa", "avx512vnni")
    graph, _ = pointwise_conv_graph((1, 7, 9, 64), 40, "RELU6")
    assert REGISTRY["CONV_2D"](graph.ops[0], graph).__name__ == "conv_2d_native"


def test_batch_run_reuses_no_stale_buffer(native_variant, monkeypatch):
    # run() on a batch, then on one sample: each result is its own array, right for its input.
    graph, inputs = float_depthwise_graph((1, 6, 6, 4), 3, 1, 1, "SAME", 1, "NONE")
    monkeypatch.setattr(native, "ENABLED", True)
    interpreter = Interpreter.from_graph(graph)
    batch = np.concatenate([inputs[0], inputs[0] * 2])
    first = interpreter.run(batch)["y"]
    second = interpreter.run(inputs[0])["y"]
    monkeypatch.setattr(native, "ENABLED", False)
    reference = Interpreter.from_graph(graph)
    np.testing.assert_allclose(first, reference.run(batch)["y"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(second, reference.run(inputs[0])["y"], rtol=0, atol=1e-5)


def two_convolution_graph(seed=0):
    """int8 CONV_2D -> CONV_2D: a 64 KB intermediate between a small input and a small output."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add_tensor(Tensor("x", (1, 32, 32, 4), np.int8, quant=QuantParams(0.05, 3)))
    for name, (in_c, out_c) in (("a", (4, 64)), ("y", (64, 2))):
        source = g.inputs[-1] if g.inputs else "x"
        weights = g.add_constant(f"{name}/w", random_int8(rng, (out_c, 1, 1, in_c)).clip(-127, 127),
                                 quant=QuantParams(np.full(out_c, 0.01), np.zeros(out_c), 0))
        bias = g.add_constant(f"{name}/b", np.zeros(out_c, np.int32),
                              quant=QuantParams(np.full(out_c, 0.0005), np.zeros(out_c), 0))
        g.add_tensor(Tensor(name, (1, 32, 32, out_c), np.int8, quant=QuantParams(0.1, -2)))
        g.add_op(Op("CONV_2D", [source, weights, bias], [name], {"padding": "VALID", "stride_w": 1, "stride_h": 1}))
        g.inputs = [name]
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [random_int8(rng, (1, 32, 32, 4))]


def test_the_first_invoke_allocates_no_more_than_a_later_one(native_variant, monkeypatch):
    # allocate_tensors makes (and touches) the output buffers the native kernels reuse: the first invoke
    # does not pay for them. (The numpy kernels' working arrays still grow on first use.)
    import tracemalloc

    monkeypatch.setattr(native, "ENABLED", True)
    graph, inputs = two_convolution_graph()
    interpreter = Interpreter.from_graph(graph)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], inputs[0])
    allocated = []
    tracemalloc.start()
    try:
        for _ in range(2):
            tracemalloc.reset_peak()
            held = tracemalloc.get_traced_memory()[0]
            interpreter.invoke()
            allocated.append(tracemalloc.get_traced_memory()[1] - held)
    finally:
        tracemalloc.stop()
    first, later = allocated
    assert first <= later + 4096, f"the first invoke allocated {first} bytes, the second {later}"


def test_whole_int8_model_identical_on_both_paths(native_variant, monkeypatch):
    import json
    from pathlib import Path

    from edgeq.converter.api import convert

    samples = Path(__file__).resolve().parent.parent / "sample_models"
    entry = next(m for m in json.loads((samples / "manifest.json").read_text())["models"]
                 if m["name"] == "digits_mobilenetv2")
    monkeypatch.setattr(native, "ENABLED", False)
    result = convert(str(samples / entry["file"]), quantize="int8", calibration=str(samples / entry["calib_file"]),
                     num_calibration_samples=16)
    x = np.load(samples / entry["test_file"])[entry["input_name"]][:4].astype(np.float32).transpose(0, 2, 3, 1)
    assert_equal_on_both_paths(result.graph, [np.ascontiguousarray(x)], monkeypatch)


@pytest.mark.parametrize("params", sorted(PARAMS))
@pytest.mark.parametrize("per_channel", [True, False])
def test_fully_connected_int8(kernel_path, params, per_channel):
    graph, inputs = weighted_op("FULLY_CONNECTED", (3, 40), *PARAMS[params], out_c=9, per_channel=per_channel, seed=5)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("k, stride, dilation, padding", list(itertools.product([3, 7], [1, 2], [1, 2], ["SAME", "VALID"])))
def test_conv_2d_float_im2col_and_gemm(native_variant, monkeypatch, k, stride, dilation, padding):
    # the widest filter (7, dilation 2) spans 13
    g, inputs = float_conv_graph((2, 15, 14, 3), 6, k, stride, dilation, padding)
    assert_equal_on_both_paths(g, inputs, monkeypatch, rtol=FMA_RTOL)


def float_conv_graph(x_shape, out_c, k, stride, dilation, padding, seed=11):
    rng = np.random.default_rng(seed)
    n, h, w, in_c = x_shape
    g = Graph()
    g.add_tensor(Tensor("x", x_shape, np.float32))
    names = ["x", g.add_constant("w", rng.standard_normal((out_c, k, k, in_c)).astype(np.float32)),
             g.add_constant("b", rng.standard_normal(out_c).astype(np.float32))]
    y_shape = (n, output_size(padding, h, k, stride, dilation), output_size(padding, w, k, stride, dilation), out_c)
    g.add_tensor(Tensor("y", y_shape, np.float32))
    g.add_op(Op("CONV_2D", names, ["y"], {"padding": padding, "stride_h": stride, "stride_w": stride,
                                           "dilation_h_factor": dilation, "dilation_w_factor": dilation,
                                           "fused_activation_function": "RELU"}))
    g.inputs, g.outputs = ["x"], ["y"]
    return g, [rng.standard_normal(x_shape).astype(np.float32)]


@pytest.mark.parametrize("stride, padding", list(itertools.product([1, 2], ["SAME", "VALID"])))
def test_conv_2d_float_im2col_a_band_of_pixels_at_a_time(native_variant, monkeypatch, stride, padding):
    # Patches of 3 * 3 * 8 floats: bands of 336 output pixels, so 2 x 40 x 36 pixels make several bands
    # (one crossing from the first image into the second) and a partial last one.
    g, inputs = float_conv_graph((2, 40, 36, 8), 40, 3, stride, 1, padding, seed=stride)
    assert_equal_on_both_paths(g, inputs, monkeypatch, rtol=FMA_RTOL)


def test_float_conv_2d_3x3_takes_the_native_banded_im2col_with_avx512(monkeypatch):
    if "avx512vnni" not in native.supported_isas():
        pytest.skip("needs AVX-512")
    from edgeq.runtime.kernels import REGISTRY, load_all_kernels

    load_all_kernels()
    monkeypatch.setattr(native, "ENABLED", True)
    monkeypatch.setattr(native, "_isa", "avx512vnni")
    graph, _ = float_conv_graph((1, 9, 9, 16), 24, 3, 1, 1, "SAME")
    assert REGISTRY["CONV_2D"](graph.ops[0], graph).__name__ == "conv_2d_banded_native"


@pytest.mark.parametrize("out_dtype, q_out", [(np.int8, (0.0123, -128)), (np.uint8, (0.1, 128)),
                                               (np.int16, (0.001, 0)), (np.int8, (0.5, 3))])
def test_quantize_float(kernel_path, out_dtype, q_out):
    rng = np.random.default_rng(12)
    x = np.concatenate([(rng.standard_normal(500) * 4), np.arange(-260, 260) * q_out[0] / 2,
                        [np.float32(0.49999997) * q_out[0], -np.float32(0.49999997) * q_out[0]]]).astype(np.float32)
    g = Graph()
    g.add_tensor(Tensor("x", (1, x.size), np.float32))
    from edgeq.runtime.ir import QuantParams

    g.add_tensor(Tensor("y", (1, x.size), out_dtype, quant=QuantParams(*q_out)))
    g.add_op(Op("QUANTIZE", ["x"], ["y"], {}))
    g.inputs, g.outputs = ["x"], ["y"]
    assert_exact(g, [x[None]])


@pytest.mark.parametrize("zero_point", [3, -128, 127])
def test_quantize_of_nan_infinities_and_floats_beyond_int32(kernel_path, zero_point):
    # The reference kernel casts to int32 as x86-64 does (INT32_MIN for these) and adds the zero point
    # wrapping in int32: every path, on every machine, must give those integers, not the CPU's own cast
    # (ARM's saturates, and NaN gives 0 there).
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 1e19, -1e19, 3e38, 0.5, -2.0], np.float32) * np.float32(0.1)
    graph, _ = unary_graph("QUANTIZE", (1, x.size), (1, x.size), None, (0.1, zero_point), dtype=np.float32,
                           options={"_out_dtype": np.int8})
    with np.errstate(all="ignore"):
        mismatches = mismatches_in_every_tensor(graph, [x[None]])
    assert mismatches["y"] == 0, mismatches  # (x holds NaN, unequal to itself)


# -- the folded per-channel requantization and the exact float32 GEMM pieces ---------------------------

def test_folded_requantization_equals_fixedpoint():
    from edgeq.runtime.fixedpoint import quantize_multiplier
    from edgeq.runtime.kernels.requantize import fold_requantization, folded_requantizer

    rng = np.random.default_rng(8)
    checked = 0
    for trial in range(200):
        channels = 11
        multipliers, shifts = quantize_multiplier(np.exp(rng.uniform(np.log(1e-9), np.log(30), channels)))
        bound = int(rng.choice([100, 5000, 1 << 20, 1 << 26]))
        constant_term = rng.integers(-bound, bound, channels)
        offset = int(rng.integers(-128, 128))
        acc = rng.integers(-bound, bound + 1, (257, channels))
        folded = fold_requantization(constant_term, multipliers, shifts, offset, bound)
        if folded is None:
            continue
        checked += 1
        expected = multiply_by_quantized_multiplier(acc + constant_term, multipliers, shifts).astype(np.int64) + offset
        wide = np.empty(acc.shape, np.int64)
        folded_requantizer(folded, -(1 << 40), 1 << 40)(acc.astype(np.float64), wide)
        assert np.array_equal(wide, expected), trial
    assert checked > 50
    # Every tie of a small shift, where the two roundings of the double-rounding form show.
    acc = np.arange(-70000, 70000).reshape(-1, 1)
    for shift in range(-12, 3):
        for multiplier in (1 << 30, (1 << 31) - 1, 1518500250, (1 << 30) | 1):
            folded = fold_requantization([0], [multiplier], [shift], 5, 70000)
            expected = np.clip(multiply_by_quantized_multiplier(acc, multiplier, shift).astype(np.int64) + 5, -128, 127)
            got = np.empty(acc.shape, np.int8)
            folded_requantizer(folded, -128, 127)(acc.astype(np.float32), got)
            assert np.array_equal(got, expected), (shift, multiplier)


def test_exact_float32_chunks_bound_every_channel():
    from edgeq.runtime.kernels.requantize import FLOAT32_EXACT_LIMIT, exact_float32_chunks

    weights = np.random.default_rng(9).integers(-127, 128, (64, 4608))
    chunks = exact_float32_chunks(weights, 128)
    assert len(chunks) > 1 and chunks[0].start == 0 and chunks[-1].stop == 4608
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    for chunk in chunks:
        assert (np.abs(weights[:, chunk]).sum(axis=1) * 128).max() < FLOAT32_EXACT_LIMIT
    assert exact_float32_chunks(weights[:, :1000], 128) == [slice(0, 1000)]


def test_exact_float32_chunks_of_a_huge_layer_bound_every_channel_from_column_maxima(monkeypatch):
    from edgeq.runtime.kernels import requantize

    monkeypatch.setattr(requantize, "EXACT_CHUNKING_MAX_WEIGHTS", 1000)  # as if the layer were huge
    weights = np.random.default_rng(9).integers(-127, 128, (64, 4608))
    chunks = requantize.exact_float32_chunks(weights, 128)
    assert chunks[0].start == 0 and chunks[-1].stop == 4608
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    for chunk in chunks:
        assert (np.abs(weights[:, chunk]).sum(axis=1) * 128).max() < requantize.FLOAT32_EXACT_LIMIT


# -- a PAD folded into the convolution that reads it (Interpreter._fold_pads) ------------------------

def padded_conv_graph(op_type, pads, dtype, stride=2, k=3, seed=13):
    """PAD (x0 -> x) then a VALID ``op_type`` on x: int8 from weighted_op, float with random weights."""
    (top, bottom), (left, right) = pads
    x_shape = (2, 9 + top + bottom, 8 + left + right, 4)
    if dtype == np.int8:
        graph, _ = weighted_op(op_type, x_shape, *PARAMS["typical"], k=k, stride=stride, padding="VALID",
                               out_c=4 if op_type == "DEPTHWISE_CONV_2D" else 6, act="RELU6", seed=seed)
    else:
        graph = float_depthwise_graph(x_shape, k, stride, 1, "VALID", 1, "RELU6", seed=seed)[0]
        if op_type == "CONV_2D":
            rng = np.random.default_rng(seed)
            graph.tensors["w"] = Tensor("w", (6, k, k, 4), np.float32, rng.standard_normal((6, k, k, 4)).astype(np.float32))
            graph.tensors["b"] = Tensor("b", (6,), np.float32, rng.standard_normal(6).astype(np.float32))
            y = graph.tensors["y"]
            graph.tensors["y"] = Tensor("y", y.shape[:3] + (6,), np.float32)
            options = {key: value for key, value in graph.ops[0].options.items() if key != "depth_multiplier"}
            graph.ops[0] = Op("CONV_2D", graph.ops[0].inputs, ["y"], options)
    source = graph.tensors["x"]
    graph.add_tensor(Tensor("x0", (2, 9, 8, 4), source.dtype, quant=source.quant))
    graph.add_constant("paddings", np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
    graph.ops.insert(0, Op("PAD", ["x0", "paddings"], ["x"], {}))
    graph.inputs = ["x0"]
    rng = np.random.default_rng(seed + 1)
    x = random_int8(rng, (2, 9, 8, 4)) if dtype == np.int8 else rng.standard_normal((2, 9, 8, 4)).astype(np.float32)
    return graph, x


@pytest.mark.parametrize("op_type", ["CONV_2D", "DEPTHWISE_CONV_2D"])
@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 2), (1, 0)), ((2, 1), (0, 0))])
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
def test_pad_folded_into_convolution(kernel_path, op_type, pads, dtype):
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph, x = padded_conv_graph(op_type, pads, dtype)
    content = write_tflite(graph)
    folded = Interpreter(model_content=content)
    folded.allocate_tensors()
    assert len(folded._invoke_steps) == 1  # the PAD runs inside the convolution
    as_written = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    results = []
    for interpreter in (folded, as_written):
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert np.array_equal(results[0], results[1])
    if dtype == np.int8:  # and equal to LiteRT's reference kernels running the PAD
        from edgeq.testing import litert

        theirs = litert.Interpreter(model_content=content, num_threads=1,
                                    experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
        theirs.allocate_tensors()
        theirs.set_tensor(theirs.get_input_details()[0]["index"], x)
        theirs.invoke()
        assert np.array_equal(theirs.get_tensor(theirs.get_output_details()[0]["index"]), results[0])


def padded_float_island_graph(op_type, pads, zero_point=-128):
    """int8 x0 -> PAD -> DEQUANTIZE -> VALID float ``op_type``: the edge of a float island."""
    graph, _ = padded_conv_graph(op_type, pads, np.float32)
    graph.tensors["x0"] = Tensor("x0", graph["x0"].shape, np.int8, quant=QuantParams(0.05, zero_point))
    x = graph["x"]
    graph.tensors["x"] = Tensor("x", x.shape, np.int8, quant=QuantParams(0.05, zero_point))
    graph.add_tensor(Tensor("x_float", x.shape, np.float32))
    conv = graph.ops[1]
    graph.ops[1] = Op(conv.type, ["x_float"] + conv.inputs[1:], conv.outputs, conv.options)
    graph.ops.insert(1, Op("DEQUANTIZE", ["x"], ["x_float"], {}))
    return graph, random_int8(np.random.default_rng(21), graph["x0"].shape)


@pytest.mark.parametrize("op_type", ["CONV_2D", "DEPTHWISE_CONV_2D"])
@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 2), (1, 0))])
@pytest.mark.parametrize("zero_point", [-128, 7])
def test_pad_folded_through_a_dequantize_into_a_float_convolution(kernel_path, op_type, pads, zero_point):
    from edgeq.runtime.tflite_format.writer import write_tflite
    from edgeq.testing import litert

    graph, x = padded_float_island_graph(op_type, pads, zero_point)
    content = write_tflite(graph)
    folded = Interpreter(model_content=content)
    folded.allocate_tensors()
    assert [op.type for op in folded._invoke_ops] == ["DEQUANTIZE", op_type]  # no PAD: the convolution pads
    as_written = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    theirs = litert.Interpreter(model_content=content, num_threads=1,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    results = []
    for interpreter in (folded, as_written, theirs):
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert np.array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], results[2], rtol=1e-5, atol=1e-5)


def test_pad_with_another_quantization_than_its_input_is_not_folded_through_a_dequantize(kernel_path):
    graph, x = padded_float_island_graph("DEPTHWISE_CONV_2D", ((1, 1), (1, 1)))
    graph.tensors["x"] = Tensor("x", graph["x"].shape, np.int8, quant=QuantParams(0.05, 3))
    interpreter = Interpreter.from_graph(graph)
    interpreter.allocate_tensors()
    assert [op.type for op in interpreter._invoke_ops] == ["PAD", "DEQUANTIZE", "DEPTHWISE_CONV_2D"]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.int8])
def test_pad_folded_into_a_pointwise_convolution_grows_its_output(kernel_path, stride, dtype):
    # Bottom/right-only padding leaves the top-left corner unpadded, yet the output outgrows the
    # strided input: the 1x1 shortcut that reads the input as the GEMM operand must not be taken.
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph, x = padded_conv_graph("CONV_2D", ((0, 1), (0, 1)), dtype, stride=stride, k=1)
    content = write_tflite(graph)
    outputs = []
    for preserve in (False, True):  # folded, and as written
        interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=preserve)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    assert outputs[0].shape == graph["y"].shape
    assert np.array_equal(outputs[0], outputs[1])


def float_add_graph(shape, act, seed=31):
    rng = np.random.default_rng(seed)
    g = Graph()
    for name in ("a", "b", "y"):
        g.add_tensor(Tensor(name, shape, np.float32))
    g.add_op(Op("ADD", ["a", "b"], ["y"], {"fused_activation_function": act}))
    g.inputs, g.outputs = ["a", "b"], ["y"]
    a, b = (rng.standard_normal(shape).astype(np.float32) * 4 for _ in range(2))
    a.flat[:3] = [np.inf, -np.inf, -0.0]
    return g, [a, b]


@pytest.mark.parametrize("act", ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"])
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 56, 56, 64)])
def test_add_float_same_shape_identical(native_variant, monkeypatch, act, shape):
    graph, inputs = float_add_graph(shape, act)
    assert_equal_on_both_paths(graph, inputs, monkeypatch)
