"""The one latency-and-memory harness: ``edgeq bench``, the report and scripts/bench_runtime.py all time
inferences and probe memory through it, so their figures mean the same thing.

* One inference is what a caller of the interpreter does per sample: set the inputs, invoke, read the
  outputs (``inference``).
* Latency: warm-up runs, then timed runs, wall-clock and process CPU time of each (``time_runs``);
  the median is the headline, p90 and min beside it (``Timings.summary``).
* Memory: the peak RSS of this process (``edgeq.runtime.memory.peak_rss_mb``), or, for one model on its
  own, a fresh process per engine that loads and runs it once (``peak_memory_in_fresh_processes``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

WARMUP_RUNS = 3
PROBE_TIMEOUT_SECONDS = 600


def inference(interpreter, feeds: list) -> Callable[[], list]:
    """One inference on an allocated interpreter (ours or LiteRT's): set each ``(tensor index, value)``
    of ``feeds``, invoke, read every output. Returns the outputs."""
    output_indices = [detail["index"] for detail in interpreter.get_output_details()]

    def run_once() -> list:
        for index, value in feeds:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in output_indices]

    return run_once


def random_feeds(details: list, seed: int = 0, index_bounds: Optional[dict] = None) -> list:
    """``(tensor index, value)`` for every input: standard normal floats, integers within int8's range,
    and for an input that indexes a table (token ids; see ``index_bounds``), valid indices 0..size-1."""
    rng = np.random.default_rng(seed)
    bounds = index_bounds or {}
    return [(detail["index"], _random_value(detail, rng, bounds.get(detail["name"]))) for detail in details]


# Ops that pass an integer tensor on without changing its values, between a model input and a table lookup.
_VALUE_PRESERVING = ("CAST", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "IDENTITY")


def index_bounds(graph) -> dict:
    """Model input name -> the number of rows of the smallest table it indexes (GATHER's indices along its
    axis, EMBEDDING_LOOKUP's ids), followed through value-preserving ops: the inputs random values must
    keep within 0..bound-1, as token ids are."""
    producers = {name: op for op in graph.ops for name in op.outputs}
    bounds = {}
    for op in graph.ops:
        if op.type == "GATHER" and len(op.inputs) > 1:
            params, indices = graph[op.inputs[0]], op.inputs[1]
            axis = int(op.options.get("axis", 0)) % max(len(params.shape), 1)
            rows = params.shape[axis] if params.shape else 0
        elif op.type == "EMBEDDING_LOOKUP" and len(op.inputs) > 1:
            indices, rows = op.inputs[0], graph[op.inputs[1]].shape[0]
        else:
            continue
        source = indices
        while source in producers and producers[source].type in _VALUE_PRESERVING:
            source = producers[source].inputs[0]
        if source in graph.inputs:
            bounds[source] = min(int(rows), bounds.get(source, int(rows)))
    return bounds


def _random_value(detail: dict, rng, index_bound: Optional[int] = None) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail["shape"])
    if index_bound is not None and dtype.kind in "iu":
        return rng.integers(0, max(index_bound, 1), shape).astype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(int(info.min), -128), min(int(info.max), 127) + 1, shape).astype(dtype)


@dataclass
class Timings:
    """Seconds of each timed run: wall clock, and this process's CPU time (which, unlike wall time,
    leaves out waiting for a core on a busy machine)."""

    wall_seconds: list = field(default_factory=list)
    cpu_seconds: list = field(default_factory=list)

    def summary(self) -> dict:
        wall = np.asarray(self.wall_seconds) * 1e3
        cpu = np.asarray(self.cpu_seconds) * 1e3
        return {
            "median_ms": float(np.median(wall)),
            "p90_ms": float(np.percentile(wall, 90)),
            "min_ms": float(wall.min()),
            "cpu_median_ms": float(np.median(cpu)),
            "cpu_p90_ms": float(np.percentile(cpu, 90)),
            "runs": len(wall),
        }


def time_runs(run_once: Callable, runs: int, warmup: int = WARMUP_RUNS, min_seconds: float = 0.0,
              max_runs: int = 5000, max_seconds: Optional[float] = None) -> Timings:
    """``warmup`` untimed calls of ``run_once``, then at least ``runs`` timed ones, going on until
    ``min_seconds`` have passed (but no more than ``max_runs``); with ``max_seconds``, fewer than ``runs``
    (but at least one) once that much time has passed."""
    if runs < 1:
        raise ValueError(f"runs {runs}: needs at least 1")
    for _ in range(warmup):
        run_once()
    timings = Timings()
    started = time.perf_counter()
    while len(timings.wall_seconds) < runs or (
            time.perf_counter() - started < min_seconds and len(timings.wall_seconds) < max_runs):
        if max_seconds is not None and timings.wall_seconds and time.perf_counter() - started >= max_seconds:
            break
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run_once()
        timings.wall_seconds.append(time.perf_counter() - wall_start)
        timings.cpu_seconds.append(time.process_time() - cpu_start)
    return timings


def peak_memory_in_fresh_processes(model_file, engines: Iterable[str]) -> dict:
    """Per engine ("edgeq", "litert"), the memory of a fresh process that loads and runs the model once
    on zeros (``edgeq.runtime.memory.probe_model_memory``): ``peak_rss_bytes``, ``import_rss_bytes`` and
    their difference ``model_bytes``; ``{"error": ...}`` where the probe failed, None where memory
    cannot be read (no POSIX ``resource``). The probes run at the same time: each measures only itself."""
    engines = list(engines)
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return dict.fromkeys(engines)
    from edgeq.runtime import memory

    probes = {}
    try:
        for engine in engines:
            probes[engine] = subprocess.Popen([sys.executable, memory.__file__, engine, str(model_file)],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return {engine: _probe_result(probe) for engine, probe in probes.items()}
    finally:  # a Ctrl-C or an error leaves no probe running
        for probe in probes.values():
            if probe.poll() is None:
                probe.kill()
                probe.wait()


def _probe_result(probe) -> Optional[dict]:
    try:
        stdout, stderr = probe.communicate(timeout=PROBE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return {"error": "timed out"}
    if probe.returncode != 0:
        return {"error": (stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["model_bytes"] = result["peak_rss_bytes"] - result["import_rss_bytes"]
    return result
