"""The native int8 kernels (edgeq.runtime.native): every variant this machine runs gives LiteRT's
BUILTIN_REF integers on random shapes (odd depths and channel counts, edge zero points, per-tensor
and per-channel scales, every fused activation); threads change nothing; without the extension, or
with EDGEQ_NO_NATIVE=1, the numpy kernels run and say so once; EDGEQ_NATIVE_ISA forces a variant.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.kernels import REGISTRY, load_all_kernels
from edgeq.runtime.padding import output_size

pytest.importorskip("ai_edge_litert")

from edgeq.testing.int8_graphs import BINARY_CASES, PARAMS, binary_graph, unary_graph, weighted_op  # noqa: E402
from edgeq.testing.referees import assert_exact  # noqa: E402

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.describe()}")
ACTIVATIONS = ["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]
# (input scale, zero point), (output scale, zero point): the int8 range's ends and the middle.
EDGE_PARAMS = {
    "input_zero_point_min": ((0.03, -128), (0.1, 4)),
    "input_zero_point_max": ((0.03, 127), (0.05, -128)),
    "output_zero_point_max": ((0.2, 0), (0.5, 127)),
}


@pytest.fixture(params=native.supported_isas() or ["none"])
def native_isa(request, monkeypatch):
    """Kernels prepared inside the test run on one native variant (each the machine has)."""
    if request.param == "none":
        pytest.skip(f"no native kernels: {native.describe()}")
    monkeypatch.setattr(native, "ENABLED", True)
    monkeypatch.setattr(native, "_isa", request.param)
    return request.param


def prepared_kernel_name(graph) -> str:
    load_all_kernels()
    op = graph.ops[0]
    return REGISTRY[op.type](op, graph).__name__


def test_native_path_is_what_int8_convolutions_prepare(native_isa):
    for op_type, x_shape in (("CONV_2D", (1, 6, 6, 3)), ("DEPTHWISE_CONV_2D", (1, 6, 6, 3)),
                             ("FULLY_CONNECTED", (2, 10))):
        graph, _ = weighted_op(op_type, x_shape, (0.05, 3), (0.2, -5), out_c=3)
        assert prepared_kernel_name(graph).endswith("_native"), op_type


# Variants with a tap-pair kernel for depthwise convolutions of depth multiplier 1 (dwconv_pairs.c).
PAIR_DEPTHWISE_VARIANTS = {"avx2", "avxvnni", "avx512vnni", "neon", "neon-dotprod"}


def test_depthwise_of_multiplier_one_prepares_the_tap_pair_kernel_where_the_variant_has_one(native_isa):
    graph, _ = weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 24), (0.05, 3), (0.2, -5), out_c=24)
    uses_pairs = prepared_kernel_name(graph) == "depthwise_conv_2d_int8_pairs_native"
    assert uses_pairs == (native_isa in PAIR_DEPTHWISE_VARIANTS)


def test_depthwise_of_the_largest_pair_products_is_exact(native_isa):
    # x = -128 against weights of -127 everywhere: the largest sum of two products NEON's kernel keeps in int16.
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 20), (0.05, 0), (2.0, 0), k=3, out_c=20, seed=5)
    graph.tensors["w"].data[...] = -127
    inputs[0][...] = -128
    assert_exact(graph, inputs)


def test_depthwise_with_a_weight_of_minus_128_is_exact(native_isa):
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 20), (0.05, -128), (2.0, 0), k=3, out_c=20, seed=6)
    graph.tensors["w"].data[0, 1, 1, ::3] = -128
    inputs[0][..., ::2] = -128
    assert_exact(graph, inputs)


@pytest.mark.parametrize("depth, out_c", [(1, 1), (3, 7), (5, 16), (17, 17), (33, 31), (64, 33), (100, 65)])
@pytest.mark.parametrize("rows", [1, 5])
def test_fully_connected_odd_shapes(native_isa, depth, out_c, rows):
    graph, inputs = weighted_op("FULLY_CONNECTED", (rows, depth), (0.05, 3), (0.2, -5), out_c=out_c,
                                seed=depth * 100 + out_c)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("depth", [36, 40])  # an odd and an even number of 4-deep groups
@pytest.mark.parametrize("rows", list(range(1, 18)) + [49])
def test_rows_past_the_last_whole_tile(native_isa, depth, rows):
    graph, inputs = weighted_op("FULLY_CONNECTED", (rows, depth), (0.05, 3), (0.2, -5), out_c=40, seed=rows)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("params", sorted(EDGE_PARAMS))
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_fully_connected_zero_points_activations_scales(native_isa, params, act, per_channel):
    graph, inputs = weighted_op("FULLY_CONNECTED", (3, 21), *EDGE_PARAMS[params], out_c=19, act=act,
                                per_channel=per_channel, seed=7)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("in_c, out_c", [(1, 5), (3, 17), (7, 33), (20, 40)])
@pytest.mark.parametrize("k, stride, padding", [(1, 1, "VALID"), (1, 2, "SAME"), (3, 1, "SAME"), (3, 2, "VALID"),
                                                (5, 2, "SAME")])
def test_conv_2d_odd_shapes(native_isa, in_c, out_c, k, stride, padding):
    graph, inputs = weighted_op("CONV_2D", (2, 9, 11, in_c), (0.05, 3), (0.2, -5), k=k, stride=stride,
                                padding=padding, out_c=out_c, seed=in_c * 10 + k)
    assert_exact(graph, inputs)


@pytest.fixture
def without_amx():
    """Convolutions prepared and run inside the test use the variant's own tiles, not AMX."""
    was_on = native.amx()
    native.use_amx(False)
    yield
    native.use_amx(was_on)


@pytest.mark.parametrize("in_c, out_c", [(3, 17), (20, 40)])
@pytest.mark.parametrize("k, stride, padding", [(1, 1, "VALID"), (3, 1, "SAME"), (5, 2, "SAME")])
def test_conv_2d_without_amx(native_isa, without_amx, in_c, out_c, k, stride, padding):
    graph, inputs = weighted_op("CONV_2D", (2, 9, 11, in_c), (0.05, 3), (0.2, -5), k=k, stride=stride,
                                padding=padding, out_c=out_c, seed=in_c * 10 + k)
    assert_exact(graph, inputs)


def _random_conv(rng, image, in_c, out_c, k, stride):
    """(geometry, x, packed weights, output stage) of a random int8 convolution with SAME-like padding."""
    from edgeq.runtime.kernels.native_int8 import _shifted_folded_stage, _weight_sums
    from edgeq.runtime.kernels.requantize import fold_requantization

    pad, out_hw = k // 2, (image + 2 * (k // 2) - k) // stride + 1
    x = rng.integers(-128, 128, (1, image, image, in_c), dtype=np.int8)
    weights = rng.integers(-127, 128, (out_c, k * k * in_c), dtype=np.int8)
    weight_sums, abs_sums = _weight_sums(weights)
    constant_term = 128 * weight_sums + rng.integers(-5000, 5000, out_c)
    folded = fold_requantization(constant_term, rng.integers(1 << 30, (1 << 31) - 1, out_c),
                                 rng.integers(-11, -7, out_c), -3, 128 * int(abs_sums.max()))
    stage = _shifted_folded_stage(folded, weight_sums, native.input_shift("avx512vnni"), -128, 127)
    geometry = native.conv_geometry(batch=1, in_h=image, in_w=image, in_c=in_c, out_h=out_hw, out_w=out_hw,
                                    out_c=out_c, k_h=k, k_w=k, stride_h=stride, stride_w=stride, dil_h=1, dil_w=1,
                                    pad_top=pad, pad_left=pad, input_zero_point=-128)
    return geometry, x, native.pack_weights(weights), stage, (1, out_hw, out_hw, out_c)


@needs_native
@pytest.mark.parametrize("image, in_c, out_c, k, stride", [
    (56, 64, 64, 1, 1), (14, 64, 40, 3, 1), (7, 512, 48, 3, 1), (33, 3, 17, 7, 2), (9, 100, 96, 1, 1)])
def test_amx_tiles_give_the_integers_of_the_vnni_tiles(image, in_c, out_c, k, stride):
    """Depths that are and are not multiples of the 64-byte AMX step, row counts around 32, columns
    around the 32-column panel."""
    if "avx512vnni" not in native.supported_isas() or not native.use_amx(True):
        pytest.skip("no AMX tiles here")
    geometry, x, packed, stage, shape = _random_conv(np.random.default_rng(image * in_c + k), image, in_c, out_c, k,
                                                     stride)
    with_amx = native.conv("avx512vnni", geometry, x, packed, stage, np.empty(shape, np.int8))
    native.use_amx(False)
    try:
        without = native.conv("avx512vnni", geometry, x, packed, stage, np.empty(shape, np.int8))
    finally:
        native.use_amx(True)
    assert np.array_equal(with_amx, without)


@pytest.mark.parametrize("params", sorted(EDGE_PARAMS))
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_conv_2d_zero_points_activations_scales(native_isa, params, act, per_channel):
    # SAME padding: the padded taps hold the input zero point, the edge values among them.
    graph, inputs = weighted_op("CONV_2D", (1, 7, 6, 5), *EDGE_PARAMS[params], k=3, dilation=2, out_c=11, act=act,
                                per_channel=per_channel, seed=8)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("params", sorted(PARAMS))
@pytest.mark.parametrize("op_type", ["CONV_2D", "DEPTHWISE_CONV_2D"])
def test_requantization_multipliers_below_and_above_one(native_isa, params, op_type):
    # "saturating" makes the multipliers exceed one: their folded form passes int32, the output
    # stage's wide path; 40 channels run a full 16-column group and a partial one.
    graph, inputs = weighted_op(op_type, (1, 6, 7, 40), *PARAMS[params], k=3, out_c=40, seed=15)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("params", sorted(EDGE_PARAMS))
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_2d_zero_points_activations_multiplier(native_isa, params, act, multiplier):
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (2, 8, 7, 5), *EDGE_PARAMS[params], k=3, stride=2,
                                out_c=5 * multiplier, act=act, seed=9)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("channels", [1, 5, 16, 17, 33, 71])
@pytest.mark.parametrize("k, stride, dilation, padding", [(1, 1, 1, "VALID"), (3, 1, 1, "SAME"), (3, 2, 1, "SAME"),
                                                          (3, 1, 2, "SAME"), (5, 2, 1, "VALID"), (5, 1, 1, "SAME")])
def test_depthwise_conv_2d_odd_shapes(native_isa, channels, k, stride, dilation, padding):
    # Channel counts around the 16- and 32-channel blocks; odd and even tap counts; taps in the padding.
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (2, 9, 8, channels), (0.05, 3), (0.2, -5), k=k, stride=stride,
                                dilation=dilation, padding=padding, out_c=channels, seed=channels * 10 + k)
    assert_exact(graph, inputs)


def depthwise_3x3(x_shape, in_q, out_q, stride_h, stride_w, padding, act="NONE", seed=0):
    """A 3x3 DEPTHWISE_CONV_2D of depth multiplier 1, its vertical and horizontal strides apart."""
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", x_shape, in_q, out_q, k=3, stride=stride_w, padding=padding,
                                out_c=x_shape[-1], act=act, seed=seed)
    graph.ops[0].options["stride_h"] = stride_h
    n, h, _, _ = x_shape
    y = graph.tensors["y"]
    y.shape = (n, output_size(padding, h, 3, stride_h, 1)) + tuple(y.shape[2:])
    return graph, inputs


# The 3x3 row kernel takes 32 channels at a time (AVX512-VNNI) or 16 (AVX2, AVX-VNNI), horizontal strides
# 1 and 2 under any vertical one: channel tails, outputs one pixel wide and wider, padding on every side.
@pytest.mark.parametrize("channels", [1, 31, 32, 33, 64, 103])
@pytest.mark.parametrize("stride_h, stride_w, padding, height, width", [
    (1, 1, "SAME", 7, 9), (2, 2, "SAME", 9, 8), (2, 2, "SAME", 8, 9), (1, 2, "VALID", 6, 11), (2, 1, "SAME", 5, 3),
    (1, 1, "VALID", 3, 3), (2, 2, "VALID", 4, 5), (3, 1, "SAME", 7, 1)])
def test_depthwise_3x3_strides_paddings_and_channel_tails(native_isa, channels, stride_h, stride_w, padding, height,
                                                          width):
    graph, inputs = depthwise_3x3((2, height, width, channels), (0.05, 3), (0.2, -5), stride_h, stride_w, padding,
                                  seed=channels + 7 * width)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("input_zero_point", [-128, -1, 0, 77, 127])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_3x3_zero_points_with_extreme_weights_and_relu6(native_isa, input_zero_point, stride):
    # Padding reads the zero point, whose products the bias takes back: exact at both ends of the int8 range.
    graph, inputs = depthwise_3x3((1, 10, 11, 45), (0.03, input_zero_point), (0.05, -20), stride, stride, "SAME",
                                  act="RELU6", seed=input_zero_point + 300)
    weights = graph.tensors["w"].data
    weights[..., ::3] = 127
    weights[..., 1::3] = -127
    inputs[0][..., ::4] = -128
    inputs[0][..., 1::4] = 127
    assert_exact(graph, inputs)


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
@pytest.mark.parametrize("act", ["NONE", "RELU6"])
def test_add_sub_quantization_cases(native_isa, case, op_type, act):
    shape_1, shape_2, q1, q2, qo, _ = BINARY_CASES[case]
    graph, inputs = binary_graph(op_type, shape_1, shape_2, q1, q2, qo, act, seed=11)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("count", [1, 7, 8, 15, 16, 17, 33, 1000])
def test_add_lengths_around_the_vector_width(native_isa, count):
    graph, inputs = binary_graph("ADD", (1, count), (1, count), (0.05, 3), (0.07, -10), (0.1, -4), "RELU", seed=count)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("input_params, output_params", [((0.05, 3), (0.1, -4)), ((0.5, -128), (0.002, 127)),
                                                         ((0.01, 127), (3.0, 0)), ((0.02, 0), (0.0200001, 0))])
def test_add_scales_and_zero_points(native_isa, input_params, output_params):
    graph, inputs = binary_graph("ADD", (3, 67), (3, 67), input_params, (0.03, -7), output_params, "NONE", seed=12)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("op_type", ["ADD", "SUB"])
@pytest.mark.parametrize("case", ["same_shape", "saturating", "tiny_output_scale"])
def test_large_add_sub_read_from_the_pair_table(native_isa, op_type, case):
    # Past elementwise.PAIR_TABLE_MIN_VALUES every output comes from the 64 KB table of input pairs.
    _, _, q1, q2, qo, _ = BINARY_CASES[case]
    graph, inputs = binary_graph(op_type, (1, 130, 131, 1), (1, 130, 131, 1), q1, q2, qo, "RELU6", seed=16)
    assert_exact(graph, inputs)


def test_pair_table_lookup_equals_the_direct_kernel(native_isa):
    rng = np.random.default_rng(17)
    a, b = (rng.integers(-128, 128, 5003).astype(np.int8) for _ in range(2))
    for subtract in (0, 1):
        params = native.AddParams(5, -3, 20, 1500000000, -1, 1200000000, -2, 1800000000, -19, 4, -100, 120, subtract)
        direct = native.add_int8(native_isa, params, a, b, np.empty_like(a))
        table = native.pair_table(native_isa, params)
        assert np.array_equal(native.lookup_pairs_int8(native_isa, table, a, b, np.empty_like(a)), direct)


@pytest.mark.parametrize("channels", [1, 5, 31, 32, 33, 64, 65, 130])
@pytest.mark.parametrize("k, stride, padding", [(2, 2, "VALID"), (3, 2, "SAME"), (3, 1, "SAME"), (1, 1, "VALID")])
def test_max_pool_channels_around_the_vector_width(native_isa, channels, k, stride, padding):
    options = {"padding": padding, "stride_w": stride, "stride_h": stride, "filter_width": k, "filter_height": k,
               "fused_activation_function": "RELU6"}
    in_shape = (2, 7, 9, channels)
    out_shape = (2, output_size(padding, 7, k, stride), output_size(padding, 9, k, stride), channels)
    graph, inputs = unary_graph("MAX_POOL_2D", in_shape, out_shape, (0.05, -3), (0.05, -3), options=options,
                                seed=channels)
    assert_exact(graph, inputs)


@pytest.mark.parametrize("scale, zero_point", [(0.05, 3), (0.37, -128), (0.01, 127), (1.0, 0)])
def test_quantize_float_to_int8(native_isa, scale, zero_point):
    graph, _ = unary_graph("QUANTIZE", (2, 57), (2, 57), None, (scale, zero_point), dtype=np.float32)
    graph["y"].dtype = np.int8
    values = np.random.default_rng(13).standard_normal((2, 57)).astype(np.float32) * 3
    # ties of the rounding, both signs, and values far outside the int8 range
    values[0, :12] = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 1e9, -1e9, 0.0, -0.0, 300.0, -300.0]) * scale
    assert_exact(graph, [values])


@pytest.mark.parametrize("scale, zero_point", [(0.05, 3), (0.37, -128), (0.01, 127)])
def test_dequantize_int8_to_float(native_isa, scale, zero_point):
    graph, inputs = unary_graph("DEQUANTIZE", (3, 41), (3, 41), (scale, zero_point), None,
                                options={"_out_dtype": np.float32}, seed=14)
    assert_exact(graph, inputs)


def test_native_quantize_matches_the_c_conversion_of_nan_and_infinities(native_isa):
    # x86-64 turns NaN and values beyond int64 into INT64_MIN, and the zero point wraps it: the
    # vector forms must give what the scalar C gives, for every variant.
    values = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e18, -3e18, 2.5] * 5, np.float32)
    for zero_point in (-128, -5, 0, 127):
        expected = native.quantize_int8(values, 1.0, zero_point, -128, 127, np.empty(values.size, np.int8),
                                        "portable")
        actual = native.quantize_int8(values, 1.0, zero_point, -128, 127, np.empty(values.size, np.int8),
                                      native_isa)
        assert np.array_equal(actual, expected), zero_point


@pytest.mark.parametrize("op_type, x_shape, out_c", [("CONV_2D", (2, 33, 31, 32), 40),
                                                     ("DEPTHWISE_CONV_2D", (2, 40, 40, 64), 64),
                                                     ("DEPTHWISE_CONV_2D", (1, 41, 43, 71), 71),
                                                     ("FULLY_CONNECTED", (1, 4000), 700)])
def test_threads_give_the_same_integers(native_isa, op_type, x_shape, out_c):
    # Large enough that the kernels split the work (rows, or columns for one FULLY_CONNECTED row).
    graph, inputs = weighted_op(op_type, x_shape, (0.05, 3), (0.2, -5), k=3, out_c=out_c, seed=10)
    single = Interpreter.from_graph(graph, num_threads=1).run(inputs)
    threaded = Interpreter.from_graph(graph, num_threads=3).run(inputs)
    assert np.array_equal(single["y"], threaded["y"])


@needs_native
def test_interpreter_threads_bound_the_native_threads_while_it_runs():
    graph, inputs = weighted_op("CONV_2D", (1, 5, 5, 3), (0.05, 3), (0.2, -5), out_c=3)
    interpreter = Interpreter.from_graph(graph, num_threads=2)
    before = native.threads()
    with interpreter._thread_limit():
        assert native.threads() == 2
    assert native.threads() == before


def test_interpreter_threads_cap_numpy_blas_while_it_runs():
    from edgeq.runtime import threads

    controls = threads.blas_controls()
    if not controls:
        pytest.skip("numpy's BLAS here exposes no thread control")
    saved = [control.get() for control in controls]
    try:
        for control in controls:
            control.set(2)
        graph, _ = weighted_op("CONV_2D", (1, 5, 5, 3), (0.05, 3), (0.2, -5), out_c=3)
        interpreter = Interpreter.from_graph(graph, num_threads=1)
        with interpreter._thread_limit():
            assert [control.get() for control in controls] == [1] * len(controls)
        assert [control.get() for control in controls] == [2] * len(controls)
    finally:
        for control, count in zip(controls, saved):
            control.set(count)


def _python(code: str, **environment) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEQ_")}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


PREPARE_TWO_CONVOLUTIONS = """
from edgeq.testing.int8_graphs import weighted_op
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime import native
for seed in (1, 2):
    graph, inputs = weighted_op("CONV_2D", (1, 5, 5, 3), (0.05, 3), (0.2, -5), out_c=3, seed=seed)
    Interpreter.from_graph(graph).run(inputs)
print(native.describe())
"""


def test_no_native_environment_runs_numpy_and_says_so_once():
    result = _python(PREPARE_TWO_CONVOLUTIONS, EDGEQ_NO_NATIVE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy int8 kernels (native: disabled by EDGEQ_NO_NATIVE)"
    assert result.stderr.count("native int8 kernels off") == 1, result.stderr


@needs_native
def test_no_amx_environment_keeps_convolutions_off_the_amx_tiles():
    result = _python("from edgeq.runtime import native; print(native.amx())", EDGEQ_NO_AMX="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@needs_native
def test_native_isa_environment_forces_a_lower_variant():
    result = _python(PREPARE_TWO_CONVOLUTIONS, EDGEQ_NATIVE_ISA="portable")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "native int8 kernels (portable)"


@needs_native
def test_describe_names_the_best_variant_by_default():
    result = _python(PREPARE_TWO_CONVOLUTIONS)
    assert result.stdout.strip() == f"native int8 kernels ({native.best_isa()})"
    assert result.stderr == ""


@needs_native
def test_packed_weights_are_the_only_weight_copy_the_native_conv_keeps(native_isa):
    graph, _ = weighted_op("CONV_2D", (1, 9, 9, 16), (0.05, 3), (0.2, -5), k=3, out_c=24)
    load_all_kernels()
    op = graph.ops[0]
    evaluate = REGISTRY[op.type](op, graph)
    arrays = [cell.cell_contents for cell in evaluate.__closure__ if isinstance(cell.cell_contents, np.ndarray)]
    assert [a.dtype for a in arrays] == [np.int8]  # the packed weights; no float32 GEMM operand


@needs_native
def test_int8_and_float_models_run_without_loading_numba_or_llvm():
    # One compiled path: the native library. Even where numba is installed, no kernel imports it.
    code = """
import sys
import numpy as np
from edgeq.testing.int8_graphs import weighted_op
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, Tensor
for op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
    x_shape = (1, 6, 6, 4) if op_type != "FULLY_CONNECTED" else (2, 8)
    graph, inputs = weighted_op(op_type, x_shape, (0.05, 3), (0.2, -5), out_c=4)
    Interpreter.from_graph(graph).run(inputs)
for op_type, w_shape in (("CONV_2D", (4, 3, 3, 4)), ("DEPTHWISE_CONV_2D", (1, 3, 3, 4))):
    graph = Graph()
    graph.add_tensor(Tensor("x", (1, 6, 6, 4), np.float32))
    graph.add_constant("w", np.ones(w_shape, np.float32))
    graph.add_tensor(Tensor("y", (1, 6, 6, 4), np.float32))
    graph.add_op(Op(op_type, ["x", "w", ""], ["y"], {"padding": "SAME", "fused_activation_function": "RELU6"}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    Interpreter.from_graph(graph).run([np.ones((1, 6, 6, 4), np.float32)])
print(sorted(name for name in ("numba", "llvmlite") if name in sys.modules))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@needs_native
def test_read_only_inputs_run_the_native_kernels_too(native_isa):
    # Kernels read array addresses through the buffer protocol, which read-only arrays refuse.
    graph, inputs = weighted_op("CONV_2D", (1, 6, 6, 4), (0.05, 3), (0.2, -5), out_c=4)
    load_all_kernels()
    evaluate = REGISTRY["CONV_2D"](graph.ops[0], graph)
    expected = evaluate(inputs[0]).copy()
    frozen = inputs[0].copy()
    frozen.setflags(write=False)
    assert np.array_equal(evaluate(frozen), expected)
