"""ONNX LSTM and GRU, unrolled into FULLY_CONNECTED/ADD/MUL/LOGISTIC/TANH/...: float results of our runtime
and LiteRT against onnxruntime (onnx's reference evaluator for layout 1, which onnxruntime refuses); int8
integers of our runtime against LiteRT's reference kernels; the forms that are refused, each with a one-line
error naming the node."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgeq.converter.api import convert
from edgeq.converter.onnx_import import import_onnx
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import integer_tensor_mismatches, nchw_to_nhwc, relative_max_error, run_edgeq, run_litert, run_onnxruntime
from edgeq.testing.onnx_models import make_model
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor

GATES = {"LSTM": 4, "GRU": 3}
UNROLLED_OP_TYPES = {"FULLY_CONNECTED", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "SPLIT", "SPLIT_V",
                     "UNPACK", "PACK", "RESHAPE"}


# -- model builders ------------------------------------------------------------------------------

def tensor(rng, shape, name, scale=0.4):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def recurrent_model(op_type="LSTM", steps=5, batch=2, features=3, hidden=4, direction="forward", layout=0,
                    bias=True, initial=None, outputs=("Y", "Y_h", "Y_c"), seed=0, **attrs):
    """One LSTM/GRU node. ``initial``: None, "input" (graph inputs) or "constant" (non-zero initializers)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op_type]
    x_shape = [batch, steps, features] if layout else [steps, batch, features]
    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    inits = [tensor(rng, [dirs, gates * hidden, features], "W"), tensor(rng, [dirs, gates * hidden, hidden], "R")]
    inputs = [("X", x_shape)]
    names = ["X", "W", "R", "B" if bias else "", ""]
    if bias:
        inits.append(tensor(rng, [dirs, 2 * gates * hidden], "B"))
    states = ["initial_h", "initial_c"] if op_type == "LSTM" else ["initial_h"]
    for state in states:
        names.append(state if initial else "")
        if initial == "input":
            inputs.append((state, state_shape))
        elif initial == "constant":
            inits.append(tensor(rng, state_shape, state))
    outputs = [o for o in outputs if op_type == "LSTM" or o != "Y_c"]
    all_outputs = ["Y", "Y_h", "Y_c"][:3 if op_type == "LSTM" else 2]
    node = helper.make_node(op_type, names, [o if o in outputs else "" for o in all_outputs], name="rnn",
                            hidden_size=hidden, direction=direction, layout=layout, **attrs)
    return make_model([node], inputs, outputs, inits)


def crnn_model(op_type="LSTM", steps=16, hidden=16, classes=10, seed=0):
    """The shape of a PyTorch CRNN text recogniser: Conv/Relu over a text line, the height squeezed away,
    time first, a bidirectional recurrent layer, then a Linear head over both directions' features."""
    rng = np.random.default_rng(seed)
    channels, height = 8, 8
    gates = GATES[op_type]
    inits = [
        tensor(rng, [channels, 1, height, 3], "conv_w"), tensor(rng, [channels], "conv_b", 0.1),
        numpy_helper.from_array(np.array([2], np.int64), "squeeze_axes"),
        tensor(rng, [2, gates * hidden, channels], "W"), tensor(rng, [2, gates * hidden, hidden], "R"),
        tensor(rng, [2, 2 * gates * hidden], "B", 0.1),
        numpy_helper.from_array(np.zeros([2, 1, hidden], np.float32), "h0"),
        numpy_helper.from_array(np.array([steps, 1, 2 * hidden], np.int64), "features_shape"),
        tensor(rng, [2 * hidden, classes], "head_w"), tensor(rng, [classes], "head_b", 0.1),
    ]
    recurrent_inputs = ["features", "W", "R", "B", "", "h0"] + (["h0"] if op_type == "LSTM" else [])
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[0, 1, 0, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Squeeze", ["relu", "squeeze_axes"], ["squeezed"]),  # [1, C, T]
        helper.make_node("Transpose", ["squeezed"], ["features"], perm=[2, 0, 1]),  # [T, 1, C]
        helper.make_node(op_type, recurrent_inputs, ["Y"], name="rnn", hidden_size=hidden,
                         direction="bidirectional"),  # [T, 2, 1, H]
        helper.make_node("Transpose", ["Y"], ["Y_t"], perm=[0, 2, 1, 3]),  # [T, 1, 2, H]
        helper.make_node("Reshape", ["Y_t", "features_shape"], ["sequence"]),  # [T, 1, 2H]
        helper.make_node("MatMul", ["sequence", "head_w"], ["product"]),
        helper.make_node("Add", ["product", "head_b"], ["logits"]),
    ]
    return make_model(nodes, [("image", [1, 1, height, steps])], ["logits"], inits)


# -- helpers -------------------------------------------------------------------------------------

def random_feeds(model, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def batch_first(model) -> bool:
    return any(a.name == "layout" and a.i == 1 for node in model.graph.node for a in node.attribute)


def run_referee(model, feeds: dict) -> list:
    """onnxruntime; onnx's reference evaluator for batch-first layouts, which onnxruntime refuses."""
    if batch_first(model):
        return ReferenceEvaluator(model).run(None, feeds)
    return run_onnxruntime(model, feeds)


def float_errors(model, keep_onnx_layout=True) -> dict:
    """Largest relative error of every output, per engine, against the referee."""
    feeds = random_feeds(model)
    expected = run_referee(model, feeds)
    content = write_tflite(import_onnx(model, keep_onnx_layout=keep_onnx_layout))
    ordered = [feeds[i.name] if keep_onnx_layout else nchw_to_nhwc(feeds[i.name]) for i in model.graph.input]
    errors = {}
    for engine in (run_edgeq, run_litert):
        got = engine(content, ordered)
        assert len(got) == len(expected)
        errors[engine.__name__] = max(relative_max_error(g.reshape(w.shape), w) for g, w in zip(got, expected))
    return errors


def int8_conversion(model, tmp_path, samples=32, seed=2):
    """Calibrated on random samples stacked on every input's first (batch) axis."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(seed)
    calibration = {i.name: rng.standard_normal([samples] + [d.dim_value for d in i.type.tensor_type.shape.dim][1:])
                   .astype(np.float32) for i in model.graph.input}
    np.savez(tmp_path / "calibration.npz", **calibration)
    return convert(path, quantize="int8", calibration=tmp_path / "calibration.npz")


def integer_mismatches(content: bytes, feeds: list) -> int:
    """Elements of every integer tensor where our runtime differs from LiteRT's reference kernels."""
    counts = integer_tensor_mismatches(content, feeds)
    assert counts
    return sum(counts.values())


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def int8_fidelity(result, model, seed=3) -> tuple:
    """(integer mismatches against BUILTIN_REF, cosine of int8 against float) on one fresh input."""
    feeds = [nchw_to_nhwc(v) for v in random_feeds(model, seed).values()]
    float_outputs = run_edgeq(write_tflite(result.float_graph), feeds)
    int8_outputs = run_litert(result.content, feeds, reference_kernels=True)
    return integer_mismatches(result.content, feeds), min(cosine(q, f) for q, f in zip(int8_outputs, float_outputs))


# -- float: our runtime and LiteRT against onnxruntime -------------------------------------------

@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_outputs_match_onnxruntime(direction, layout):
    errors = float_errors(recurrent_model("LSTM", direction=direction, layout=layout))
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_gru_outputs_match_onnxruntime(direction, layout, linear_before_reset):
    model = recurrent_model("GRU", direction=direction, layout=layout, linear_before_reset=linear_before_reset)
    errors = float_errors(model)
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_initial_states_given_as_inputs_match_onnxruntime(op_type, layout):
    model = recurrent_model(op_type, direction="bidirectional", layout=layout, initial="input")
    errors = float_errors(model)
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_constant_initial_states_without_bias_match_onnxruntime(op_type):
    extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
    model = recurrent_model(op_type, direction="bidirectional", bias=False, initial="constant", **extra)
    errors = float_errors(model)
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("output", ["Y", "Y_h", "Y_c"])
def test_any_single_lstm_output_matches_onnxruntime(output):
    errors = float_errors(recurrent_model("LSTM", direction="bidirectional", outputs=(output,)))
    assert max(errors.values()) <= 1e-5, errors


def test_constant_full_length_sequence_lens_is_accepted():
    model = recurrent_model("GRU", steps=4, batch=2)
    model.graph.initializer.append(numpy_helper.from_array(np.array([4, 4], np.int32), "lengths"))
    model.graph.node[0].input[4] = "lengths"
    errors = float_errors(model)
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_crnn_shaped_model_matches_onnxruntime(op_type):
    errors = float_errors(crnn_model(op_type), keep_onnx_layout=False)
    assert max(errors.values()) <= 1e-5, errors


# -- the unrolled graph --------------------------------------------------------------------------

@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_unrolled_graph_uses_only_ops_with_float_and_int8_kernels(op_type):
    model = recurrent_model(op_type, direction="bidirectional", layout=1, initial="input")
    graph = import_onnx(model, keep_onnx_layout=True)
    assert {op.type for op in graph.ops} <= UNROLLED_OP_TYPES


def test_sequence_first_states_are_unpacked_where_they_are_stored():
    graph = import_onnx(recurrent_model("LSTM", batch=3, direction="bidirectional", initial="input", outputs=("Y",)))
    assert "TRANSPOSE" not in {op.type for op in graph.ops if set(op.inputs) & {"initial_h", "initial_c"}}


def test_bidirectional_lstm_costs_about_eleven_ops_per_step_and_direction():
    steps = 16
    graph = import_onnx(recurrent_model("LSTM", steps=steps, batch=1, features=32, hidden=32,
                                        direction="bidirectional", outputs=("Y",)))
    per_step = len(graph.ops) / (2 * steps)
    assert per_step <= 11.5, per_step
    assert sum(op.type == "FULLY_CONNECTED" for op in graph.ops) == 2 + 2 * (steps - 1)


def test_input_projection_is_one_fully_connected_over_all_timesteps():
    graph = import_onnx(recurrent_model("LSTM", steps=6, batch=2, features=3, hidden=4))
    first = graph.ops[0]
    assert first.type == "FULLY_CONNECTED" and graph[first.outputs[0]].shape == (6, 2, 16)


def test_crnn_shaped_model_needs_no_transpose():
    graph = import_onnx(crnn_model("LSTM"))
    assert "TRANSPOSE" not in {op.type for op in graph.ops}


def test_a_batch_of_samples_on_the_first_axis_runs_like_single_samples():
    model = crnn_model("GRU", steps=8)
    interpreter = Interpreter.from_graph(import_onnx(model))
    images = np.random.default_rng(4).standard_normal((3, 8, 8, 1)).astype(np.float32)
    batched = interpreter.run({"image": images})["logits"]
    singles = [interpreter.run({"image": image[None]})["logits"] for image in images]
    # The logits [T, 1, classes] are stored batch first, so the batch scales their first axis sample by sample.
    np.testing.assert_allclose(batched.reshape(3, 8, 10), np.stack([s[:, 0] for s in singles]), rtol=1e-5, atol=1e-6)


# -- int8: our integers equal LiteRT's reference kernels ---------------------------------------

@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
def test_int8_crnn_integers_equal_litert_reference_kernels(op_type, tmp_path):
    model = crnn_model(op_type)
    result = int8_conversion(model, tmp_path)
    assert not result.float_ops
    mismatches, similarity = int8_fidelity(result, model)
    assert mismatches == 0
    assert similarity > 0.98


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_int8_bidirectional_gru_integers_equal_litert_reference_kernels(linear_before_reset, tmp_path):
    model = recurrent_model("GRU", steps=6, batch=1, direction="bidirectional", initial="input", layout=1,
                            linear_before_reset=linear_before_reset)
    result = int8_conversion(model, tmp_path)
    mismatches, similarity = int8_fidelity(result, model)
    assert mismatches == 0
    assert similarity > 0.98


def test_int8_lstm_with_state_inputs_integers_equal_litert_reference_kernels(tmp_path):
    model = recurrent_model("LSTM", steps=6, batch=1, direction="bidirectional", initial="input", layout=1)
    result = int8_conversion(model, tmp_path)
    mismatches, similarity = int8_fidelity(result, model)
    assert mismatches == 0
    assert similarity > 0.98


# -- refused forms -------------------------------------------------------------------------------

def with_extra_input(model, index: int, name: str, data=None, as_graph_input_shape=None):
    node = model.graph.node[0]
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name
    if data is not None:
        model.graph.initializer.append(numpy_helper.from_array(data, name))
    else:
        model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT32, as_graph_input_shape))
    return model


def refusal(model) -> str:
    with pytest.raises(ModelError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "\n" not in message and "'rnn'" in message
    return message


def test_peepholes_are_refused():
    model = with_extra_input(recurrent_model("LSTM"), 7, "P", np.ones((1, 12), np.float32))
    assert "peephole" in refusal(model)


def test_clip_is_refused():
    assert "clip" in refusal(recurrent_model("LSTM", clip=3.0))


def test_non_default_activations_are_refused():
    assert "activations" in refusal(recurrent_model("GRU", activations=["HardSigmoid", "Tanh"]))


def test_explicit_default_activations_are_accepted():
    model = recurrent_model("LSTM", direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    assert max(float_errors(model).values()) <= 1e-5


@pytest.mark.parametrize("position", [0, 1])
def test_computed_weights_are_refused(position):
    model = recurrent_model("GRU")
    weights = model.graph.initializer[position]
    model.graph.input.append(helper.make_tensor_value_info(weights.name, TensorProto.FLOAT, list(weights.dims)))
    del model.graph.initializer[position]
    assert "weights" in refusal(model)


def test_variable_sequence_lengths_are_refused():
    model = with_extra_input(recurrent_model("LSTM", batch=2), 4, "lengths", as_graph_input_shape=[2])
    assert "sequence_lens" in refusal(model)


def test_sequences_shorter_than_the_input_are_refused():
    model = with_extra_input(recurrent_model("LSTM", steps=5, batch=2), 4, "lengths", np.array([5, 3], np.int32))
    assert "sequence_lens" in refusal(model)


# -- the cell activations at a scale an LSTM produced -------------------------------------------

def test_int8_tanh_on_a_rounding_tie_equals_litert_reference_kernel():
    """Scale 0.025459005, zero point 13 (a calibrated LSTM cell state) puts tanh(-0.48372108) * 128 within one
    float32 ulp of -57.5: the table must use the same float tanh as LiteRT to round it the same way."""
    graph = Graph()
    graph.add_tensor(Tensor("x", (256,), np.int8, quant=QuantParams(np.float32(0.025459004566073418), 13)))
    graph.add_tensor(Tensor("y", (256,), np.int8, quant=QuantParams(1.0 / 128, 0)))
    graph.add_op(Op("TANH", ["x"], ["y"], {}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    content = write_tflite(graph)
    every_int8 = np.arange(-128, 128, dtype=np.int8)
    np.testing.assert_array_equal(run_edgeq(content, [every_int8])[0],
                                  run_litert(content, [every_int8], reference_kernels=True)[0])
