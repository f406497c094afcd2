"""Microcontroller export: the model as a C array that a C compiler accepts byte for byte, and a tensor
arena plan that a replay of the model's tensor lifetimes finds sound and tight."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeq.cli import main
from edgeq.converter import convert
from edgeq.runtime.arena import Lifetime, graph_arena, plan_arena
from edgeq.runtime.ir import Graph, Op, Tensor
from edgeq.runtime.micro import ops_tflm_lacks
from edgeq.runtime.tflite_format.reader import read_tflite

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cnn_tflite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "digits_cnn.tflite"
    convert(str(SAMPLES / "digits_cnn.onnx"), str(path))
    return path


@pytest.fixture(scope="module")
def cnn_int8_tflite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn_int8") / "digits_cnn_int8.tflite"
    convert(str(SAMPLES / "digits_cnn.onnx"), str(path), quantize="int8",
            calibration=str(SAMPLES / "digits_cnn_calib.npz"))
    return path


def array_bytes(source: str, name: str) -> bytes:
    body = re.search(rf"const unsigned char {name}\[\] = \{{(.*?)\}};", source, re.S).group(1)
    return bytes(int(token, 16) for token in re.findall(r"0x[0-9a-f]{2}", body))


def test_export_c_writes_the_file_bytes_as_an_aligned_array_with_its_length(cnn_tflite, tmp_path):
    out = tmp_path / "model_data.cc"
    result = invoke("export-c", cnn_tflite, "-o", out)
    assert result.exit_code == 0, result.output
    source = out.read_text()
    content = cnn_tflite.read_bytes()
    assert "alignas(16) const unsigned char digits_cnn[] = {" in source
    assert array_bytes(source, "digits_cnn") == content
    assert f"const unsigned int digits_cnn_len = {len(content)};" in source
    assert '#include "model_data.h"' in source
    assert "extern const unsigned char digits_cnn[];" in (tmp_path / "model_data.h").read_text()


@pytest.mark.parametrize("suffix", [".cc", ".c"])
def test_exported_array_compiles_and_its_object_holds_the_model_bytes(cnn_tflite, tmp_path, suffix):
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc) on this machine")
    out = tmp_path / f"model_data{suffix}"
    assert invoke("export-c", cnn_tflite, "-o", out, "--name", "g_model").exit_code == 0
    obj = tmp_path / "model_data.o"
    standard = ["-std=c11"] if suffix == ".c" else []
    compiled = subprocess.run([compiler, *standard, "-c", str(out), "-o", str(obj)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    content = cnn_tflite.read_bytes()
    assert content in obj.read_bytes()  # the array is stored as is in the object's read-only data


def test_export_c_names_the_array_after_the_file_as_a_c_identifier(cnn_tflite, tmp_path):
    model = tmp_path / "1st model-v2.tflite"
    model.write_bytes(cnn_tflite.read_bytes())
    assert invoke("export-c", model, "-o", tmp_path / "m.cc").exit_code == 0
    assert "const unsigned char _1st_model_v2[]" in (tmp_path / "m.cc").read_text()


def test_export_c_refuses_a_file_that_is_not_a_tflite_flatbuffer(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a model at all")
    result = invoke("export-c", bogus, "-o", tmp_path / "m.cc")
    assert result.exit_code == 2
    assert "not a TFLite flatbuffer" in result.output
    assert "Traceback" not in result.output


def test_export_c_refuses_a_name_that_is_not_a_c_identifier(cnn_tflite, tmp_path):
    result = invoke("export-c", cnn_tflite, "-o", tmp_path / "m.cc", "--name", "my-model")
    assert result.exit_code == 2
    assert "not a C identifier" in result.output


def replayed_live_sets(graph: Graph) -> list:
    """Replay the ops in order: the activations live at each step, from the brute-force rule that a
    tensor is live from its writer (or the start, for an input) until its last reader (or the end,
    for an output)."""
    activations = {name for name, t in graph.tensors.items() if not t.is_constant}
    remaining_reads = {}
    for op in graph.ops:
        for name in op.inputs:
            if name in activations:
                remaining_reads[name] = remaining_reads.get(name, 0) + 1
    live = set(graph.inputs)
    live_sets = []
    for op in graph.ops:
        live |= {name for name in op.outputs if name in activations}
        live_sets.append(set(live))
        for name in op.inputs:
            if name in activations:
                remaining_reads[name] -= 1
                if remaining_reads[name] == 0 and name not in graph.outputs:
                    live.discard(name)
        live -= {name for name in op.outputs if not remaining_reads.get(name) and name not in graph.outputs}
    return live_sets


def assert_sound_and_tight(graph: Graph, plan) -> None:
    sizes = {t.name: t.size for t in plan.lifetimes}
    live_sets = replayed_live_sets(graph)
    for step, live in enumerate(live_sets):
        spans = sorted((plan.offsets[name], plan.offsets[name] + sizes[name], name) for name in live)
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            assert end <= start, f"step {step}: {first} and {second} overlap in the arena"
    lower_bound = max(sum(sizes[name] for name in live) for live in live_sets)
    assert lower_bound <= plan.size <= sum(sizes.values())
    assert all(offset % 16 == 0 for offset in plan.offsets.values())


@pytest.mark.parametrize("model", ["cnn_tflite", "cnn_int8_tflite"])
def test_arena_plan_of_the_cnn_sample_survives_a_replay_of_its_tensor_lifetimes(model, request):
    graph = read_tflite(request.getfixturevalue(model).read_bytes())
    plan = graph_arena(graph)
    assert set(plan.offsets) == {name for name, t in graph.tensors.items() if not t.is_constant}
    assert_sound_and_tight(graph, plan)
    assert plan.size == plan.peak_live_bytes()  # a chain of ops: greedy reaches the lower bound


def branching_graph(widths) -> Graph:
    """A chain whose every step also keeps a side branch alive until a later ADD joins it."""
    tensors = [Tensor("x", (1, widths[0]))]
    ops = []
    previous = "x"
    for i, width in enumerate(widths[1:], 1):
        tensors += [Tensor(f"a{i}", (1, width)), Tensor(f"b{i}", (1, width)), Tensor(f"y{i}", (1, width))]
        ops += [Op("RELU", [previous], [f"a{i}"]), Op("TANH", [f"a{i}"], [f"b{i}"]),
                Op("ADD", [f"a{i}", f"b{i}"], [f"y{i}"])]
        previous = f"y{i}"
    return Graph(tensors, ops, ["x"], [previous])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=2, max_size=12))
def test_arena_plan_never_overlaps_live_tensors_of_a_branching_graph(widths):
    graph = branching_graph(widths)
    assert_sound_and_tight(graph, graph_arena(graph))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 20), st.integers(0, 8)), min_size=1, max_size=25))
def test_arena_plan_of_arbitrary_lifetimes_keeps_time_overlapping_buffers_apart(specs):
    lifetimes = [Lifetime(f"t{i}", size * 16, first, first + length) for i, (size, first, length) in enumerate(specs)]
    plan = plan_arena(lifetimes)
    for i, a in enumerate(lifetimes):
        for b in lifetimes[i + 1:]:
            if a.overlaps_in_time(b):
                a_start, b_start = plan.offsets[a.name], plan.offsets[b.name]
                assert a_start + a.size <= b_start or b_start + b.size <= a_start
    assert plan.peak_live_bytes() <= plan.size <= plan.sum_of_sizes


def test_inspect_arena_reports_the_planned_arena_and_no_missing_ops_for_the_cnn(cnn_int8_tflite):
    result = invoke("inspect", cnn_int8_tflite, "--arena", "--json")
    assert result.exit_code == 0, result.output
    micro = json.loads(result.output)["micro"]
    assert micro["arena_bytes"] == graph_arena(read_tflite(cnn_int8_tflite.read_bytes())).size
    assert micro["peak_live_bytes"] <= micro["arena_bytes"] <= micro["activation_bytes"]
    assert micro["ops_tflm_lacks"] == []
    text = invoke("inspect", cnn_int8_tflite, "--arena").output
    assert f"tensor arena {micro['arena_bytes']:,} bytes" in text


def test_ops_tflm_lacks_names_builtin_and_custom_ops_it_has_no_kernel_for():
    graph = Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4)), Tensor("z", (1, 4)), Tensor("w", (1, 4))],
                  [Op("RELU", ["x"], ["y"]), Op("GELU", ["y"], ["z"]),
                   Op("CUSTOM", ["z"], ["w"], {"custom_code": "Convolution2DTransposeBias"})], ["x"], ["w"])
    assert ops_tflm_lacks(graph) == ["CUSTOM Convolution2DTransposeBias", "GELU"]


def test_export_c_refuses_a_header_that_is_the_output_itself(cnn_tflite, tmp_path):
    result = invoke("export-c", cnn_tflite, "-o", tmp_path / "m.h", "--header", tmp_path / "m.h")
    assert result.exit_code == 2
    assert "is the output itself" in result.output
