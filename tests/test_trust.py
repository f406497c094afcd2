"""Nothing a user does loses their work, hangs, or gets a misleading answer."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeq.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_lines(result) -> list:
    return [line for line in result.output.splitlines() if line.startswith("edgeq: error:")]


# -- the output never replaces a source ------------------------------------------------------

def test_convert_refuses_to_write_over_its_onnx_model(tmp_path):
    model = shutil.copy(SAMPLES / "digits_mlp.onnx", tmp_path / "m.onnx")
    before = Path(model).read_bytes()
    result = invoke("convert", model, "-o", model)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "the model itself" in result.output
    assert Path(model).read_bytes() == before


def test_convert_refuses_to_write_over_its_tflite_model(tmp_path):
    model = tmp_path / "m.tflite"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", model).exit_code == 0
    before = model.read_bytes()
    result = invoke("convert", model, "-o", tmp_path / "." / "m.tflite", "--quantize", "dynamic")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "the model itself" in result.output
    assert model.read_bytes() == before


def test_convert_refuses_to_write_over_its_calibration_file(tmp_path):
    calibration = shutil.copy(SAMPLES / "digits_mlp_calib.npz", tmp_path / "c.tflite")
    before = Path(calibration).read_bytes()
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", calibration, "--quantize", "int8",
                    "--calibration", calibration)
    assert result.exit_code == 2
    assert "the calibration file itself" in result.output
    assert Path(calibration).read_bytes() == before


@pytest.mark.parametrize("name", ["other.onnx", "samples.npz", "MODEL.ONNX"])
def test_convert_refuses_an_output_named_like_a_source_file(tmp_path, name):
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", tmp_path / name)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and ".tflite" in result.output
    assert not (tmp_path / name).exists()


def test_convert_refuses_to_replace_an_existing_file_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", notes)
    assert result.exit_code == 2
    assert "not a TFLite model" in result.output
    assert notes.read_text() == "my notes"


def test_convert_replaces_an_earlier_tflite_output(tmp_path):
    out = tmp_path / "m.bin"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out).exit_code == 0
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", out, "--quantize", "float16").exit_code == 0


# -- invoke raises only edgeq's own errors ---------------------------------------------------

def test_a_kernel_failing_mid_invoke_raises_invoke_error_naming_the_op():
    import numpy as np

    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.ir import Graph, InvokeError, ModelError, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph = Graph([Tensor("x", (1, 6)), Tensor("shape", (2,), np.int32), Tensor("y", (2, 3))],
                  [Op("RESHAPE", ["x", "shape"], ["y"])], ["x", "shape"], ["y"])
    interpreter = Interpreter(model_content=write_tflite(graph))
    interpreter.allocate_tensors()
    x, shape = interpreter.get_input_details()
    interpreter.set_tensor(x["index"], np.ones((1, 6), np.float32))
    interpreter.set_tensor(shape["index"], np.array([4, 4], np.int32))
    with pytest.raises(InvokeError, match=r"op #0 \(RESHAPE.*cannot reshape") as raised:
        interpreter.invoke()
    assert isinstance(raised.value, ModelError) and isinstance(raised.value, RuntimeError)


def test_the_validator_refuses_a_reshape_whose_element_counts_differ():
    import numpy as np

    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.ir import Graph, ModelError, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph = Graph([Tensor("x", (1, 0, 4)), Tensor("shape", (2,), np.int32, np.array([1, 128], np.int32)),
                   Tensor("y", (1, 128))], [Op("RESHAPE", ["x", "shape"], ["y"])], ["x"], ["y"])
    with pytest.raises(ModelError, match=r"RESHAPE.*cannot reshape input 'x' \[1, 0, 4\] \(0 values\) to \[1, 128\]"):
        Interpreter(model_content=write_tflite(graph))


# -- bench -------------------------------------------------------------------------------------

def token_id_model(path: Path) -> Path:
    import numpy as np

    from edgeq.runtime.ir import Graph, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    table = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    graph = Graph([Tensor("input_ids", (1, 8), np.int32), Tensor("ids", (8,), np.int32),
                   Tensor("shape", (1,), np.int32, np.array([8], np.int32)),
                   Tensor("table", (30, 4), data=table), Tensor("embedded", (8, 4))],
                  [Op("RESHAPE", ["input_ids", "shape"], ["ids"]),
                   Op("GATHER", ["table", "ids"], ["embedded"], {"axis": 0})], ["input_ids"], ["embedded"])
    path.write_bytes(write_tflite(graph))
    return path


@pytest.mark.parametrize("engine", ["edgeq", "litert"])
def test_bench_feeds_token_id_inputs_valid_ids(tmp_path, engine):
    model = token_id_model(tmp_path / "ids.tflite")
    result = invoke("bench", model, "--engine", engine, "--runs", "3", "--json")
    assert result.exit_code == 0, result.output


def test_bench_both_engines_prints_the_error_prefix_once(tmp_path):
    result = invoke("bench", tmp_path / "missing.tflite", "--engine", "both", "--runs", "1")
    assert result.exit_code == 2
    assert result.output.count("edgeq: error:") == 1 and "missing.tflite" in result.output


# -- options that would be silently ignored --------------------------------------------------

@pytest.mark.parametrize("options", [
    ["--calibration", SAMPLES / "digits_mlp_calib.npz"],
    ["--calibration", SAMPLES / "digits_mlp_calib.npz", "--quantize", "dynamic"],
    ["--calibration-method", "entropy"],
    ["--calibration-method", "minmax", "--quantize", "float16"],
])
def test_convert_refuses_calibration_options_nothing_uses(tmp_path, options):
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", tmp_path / "m.tflite", *options)
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1 and "calibration" in result.output
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("top_k", ["0", "-3"])
def test_run_refuses_a_top_k_below_one(tmp_path, top_k):
    import numpy as np

    model = tmp_path / "m.tflite"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", model).exit_code == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    result = invoke("run", model, "--input", tmp_path / "x.npy", "--top-k", top_k)
    assert result.exit_code == 2 and "--top-k" in result.output


def test_channel_pruning_with_calibration_data_reconstructs_by_default(tmp_path):
    common = [SAMPLES / "digits_cnn.onnx", "--prune-channels", "0.5", "--calibration",
              SAMPLES / "digits_cnn_calib.npz", "--json"]
    import json

    default = json.loads(invoke("convert", "-o", tmp_path / "a.tflite", *common).output)
    opted_out = json.loads(invoke("convert", "-o", tmp_path / "b.tflite", "--no-reconstruct", *common).output)
    assert default["pruning"][0]["method"] == "channel (reconstruction, sensitivity, reconstructed)"
    assert opted_out["pruning"][0]["method"] == "channel (l1)"


# -- report ------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels_key", ["y", None])
def test_report_eval_uses_the_one_array_left_besides_the_labels_for_a_one_input_model(tmp_path, labels_key):
    import numpy as np

    from edgeq.converter.api import load_graph
    from edgeq.converter.report.eval_data import load_eval

    stored = np.load(SAMPLES / "digits_mlp_test.npz")
    (image_key,) = [key for key in stored.files if key != "y"]
    np.savez(tmp_path / "test.npz", x=stored[image_key], y=stored["y"])
    graph, _ = load_graph(SAMPLES / "digits_mlp.onnx")
    data = load_eval(tmp_path / "test.npz", graph, labels_key)
    assert data.count == len(stored["y"])
    np.testing.assert_array_equal(data.labels, stored["y"])
    np.testing.assert_array_equal(data.inputs[graph.inputs[0]], stored[image_key])


# -- error messages that say what happened -----------------------------------------------------

@pytest.fixture
def mlp_tflite(tmp_path):
    model = tmp_path / "m.tflite"
    assert invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", model).exit_code == 0
    return model


def test_a_text_file_given_as_calibration_is_called_not_numpy_not_pickled(tmp_path):
    text = tmp_path / "calib.npz"
    text.write_text("x,y\n1,2\n")
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", tmp_path / "m.tflite", "--quantize", "int8",
                    "--calibration", text)
    assert result.exit_code == 2
    assert "not a numpy .npy/.npz file" in result.output and "pickle" not in result.output


@pytest.mark.parametrize("content", [b"\x80\x04K\x01.", b"garbage that is no array"])
def test_numpy_advice_to_load_pickles_never_reaches_the_user(tmp_path, mlp_tflite, content):
    bad = tmp_path / "x.npy"
    bad.write_bytes(content)
    result = invoke("run", mlp_tflite, "--input", bad)
    assert result.exit_code == 2 and len(error_lines(result)) == 1
    assert "allow_pickle" not in result.output


@pytest.mark.parametrize("command", ["run", "inspect", "bench", "convert"])
def test_tflite_reader_errors_name_the_file(tmp_path, command):
    import numpy as np

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(4))
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    extra = {"run": ["--input", tmp_path / "x.npy"], "convert": ["-o", tmp_path / "out.tflite"]}.get(command, [])
    result = invoke(command, broken, *extra)
    assert result.exit_code == 2
    assert f"{broken}:" in result.output


def test_an_unwritable_output_names_the_users_path_not_a_temporary_file():
    result = invoke("convert", SAMPLES / "digits_mlp.onnx", "-o", "/proc/x.tflite")  # no files can be made there
    assert result.exit_code == 2
    assert "/proc/x.tflite:" in result.output and ".tmp" not in result.output


def test_every_missing_input_shape_is_reported_at_once(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["input_ids", "attention_mask"], ["s"]), helper.make_node("Add", ["s", "token_type_ids"], ["y"])],
        "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    result = invoke("convert", model, "-o", tmp_path / "m.tflite")
    assert result.exit_code == 2 and len(error_lines(result)) == 1
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert f"--input-shape {name}:1,<sequence>" in result.output


def test_printing_a_conversion_result_is_one_short_line(tmp_path):
    from edgeq.converter.api import convert

    result = convert(str(SAMPLES / "digits_mlp.onnx"), tmp_path / "m.tflite")
    text = repr(result)
    assert len(text) < 300 and "\n" not in text
    assert f"{len(result.content):,} bytes" in text and "input input [1, 64] float32" in text


def test_the_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    import re

    readme = (SAMPLES.parent / "README.md").read_text()
    (snippet,) = re.findall(r"## Python\n\n```python\n(.*?)```", readme, re.S)
    (tmp_path / "sample_models").symlink_to(SAMPLES)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (1, 10)
    assert namespace["every_tensor"]["logits"].shape[0] == len(namespace["batch"])


# -- run ---------------------------------------------------------------------------------------

def test_run_reports_the_steady_invoke_time_beside_the_first_calls(tmp_path, mlp_tflite):
    import json

    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    text = invoke("run", mlp_tflite, "--input", tmp_path / "x.npy").output
    assert "median of 10 calls after the first" in text
    summary = json.loads(invoke("run", mlp_tflite, "--input", tmp_path / "x.npy", "--json").output)
    assert summary["timed_calls"] == 10 and summary["first_call_seconds"] > 0 and summary["seconds"] > 0


def relu_tflite(path: Path, name: str) -> Path:
    import numpy as np

    from edgeq.runtime.ir import Graph, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph = Graph([Tensor("x", (1, 4)), Tensor(name, (1, 4))], [Op("RELU", ["x"], [name])], ["x"], [name])
    path.write_bytes(write_tflite(graph))
    np.save(path.with_suffix(".npy"), np.array([[0.5, -1.0, 2.0, 3.0]], np.float32))
    return path


def test_run_prints_no_top_k_for_an_output_that_is_not_class_scores(tmp_path):
    model = relu_tflite(tmp_path / "boxes.tflite", "box")
    result = invoke("run", model, "--input", model.with_suffix(".npy"))
    assert result.exit_code == 0 and "top-" not in result.output


def test_run_prints_top_k_for_logits_and_when_asked(tmp_path):
    logits = relu_tflite(tmp_path / "logits.tflite", "logits")
    assert "top-4:" in invoke("run", logits, "--input", logits.with_suffix(".npy")).output
    boxes = relu_tflite(tmp_path / "boxes.tflite", "box")
    assert "top-2: 3: 3, 2: 2" in invoke("run", boxes, "--input", boxes.with_suffix(".npy"), "--top-k", "2").output


def test_debug_table_is_worst_first_with_whole_tensor_names():
    from edgeq.converter.quant_debug import TensorError, format_table

    long_name = "/features/features.3/body/body.2/Clip_output_0_and_then_some_more"
    errors = [TensorError("a", "CONV_2D 'a'", 40.0, 0.1, 1.0, 0.1),
              TensorError(long_name, f"DEPTHWISE_CONV_2D '{long_name}'", 12.5, 0.3, 3.0, 0.1),
              TensorError("c", "ADD 'c'", 25.0, 0.2, 2.0, 0.1)]
    rows = format_table(errors).splitlines()[1:]
    assert [row.split()[-1] for row in rows] == [long_name, "c", "a"]
    assert rows[0].split()[3] == "DEPTHWISE_CONV_2D"


def test_layer_sqnr_plot_shows_whole_names_and_labels_its_20_db_line():
    import matplotlib.pyplot as plt

    from edgeq.converter.report.plots import layer_sqnr_figure

    names = ["/features/features.3/body/body.2/Clip_output_0_with_a_long_tail_to_keep", "short",
             "x" * 120]
    figure = layer_sqnr_figure([{"tensor": name, "sqnr_db": 10.0 + i} for i, name in enumerate(names)])
    try:
        (axes,) = figure.axes
        shown = [label.get_text().replace("\n", "") for label in axes.get_yticklabels()]
        assert shown == names
        assert all(len(line) <= 48 for label in axes.get_yticklabels() for line in label.get_text().split("\n"))
        assert any("20 dB" in text.get_text() for text in axes.get_legend().get_texts())
    finally:
        plt.close(figure)


def fake_report(variants) -> dict:
    """The parts of report.json the variants table and the pick lines read."""
    base_size, base_ms = variants[0][1], variants[0][3]
    return {"headline_metric": "top1", "variants": [
        {"name": name, "size": {"bytes": size, "gzip_bytes": size}, "accuracy": {"edgeq": {"top1": top1}},
         "latency_ms": {"edgeq": {"median": ms}}, "engine_agreement": {"ok": True, "checked": False},
         "memory": {}, "pareto": True,
         "vs_float32": {"size_ratio": size / base_size, "score_difference": top1 - variants[0][2],
                        "speedup": {"edgeq": base_ms / ms}}}
        for name, size, top1, ms in variants]}


def test_report_prints_the_difference_with_the_accuracys_decimals():
    from edgeq.converter.report.render import summary_table

    header, rows = summary_table(fake_report([("float32", 4000, 0.9733, 1.0), ("int8", 1000, 0.97, 0.5)]))
    accuracy, delta = header.index("top-1 accuracy (edgeq)"), header.index("Δ vs float32")
    assert [(row[accuracy], row[delta]) for row in rows] == [("0.9733", "+0.0000"), ("0.97", "-0.00")]


def test_report_says_which_variant_to_pick():
    from edgeq.converter.report.render import pick_lines

    lines = pick_lines(fake_report([("float32", 4000, 0.97, 1.0), ("float16", 2000, 0.97, 1.1),
                                    ("int8", 1000, 0.965, 0.5), ("int8-prune-50", 500, 0.50, 0.4)]))
    assert lines[0].startswith("Which to pick: the smallest within 1% of float32's top-1 accuracy is int8 (")
    assert lines[1].startswith("Smallest of all: int8-prune-50 (")
    assert lines[2].startswith("Fastest on edgeq: int8-prune-50 (")


def test_profile_has_one_entry_per_op_of_the_model_folded_pads_included():
    import numpy as np

    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.ir import Graph, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    graph = Graph([Tensor("x", (1, 4, 4, 1)),
                   Tensor("paddings", (4, 2), np.int32, np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32)),
                   Tensor("padded", (1, 6, 6, 1)), Tensor("w", (1, 3, 3, 1), data=np.ones((1, 3, 3, 1), np.float32)),
                   Tensor("b", (1,), data=np.zeros(1, np.float32)), Tensor("y", (1, 4, 4, 1))],
                  [Op("PAD", ["x", "paddings"], ["padded"]),
                   Op("CONV_2D", ["padded", "w", "b"], ["y"], {"padding": "VALID", "stride_w": 1, "stride_h": 1,
                                                               "fused_activation_function": "NONE"})],
                  ["x"], ["y"])
    interpreter = Interpreter(model_content=write_tflite(graph))
    interpreter.allocate_tensors()
    entries = interpreter.profile(runs=1)
    assert [(e["index"], e["type"]) for e in entries] == [(0, "PAD"), (1, "CONV_2D")]
    assert entries[0]["folded_into"] == 1 and entries[0]["seconds"] == 0.0


def test_a_usage_error_is_one_line_in_edgeqs_form():
    result = invoke_with_stderr("convert", SAMPLES / "digits_mlp.onnx")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "edgeq: error: Missing option '-o' / '--output'. (see 'edgeq convert --help')"]


def invoke_with_stderr(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_ctrl_c_inside_a_compiled_kernel_stays_an_interrupt():
    import numpy as np

    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.ir import Graph, Op, Tensor
    from edgeq.runtime.tflite_format.writer import write_tflite

    interpreter = Interpreter(model_content=write_tflite(
        Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4))], [Op("RELU", ["x"], ["y"])], ["x"], ["y"])))
    interpreter.allocate_tensors()

    def interrupted_in_compiled_code(*_):  # what compiled code hit by SIGINT may raise
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("CPUDispatcher(<function im2col>) returned a result with an exception set")

    _, inputs, outputs, released = interpreter._invoke_steps[0]
    interpreter._invoke_steps[0] = (interrupted_in_compiled_code, inputs, outputs, released)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones((1, 4), np.float32))
    with pytest.raises(KeyboardInterrupt):
        interpreter.invoke()
