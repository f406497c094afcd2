"""The clean-up passes on hand-built IR graphs: what each rewrite leaves, including the order in which
chained rewrites happen (always at the earliest op that can change, as a rescan from the first op
after every rewrite would)."""
import numpy as np

from edgeq.converter.passes import cancel_transposes, fold_batch_norm, fuse_activations, remove_identities
from edgeq.runtime.ir import Graph, Op, Tensor

CONV_OPTIONS = {"padding": "VALID", "stride_w": 1, "stride_h": 1, "dilation_w_factor": 1,
                "dilation_h_factor": 1, "fused_activation_function": "NONE"}


def _graph(tensors, ops, inputs, outputs) -> Graph:
    return Graph([Tensor(name, shape, dtype, data) for name, shape, dtype, data in tensors], ops, inputs, outputs)


def _activation(name, shape, dtype=np.float32):
    return name, shape, dtype, None


def _constant(name, data):
    data = np.asarray(data)
    return name, data.shape, data.dtype, data


def _shape(name, shape):
    return _constant(name, np.array(shape, dtype=np.int32))


def test_a_chain_of_identities_from_an_input_to_an_output_loses_its_first_op():
    # Bypassing the CAST makes the RESHAPE read the graph input and write the graph output: it stays.
    g = _graph([_activation("x", (2, 3)), _activation("b", (2, 3)), _activation("y", (2, 3)), _shape("s", (2, 3))],
               [Op("CAST", ["x"], ["b"], {}), Op("RESHAPE", ["b", "s"], ["y"], {})], ["x"], ["y"])
    cleaned = remove_identities(g)
    assert [(op.type, op.inputs[0], op.outputs) for op in cleaned.ops] == [("RESHAPE", "x", ["y"])]


def test_a_reshape_back_to_the_input_shape_after_a_reshape_disappears_with_it():
    g = _graph([_activation("x", (2, 3)), _activation("a", (6,)), _activation("b", (2, 3)), _activation("y", (2, 3)),
                _shape("to_flat", (6,)), _shape("to_matrix", (2, 3))],
               [Op("RESHAPE", ["x", "to_flat"], ["a"], {}), Op("RESHAPE", ["a", "to_matrix"], ["b"], {}),
                Op("RELU", ["b"], ["y"], {})], ["x"], ["y"])
    cleaned = remove_identities(g)
    assert [(op.type, op.inputs, op.outputs) for op in cleaned.ops] == [("RELU", ["x"], ["y"])]
    assert set(cleaned.tensors) == {"x", "y"}


def test_a_reshape_chain_becomes_one_reshape_of_the_first_input():
    g = _graph([_activation("x", (2, 3)), _activation("a", (6,)), _activation("y", (3, 2)),
                _shape("to_flat", (6,)), _shape("to_other", (3, 2))],
               [Op("RESHAPE", ["x", "to_flat"], ["a"], {}), Op("RESHAPE", ["a", "to_other"], ["y"], {})], ["x"], ["y"])
    cleaned = remove_identities(g)
    assert [(op.type, op.inputs, op.outputs) for op in cleaned.ops] == [("RESHAPE", ["x", "to_other"], ["y"])]


def test_a_reshape_read_twice_is_not_merged_into_the_next():
    g = _graph([_activation("x", (2, 3)), _activation("a", (6,)), _activation("y", (3, 2)), _activation("z", (6,)),
                _shape("to_flat", (6,)), _shape("to_other", (3, 2))],
               [Op("RESHAPE", ["x", "to_flat"], ["a"], {}), Op("RESHAPE", ["a", "to_other"], ["y"], {}),
                Op("RELU", ["a"], ["z"], {})], ["x"], ["y", "z"])
    cleaned = remove_identities(g)
    assert [op.inputs[0] for op in cleaned.ops] == ["x", "a", "a"]


def test_transposes_that_cancel_leave_their_consumer_reading_the_input():
    g = _graph([_activation("x", (1, 2, 3, 4)), _activation("a", (1, 4, 2, 3)), _activation("b", (1, 2, 3, 4)),
                _activation("y", (1, 2, 3, 4)), _constant("to_nchw", np.array([0, 3, 1, 2], np.int32)),
                _constant("to_nhwc", np.array([0, 2, 3, 1], np.int32))],
               [Op("TRANSPOSE", ["x", "to_nchw"], ["a"], {}), Op("TRANSPOSE", ["a", "to_nhwc"], ["b"], {}),
                Op("RELU", ["b"], ["y"], {})], ["x"], ["y"])
    cleaned = cancel_transposes(g)
    assert [(op.type, op.inputs, op.outputs) for op in cleaned.ops] == [("RELU", ["x"], ["y"])]


def test_two_transposes_compose_into_one_of_the_input():
    g = _graph([_activation("x", (1, 2, 3, 4)), _activation("a", (1, 4, 2, 3)), _activation("y", (1, 3, 4, 2)),
                _constant("p", np.array([0, 3, 1, 2], np.int32))],
               [Op("TRANSPOSE", ["x", "p"], ["a"], {}), Op("TRANSPOSE", ["a", "p"], ["y"], {})], ["x"], ["y"])
    [transpose] = cancel_transposes(g).ops
    assert transpose.inputs[0] == "x" and transpose.outputs == ["y"]
    x = np.arange(24).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(x.transpose(cancel_transposes(g)[transpose.inputs[1]].data),
                                  x.transpose(0, 3, 1, 2).transpose(0, 3, 1, 2))


def test_three_transposes_that_compose_to_the_identity_vanish():
    g = _graph([_activation("x", (1, 2, 3, 4)), _activation("a", (1, 4, 2, 3)), _activation("b", (1, 3, 4, 2)),
                _activation("c", (1, 2, 3, 4)), _activation("y", (1, 2, 3, 4)),
                _constant("p", np.array([0, 3, 1, 2], np.int32))],
               [Op("TRANSPOSE", ["x", "p"], ["a"], {}), Op("TRANSPOSE", ["a", "p"], ["b"], {}),
                Op("TRANSPOSE", ["b", "p"], ["c"], {}), Op("RELU", ["c"], ["y"], {})], ["x"], ["y"])
    assert [(op.type, op.inputs) for op in cancel_transposes(g).ops] == [("RELU", ["x"])]


def _conv_then(*affine_ops):
    """x -> CONV_2D (1x1, 2 -> 2 channels) -> the given MUL/ADD ops by per-channel constants -> y."""
    tensors = [_activation("x", (1, 4, 4, 2)), _activation("conv", (1, 4, 4, 2)),
               _constant("w", np.arange(4, dtype=np.float32).reshape(2, 1, 1, 2)),
               _constant("bias", np.array([1.0, -1.0], np.float32))]
    ops = [Op("CONV_2D", ["x", "w", "bias"], ["conv"], dict(CONV_OPTIONS))]
    previous = "conv"
    for index, (op_type, values) in enumerate(affine_ops):
        out = "y" if index == len(affine_ops) - 1 else f"t{index}"
        tensors += [_constant(f"k{index}", np.array(values, np.float32)), _activation(out, (1, 4, 4, 2))]
        ops.append(Op(op_type, [previous, f"k{index}"], [out], {"fused_activation_function": "NONE"}))
        previous = out
    return _graph(tensors, ops, ["x"], ["y"])


def test_a_batch_norm_as_mul_then_add_folds_into_the_convolution():
    folded = fold_batch_norm(_conv_then(("MUL", [2.0, 3.0]), ("ADD", [0.5, 0.25])))
    [conv] = folded.ops
    assert conv.type == "CONV_2D" and conv.outputs == ["y"]
    np.testing.assert_array_equal(folded[conv.inputs[1]].data,
                                  np.arange(4, dtype=np.float32).reshape(2, 1, 1, 2) * np.array([2, 3]).reshape(2, 1, 1, 1))
    np.testing.assert_array_equal(folded[conv.inputs[2]].data, [1.0 * 2 + 0.5, -1.0 * 3 + 0.25])


def test_folding_leaves_the_input_graph_unchanged():
    g = _conv_then(("MUL", [2.0, 3.0]))
    fold_batch_norm(g)
    assert [op.type for op in g.ops] == ["CONV_2D", "MUL"]
    np.testing.assert_array_equal(g["w"].data, np.arange(4, dtype=np.float32).reshape(2, 1, 1, 2))


def test_a_relu_after_a_convolution_becomes_its_fused_activation():
    g = _conv_then(("MUL", [2.0, 3.0]))
    g.add_tensor(Tensor("z", (1, 4, 4, 2)))
    g.ops.append(Op("RELU6", ["y"], ["z"], {}))
    g.outputs = ["z"]
    fused = fuse_activations(fold_batch_norm(g))
    [conv] = fused.ops
    assert conv.outputs == ["z"] and conv.options["fused_activation_function"] == "RELU6"
