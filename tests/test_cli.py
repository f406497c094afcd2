"""The edgeq command line: conversions that work, and bad input that gets one clear line and exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeq.cli import main
from edgeq.testing.referees import run_litert

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def save_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def relu_model(path: Path, shape) -> Path:
    return save_model(
        path,
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )


def test_convert_writes_a_tflite_that_litert_runs(tmp_path):
    out = tmp_path / "mlp.tflite"
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out)
    assert result.exit_code == 0, result.output
    assert "input  input: [1, 64] float32" in result.output
    assert "output logits: [1, 10] float32" in result.output
    (y,) = run_litert(out.read_bytes(), [np.zeros((1, 64), np.float32)])
    assert y.shape == (1, 10)


def test_convert_reports_nhwc_layout_for_image_inputs(tmp_path):
    result = invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "cnn.tflite", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert summary["inputs"][0]["layout"].startswith("NHWC")


def test_convert_fixes_a_dynamic_batch_dimension_to_one_and_says_so(tmp_path):
    model = relu_model(tmp_path / "m.onnx", ["batch", 4])
    result = invoke("convert", model, "-o", tmp_path / "m.tflite")
    assert result.exit_code == 0, result.output
    assert "dynamic batch dimension 'batch' fixed to 1" in result.output


def test_convert_refuses_a_non_onnx_file_without_writing_output(tmp_path):
    bogus = tmp_path / "not_a_model.onnx"
    bogus.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    out = tmp_path / "out.tflite"
    result = invoke("convert", bogus, "-o", out)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "not_a_model.onnx" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_convert_refuses_a_missing_file(tmp_path):
    result = invoke("convert", tmp_path / "missing.onnx", "-o", tmp_path / "out.tflite")
    assert result.exit_code == 2
    assert "missing.onnx" in result.output


def test_convert_lists_every_unsupported_op_with_node_names(tmp_path):
    shape = [1, 4]
    model = save_model(
        tmp_path / "m.onnx",
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Hardmax", ["a"], ["b"], name="hardmax_1"),
            helper.make_node("Trilu", ["b"], ["c"], name="triangle"),
            helper.make_node("Hardmax", ["c"], ["y"], name="hardmax_2"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    out = tmp_path / "out.tflite"
    result = invoke("convert", model, "-o", out)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line
    for expected in ("Hardmax", "Trilu", "hardmax_1", "hardmax_2", "triangle"):
        assert expected in line
    assert not out.exists()


def test_convert_asks_for_input_shape_on_a_dynamic_non_batch_dimension(tmp_path):
    model = relu_model(tmp_path / "m.onnx", [1, 3, "height", "width"])
    out = tmp_path / "out.tflite"
    result = invoke("convert", model, "-o", out)
    assert result.exit_code == 2
    assert "--input-shape" in result.output and "'x'" in result.output
    assert not out.exists()


def test_convert_accepts_input_shape_for_dynamic_dimensions(tmp_path):
    model = relu_model(tmp_path / "m.onnx", [1, 3, "height", "width"])
    result = invoke("convert", model, "-o", tmp_path / "m.tflite", "--input-shape", "x:1,3,16,20", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["inputs"][0]["shape"] == [1, 16, 20, 3]


def test_convert_rejects_a_malformed_input_shape(tmp_path):
    model = relu_model(tmp_path / "m.onnx", [1, 4])
    result = invoke("convert", model, "-o", tmp_path / "m.tflite", "--input-shape", "x:1,four")
    assert result.exit_code == 2
    assert "x:1,four" in result.output


def test_convert_keeps_the_old_output_when_conversion_fails(tmp_path):
    out = tmp_path / "out.tflite"
    out.write_bytes(b"previous")
    bogus = tmp_path / "bad.onnx"
    bogus.write_bytes(b"junk")
    assert invoke("convert", bogus, "-o", out).exit_code == 2
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "out.tflite"]


def test_inspect_describes_ops_tensors_and_sizes(tmp_path):
    out = tmp_path / "cnn.tflite"
    assert invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", out).exit_code == 0
    result = invoke("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    description = json.loads(result.output)
    assert description["file_bytes"] == out.stat().st_size
    assert description["ops"]["CONV_2D"] >= 2
    assert description["constant_bytes"] > 0
    assert "TRANSPOSE" not in description["ops"]
    assert description["size_breakdown"]["total"] == out.stat().st_size


def test_inspect_refuses_a_file_that_is_not_tflite(tmp_path):
    bogus = tmp_path / "x.tflite"
    bogus.write_bytes(b"\x00" * 64)
    result = invoke("inspect", bogus)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize("engine", ["edgeq", "litert"])
def test_run_prints_top_classes_and_saves_outputs(tmp_path, engine):
    model = tmp_path / "mlp.tflite"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", model).exit_code == 0
    test = np.load(SAMPLES / "digits_mlp_test.npz")
    np.save(tmp_path / "x.npy", test["input"][:1])
    result = invoke("run", model, "--input", tmp_path / "x.npy", "--engine", engine, "-o", tmp_path / "y.npz", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    top_class = summary["outputs"]["logits"]["top_k"][0][0]
    saved = np.load(tmp_path / "y.npz")["logits"]
    assert int(np.argmax(saved)) == top_class


def test_run_names_a_missing_input_array(tmp_path):
    model = tmp_path / "mlp.tflite"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", model).exit_code == 0
    np.savez(tmp_path / "x.npz", a=np.zeros((1, 64), np.float32), b=np.zeros((1, 64), np.float32))
    result = invoke("run", model, "--input", tmp_path / "x.npz")
    assert result.exit_code == 2
    assert "input" in result.output


def test_every_command_has_help_with_an_example():
    for command in ("convert", "inspect", "run"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.output and f"edgeq {command}" in result.output


def test_convert_int8_writes_a_full_integer_model_that_litert_runs(tmp_path):
    out = tmp_path / "cnn_int8.tflite"
    result = invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", out, "--quantize", "int8",
                    "--calibration", SAMPLES / "digits_cnn_calib.npz", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["float_ops"] == []
    assert summary["ops"]["QUANTIZE"] == 1 and summary["ops"]["DEQUANTIZE"] == 1
    description = json.loads(invoke("inspect", out, "--json").output)
    conv_weights = [t for t in description["tensors"] if t["constant"] and len(t["shape"]) == 4]
    assert conv_weights and all(t["dtype"] == "int8" for t in conv_weights)
    (y,) = run_litert(out.read_bytes(), [np.zeros((1, 8, 8, 1), np.float32)], reference_kernels=True)
    assert y.shape == (1, 10)


def test_convert_int8_reports_the_outputs_sqnr_with_or_without_float_fallback(tmp_path):
    common = ("convert", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "cnn.tflite", "--quantize", "int8",
              "--calibration", SAMPLES / "digits_cnn_calib.npz", "--json")
    measured = json.loads(invoke(*common).output)["int8_output_sqnr_db"]
    assert measured["final"] > 20 and measured["ops_moved_by_error_search"] == 0
    check = json.loads(invoke(*common, "--float-fallback", "none").output)["int8_check"]
    assert check["sqnr_db"] > 20 and check["passed"]


def outlier_channel_model(tmp_path: Path) -> tuple:
    """(model, calibration file) of a model int8 wrecks: a hidden layer with one channel 1000 times the
    others, which the next layer ignores; the hidden layer's int8 scale rounds the others to zero."""
    rng = np.random.default_rng(11)
    w1 = rng.normal(size=(16, 8)).astype(np.float32)
    w1[:, 0] *= 1000.0
    w2 = rng.normal(size=(8, 4)).astype(np.float32)
    w2[0, :] = 0.0
    model = save_model(tmp_path / "outlier.onnx",
                       [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                       [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(32, 16)).astype(np.float32))
    return model, tmp_path / "calib.npz"


def test_convert_int8_under_the_sqnr_threshold_writes_the_file_and_exits_1_with_one_line(tmp_path):
    model, calib = outlier_channel_model(tmp_path)
    out = tmp_path / "outlier.tflite"
    result = invoke("convert", model, "-o", out, "--quantize", "int8", "--calibration", calib,
                    "--float-fallback", "none")
    assert result.exit_code == 1
    assert out.is_file()
    (line,) = [line for line in result.stderr.splitlines() if line and "calibrating" not in line]  # bars aside
    assert line.startswith("edgeq: error: int8 outputs' SQNR against float on calibration samples is ")
    assert "under --min-sqnr 20" in line and "worst layer: FULLY_CONNECTED 'y'" in line
    assert "calibration samples" in line and "--float-fallback auto" in line and "--min-sqnr 0" in line


def test_convert_int8_with_min_sqnr_0_accepts_any_sqnr(tmp_path):
    model, calib = outlier_channel_model(tmp_path)
    result = invoke("convert", model, "-o", tmp_path / "outlier.tflite", "--quantize", "int8", "--calibration",
                    calib, "--float-fallback", "none", "--min-sqnr", 0)
    assert result.exit_code == 0, result.output
    assert "(threshold 0 dB: passed)" in result.output


def test_convert_int8_json_carries_the_sqnr_check(tmp_path):
    model, calib = outlier_channel_model(tmp_path)
    result = invoke("convert", model, "-o", tmp_path / "outlier.tflite", "--quantize", "int8", "--calibration",
                    calib, "--float-fallback", "none", "--min-sqnr", 25, "--json")
    assert result.exit_code == 1
    check = json.loads(result.stdout)["int8_check"]
    assert check["sqnr_db"] < 25 and check["min_sqnr_db"] == 25 and check["passed"] is False
    assert check["worst_layer"] == "FULLY_CONNECTED 'y'" and check["worst_layer_drop_db"] > 20


def test_convert_int8_json_lists_the_error_searchs_trials(tmp_path):
    model, calib = outlier_channel_model(tmp_path)
    result = invoke("convert", model, "-o", tmp_path / "outlier.tflite", "--quantize", "int8", "--calibration",
                    calib, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (trial,) = summary["int8_output_sqnr_db"]["error_search_trials"]
    assert trial["ops"] == ["y"] and trial["op_type"] == "FULLY_CONNECTED" and trial["kept"]
    assert summary["int8_check"]["passed"]


def test_convert_json_is_strict_json_when_int8_is_exact(tmp_path):
    # An ArgMax of the input quantizes without error: SQNR is infinite, and JSON has no Infinity.
    model = save_model(tmp_path / "argmax.onnx", [helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                       [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32))
    result = invoke("convert", model, "-o", tmp_path / "argmax.tflite", "--quantize", "int8",
                    "--calibration", tmp_path / "calib.npz", "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    json.loads(result.output, parse_constant=refuse)


def test_convert_int8_with_uint8_io_has_integer_inputs_and_outputs(tmp_path):
    out = tmp_path / "mlp_uint8.tflite"
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out, "--quantize", "int8",
                    "--calibration", SAMPLES / "digits_mlp_calib.npz", "--io", "uint8", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["inputs"][0]["dtype"] == "uint8" and summary["outputs"][0]["dtype"] == "uint8"


def test_convert_int8_without_calibration_is_refused(tmp_path):
    out = tmp_path / "x.tflite"
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out, "--quantize", "int8")
    assert result.exit_code == 2 and "--calibration" in result.output
    assert not out.exists()


def test_convert_int8_names_calibration_data_of_the_wrong_shape(tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.zeros((10, 63), np.float32))
    out = tmp_path / "x.tflite"
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out, "--quantize", "int8",
                    "--calibration", tmp_path / "calib.npz")
    assert result.exit_code == 2 and "input" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_convert_int8_refuses_a_pickled_calibration_file(tmp_path):
    np.savez(tmp_path / "calib.npz", input=np.array([{"a": 1}], dtype=object))
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", tmp_path / "x.tflite", "--quantize", "int8",
                    "--calibration", tmp_path / "calib.npz")
    assert result.exit_code == 2 and "pickle" in result.output.lower()


def test_convert_debug_prints_per_tensor_error_worst_first(tmp_path):
    result = invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", tmp_path / "x.tflite", "--quantize", "int8",
                    "--calibration", SAMPLES / "digits_cnn_calib.npz", "--calibration-samples", "32", "--debug")
    assert result.exit_code == 0, result.output
    assert "SQNR dB" in result.output and "hurt most:" in result.output


def test_convert_debug_without_int8_is_refused(tmp_path):
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", tmp_path / "x.tflite", "--debug")
    assert result.exit_code == 2 and "--quantize int8" in result.output


def test_a_float_tflite_quantizes_like_its_onnx_source(tmp_path):
    calibration = SAMPLES / "digits_cnn_calib.npz"
    float_file = tmp_path / "cnn.tflite"
    assert invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", float_file).exit_code == 0
    from_tflite, from_onnx = tmp_path / "a.tflite", tmp_path / "b.tflite"
    result = invoke("convert", float_file, "-o", from_tflite, "--quantize", "int8", "--calibration", calibration)
    assert result.exit_code == 0, result.output
    assert invoke("convert", SAMPLES / "digits_cnn.onnx", "-o", from_onnx, "--quantize", "int8",
                  "--calibration", calibration).exit_code == 0
    x = np.load(SAMPLES / "digits_cnn_test.npz")["input"][:1].transpose(0, 2, 3, 1)
    (a,) = run_litert(from_tflite.read_bytes(), [x], reference_kernels=True)
    (b,) = run_litert(from_onnx.read_bytes(), [x], reference_kernels=True)
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def mlp_and_sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", folder / "mlp.tflite").exit_code == 0
    np.save(folder / "x.npy", np.load(SAMPLES / "digits_mlp_test.npz")["input"][:1])
    return folder / "mlp.tflite", folder / "x.npy"


def test_bench_gives_latency_and_memory_of_each_engine_and_their_ratios(mlp_and_sample):
    model, _ = mlp_and_sample
    result = invoke("bench", model, "--engine", "both", "--runs", 5, "--json")
    assert result.exit_code == 0, result.output
    edgeq, litert = json.loads(result.output)["engines"]
    assert (edgeq["engine"], litert["engine"]) == ("edgeq", "litert")
    for figures in (edgeq, litert):
        assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["p90_ms"]
        assert figures["peak_rss_mb"] >= figures["rss_before_load_mb"] > 0
    assert edgeq["latency_ratio_to_litert"] == pytest.approx(edgeq["median_ms"] / litert["median_ms"])


def test_bench_times_a_given_input_through_the_run_loader(mlp_and_sample):
    model, x = mlp_and_sample
    result = invoke("bench", model, "--input", x, "--runs", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["input"] == str(x)
    result = invoke("bench", model, "--input", SAMPLES / "digits_cnn_test.npz", "--runs", 3)
    assert result.exit_code == 2 and "has shape [450, 1, 8, 8], the model wants [1, 64]" in result.output


def test_run_names_an_input_of_another_rank_than_the_models(mlp_and_sample):
    result = invoke("run", mlp_and_sample[0], "--input", SAMPLES / "digits_cnn_test.npz")
    assert result.exit_code == 2, result.output
    assert "input 'input' has shape [450, 1, 8, 8], the model wants [1, 64]" in result.output


def test_bench_refuses_image_options_without_an_image(mlp_and_sample):
    result = invoke("bench", mlp_and_sample[0], "--mean", "0.5")
    assert result.exit_code == 2 and "apply to image inputs" in result.output
