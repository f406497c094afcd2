"""Pruning: magnitude pruning reaches its sparsity and spares the edge layers; channel pruning keeps
every shape and residual group consistent and removes exactly what zeroing those channels would;
least-squares reconstruction recovers what channel pruning loses; pruned models (float, int8,
sparse-encoded) run the same in LiteRT and in our runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeq.converter.api import convert, load_graph
from edgeq.converter.calibrate import load_calibration
from edgeq.cli import main as cli
from edgeq.converter.prune import (
    MAX_GROUP_PRUNING,
    compressed_size,
    encode_sparse_weights,
    multiply_accumulates,
    prune_channels,
    prune_magnitude,
    weight_count,
)
from edgeq.converter.budget import parse_size
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing.referees import relative_max_error, run_edgeq, run_litert
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import ModelError
from edgeq.runtime.tflite_format.reader import read_tflite

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
FLOAT_TOLERANCE = 1e-5


def _nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def models():
    return {name: load_graph(SAMPLES / f"{name}.onnx")[0] for name in ("digits_cnn", "digits_mobilenetv2")}


@pytest.fixture(scope="module")
def calibration(models):
    return {name: load_calibration(SAMPLES / f"{name}_calib.npz", graph, num_samples=64)
            for name, graph in models.items()}


@pytest.fixture(scope="module")
def test_images():
    return {name: _nhwc(np.load(SAMPLES / f"{name}_test.npz")["input"]) for name in ("digits_cnn", "digits_mobilenetv2")}


def outputs(graph, images: np.ndarray) -> np.ndarray:
    return Interpreter.from_graph(graph).run({graph.inputs[0]: images})[graph.outputs[0]]


def weight_names(graph, op_types=("CONV_2D", "FULLY_CONNECTED")) -> list:
    return [op.inputs[1] for op in graph.ops if op.type in op_types]


# -- magnitude pruning --------------------------------------------------------------------------

def test_global_magnitude_pruning_reaches_the_sparsity_over_the_pruned_layers(models):
    graph = models["digits_mobilenetv2"]
    pruned, report = prune_magnitude(graph, 0.6, "global")
    zeros = sum(np.count_nonzero(pruned[layer.layer].data == 0) for layer in report.layers)
    total = sum(pruned[layer.layer].data.size for layer in report.layers)
    assert abs(zeros - 0.6 * total) <= 1
    assert len({round(layer.sparsity_after, 2) for layer in report.layers}) > 1  # one threshold, uneven layers


def test_layer_magnitude_pruning_reaches_the_sparsity_in_every_layer(models):
    pruned, report = prune_magnitude(models["digits_mobilenetv2"], 0.6, "layer")
    for layer in report.layers:
        data = pruned[layer.layer].data
        assert abs(np.count_nonzero(data == 0) - 0.6 * data.size) <= 1, layer.layer


def test_magnitude_pruning_leaves_the_first_and_last_layers_dense_unless_asked(models):
    graph = models["digits_cnn"]
    first, *_, last = weight_names(graph)
    pruned, report = prune_magnitude(graph, 0.7)
    assert np.array_equal(pruned[first].data, graph[first].data)
    assert np.array_equal(pruned[last].data, graph[last].data)
    assert {layer.layer for layer in report.layers}.isdisjoint({first, last})
    pruned, _ = prune_magnitude(graph, 0.7, "layer", include_edges=True)
    assert np.mean(pruned[first].data == 0) > 0.6 and np.mean(pruned[last].data == 0) > 0.6


def test_magnitude_pruning_touches_depthwise_filters_only_when_asked(models):
    graph = models["digits_mobilenetv2"]
    depthwise = weight_names(graph, ("DEPTHWISE_CONV_2D",))[1]
    assert np.array_equal(prune_magnitude(graph, 0.5)[0][depthwise].data, graph[depthwise].data)
    assert np.mean(prune_magnitude(graph, 0.5, "layer", include_depthwise=True)[0][depthwise].data == 0) >= 0.49


def test_pruning_leaves_the_input_graph_unchanged(models):
    graph = models["digits_mobilenetv2"]
    before = {name: graph[name].data.copy() for name in weight_names(graph)}
    prune_magnitude(graph, 0.5)
    prune_channels(graph, 0.5)
    assert all(np.array_equal(graph[name].data, data) for name, data in before.items())


def test_magnitude_pruning_shrinks_the_compressed_file_not_the_raw_one(models):
    graph = models["digits_mobilenetv2"]
    dense, pruned = write_tflite(graph), write_tflite(prune_magnitude(graph, 0.7)[0])
    assert len(pruned) == len(dense)
    assert compressed_size(pruned) < 0.75 * compressed_size(dense)


# -- LiteRT agrees ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenetv2"])
def test_pruned_float_models_run_the_same_in_litert_and_edgeq(name, models, calibration, test_images):
    graph = prune_channels(models[name], 0.5, calibration_samples=calibration[name], reconstruct=True)[0]
    graph = prune_magnitude(graph, 0.5, calibration_samples=calibration[name])[0]
    content = write_tflite(graph)
    for image in test_images[name][:8]:
        expected = run_litert(content, [image[None]])[0]
        assert relative_max_error(run_edgeq(content, [image[None]])[0], expected) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenetv2"])
def test_pruned_int8_models_equal_litert_reference_kernels(name, test_images, tmp_path):
    result = convert(SAMPLES / f"{name}.onnx", quantize="int8", calibration=SAMPLES / f"{name}_calib.npz",
                     num_calibration_samples=64, io_dtype="int8", prune_channels=0.3, reconstruct=True,
                     prune_sparsity=0.5)
    scale, zero_point = result.graph[result.graph.inputs[0]].quant.scale[0], result.graph[result.graph.inputs[0]].quant.zero_point[0]
    for image in test_images[name][:8]:
        quantized = np.clip(np.round(image[None] / scale) + zero_point, -128, 127).astype(np.int8)
        expected = run_litert(result.content, [quantized], reference_kernels=True)[0]
        np.testing.assert_array_equal(run_edgeq(result.content, [quantized])[0], expected)


def test_sparse_encoded_weights_run_in_litert_and_edgeq_and_shrink_the_file(models, test_images):
    pruned = prune_magnitude(models["digits_mobilenetv2"], 0.7)[0]
    sparse, encoded = encode_sparse_weights(pruned)
    dense_content, sparse_content = write_tflite(pruned), write_tflite(sparse)
    assert encoded and sum(op.type == "DENSIFY" for op in sparse.ops) == len(encoded)
    assert len(sparse_content) < 0.6 * len(dense_content)
    image = test_images["digits_mobilenetv2"][:1]
    expected = run_litert(dense_content, [image])[0]
    assert relative_max_error(run_litert(sparse_content, [image])[0], expected) <= FLOAT_TOLERANCE
    assert relative_max_error(run_litert(sparse_content, [image], reference_kernels=True)[0], expected) <= FLOAT_TOLERANCE
    assert relative_max_error(run_edgeq(sparse_content, [image])[0], expected) <= FLOAT_TOLERANCE


def test_sparse_encoded_weights_read_back_dense_and_write_back_sparse(models):
    sparse = encode_sparse_weights(prune_magnitude(models["digits_cnn"], 0.7)[0])[0]
    content = write_tflite(sparse)
    read = read_tflite(content)
    for name, tensor in sparse.tensors.items():
        if tensor.sparsity is not None:
            assert read[name].sparsity is not None
            np.testing.assert_array_equal(read[name].data, tensor.data)
    assert write_tflite(read) == content


def test_sparse_encoding_refuses_quantized_models():
    with pytest.raises(ModelError, match="DENSIFY"):
        convert(SAMPLES / "digits_cnn.onnx", quantize="int8", calibration=SAMPLES / "digits_cnn_calib.npz",
                sparse_encoding=True)


# -- channel pruning ----------------------------------------------------------------------------

def test_channel_pruning_keeps_every_shape_consistent_and_the_outputs_shape(models, test_images):
    graph = models["digits_mobilenetv2"]
    pruned, _ = prune_channels(graph, 0.5)
    values = Interpreter.from_graph(pruned).run({"input": test_images["digits_mobilenetv2"][:2]}, keep="all")
    for name, value in values.items():
        assert value.shape[1:] == pruned[name].shape[1:], name
    assert [pruned[n].shape for n in pruned.outputs] == [graph[n].shape for n in graph.outputs]


def test_channel_pruning_shrinks_the_file_and_the_multiply_accumulates(models):
    graph = models["digits_mobilenetv2"]
    pruned, _ = prune_channels(graph, 0.5)
    assert multiply_accumulates(pruned) < 0.5 * multiply_accumulates(graph)
    assert len(write_tflite(pruned)) < 0.5 * len(write_tflite(graph))


def test_channel_pruning_prunes_residual_groups_consistently(models):
    graph = models["digits_mobilenetv2"]
    pruned, report = prune_channels(graph, 0.5)
    adds = [op for op in pruned.ops if op.type == "ADD"]
    assert all(pruned[op.inputs[0]].shape == pruned[op.inputs[1]].shape for op in adds)
    shrunk = [op for op in adds if pruned[op.outputs[0]].shape[-1] < graph[op.outputs[0]].shape[-1]]
    assert shrunk, "no residual group was pruned"
    assert any(len(group["layers"]) >= 3 for group in report.groups)  # e.g. the 32-channel stage: 3 producers


def test_removing_channels_equals_zeroing_them_in_the_unpruned_model(models, test_images):
    """digits_cnn: conv1 -> conv2 -> pool -> conv3 -> flatten (h, w, c) -> FC. Zeroing the removed
    channels' columns in each consumer of the unpruned model must give the pruned model's outputs."""
    graph = models["digits_cnn"]
    pruned, report = prune_channels(graph, 0.5)
    removed = [np.setdiff1d(np.arange(g["channels_before"]), g["kept"]) for g in report.groups]
    conv2, conv3, fc = weight_names(graph)[1:]
    masked = graph.copy()
    for name, drop in ((conv2, removed[0]), (conv3, removed[1])):
        data = graph[name].data.copy()
        data[..., drop] = 0
        masked.tensors[name].data = data
    columns = graph[fc].data.reshape(10, 4, 4, 32).copy()  # FC columns laid out h, w, c
    columns[..., removed[2]] = 0
    masked.tensors[fc].data = columns.reshape(10, 512)
    images = test_images["digits_cnn"][:32]
    np.testing.assert_allclose(outputs(pruned, images), outputs(masked, images), rtol=1e-5, atol=1e-5)


def test_channel_pruning_never_prunes_the_output_layer(models):
    graph = models["digits_mobilenetv2"]
    pruned, _ = prune_channels(graph, 0.5)
    last = weight_names(graph)[-1]
    assert pruned[last].shape[0] == graph[last].shape[0]


def test_activation_importance_prunes_as_many_channels_as_l1(models, calibration):
    graph = models["digits_mobilenetv2"]
    by_l1 = prune_channels(graph, 0.25, "l1")[1]
    by_activation = prune_channels(graph, 0.25, "activation", calibration["digits_mobilenetv2"])[1]
    assert [g["channels_after"] for g in by_l1.groups] == [g["channels_after"] for g in by_activation.groups]
    assert [g["kept"] for g in by_l1.groups] != [g["kept"] for g in by_activation.groups]


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenetv2"])
def test_reconstruction_beats_plain_channel_pruning(name, models, calibration, test_images):
    graph = models[name]
    images = test_images[name]
    labels = np.load(SAMPLES / f"{name}_test.npz")["y"]
    reference = outputs(graph, images)
    plain = outputs(prune_channels(graph, 0.5)[0], images)
    refitted = outputs(prune_channels(graph, 0.5, calibration_samples=calibration[name], reconstruct=True)[0], images)
    assert np.mean((refitted - reference) ** 2) < 0.5 * np.mean((plain - reference) ** 2)
    assert np.mean(refitted.argmax(1) == labels) > np.mean(plain.argmax(1) == labels) + 0.2


def accuracy(graph, name: str, images: np.ndarray) -> float:
    return float(np.mean(outputs(graph, images).argmax(1) == np.load(SAMPLES / f"{name}_test.npz")["y"]))


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mobilenetv2"])
def test_half_the_channels_with_calibration_keeps_accuracy_within_two_points(name, models, calibration, test_images):
    graph, images = models[name], test_images[name]
    pruned, report = prune_channels(graph, 0.5, calibration_samples=calibration[name], reconstruct=True)
    removed = sum(g["channels_before"] - g["channels_after"] for g in report.groups)
    assert removed == sum(min(g["channels_before"] // 2, g["channels_before"] - 1) for g in report.groups)
    assert accuracy(pruned, name, images) >= accuracy(graph, name, images) - 0.02


def test_reconstruction_importance_drops_channels_the_refit_can_do_without(models, calibration, test_images):
    graph, images = models["digits_mobilenetv2"], test_images["digits_mobilenetv2"]
    reference = outputs(graph, images)
    errors = {}
    for importance in ("l1", "reconstruction"):
        pruned = prune_channels(graph, 0.5, importance, calibration["digits_mobilenetv2"], reconstruct=True,
                                allocation="uniform")[0]
        errors[importance] = np.mean((outputs(pruned, images) - reference) ** 2)
    assert errors["reconstruction"] < 0.7 * errors["l1"]


def test_sensitivity_allocation_removes_as_many_channels_where_they_cost_least(models, calibration, test_images):
    graph, images = models["digits_mobilenetv2"], test_images["digits_mobilenetv2"]
    reference = outputs(graph, images)
    results = {allocation: prune_channels(graph, 0.5, "reconstruction", calibration["digits_mobilenetv2"],
                                          reconstruct=True, allocation=allocation)
               for allocation in ("uniform", "sensitivity")}
    after = {allocation: [g["channels_after"] for g in report.groups] for allocation, (_, report) in results.items()}
    before = [g["channels_before"] for g in results["uniform"][1].groups]
    assert sum(after["sensitivity"]) == sum(after["uniform"]) and after["sensitivity"] != after["uniform"]
    assert all(a >= b * (1 - MAX_GROUP_PRUNING) for a, b in zip(after["sensitivity"], before))
    error = {allocation: np.mean((outputs(pruned, images) - reference) ** 2)
             for allocation, (pruned, _) in results.items()}
    assert error["sensitivity"] < 0.7 * error["uniform"]


def test_sensitivity_allocation_keeps_residual_groups_consistent(models, calibration, test_images):
    graph = models["digits_mobilenetv2"]
    pruned, report = prune_channels(graph, 0.5, calibration_samples=calibration["digits_mobilenetv2"], reconstruct=True)
    for op in pruned.ops:
        if op.type == "ADD":
            assert pruned[op.inputs[0]].shape == pruned[op.inputs[1]].shape == pruned[op.outputs[0]].shape
    assert outputs(pruned, test_images["digits_mobilenetv2"][:4]).shape == (4, 10)


def test_refit_reestimates_the_biases_of_depthwise_layers_after_pruned_ones(models, calibration):
    graph = models["digits_mobilenetv2"]
    pruned, report = prune_channels(graph, 0.5, calibration_samples=calibration["digits_mobilenetv2"], reconstruct=True)
    kept = {layer: group["kept"] for group in report.groups for layer in group["layers"]}
    refit = 0
    for before, after in zip(graph.ops, pruned.ops):
        if after.type == "DEPTHWISE_CONV_2D" and pruned[after.inputs[1]].shape != graph[before.inputs[1]].shape:
            producer = next(op for op in pruned.ops if op.outputs[0] == _producer_of(pruned, after.inputs[0]))
            sliced_bias = graph[before.inputs[2]].data[kept[producer.outputs[0]]]
            refit += not np.allclose(pruned[after.inputs[2]].data, sliced_bias)
    assert refit >= 5


def _producer_of(graph, name: str) -> str:
    """The CONV_2D output a depthwise input comes from through padding and activations."""
    producers = {out: op for op in graph.ops for out in op.outputs}
    while producers[name].type not in ("CONV_2D", "FULLY_CONNECTED"):
        name = producers[name].inputs[0]
    return name


def test_magnitude_sparsity_with_calibration_refits_the_remaining_weights(models, calibration, test_images):
    graph, images = models["digits_mobilenetv2"], test_images["digits_mobilenetv2"]
    plain, plain_report = prune_magnitude(graph, 0.7)
    refit, report = prune_magnitude(graph, 0.7, calibration_samples=calibration["digits_mobilenetv2"])
    assert report.sparsity >= plain_report.sparsity >= 0.7 - 1e-4  # floor(0.7 n) zeros
    for layer in plain_report.layers:  # zeros stay zero, the rest move
        assert np.all(refit[layer.layer].data[plain[layer.layer].data == 0] == 0)
    assert accuracy(plain, "digits_mobilenetv2", images) < 0.5
    assert accuracy(refit, "digits_mobilenetv2", images) >= accuracy(graph, "digits_mobilenetv2", images) - 0.02


def test_reconstruction_needs_calibration_samples(models):
    with pytest.raises(ModelError, match="calibration"):
        prune_channels(models["digits_cnn"], 0.5, reconstruct=True)


# -- convert and the CLI --------------------------------------------------------------------------

def test_convert_prunes_a_float_tflite_too(tmp_path):
    source = tmp_path / "float.tflite"
    convert(SAMPLES / "digits_cnn.onnx", source)
    result = convert(source, prune_channels=0.5, reconstruct=True, calibration=SAMPLES / "digits_cnn_calib.npz")
    assert result.prune_reports and multiply_accumulates(result.graph) < 0.5 * multiply_accumulates(read_tflite(source.read_bytes()))


def test_cli_convert_prints_the_pruning_report_and_sizes(tmp_path):
    output = tmp_path / "pruned.tflite"
    run = CliRunner().invoke(cli, [
        "convert", str(SAMPLES / "digits_cnn.onnx"), "-o", str(output), "--prune-channels", "0.5",
        "--prune-importance", "activation", "--reconstruct", "--calibration", str(SAMPLES / "digits_cnn_calib.npz"),
        "--prune-sparsity", "0.5", "--prune-scope", "layer", "--sparse-encoding",
    ])
    assert run.exit_code == 0, run.output
    assert "channels 32 -> 16" in run.output and "sparsity  50.0%" in run.output
    assert "gzip" in run.output and output.stat().st_size > 0


def test_convert_reconstructs_with_chosen_channels_by_default_when_calibration_is_given():
    result = convert(SAMPLES / "digits_cnn.onnx", prune_channels=0.5, calibration=SAMPLES / "digits_cnn_calib.npz")
    assert result.prune_reports[0].method == "channel (reconstruction, sensitivity, reconstructed)"
    sparse = convert(SAMPLES / "digits_cnn.onnx", prune_sparsity=0.7, calibration=SAMPLES / "digits_cnn_calib.npz")
    assert sparse.prune_reports[0].method == "magnitude (global, reconstructed)"


def test_channel_pruning_to_a_weight_budget_keeps_at_most_that_many_weights(models, calibration):
    graph = models["digits_mobilenetv2"]
    budget = int(0.4 * weight_count(graph))
    pruned, _ = prune_channels(graph, 0.0, calibration_samples=calibration["digits_mobilenetv2"], reconstruct=True,
                               max_weights=budget)
    assert 0.95 * budget <= weight_count(pruned) <= budget


# -- compression to a budget ----------------------------------------------------------------------

def test_target_sizes_read_decimal_and_binary_units():
    assert parse_size("150kB") == 150_000 and parse_size("1.5 MiB") == 1_572_864 and parse_size("2000") == 2000
    with pytest.raises(ModelError, match="target-size"):
        parse_size("150 apples")


def budget_run(tmp_path, *options):
    output = tmp_path / "budget.tflite"
    run = CliRunner().invoke(cli, [
        "convert", str(SAMPLES / "digits_cnn.onnx"), "-o", str(output), "--calibration",
        str(SAMPLES / "digits_cnn_calib.npz"), "--eval", str(SAMPLES / "digits_cnn_test.npz"), "--json", *options,
    ])
    return run, output


def test_cli_convert_to_half_the_int8_size_finds_a_model_within_the_allowed_drop(tmp_path, test_images):
    run, output = budget_run(tmp_path, "--target-ratio", "0.5", "--max-drop", "1")
    assert run.exit_code == 0, run.output
    search = json.loads(run.output)
    chosen = search["steps"][search["chosen"]]
    assert output.stat().st_size == chosen["bytes"] <= 0.5 * search["reference_bytes"]
    assert chosen["drop"] <= 1.0 and chosen["fits"]
    interpreter = Interpreter(model_content=output.read_bytes())
    detail = interpreter.get_input_details()[0]
    images = test_images["digits_cnn"]
    if np.dtype(detail["dtype"]) != np.float32:
        scale, zero_point = detail["quantization"]
        images = np.clip(np.round(images / scale) + zero_point, -128, 127).astype(detail["dtype"])
    logits = interpreter.run([images])[interpreter.get_output_details()[0]["name"]]
    labels = np.load(SAMPLES / "digits_cnn_test.npz")["y"]
    assert 100 * np.mean(logits.argmax(1) == labels) == pytest.approx(chosen["metric"])


def test_cli_convert_refuses_a_budget_it_cannot_meet_and_writes_the_best_found(tmp_path):
    run, output = budget_run(tmp_path, "--target-size", "5kB", "--max-drop", "0.5")
    assert run.exit_code == 1
    assert "cannot meet 5,000 bytes within 0.5 points; best found:" in run.output
    search = json.loads(run.output[:run.output.rindex("}") + 1])
    assert not search["met"] and search["best"] is not None
    assert output.stat().st_size == search["steps"][search["best"]]["bytes"] <= 5000


def test_cli_budget_needs_labelled_eval_samples(tmp_path):
    output = tmp_path / "budget.tflite"
    run = CliRunner().invoke(cli, ["convert", str(SAMPLES / "digits_cnn.onnx"), "-o", str(output), "--calibration",
                                   str(SAMPLES / "digits_cnn_calib.npz"), "--target-ratio", "0.5"])
    assert run.exit_code == 2 and "--eval" in run.output and not output.exists()
