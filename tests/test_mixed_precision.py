"""Float islands in int8 models: where one int8 scale cannot hold what flows through, the op stays
float, chosen automatically; everything else stays int8, and LiteRT runs the mixed file."""
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.converter.api import convert
from edgeq.converter.mixed_precision import mixed_range_tails
from edgeq.converter.quant_debug import sqnr_db
from edgeq.testing.referees import run_edgeq, run_litert, run_onnxruntime
from edgeq.runtime.ir import ModelError

RNG = np.random.default_rng(7)


def save(model: onnx.ModelProto, tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)


def detector_tail() -> onnx.ModelProto:
    """Boxes in pixels (0..320) concatenated with class probabilities (0..1), as detectors end."""
    w_box = numpy_helper.from_array(RNG.normal(size=(16, 4)).astype(np.float32), "w_box")
    w_cls = numpy_helper.from_array(RNG.normal(size=(16, 3)).astype(np.float32), "w_cls")
    pixels = numpy_helper.from_array(np.array([80.0], np.float32), "pixels")
    nodes = [
        helper.make_node("MatMul", ["x", "w_box"], ["box_logits"]),
        helper.make_node("Sigmoid", ["box_logits"], ["box_unit"]),
        helper.make_node("Mul", ["box_unit", "pixels"], ["boxes"]),
        helper.make_node("MatMul", ["x", "w_cls"], ["cls_logits"]),
        helper.make_node("Sigmoid", ["cls_logits"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["joined"], axis=1),
        helper.make_node("Reshape", ["joined", "flat"], ["detections"]),
    ]
    flat = numpy_helper.from_array(np.array([1, 1, 7], np.int64), "flat")
    graph = helper.make_graph(
        nodes, "detector_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 1, 7])],
        [w_box, w_cls, pixels, flat],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def masked_attention(mask_value: float = -10000.0) -> onnx.ModelProto:
    """Scores plus an additive mask (-10000 at padding positions), softmax, then a weighted sum: a
    transformer's attention."""
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, :, 5:] = mask_value  # padding positions
    inits = [
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32) * 0.5, "w_q"),
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32) * 0.5, "w_k"),
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32), "w_v"),
        numpy_helper.from_array(mask, "mask"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_q"], ["q"]),
        helper.make_node("MatMul", ["x", "w_k"], ["k"]),
        helper.make_node("MatMul", ["x", "w_v"], ["v"]),
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Add", ["scores", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["attended"]),
    ]
    graph = helper.make_graph(
        nodes, "masked_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6])],
        [helper.make_tensor_value_info("attended", TensorProto.FLOAT, [1, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def samples(tmp_path, shape, count=32) -> tuple:
    data = RNG.normal(size=(count, *shape[1:])).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, x=data)
    return str(path), data


def float_outputs(model, data) -> np.ndarray:
    return np.concatenate([run_onnxruntime(model, {"x": data[i:i + 1]})[0] for i in range(len(data))])


def edgeq_outputs(content, data) -> np.ndarray:
    return np.concatenate([run_edgeq(content, [data[i:i + 1]])[0] for i in range(len(data))])


def test_join_of_pixels_and_probabilities_stays_float(tmp_path):
    model = detector_tail()
    calib, data = samples(tmp_path, (1, 16))
    result = convert(save(model, tmp_path, "tail"), quantize="int8", calibration=calib)
    kept = {op.type for op in result.graph.ops if op.type in ("CONCATENATION", "RESHAPE")
            and result.graph[op.outputs[0]].dtype == np.float32}
    assert kept == {"CONCATENATION", "RESHAPE"}
    assert any("joins ranges" in line for line in result.float_ops)


def test_probabilities_keep_their_precision_next_to_pixels(tmp_path):
    model = detector_tail()
    calib, data = samples(tmp_path, (1, 16))
    path = save(model, tmp_path, "tail")
    expected = float_outputs(model, data)[..., 4:]
    islands = edgeq_outputs(convert(path, quantize="int8", calibration=calib).content, data)[..., 4:]
    all_int8 = edgeq_outputs(convert(path, quantize="int8", calibration=calib, float_fallback="none").content,
                             data)[..., 4:]
    # A few of the probabilities' own int8 steps (1/256) against half of one shared step (80/256).
    assert np.max(np.abs(islands - expected)) < 0.03
    assert np.max(np.abs(all_int8 - expected)) > 0.1


def test_a_finite_mask_keeps_its_addition_and_softmax_float_even_without_the_search(tmp_path):
    model = masked_attention()
    calib, data = samples(tmp_path, (1, 8, 6))
    result = convert(save(model, tmp_path, "attention"), quantize="int8", calibration=calib, float_fallback="none")
    mask_ops = {line.split()[0] for line in result.float_ops if "mask values down to -1e+04" in line}
    assert mask_ops == {"ADD", "SOFTMAX"}
    assert sqnr_db(float_outputs(model, data), edgeq_outputs(result.content, data)) >= 20


@pytest.mark.parametrize("mask_value", [float(np.finfo(np.float32).min), -1e9])
def test_a_huge_finite_mask_no_longer_stretches_the_scores_scale(tmp_path, mask_value):
    # Hugging Face's eager attention adds (1 - mask) * finfo(float32).min; one int8 scale for the
    # masked scores would be ~1e36 and the scores themselves would all round to zero.
    model = masked_attention(mask_value)
    calib, data = samples(tmp_path, (1, 8, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow while preparing the kernels
        result = convert(save(model, tmp_path, "attention"), quantize="int8", calibration=calib,
                         float_fallback="none")
        outputs = edgeq_outputs(result.content, data)
    assert sqnr_db(float_outputs(model, data), outputs) >= 20
    assert result.int8_check.passed


def test_float_islands_run_alike_on_litert_reference_kernels(tmp_path):
    model = masked_attention()
    calib, data = samples(tmp_path, (1, 8, 6))
    content = convert(save(model, tmp_path, "attention"), quantize="int8", calibration=calib).content
    for i in range(8):
        ours = run_edgeq(content, [data[i:i + 1]])[0]
        reference = run_litert(content, [data[i:i + 1]], reference_kernels=True)[0]
        np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_a_model_that_quantizes_well_stays_all_int8(tmp_path):
    model = detector_tail()
    model.graph.node.remove(model.graph.node[2])  # boxes become unit-range: no mixed join left
    model.graph.node[4].input[0] = "box_unit"
    calib, _ = samples(tmp_path, (1, 16))
    result = convert(save(model, tmp_path, "unit"), quantize="int8", calibration=calib)
    assert result.float_ops == []
    assert result.float_choice.sqnr_db >= 20


def test_none_keeps_every_op_with_an_int8_form_in_int8(tmp_path):
    calib, _ = samples(tmp_path, (1, 8, 6))
    result = convert(save(masked_attention(), tmp_path, "attention"), quantize="int8", calibration=calib,
                     float_fallback="none")
    assert not [line for line in result.float_ops if "joins ranges" in line or "int8 error grows" in line]
    assert result.float_choice.moved_by_search == 0 and result.float_choice.trials == []


def test_mixed_range_rule_ignores_joins_of_similar_ranges():
    from edgeq.runtime.ir import Graph, Op, Tensor

    g = Graph([Tensor("a", (1, 4)), Tensor("b", (1, 4)), Tensor("c", (1, 8))], inputs=["a", "b"], outputs=["c"])
    g.add_op(Op("CONCATENATION", ["a", "b"], ["c"], {"axis": 1}))
    assert mixed_range_tails(g, {"a": (-1.0, 1.0), "b": (0.0, 8.0), "c": (-1.0, 8.0)}) == {}
    assert set(mixed_range_tails(g, {"a": (-1.0, 1.0), "b": (0.0, 80.0), "c": (-1.0, 80.0)})) == {"c"}


def test_unknown_float_fallback_is_refused(tmp_path):
    calib, _ = samples(tmp_path, (1, 16))
    with pytest.raises(ModelError, match="float fallback"):
        convert(save(detector_tail(), tmp_path, "tail"), quantize="int8", calibration=calib,
                float_fallback="sometimes")


def test_a_sqnr_threshold_without_int8_is_refused(tmp_path):
    with pytest.raises(ModelError, match="min-sqnr"):
        convert(save(detector_tail(), tmp_path, "tail"), quantize="dynamic", min_sqnr_db=30)


def outlier_channel(heads: int = 1) -> onnx.ModelProto:
    """``heads`` outputs ``y0``, ``y1``...: each a hidden layer ``h<i>`` with one channel 1000 times the
    others, which the next layer ignores. One int8 scale for the hidden layer holds the outlier and
    rounds every other channel to zero; every head has the same weights, so the same defect."""
    rng = np.random.default_rng(11)
    w1 = rng.normal(size=(16, 8)).astype(np.float32)
    w1[:, 0] *= 1000.0
    w2 = rng.normal(size=(8, 4)).astype(np.float32)
    w2[0, :] = 0.0
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes, outputs = [], []
    for i in range(heads):
        nodes += [helper.make_node("MatMul", ["x", "w1"], [f"h{i}"]), helper.make_node("MatMul", [f"h{i}", "w2"], [f"y{i}"])]
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(nodes, "outlier_channel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_search_moves_every_instance_of_a_repeated_defect_at_once(tmp_path):
    # Moving one head's layer to float leaves the other heads' outputs, and so the worst output,
    # where they were: only the move of all four raises it.
    calib, _ = samples(tmp_path, (1, 16))
    result = convert(save(outlier_channel(heads=4), tmp_path, "heads"), quantize="int8", calibration=calib)
    choice = result.float_choice
    assert choice.sqnr_before_search_db < 20 <= choice.sqnr_db
    kept = [trial for trial in choice.trials if trial.kept]
    assert [(trial.op_type, sorted(trial.ops)) for trial in kept] == [("FULLY_CONNECTED", ["y0", "y1", "y2", "y3"])]
    assert any("the error search tried 1 move and kept 1: 4 FULLY_CONNECTED ops (kept: " in note for note in result.notes)


def test_the_worst_layer_is_the_op_where_the_sqnr_drops(tmp_path):
    calib, _ = samples(tmp_path, (1, 16))
    result = convert(save(outlier_channel(), tmp_path, "outlier"), quantize="int8", calibration=calib,
                     float_fallback="none")
    assert result.int8_check.worst_op == "FULLY_CONNECTED 'y0'"


def test_outputs_under_the_threshold_are_written_and_flagged_not_passed(tmp_path):
    calib, _ = samples(tmp_path, (1, 16))
    out = tmp_path / "outlier.tflite"
    result = convert(save(outlier_channel(), tmp_path, "outlier"), out, quantize="int8", calibration=calib,
                     float_fallback="none")
    assert out.read_bytes() == result.content
    assert not result.passed and result.int8_check.sqnr_db < 20 == result.int8_check.min_sqnr_db


def test_a_threshold_of_zero_accepts_any_sqnr(tmp_path):
    calib, _ = samples(tmp_path, (1, 16))
    result = convert(save(outlier_channel(), tmp_path, "outlier"), quantize="int8", calibration=calib,
                     float_fallback="none", min_sqnr_db=0)
    assert result.passed and result.int8_check.sqnr_db < 20


def test_the_search_repairs_an_outlier_channel_it_can_move_to_float(tmp_path):
    calib, _ = samples(tmp_path, (1, 16))
    result = convert(save(outlier_channel(), tmp_path, "outlier"), quantize="int8", calibration=calib)
    assert result.passed and result.int8_check.sqnr_db >= 20
