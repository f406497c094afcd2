"""A file holding an op the runtime's kernels cannot run is refused when it is loaded, with the op
named, and never later inside allocate_tensors or invoke: the validator runs every check a kernel
declares next to it (``runtime.kernels.check``), and its shape rules refuse what the kernels' shape
arithmetic would refuse.

Each case is written with ``write_tflite`` and loaded with ``Interpreter(model_content=...)`` alone:
the refusal must come from the constructor, and name the op by its position and type (a file keeps
no op names).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing import tflite_mutations as fuzz

CONV = {"padding": "SAME", "stride_w": 1, "stride_h": 1, "dilation_w_factor": 1, "dilation_h_factor": 1,
        "fused_activation_function": "NONE"}
INT8_PARAMS = QuantParams(0.05, 0)


def weights(shape, dtype=np.float32, seed=0):
    values = np.random.default_rng(seed).normal(size=shape)
    return (values * 20).astype(dtype) if np.dtype(dtype).kind == "i" else values.astype(dtype)


def constant(name, values) -> Tensor:
    values = np.asarray(values)
    return Tensor(name, values.shape, values.dtype, values)


def int32s(name, values) -> Tensor:
    return constant(name, np.array(values, np.int32))


def one_op(op_type, inputs, output, options=None) -> bytes:
    """A one-op model: ``inputs`` are Tensors (those with data are constants), ``output`` a Tensor."""
    graph = Graph(list(inputs) + [output],
                  [Op(op_type, [t.name for t in inputs], [output.name], dict(options or {}))],
                  [t.name for t in inputs if t.data is None], [output.name])
    return write_tflite(graph)


def assert_refused_at_load(content: bytes, *fragments) -> None:
    with pytest.raises(ModelError) as refusal:
        Interpreter(model_content=content)
    message = str(refusal.value)
    for fragment in fragments:
        assert fragment in message, message


def test_a_grouped_conv_2d_is_refused_at_load():
    content = one_op("CONV_2D", [Tensor("x", (1, 5, 5, 8)), constant("filter", weights((4, 3, 3, 4))),
                                 constant("bias", weights(4))], Tensor("y", (1, 5, 5, 4)), CONV)
    assert_refused_at_load(content, "op #0 (CONV_2D)", "grouped CONV_2D is not supported")


def test_a_depthwise_filter_no_multiple_of_the_input_depth_is_refused_at_load():
    content = one_op("DEPTHWISE_CONV_2D", [Tensor("x", (1, 5, 5, 4)), constant("filter", weights((1, 3, 3, 6)))],
                     Tensor("y", (1, 5, 5, 6)), dict(CONV, depth_multiplier=1))
    assert_refused_at_load(content, "op #0 (DEPTHWISE_CONV_2D)", "filter depth 6 is not a multiple of input depth 4")


def test_a_conv_2d_on_an_unsupported_input_type_is_refused_at_load():
    content = one_op("CONV_2D", [Tensor("x", (1, 5, 5, 2), np.int32), constant("filter", weights((4, 1, 1, 2)))],
                     Tensor("y", (1, 5, 5, 4)), CONV)
    assert_refused_at_load(content, "op #0 (CONV_2D)", "int32; float32, int8 and int16 are supported")


def test_int8_conv_weights_with_a_zero_point_are_refused_at_load():
    filters = Tensor("filter", (4, 1, 1, 2), np.int8, weights((4, 1, 1, 2), np.int8), QuantParams(0.1, 3))
    content = one_op("CONV_2D", [Tensor("x", (1, 5, 5, 2), np.int8, quant=INT8_PARAMS), filters],
                     Tensor("y", (1, 5, 5, 4), np.int8, quant=INT8_PARAMS), CONV)
    assert_refused_at_load(content, "op #0 (CONV_2D)", "int8 weights 'filter' must be symmetric")


def test_int8_conv_weights_without_quantization_are_refused_at_load():
    filters = Tensor("filter", (4, 1, 1, 2), np.int8, weights((4, 1, 1, 2), np.int8))
    content = one_op("CONV_2D", [Tensor("x", (1, 5, 5, 2), np.int8, quant=INT8_PARAMS), filters],
                     Tensor("y", (1, 5, 5, 4), np.int8, quant=INT8_PARAMS), CONV)
    assert_refused_at_load(content, "op #0 (CONV_2D)", "int8 weights 'filter' have no quantization parameters")


def test_a_shuffled_fully_connected_weights_format_is_refused_at_load():
    content = one_op("FULLY_CONNECTED", [Tensor("x", (1, 8)), constant("w", weights((4, 8)))], Tensor("y", (1, 4)),
                     {"weights_format": "SHUFFLED4x16INT8", "fused_activation_function": "NONE"})
    assert_refused_at_load(content, "op #0 (FULLY_CONNECTED)", "weights format SHUFFLED4x16INT8 is not supported")


def test_a_fused_activation_no_kernel_has_is_refused_at_load():
    content = one_op("FULLY_CONNECTED", [Tensor("x", (1, 8)), constant("w", weights((4, 8)))], Tensor("y", (1, 4)),
                     {"fused_activation_function": "SIGN_BIT"})
    assert_refused_at_load(content, "op #0 (FULLY_CONNECTED)", "fused activation 'SIGN_BIT' is not supported")


def test_a_fused_tanh_on_an_int8_add_is_refused_at_load():
    content = one_op("ADD", [Tensor(n, (1, 4), np.int8, quant=INT8_PARAMS) for n in "ab"],
                     Tensor("y", (1, 4), np.int8, quant=INT8_PARAMS), {"fused_activation_function": "TANH"})
    assert_refused_at_load(content, "op #0 (ADD)", "fused activation 'TANH' has no integer form")


def test_a_quantized_reduce_prod_is_refused_at_load():
    content = one_op("REDUCE_PROD", [Tensor("x", (1, 4, 3), np.int8, quant=INT8_PARAMS),
                                     int32s("axis", [1])],
                     Tensor("y", (1, 3), np.int8, quant=INT8_PARAMS))
    assert_refused_at_load(content, "op #0 (REDUCE_PROD)", "quantized REDUCE_PROD is not supported")


def test_a_gather_with_batch_dims_is_refused_at_load():
    content = one_op("GATHER", [Tensor("x", (2, 4, 3)), Tensor("i", (2, 1), np.int32, np.zeros((2, 1), np.int32))],
                     Tensor("y", (2, 1, 3)), {"axis": 1, "batch_dims": 1})
    assert_refused_at_load(content, "op #0 (GATHER)", "batch_dims other than 0 is not supported")


def test_an_l2_normalization_with_a_fused_activation_is_refused_at_load():
    content = one_op("L2_NORMALIZATION", [Tensor("x", (1, 4))], Tensor("y", (1, 4)),
                     {"fused_activation_function": "RELU"})
    assert_refused_at_load(content, "op #0 (L2_NORMALIZATION)", "takes no fused activation")


def test_a_resize_with_both_corner_modes_is_refused_at_load():
    content = one_op("RESIZE_BILINEAR", [Tensor("x", (1, 4, 4, 2)), int32s("size", [8, 8])],
                     Tensor("y", (1, 8, 8, 2)), {"align_corners": True, "half_pixel_centers": True})
    assert_refused_at_load(content, "op #0 (RESIZE_BILINEAR)", "align_corners and half_pixel_centers")


def test_a_quantize_to_int32_is_refused_at_load():
    content = one_op("QUANTIZE", [Tensor("x", (1, 4))], Tensor("y", (1, 4), np.int32, quant=INT8_PARAMS))
    assert_refused_at_load(content, "op #0 (QUANTIZE)", "QUANTIZE to int32 is not supported")


def test_a_dequantize_of_unquantized_int8_is_refused_at_load():
    content = one_op("DEQUANTIZE", [Tensor("x", (1, 4), np.int8)], Tensor("y", (1, 4)))
    assert_refused_at_load(content, "op #0 (DEQUANTIZE)", "tensor 'x' (int8) has no quantization parameters")


def test_an_op_without_a_kernel_is_refused_at_load():
    content = one_op("FLOOR_DIV", [Tensor("a", (1, 4)), Tensor("b", (1, 4))], Tensor("y", (1, 4)))
    assert_refused_at_load(content, "no kernel for op type(s): FLOOR_DIV")


def test_a_reshape_to_a_shape_of_another_size_is_refused_at_load():
    content = one_op("RESHAPE", [Tensor("x", (1, 4, 4, 2)), int32s("shape", [1, 30])],
                     Tensor("y", (1, 30)))
    assert_refused_at_load(content, "op #0 (RESHAPE)", "cannot reshape input 'x' [1, 4, 4, 2] (32 values) to [1, 30]")


def test_a_reshape_to_a_float_tensor_computed_at_run_time_is_refused_at_load():
    content = one_op("RESHAPE", [Tensor("x", (1, 4, 4, 2)), Tensor("shape", (1, 4, 4, 2))], Tensor("y", (1, 32)))
    assert_refused_at_load(content, "op #0 (RESHAPE)", "shape input 'shape' (float32, [1, 4, 4, 2]) is not a list")


def test_a_transpose_conv_filter_that_does_not_fit_its_input_is_refused_at_load():
    content = one_op("TRANSPOSE_CONV", [int32s("output_shape", [1, 8, 8, 3]),
                                        constant("filter", weights((3, 2, 2, 5))), Tensor("x", (1, 4, 4, 2))],
                     Tensor("y", (1, 8, 8, 3)), {"padding": "SAME", "stride_w": 2, "stride_h": 2})
    assert_refused_at_load(content, "op #0 (TRANSPOSE_CONV)", "filter [3, 2, 2, 5] does not fit input [1, 4, 4, 2]")


def test_a_slice_beyond_its_input_is_refused_at_load():
    content = one_op("SLICE", [Tensor("x", (1, 6)), int32s("begin", [0, 4]),
                               int32s("size", [1, 3])], Tensor("y", (1, 3)))
    assert_refused_at_load(content, "op #0 (SLICE)", "begin [0, 4] and size [1, 3] do not fit an input of shape [1, 6]")


def test_a_squeeze_of_a_dimension_other_than_1_is_refused_at_load():
    content = one_op("SQUEEZE", [Tensor("x", (1, 6, 1))], Tensor("y", (1, 6)), {"squeeze_dims": [1]})
    assert_refused_at_load(content, "op #0 (SQUEEZE)", "squeeze_dims [1] name a dimension of [1, 6, 1] that is not 1")


def test_a_split_that_does_not_divide_its_axis_is_refused_at_load():
    graph = Graph([Tensor("axis", (), np.int32, np.array(1, np.int32)), Tensor("x", (1, 7)), Tensor("a", (1, 3)),
                   Tensor("b", (1, 4))], [Op("SPLIT", ["axis", "x"], ["a", "b"], {"num_splits": 2})],
                  ["x"], ["a", "b"])
    assert_refused_at_load(write_tflite(graph), "op #0 (SPLIT)", "does not split into 2 outputs")


# -- the general check: mutated files ------------------------------------------------------------

def stage_of_failure(content: bytes, max_memory_bytes: int) -> str:
    """"load" if the file is refused when loaded, "ok" if it runs on an input of ones, else the stage
    (allocate or invoke) and the error."""
    try:
        interpreter = Interpreter(model_content=content, max_memory_bytes=max_memory_bytes)
    except (ValueError, RuntimeError):
        return "load"
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        return f"allocate: {error}"
    try:
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.ones(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (ValueError, RuntimeError) as error:
        return f"invoke: {error}"
    return "ok"


@pytest.mark.slow  # two thousand mutated files per seed
@pytest.mark.parametrize("seed", [0, 1])
def test_every_mutated_file_is_refused_at_load_or_runs(seed):
    """What the kernels refuse, the validator refuses: over mutated copies of the seed models (every
    byte of their op codes, options, shapes, types and quantization open to change), no file gets
    past loading only to fail in allocate_tensors, or in invoke on plain input."""
    models = fuzz.seed_models()
    fields = [fuzz.field_positions(data) for _, data in models]
    late = []
    for case in range(2000):
        label, content = fuzz.mutate(models, fields, seed=seed, case=case)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            stage = stage_of_failure(content, fuzz.FUZZ_MODEL_MEMORY)
        if stage not in ("load", "ok"):
            late.append(f"case {case} ({label}): {stage}")
    assert late == []
