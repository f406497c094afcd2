"""ONNX models as exporters actually write them: old opsets whose constant nodes carry their axes as
attributes, constant nodes that cannot be folded next to unsupported ops, and declared shapes that
disagree with what the graph computes. Float results are matched with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.converter.api import convert
from edgeq.converter.onnx_import import import_onnx
from edgeq.runtime.ir import ModelError
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import nchw_to_nhwc, nhwc_to_nchw, relative_max_error, run_edgeq, run_litert, run_onnxruntime

RNG = np.random.default_rng(12)


def _constant(name: str, *shape) -> "TensorProto":
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers=(), opset=13, domains=()):
    graph = helper.make_graph(
        nodes, "quirks",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(domain, 1) for domain in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 7
    return model


def _assert_matches_onnxruntime(model, feeds: dict):
    expected = run_onnxruntime(model, feeds)
    content = write_tflite(import_onnx(model))
    inputs = [nchw_to_nhwc(feeds[i.name]) for i in model.graph.input]
    for engine in (run_litert, run_edgeq):
        for got, want in zip(engine(content, inputs), expected):
            assert relative_max_error(nhwc_to_nchw(got).reshape(want.shape), want) <= 1e-5, engine.__name__


# -- constant folding at the model's own opset ----------------------------------------------------

def _opset_12_model_with_attribute_axes():
    """Unsqueeze, Squeeze and ReduceSum of constants, each with its axes as an attribute (opset 12),
    broadcast onto the input: (x + unsqueeze(b)) * squeeze(r) - reducesum(m)."""
    nodes = [
        helper.make_node("Unsqueeze", ["b"], ["b_4d"], name="Unsqueeze_65", axes=[0, 2, 3]),
        helper.make_node("Squeeze", ["r"], ["r_1d"], name="Squeeze_7", axes=[0]),
        helper.make_node("ReduceSum", ["m"], ["m_sum"], name="ReduceSum_9", axes=[0], keepdims=1),
        helper.make_node("Add", ["x", "b_4d"], ["shifted"], name="add"),
        helper.make_node("Mul", ["shifted", "r_1d"], ["scaled"], name="mul"),
        helper.make_node("Sub", ["scaled", "m_sum"], ["y"], name="sub"),
    ]
    initializers = [_constant("b", 3), _constant("r", 1, 4), _constant("m", 2, 4)]
    return _model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4])], initializers, opset=12)


def test_opset_12_constants_with_attribute_axes_fold_to_the_onnxruntime_result():
    model = _opset_12_model_with_attribute_axes()
    _assert_matches_onnxruntime(model, {"x": RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)})


def test_opset_12_constant_nodes_leave_no_op_behind():
    ops = {op.type for op in import_onnx(_opset_12_model_with_attribute_axes()).ops}
    assert ops <= {"ADD", "MUL", "SUB"}


# -- a constant node that cannot be folded does not hide unsupported ops --------------------------

def _model_with_bad_constant_reshape(extra_nodes=(), domains=()):
    nodes = [
        helper.make_node("Constant", [], ["target"], name="target",
                         value=numpy_helper.from_array(np.array([4, 2], np.int64))),
        helper.make_node("Reshape", ["c", "target"], ["c_2d"], name="bad_reshape"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        *extra_nodes,
    ]
    return _model(nodes, [("x", [1, 4])], [("r", [1, 4]), ("c_2d", None)], [_constant("c", 6)], domains=domains)


def test_a_constant_node_that_cannot_be_folded_is_named():
    with pytest.raises(ModelError, match="cannot evaluate constant Reshape node 'bad_reshape'"):
        import_onnx(_model_with_bad_constant_reshape())


def test_unsupported_ops_are_all_listed_when_constant_folding_fails_first():
    mystery = [helper.make_node("Mystery", ["r"], ["m1"], name="mystery_1", domain="com.example"),
               helper.make_node("Mystery", ["m1"], ["m2"], name="mystery_2", domain="com.example")]
    with pytest.raises(ModelError) as error:
        import_onnx(_model_with_bad_constant_reshape(mystery, domains=["com.example"]))
    message = str(error.value)
    assert message.startswith("unsupported ONNX ops: com.example.Mystery (nodes 'mystery_1', 'mystery_2')")
    assert "cannot evaluate constant Reshape node 'bad_reshape'" in message


# -- declared output shapes that the graph contradicts --------------------------------------------

def _transpose_model(declared_output_shape):
    """x [1, 3, 5] -> Transpose (2, 0, 1) -> Relu -> '387' [5, 1, 3], declared as given."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[2, 0, 1]),
             helper.make_node("Relu", ["t"], ["387"], name="relu")]
    return _model(nodes, [("x", [1, 3, 5])], [("387", declared_output_shape)])


def test_a_wrongly_declared_output_takes_the_computed_shape_and_matches_onnxruntime():
    model = _transpose_model([1, "seqlen"])
    graph = import_onnx(model)
    assert graph["387"].shape == (5, 1, 3)
    _assert_matches_onnxruntime(model, {"x": RNG.standard_normal((1, 3, 5)).astype(np.float32)})


def test_a_wrongly_declared_output_shape_is_noted_by_tensor_name():
    notes = []
    import_onnx(_transpose_model([1, "seqlen"]), notes=notes)
    assert notes == ["output '387': declared shape [1, 'seqlen'] differs from the computed [5, 1, 3]; "
                     "the computed shape is used"]


def test_a_wrong_size_in_a_declared_output_shape_is_noted():
    notes = []
    import_onnx(_transpose_model([5, 1, 4]), notes=notes)
    assert len(notes) == 1 and "declared shape [5, 1, 4]" in notes[0]


def test_named_dimensions_in_a_declared_output_shape_of_the_right_rank_need_no_note():
    notes = []
    import_onnx(_transpose_model(["seqlen", 1, "channels"]), notes=notes)
    assert notes == []


def test_convert_passes_the_declared_shape_note_on(tmp_path):
    path = tmp_path / "wrong_output.onnx"
    onnx.save(_transpose_model([1, "seqlen"]), str(path))
    assert any(note.startswith("output '387': declared shape") for note in convert(path).notes)
