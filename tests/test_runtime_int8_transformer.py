"""int8 BATCH_MATMUL and SELECT_V2 kernels in single-op models: our runtime's integers equal LiteRT's
reference kernels' (BUILTIN_REF) over extreme scales, zero points, adjoints and broadcasting."""
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.runtime.tflite_format.writer import write_tflite  # noqa: E402
from edgeq.testing.referees import run_edgeq, run_litert  # noqa: E402
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor

RNG = np.random.default_rng(5)


def int8_batch_matmul_graph(lhs_shape, rhs_shape, out_shape, params, adj_x=False, adj_y=False, rhs_data=None):
    (lhs_params, rhs_params, out_params) = params
    g = Graph()
    g.add_tensor(Tensor("lhs", lhs_shape, np.int8, quant=QuantParams(*lhs_params)))
    g.add_tensor(Tensor("rhs", rhs_shape, np.int8, rhs_data, quant=QuantParams(*rhs_params)))
    g.add_tensor(Tensor("out", out_shape, np.int8, quant=QuantParams(*out_params)))
    g.add_op(Op("BATCH_MATMUL", ["lhs", "rhs"], ["out"],
                {"adj_x": adj_x, "adj_y": adj_y, "asymmetric_quantize_inputs": False}))
    g.inputs = ["lhs"] if rhs_data is not None else ["lhs", "rhs"]
    g.outputs = ["out"]
    return g


def random_int8(shape):
    return RNG.integers(-128, 128, size=shape).astype(np.int8)


def assert_int8_outputs_equal_litert_reference(graph, feeds):
    content = write_tflite(graph)
    ours = run_edgeq(content, feeds)[0]
    reference = run_litert(content, feeds, reference_kernels=True)[0]
    assert ours.dtype == np.int8
    mismatches = np.flatnonzero(ours != reference)
    assert mismatches.size == 0, f"{mismatches.size} of {ours.size} differ"


# (lhs, rhs, output) (scale, zero point): typical, tiny and huge output scales, zero points at the ends.
BATCH_MATMUL_PARAMS = [
    ((0.05, -10), (0.02, 3), (0.1, 5)),
    ((0.01, 127), (0.5, -128), (0.0005, 0)),
    ((3.0, -128), (2.0, 100), (50.0, -3)),
    ((0.004, 0), (0.004, 0), (0.002, -128)),
]


@pytest.mark.parametrize("params", BATCH_MATMUL_PARAMS, ids=str)
@pytest.mark.parametrize("adj_x, adj_y", [(False, False), (False, True), (True, False), (True, True)])
def test_int8_batch_matmul_equals_litert_reference(params, adj_x, adj_y):
    batch, rows, depth, columns = (2, 3), 7, 33, 5
    lhs_shape = batch + ((depth, rows) if adj_x else (rows, depth))
    rhs_shape = batch + ((columns, depth) if adj_y else (depth, columns))
    graph = int8_batch_matmul_graph(lhs_shape, rhs_shape, batch + (rows, columns), params, adj_x, adj_y)
    assert_int8_outputs_equal_litert_reference(graph, [random_int8(lhs_shape), random_int8(rhs_shape)])


def test_int8_batch_matmul_broadcasts_batch_axes_like_litert():
    graph = int8_batch_matmul_graph((2, 1, 4, 6), (1, 3, 6, 5), (2, 3, 4, 5), BATCH_MATMUL_PARAMS[0])
    assert_int8_outputs_equal_litert_reference(graph, [random_int8((2, 1, 4, 6)), random_int8((1, 3, 6, 5))])


def test_int8_batch_matmul_with_a_constant_right_operand():
    rhs = random_int8((2, 6, 5))
    graph = int8_batch_matmul_graph((2, 4, 6), (2, 6, 5), (2, 4, 5), BATCH_MATMUL_PARAMS[1], adj_y=False, rhs_data=rhs)
    assert_int8_outputs_equal_litert_reference(graph, [random_int8((2, 4, 6))])


def test_int8_batch_matmul_multiplier_takes_the_float32_product_of_the_operand_scales():
    """LiteRT's BATCH_MATMUL rescales by float32(lhs_scale * rhs_scale) / output_scale (in double), as
    its GetQuantizedConvolutionMultipler does, not by the product taken in double. With these scales
    (a Whisper encoder's Q.K^T) the two multipliers differ in the last bits, and the totals +-12245
    land on the rounding boundary between them."""
    params = ((0.0010770185617730021, 15), (0.0035480442456901073, -8), (0.00044780317693948746, -37))
    graph = int8_batch_matmul_graph((1, 2, 2), (1, 2, 1), (1, 2, 1), params)
    # (lhs - 15) . (rhs + 8): 90 * 135 + 95 * 1 = 12245 and -90 * 135 - 95 * 1 = -12245
    lhs = np.array([[[105, 110], [-75, -80]]], np.int8)
    rhs = np.array([[[127], [-7]]], np.int8)
    assert_int8_outputs_equal_litert_reference(graph, [lhs, rhs])


def test_int8_select_v2_picks_stored_values_like_litert_reference():
    params = QuantParams(0.05, -10)
    g = Graph()
    g.add_tensor(Tensor("condition", (1, 4, 1), np.bool_))
    for name, shape in (("x", (1, 4, 6)), ("y", (1, 1, 6)), ("out", (1, 4, 6))):
        g.add_tensor(Tensor(name, shape, np.int8, quant=params))
    g.add_op(Op("SELECT_V2", ["condition", "x", "y"], ["out"], {}))
    g.inputs, g.outputs = ["condition", "x", "y"], ["out"]
    feeds = [RNG.random((1, 4, 1)) < 0.5, random_int8((1, 4, 6)), random_int8((1, 1, 6))]
    assert_int8_outputs_equal_litert_reference(g, feeds)
