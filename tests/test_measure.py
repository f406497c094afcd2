"""The runtime's one latency-and-memory harness (edgeq.runtime.measure), which edgeq bench, the report
and scripts/bench_runtime.py share."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.measure import inference, peak_memory_in_fresh_processes, random_feeds, time_runs
from edgeq.runtime.memory import libraries_loaded, reset_peak_rss

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("measure") / "mlp.tflite"
    convert(SAMPLES / "digits_mlp.onnx", path)
    return path


def test_time_runs_warms_up_then_times_the_runs_asked_for():
    calls = []
    timings = time_runs(lambda: calls.append(1), runs=5, warmup=3)
    assert len(calls) == 8
    assert timings.summary()["runs"] == 5


def test_time_runs_goes_on_until_the_minimum_time_has_passed_but_not_past_max_runs():
    timings = time_runs(lambda: time.sleep(0.002), runs=1, warmup=0, min_seconds=0.05, max_runs=1000)
    assert timings.summary()["runs"] > 1 and sum(timings.wall_seconds) >= 0.045
    capped = time_runs(lambda: None, runs=1, warmup=0, min_seconds=60.0, max_runs=20)
    assert capped.summary()["runs"] == 20


class FakeClocks:
    """Wall and CPU clocks that advance only when a run says so, so timing tests do not depend on the load."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu

    def run_taking(self, wall_seconds, cpu_seconds):
        self.wall += wall_seconds
        self.cpu += cpu_seconds


def test_summary_gives_median_p90_and_min_of_wall_and_cpu_time_in_ms(monkeypatch):
    clocks = FakeClocks()
    monkeypatch.setattr("edgeq.runtime.measure.time", clocks)
    durations = iter([(0.005, 0.001), (0.003, 0.001), (0.004, 0.002), (0.010, 0.001), (0.006, 0.003)])
    summary = time_runs(lambda: clocks.run_taking(*next(durations)), runs=5, warmup=0).summary()
    assert summary["min_ms"] == pytest.approx(3.0)
    assert summary["median_ms"] == pytest.approx(5.0)
    assert summary["min_ms"] <= summary["median_ms"] <= summary["p90_ms"] <= 10.0
    assert summary["cpu_median_ms"] == pytest.approx(1.0)


def test_one_inference_sets_the_inputs_invokes_and_returns_every_output(mlp_file):
    interpreter = Interpreter(model_path=str(mlp_file))
    interpreter.allocate_tensors()
    x = np.load(SAMPLES / "digits_mlp_test.npz")["input"][:1].astype(np.float32)
    outputs = inference(interpreter, [(interpreter.get_input_details()[0]["index"], x)])()
    expected = interpreter.run({interpreter.get_input_details()[0]["name"]: x})
    assert len(outputs) == len(interpreter.get_output_details()) == 1
    np.testing.assert_array_equal(outputs[0], next(iter(expected.values())))


def test_random_feeds_fit_every_input_and_repeat_with_the_seed(mlp_file):
    details = Interpreter(model_path=str(mlp_file)).get_input_details()
    first, again = random_feeds(details), random_feeds(details)
    for detail, (index, value), (_, same) in zip(details, first, again):
        assert index == detail["index"] and list(value.shape) == list(detail["shape"])
        assert value.dtype == detail["dtype"]
        np.testing.assert_array_equal(value, same)


@pytest.mark.skipif(reset_peak_rss() is None, reason="the peak RSS can be reset on Linux only")
def test_the_peak_rss_after_a_reset_shows_what_this_process_allocates_since():
    # In a fresh process: this one may reuse freed memory that is still resident, which raises no peak.
    code = (
        "import numpy as np\n"
        "from edgeq.runtime.memory import peak_rss_bytes, peak_rss_mb, reset_peak_rss\n"
        "baseline = reset_peak_rss()\n"
        "block = np.ones(64 * 2**20, np.uint8)\n"
        "print(baseline, peak_rss_bytes(), peak_rss_mb())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    baseline, peak_bytes, peak_mb = (float(value) for value in done.stdout.split())
    assert peak_bytes - baseline >= 60 * 2**20
    assert peak_mb * 2**20 >= baseline + 60 * 2**20


def test_the_memory_probe_measures_the_model_in_a_fresh_process_per_engine(mlp_file):
    memory = peak_memory_in_fresh_processes(mlp_file, ["edgeq", "litert"])
    for engine in ("edgeq", "litert"):
        figures = memory[engine]
        assert "error" not in figures, figures
        assert figures["peak_rss_bytes"] >= figures["import_rss_bytes"] > 10 * 2**20
        assert figures["model_bytes"] == figures["peak_rss_bytes"] - figures["import_rss_bytes"]


def test_a_failing_probe_reports_its_last_error_line(tmp_path):
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"\0" * 64)
    assert "error" in peak_memory_in_fresh_processes(bogus, ["edgeq"])["edgeq"]


def test_time_runs_stops_before_the_runs_asked_for_once_max_seconds_have_passed(monkeypatch):
    clocks = FakeClocks()
    monkeypatch.setattr("edgeq.runtime.measure.time", clocks)
    timings = time_runs(lambda: clocks.run_taking(0.4, 0.4), runs=10, warmup=0, max_seconds=1.0)
    assert timings.summary()["runs"] == 3
    slow = time_runs(lambda: clocks.run_taking(5.0, 5.0), runs=10, warmup=0, max_seconds=1.0)
    assert slow.summary()["runs"] == 1


def test_the_memory_probe_names_the_libraries_a_model_made_its_runtime_load():
    before = ["sys", "numpy"]
    after = before + ["numpy.linalg", "json", "edgeq.runtime.interpreter", "_socket", "click.core"]
    assert libraries_loaded(before, after) == ["click"]  # not the standard library, edgeq, or private modules


def test_the_memory_probe_reports_what_loading_the_model_imported(mlp_file):
    for engine, figures in peak_memory_in_fresh_processes(mlp_file, ["edgeq", "litert"]).items():
        assert isinstance(figures["loaded_libraries"], list), engine
        assert "edgeq" not in figures["loaded_libraries"]
