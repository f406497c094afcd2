"""Float islands in int8 models: where one int8 scale cannot hold what flows through, the op stays
float, chosen automatically; everything else stays int8, and LiteRT runs the mixed file."""
import warnings
from pathlib import Path

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
MODELS = Path(__file__).resolve().parent / "models"


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


def masked_attention(mask_value: float = -10000.0, computed: bool = False) -> onnx.ModelProto:
    """Scores plus an additive mask (-10000 at padding positions), softmax, then a weighted sum: a
    transformer's attention. ``computed``: the mask is (1 - keep) * mask_value from a second input
    ``keep`` [1, 1, 8] of 0 and 1, as Hugging Face's eager attention builds it from attention_mask."""
    mask = np.zeros((1, 8, 8), np.float32)
    mask[:, :, 5:] = mask_value  # padding positions
    inits = [
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32) * 0.5, "w_q"),
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32) * 0.5, "w_k"),
        numpy_helper.from_array(RNG.normal(size=(6, 8)).astype(np.float32), "w_v"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6])]
    if computed:
        inits += [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                  numpy_helper.from_array(np.array(mask_value, np.float32), "mask_value")]
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.FLOAT, [1, 1, 8]))
        mask_nodes = [helper.make_node("Sub", ["one", "keep"], ["dropped"]),
                      helper.make_node("Mul", ["dropped", "mask_value"], ["mask"])]
    else:
        inits.append(numpy_helper.from_array(mask, "mask"))
        mask_nodes = []
    nodes = mask_nodes + [
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
        nodes, "masked_attention", inputs, [helper.make_tensor_value_info("attended", TensorProto.FLOAT, [1, 8, 8])],
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


def test_join_of_pixels_and_probabilities_is_an_int16_island(tmp_path):
    model = detector_tail()
    calib, data = samples(tmp_path, (1, 16))
    result = convert(save(model, tmp_path, "tail"), quantize="int8", calibration=calib)
    int16 = {op.type for op in result.graph.ops if op.type in ("CONCATENATION", "RESHAPE")
             and result.graph[op.outputs[0]].dtype == np.int16}
    assert int16 == {"CONCATENATION", "RESHAPE"}
    assert result.float_ops == []
    assert any("joins ranges" in reason for reason in result.float_choice.int16.values())


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


def test_a_finite_mask_constant_is_clamped_so_the_masked_scores_and_softmax_stay_int8(tmp_path):
    model = masked_attention()
    calib, data = samples(tmp_path, (1, 8, 6))
    result = convert(save(model, tmp_path, "attention"), quantize="int8", calibration=calib, float_fallback="none")
    assert result.float_ops == []
    assert sqnr_db(float_outputs(model, data), edgeq_outputs(result.content, data)) >= 20


def attention_with_computed_mask(tmp_path, mask_value: float) -> tuple:
    """(model, its path, inputs) of ``masked_attention(mask_value, computed=True)``, with
    calibration samples of 3 to 8 kept positions."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 8, 6)).astype(np.float32)
    keep = (np.arange(8)[None] < rng.integers(3, 9, size=32)[:, None]).astype(np.float32).reshape(32, 1, 8)
    np.savez(tmp_path / "calib.npz", x=x, keep=keep)
    model = masked_attention(mask_value, computed=True)
    return model, save(model, tmp_path, "attention"), x, keep


@pytest.mark.parametrize("mask_value", [float(np.finfo(np.float32).min), -1e9])
def test_a_huge_computed_mask_no_longer_stretches_the_scores_scale(tmp_path, mask_value):
    # Hugging Face's eager attention adds (1 - mask) * finfo(float32).min; one int8 scale for the
    # masked scores would be ~1e36 and the scores themselves would all round to zero.
    model, path, x, keep = attention_with_computed_mask(tmp_path, mask_value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow while preparing the kernels
        result = convert(path, quantize="int8", calibration=str(tmp_path / "calib.npz"), float_fallback="none")
        outputs = np.concatenate([run_edgeq(result.content, [x[i:i + 1], keep[i:i + 1]])[0] for i in range(32)])
    expected = np.concatenate([run_onnxruntime(model, {"x": x[i:i + 1], "keep": keep[i:i + 1]})[0] for i in range(32)])
    assert sqnr_db(expected, outputs) >= 20
    # Only the op making the mask from the huge constant stays float; the sum and softmax are int8.
    assert [line.split(" (")[0] for line in result.float_ops] == ["MUL 'mask'"]


def test_a_clamped_mask_runs_alike_on_litert_reference_kernels(tmp_path):
    _, path, x, keep = attention_with_computed_mask(tmp_path, float(np.finfo(np.float32).min))
    content = convert(path, quantize="int8", calibration=str(tmp_path / "calib.npz"), float_fallback="none").content
    for i in range(8):
        feeds = [x[i:i + 1], keep[i:i + 1]]
        np.testing.assert_array_equal(run_edgeq(content, feeds)[0], run_litert(content, feeds, reference_kernels=True)[0])


def test_a_mask_like_sum_that_feeds_no_softmax_stays_float(tmp_path):
    model = masked_attention()
    nodes = [n for n in model.graph.node if n.op_type not in ("Softmax", "MatMul") or n.output[0] != "attended"]
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if n.op_type != "Softmax")
    model.graph.output[0].name = "masked"
    calib, _ = samples(tmp_path, (1, 8, 6))
    result = convert(save(model, tmp_path, "masked_scores"), quantize="int8", calibration=calib,
                     float_fallback="none")
    assert [line.split(" (")[0] for line in result.float_ops] == ["ADD 'masked'"]
    assert "holds mask values down to -1e+04" in result.float_ops[0]


def test_bert_encoder_with_a_finfo_min_mask_stays_faithful_in_int8(tmp_path):
    # The test model's mask is (1 - attention_mask) * -10000; Hugging Face's eager attention writes
    # finfo(float32).min there, which before clamping left the embeddings' cosine at 0.77 at worst.
    model = onnx.load(MODELS / "bert_encoder.onnx")
    (constant,) = [n for n in model.graph.node if n.op_type == "Constant"
                   and numpy_helper.to_array(n.attribute[0].t).tolist() == -10000.0]
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32)))
    data = np.load(MODELS / "bert_encoder_data.npz")
    np.savez(tmp_path / "calib.npz", input_ids=data["calib_input_ids"], attention_mask=data["calib_attention_mask"])
    path = save(model, tmp_path, "bert_finfo_mask")
    result = convert(path, input_shapes={"input_ids": (1, 16), "attention_mask": (1, 16)}, quantize="int8",
                     calibration=str(tmp_path / "calib.npz"), float_fallback="none")
    ids, mask = data["eval_input_ids"][:16], data["eval_attention_mask"][:16]
    (expected,) = run_onnxruntime(model, {"input_ids": ids, "attention_mask": mask})
    actual = np.concatenate([run_edgeq(result.content, [ids[i:i + 1], mask[i:i + 1]])[0] for i in range(16)])
    cosines = np.sum(expected * actual, 1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1)
    assert cosines.min() > 0.99
    assert not [line for line in result.float_ops if line.startswith(("ADD", "SOFTMAX"))]


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
    assert [trial.island for trial in kept] == ["int16"]  # int16 is tried first, and is enough here
    assert any("the error search tried 1 move and kept 1: 4 FULLY_CONNECTED ops to int16 (kept: " in note
               for note in result.notes)


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


def test_a_pattern_groups_ops_of_one_role_and_similar_drop_only():
    from edgeq.converter.mixed_precision import candidate_moves
    from edgeq.runtime.ir import Graph, Op, Tensor

    names = ["x", "w", "l0", "l1", "l2", "s", "p0", "p1", "p2", "p3"]
    g = Graph([Tensor(n, (1, 4)) for n in names], inputs=["x"], outputs=["p0", "p1", "p2", "p3"])
    g.tensors["w"].data = np.ones((4, 4), np.float32)
    for logits in ("l0", "l1", "l2"):
        g.add_op(Op("FULLY_CONNECTED", ["x", "w"], [logits]))
    g.add_op(Op("ADD", ["x", "x"], ["s"]))
    softmax = {out: Op("SOFTMAX", [src], [out]) for src, out in (("l0", "p0"), ("l1", "p1"), ("l2", "p2"), ("s", "p3"))}
    for op in softmax.values():
        g.add_op(op)
    # p3 reads an ADD, not a FULLY_CONNECTED: another role; p2's drop is under half the top's.
    ranked = [(20.0, softmax["p0"]), (19.0, softmax["p3"]), (18.0, softmax["p1"]), (4.0, softmax["p2"])]
    moves = [[op.outputs[0] for _, op in move] for move in candidate_moves(ranked, set(), g)]
    assert moves[0] == ["p0", "p1"]
    assert ["p0", "p1", "p2"] not in moves and ["p3"] in moves
