"""Untrusted models: every bad file is refused with one ModelError line naming the node, tensor or file
at fault, through the API and the CLI (exit code 2, no traceback, no output file); nothing outside the
model's folder is ever read; the runtime refuses graphs it must not run; misuse of the interpreter
gives LiteRT's own messages.

The malicious models are built here with onnx.helper and the IR, not kept as binaries.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeq.converter.api import convert
from edgeq.cli import main
from edgeq.converter.onnx_import.load import MAX_OPSET
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, ModelError, Op, QuantParams, Tensor

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


# -- a corpus of bad ONNX models ---------------------------------------------------------------

def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _relu(opset=13):
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_value("x", [1, 4])], [_value("y", [1, 4])],
                  opset=opset)


def _matmul_with_external_weights(location, folder: Path, write_data=True, length=None):
    weights = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    entries = {"location": location, "offset": "0", "length": str(48 if length is None else length)}
    for key, value in entries.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    if write_data:
        (folder / "weights.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                  [_value("x", [1, 4])], [_value("y", [1, 3])], [weights])


def _save(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def corrupt_bytes(folder):
    return (folder / "noise.onnx").write_bytes(bytes(range(256)) * 7) and folder / "noise.onnx"


def truncated(folder):
    content = _relu().SerializeToString()
    path = folder / "truncated.onnx"
    path.write_bytes(content[: len(content) // 2])
    return path


def empty_file(folder):
    path = folder / "empty.onnx"
    path.write_bytes(b"")
    return path


def missing_initializer(folder):
    return _save(_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                        [_value("x", [1, 4])], [_value("y", [1, 3])]), folder / "m.onnx")


def cycle(folder):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    return _save(_model(nodes, [_value("x", [1, 4])], [_value("b", [1, 4])]), folder / "m.onnx")


def out_of_order(folder):
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="late"), helper.make_node("Relu", ["x"], ["a"], name="early")]
    return _save(_model(nodes, [_value("x", [1, 4])], [_value("y", [1, 4])]), folder / "m.onnx")


def unproduced_output(folder):
    return _save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                        [_value("x", [1, 4])], [_value("z", [1, 4])]), folder / "m.onnx")


def produced_twice(folder):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="one"), helper.make_node("Neg", ["x"], ["y"], name="two")]
    return _save(_model(nodes, [_value("x", [1, 4])], [_value("y", [1, 4])]), folder / "m.onnx")


def traversal_relative(folder):
    return _save(_matmul_with_external_weights("../../etc/passwd", folder), folder / "m.onnx")


def traversal_absolute(folder):
    return _save(_matmul_with_external_weights("/etc/passwd", folder), folder / "m.onnx")


def traversal_symlink(folder):
    os.symlink("/etc/passwd", folder / "link.bin")
    return _save(_matmul_with_external_weights("link.bin", folder), folder / "m.onnx")


def external_file_missing(folder):
    return _save(_matmul_with_external_weights("absent.bin", folder), folder / "m.onnx")


def external_range_past_end(folder):
    return _save(_matmul_with_external_weights("weights.bin", folder, length=4096), folder / "m.onnx")


def opset_too_old(folder):
    return _save(_relu(opset=5), folder / "m.onnx")


def opset_too_new(folder):
    return _save(_relu(opset=MAX_OPSET + 1), folder / "m.onnx")


def no_default_opset(folder):
    model = _relu()
    model.opset_import[0].domain = "com.example"
    return _save(model, folder / "m.onnx")


def type_mismatch(folder):
    b = numpy_helper.from_array(np.ones((1, 4), np.int64), "b")
    return _save(_model([helper.make_node("Add", ["x", "b"], ["y"], name="add")],
                        [_value("x", [1, 4])], [_value("y", [1, 4])], [b]), folder / "m.onnx")


def zero_size_input(folder):
    return _save(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                        [_value("x", [1, 0])], [_value("y", [1, 0])]), folder / "m.onnx")


def zero_size_weights(folder):
    w = numpy_helper.from_array(np.zeros((4, 0), np.float32), "w")
    return _save(_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                        [_value("x", [1, 4])], [_value("y", [1, 0])], [w]), folder / "m.onnx")


def bad_raw_data(folder):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    w.raw_data = w.raw_data[:7]
    return _save(_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
                        [_value("x", [1, 4])], [_value("y", [1, 3])], [w]), folder / "m.onnx")


def not_a_file(folder):
    return folder / "absent.onnx"


# Each bad model, and what its one-line error must name.
BAD_ONNX = {
    "corrupt_bytes": (corrupt_bytes, "noise.onnx"),
    "truncated": (truncated, "truncated.onnx"),
    "empty_file": (empty_file, "empty.onnx"),
    "missing_initializer": (missing_initializer, "'matmul' (MatMul) reads 'w', which no node produces"),
    "cycle": (cycle, "'first' (Add) reads 'b' before node 'second' produces it"),
    "out_of_order": (out_of_order, "'late' (Relu) reads 'a' before node 'early' produces it"),
    "unproduced_output": (unproduced_output, "graph output 'z'"),
    "produced_twice": (produced_twice, "tensor 'y' is produced by node 'one' and again by node 'two'"),
    "traversal_relative": (traversal_relative, "'../../etc/passwd' is outside the model's folder"),
    "traversal_absolute": (traversal_absolute, "'/etc/passwd' is outside the model's folder"),
    "traversal_symlink": (traversal_symlink, "'link.bin' leads outside the model's folder"),
    "external_file_missing": (external_file_missing, "external data file 'absent.bin' not found"),
    "external_range_past_end": (external_range_past_end, "tensor 'w': external data range 0+4096"),
    "opset_too_old": (opset_too_old, "opset 5 is too old"),
    "opset_too_new": (opset_too_new, f"opset {MAX_OPSET + 1} is newer"),
    "no_default_opset": (no_default_opset, "no opset of the default ONNX domain"),
    "type_mismatch": (type_mismatch, "'add'"),
    "zero_size_input": (zero_size_input, "input 'x'"),
    "zero_size_weights": (zero_size_weights, "graph output 'y' has shape [1, 0]"),
    "bad_raw_data": (bad_raw_data, "initializer 'w'"),
    "not_a_file": (not_a_file, "absent.onnx"),
}


@pytest.mark.parametrize("case", list(BAD_ONNX))
def test_bad_onnx_model_gives_one_clear_model_error(case, tmp_path):
    build, names = BAD_ONNX[case]
    path = build(tmp_path)
    with pytest.raises(ModelError) as caught:
        convert(str(path), tmp_path / "out.tflite")
    message = str(caught.value)
    assert names in message
    assert "\n" not in message
    assert not (tmp_path / "out.tflite").exists()


@pytest.mark.parametrize("case", list(BAD_ONNX))
def test_bad_onnx_model_on_the_cli_exits_2_with_one_line(case, tmp_path):
    build, names = BAD_ONNX[case]
    path = build(tmp_path)
    out = tmp_path / "out.tflite"
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeq: error: ") and names in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tflite")) == []


def test_no_external_file_outside_the_folder_is_opened(tmp_path, monkeypatch):
    """The path is refused before any read: opening /etc/passwd would be a failure even if refused later."""
    import builtins

    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    path = traversal_relative(tmp_path)
    monkeypatch.setattr(builtins, "open", recording_open)
    with pytest.raises(ModelError):
        convert(str(path))
    assert not [f for f in opened if "passwd" in f]


def test_external_data_inside_the_folder_is_read(tmp_path):
    path = _save(_matmul_with_external_weights("weights.bin", tmp_path), tmp_path / "m.onnx")
    result = convert(str(path))
    x = np.arange(4, dtype=np.float32)[None]
    np.testing.assert_allclose(Interpreter(model_content=result.content).run([x])[result.graph.outputs[0]],
                               x @ np.ones((4, 3), np.float32))


# -- graphs the runtime must refuse ------------------------------------------------------------

def _tiny(tensors=None, ops=None, inputs=("x",), outputs=("y",)):
    tensors = tensors or [Tensor("x", (1, 4)), Tensor("y", (1, 4))]
    ops = ops if ops is not None else [Op("RELU", ["x"], ["y"])]
    return Graph(tensors, ops, inputs, outputs)


def _pad_graph(paddings):
    return Graph([Tensor("x", (1, 4)), Tensor("p", (2, 2), np.int32, np.array(paddings, np.int32)),
                  Tensor("y", (1, 4))], [Op("PAD", ["x", "p"], ["y"], name="pad")], ["x"], ["y"])


BAD_GRAPHS = {
    "huge_dimension": (lambda: _tiny([Tensor("x", (1, 2**31)), Tensor("y", (1, 4))]), "tensor 'x'"),
    "negative_dimension": (lambda: _tiny([Tensor("x", (1, -3)), Tensor("y", (1, 4))]), "tensor 'x'"),
    "rank_9": (lambda: _tiny([Tensor("x", (1,) * 9), Tensor("y", (1, 4))]), "rank 9"),
    "too_many_elements": (lambda: _tiny([Tensor("x", (2**16, 2**16)), Tensor("y", (1, 4))]), "tensor 'x'"),
    "padding_asks_for_terabytes": (lambda: _pad_graph([[0, 0], [0, 2**31 - 2]]), "op #0 (PAD 'pad')"),
    "negative_padding": (lambda: _pad_graph([[0, 0], [-1, 0]]), "PAD 'pad'"),
    "cycle": (lambda: _tiny([Tensor("x", (1, 4)), Tensor("a", (1, 4)), Tensor("y", (1, 4))],
                            [Op("ADD", ["x", "y"], ["a"]), Op("RELU", ["a"], ["y"])]), "reads tensor 'y' before op #1"),
    "unwritten_tensor": (lambda: _tiny([Tensor("x", (1, 4)), Tensor("ghost", (1, 4)), Tensor("y", (1, 4))],
                                       [Op("ADD", ["x", "ghost"], ["y"])]), "reads tensor 'ghost', which no op writes"),
    "written_twice": (lambda: _tiny(ops=[Op("RELU", ["x"], ["y"]), Op("TANH", ["x"], ["y"])]), "written by op #0"),
    "writes_an_input": (lambda: _tiny(ops=[Op("RELU", ["y"], ["x"])], inputs=("x", "y")), "writes tensor 'x'"),
    "option_of_wrong_type": (lambda: _tiny([Tensor("x", (1, 4)), Tensor("y", (1, 4))],
                                           [Op("SOFTMAX", ["x"], ["y"], {"beta": "hot"})]), "option 'beta'"),
    "enum_option_unknown": (lambda: _tiny(ops=[Op("ADD", ["x", "x"], ["y"], {"fused_activation_function": "SPARKLE"})]),
                            "option 'fused_activation_function'"),
    "too_few_inputs": (lambda: _tiny(ops=[Op("ADD", ["x"], ["y"])]), "op #0 (ADD): 1 inputs, expected 2"),
    "required_input_omitted": (lambda: _tiny(ops=[Op("ADD", ["x", ""], ["y"])]), "input 1 is required"),
    "conv_of_rank_2": (lambda: _tiny([Tensor("x", (1, 4)), Tensor("w", (2, 1, 1, 4), data=np.ones((2, 1, 1, 4), np.float32)),
                                      Tensor("y", (1, 4))], [Op("CONV_2D", ["x", "w"], ["y"])]), "rank 4 expected"),
    "nan_scale": (lambda: _tiny([Tensor("x", (1, 4), np.int8, quant=QuantParams(np.nan, 0)), Tensor("y", (1, 4), np.int8)],
                                [Op("RELU", ["x"], ["y"])]), "tensor 'x': quantization scales must be finite"),
    "zero_activation_scale": (lambda: _tiny([Tensor("x", (1, 4), np.int8, quant=QuantParams(0.0, 0)),
                                             Tensor("y", (1, 4), np.int8)]), "scale must be positive"),
    "zero_point_out_of_range": (lambda: _tiny([Tensor("x", (1, 4), np.int8, quant=QuantParams(0.1, 300)),
                                               Tensor("y", (1, 4), np.int8)]), "zero point [300]"),
    "scales_do_not_match_axis": (lambda: _tiny([Tensor("x", (1, 4), np.int8, quant=QuantParams([0.1, 0.2, 0.3], 0, axis=1)),
                                                Tensor("y", (1, 4), np.int8)]), "3 per-channel scales"),
    "unknown_output": (lambda: _tiny(outputs=("nowhere",)), "graph output 'nowhere'"),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_runtime_refuses_a_graph_it_must_not_run(case):
    build, names = BAD_GRAPHS[case]
    with pytest.raises(ModelError) as caught:
        Interpreter.from_graph(build())
    assert names in str(caught.value)


def test_memory_limit_refuses_a_model_whose_tensors_do_not_fit():
    content = (SAMPLES / "digits_cnn.onnx")
    model = convert(str(content)).content
    Interpreter(model_content=model).allocate_tensors()  # fits the machine
    with pytest.raises(ModelError, match=r"need [\d,]+ bytes, more than the limit of 10,000"):
        Interpreter(model_content=model, max_memory_bytes=10_000)


def test_cli_run_max_memory(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(convert(str(SAMPLES / "digits_cnn.onnx")).content)
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8, 1), np.float32))
    refused = CliRunner().invoke(main, ["run", str(model), "-i", str(tmp_path / "x.npy"), "--max-memory", "10000"])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "more than the limit" in refused.output
    ran = CliRunner().invoke(main, ["run", str(model), "-i", str(tmp_path / "x.npy"), "--max-memory", "512M"])
    assert ran.exit_code == 0, ran.output


def test_a_file_declaring_a_huge_tensor_is_refused_before_allocation():
    graph = _tiny([Tensor("x", (1, 4)), Tensor("y", (1, 4)), Tensor("big", (1 << 15, 1 << 15))],
                  [Op("RELU", ["x"], ["y"]), Op("TANH", ["x"], ["big"])], outputs=("y", "big"))
    content = write_tflite(graph)
    with pytest.raises(ModelError, match="'big'"):
        Interpreter(model_content=content, max_memory_bytes=1 << 30)


# -- misuse: the messages LiteRT gives ---------------------------------------------------------

def _misuse_outcomes(interpreter_class, content):
    def outcome(action):
        try:
            action()
        except Exception as error:  # the message is what is compared
            return type(error).__name__, str(error)
        return None

    interpreter = interpreter_class(model_content=content)
    results = {"invoke_before_allocate": outcome(interpreter.invoke),
               "set_before_allocate": outcome(lambda: interpreter.set_tensor(0, np.zeros((1, 4), np.float32))),
               "get_before_allocate": outcome(lambda: interpreter.get_tensor(0))}
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    results.update({
        "wrong_dtype": outcome(lambda: interpreter.set_tensor(index, np.zeros((1, 4), np.int32))),
        "float64": outcome(lambda: interpreter.set_tensor(index, np.zeros((1, 4)))),
        "wrong_rank": outcome(lambda: interpreter.set_tensor(index, np.zeros(4, np.float32))),
        "wrong_dimension": outcome(lambda: interpreter.set_tensor(index, np.zeros((1, 5), np.float32))),
        "index_past_end": outcome(lambda: interpreter.get_tensor(99)),
        "negative_index": outcome(lambda: interpreter.get_tensor(-1)),
        "set_index_past_end": outcome(lambda: interpreter.set_tensor(99, np.zeros(1, np.float32))),
        "subgraph_past_end": outcome(lambda: interpreter.get_tensor(0, 1)),
        "index_not_an_int": outcome(lambda: interpreter.get_tensor("x"))[0],
    })
    return results


def test_misuse_messages_equal_litert():
    pytest.importorskip("ai_edge_litert")
    from edgeq.testing import litert
    content = write_tflite(_tiny())
    assert _misuse_outcomes(Interpreter, content) == _misuse_outcomes(litert.Interpreter, content)


# -- output files: atomic ----------------------------------------------------------------------

OLD_CONTENT = b"the previous model, which must survive"


def _stray_temporary_files(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_an_exception_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    import edgeq.runtime.fileio as fileio

    out = tmp_path / "model.tflite"
    out.write_bytes(OLD_CONTENT)

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        convert(str(SAMPLES / "digits_mlp.onnx"), out)
    assert out.read_bytes() == OLD_CONTENT
    assert _stray_temporary_files(tmp_path) == []


def test_an_exception_mid_conversion_keeps_the_old_file(tmp_path, monkeypatch):
    import edgeq.converter.api as api

    out = tmp_path / "model.tflite"
    out.write_bytes(OLD_CONTENT)

    def failing_writer(graph, **options):
        raise RuntimeError("serializer failed")

    monkeypatch.setattr(api, "write_tflite", failing_writer)
    with pytest.raises(RuntimeError):
        convert(str(SAMPLES / "digits_mlp.onnx"), out)
    assert out.read_bytes() == OLD_CONTENT
    assert _stray_temporary_files(tmp_path) == []


def test_a_new_file_gets_ordinary_permissions(tmp_path):
    from edgeq.runtime.fileio import write_atomic

    umask = os.umask(0o022)
    try:
        written = write_atomic(tmp_path / "new.bin", b"x")
    finally:
        os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o644


# A conversion that pauses (and says so) at a chosen point, so the test can interrupt it there.
SLOW_CONVERSION = """
import signal, sys, time
# A job started in the background inherits SIGINT ignored; a terminal's Ctrl-C is what is tested.
signal.signal(signal.SIGINT, signal.default_int_handler)
import edgeq.converter.api as api
import edgeq.runtime.fileio as fileio
where, model, out = sys.argv[1], sys.argv[2], sys.argv[3]

def pause(real):
    def paused(*args, **kwargs):
        print("paused", flush=True)
        time.sleep(60)
        return real(*args, **kwargs)
    return paused

if where == "converting":
    api.write_tflite = pause(api.write_tflite)
else:  # while the temporary file is open and half-written
    fileio.os.fsync = pause(fileio.os.fsync)
from edgeq.cli import main
main(["convert", model, "-o", out])
"""


@pytest.mark.parametrize("where", ["converting", "writing"])
def test_ctrl_c_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, where):
    import signal
    import subprocess
    import sys

    out = tmp_path / "model.tflite"
    out.write_bytes(OLD_CONTENT)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERSION, where, str(SAMPLES / "digits_mlp.onnx"), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "paused"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert stderr.strip() == "edgeq: error: interrupted"
    assert out.read_bytes() == OLD_CONTENT
    assert _stray_temporary_files(tmp_path) == []


# -- damaged ONNX files ------------------------------------------------------------------------

ONNX_MUTATION_CASES = 150


def _damaged(content: bytes, case: int) -> bytes:
    rng = np.random.default_rng([1, case])
    data = bytearray(content)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            bit = int(rng.integers(0, len(data) * 8))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == 1:
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        else:
            data = data[: int(rng.integers(0, len(data)))]
    return bytes(data)


def test_damaged_onnx_files_convert_or_raise_model_error(tmp_path):
    import warnings

    content = (SAMPLES / "digits_mlp.onnx").read_bytes()
    path = tmp_path / "damaged.onnx"
    outcomes = {"converted": 0, "refused": 0}
    for case in range(ONNX_MUTATION_CASES):
        path.write_bytes(_damaged(content, case))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                convert(str(path))
                outcomes["converted"] += 1
            except ModelError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > ONNX_MUTATION_CASES // 4
