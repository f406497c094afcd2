"""The comparison report: build the variants of one model, measure each, write md/html/json/png.

A variant is one way to ship the model (float32, float16, dynamic-range int8, full int8 per calibration
method, int8 after pruning). For each the report measures:

* size: the .tflite file's bytes, and its bytes after ``gzip -9`` (what pruned zeros save in transit);
* accuracy: top-1 when the eval file has labels, else fidelity to the float32 variant (top-1 agreement,
  cosine similarity, SQNR of the outputs), or the user's own metric; computed on edgeq's runtime and
  cross-checked on LiteRT's reference kernels (BUILTIN_REF), where int8 outputs must be identical;
* latency: median of repeated single-sample inferences, one thread, on edgeq's runtime and on LiteRT's
  default kernels, measured one variant at a time in the main process so variants never compete;
* peak memory: a fresh subprocess per engine imports the engine, notes its peak RSS, loads the model,
  runs it once on zeros and notes its peak RSS again; the report gives both and their difference.

Variants are converted and evaluated in a process pool; latency is measured afterwards, serially.
The report folder is assembled beside its destination and renamed into place at the end, so a failure
never leaves a partial report.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import html
import importlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgeq.runtime.ir import ModelError

REPORT_FORMAT = "edgeq-report/1"
MODELS_FOLDER = "models"
PLOT_FILE = "accuracy_vs_size.png"
LAYER_PLOT_FILE = "layer_sqnr.png"
EDGEQ, LITERT = "edgeq", "litert"
# Largest relative difference allowed between edgeq's and LiteRT's reference kernels, by quantization.
# int8 must be identical (the same integer arithmetic). Float: only summation order differs. Dynamic
# range: a last-bit float difference can flip the rounding of the next op's on-the-fly input
# quantization, so whole deep models agree to ~1e-2 (as tests/test_int8_models.py holds them).
AGREEMENT_TOLERANCE = {"int8": 0.0, "none": 1e-4, "float16": 1e-4, "dynamic": 0.02}
# An int8 model with float islands: a last-bit float difference inside an island can flip the
# rounding of the QUANTIZE after it, as in dynamic range.
INT8_WITH_FLOAT_ISLANDS_TOLERANCE = AGREEMENT_TOLERANCE["dynamic"]

METHODS_TEXT = {
    "size": "bytes of the .tflite file; gzip: the same bytes compressed with gzip level 9",
    "accuracy": "edgeq: our runtime on the whole eval set (batched); litert: LiteRT with its reference "
                "kernels (BUILTIN_REF), one sample at a time; the engines must agree: int8 outputs identical "
                "(within 2e-2 where ops stay float islands), float32/float16 within 1e-4 and dynamic range within 2e-2 of the largest output",
    "latency": "median of repeated single-sample invokes after warm-up, 1 thread; edgeq's runtime and "
               "LiteRT's default kernels; measured serially, one variant at a time",
    "memory": "a fresh subprocess per engine imports it, notes its RSS, resets its peak RSS (Linux: "
              "/proc/self/clear_refs; elsewhere the peak is ru_maxrss, import included), loads the model "
              "and runs it once on zeros; 'peak' is the peak RSS while loading and running, 'model' is "
              "peak minus the RSS after the import (with numba installed, edgeq's first run compiles its "
              "fast kernels or loads them from numba's cache, and that memory counts too)",
}


# -- what to build -----------------------------------------------------------------------------

@dataclass(frozen=True)
class VariantSpec:
    """One way to ship the model: the ``convert`` keyword arguments that make it, and a name."""

    name: str
    quantize: str
    calibration_method: Optional[str] = None
    prune_sparsity: Optional[float] = None
    prune_channels: Optional[float] = None
    reconstruct: bool = False
    layer_errors: bool = False  # measure per-tensor error (the int8 minmax variant)

    @property
    def is_int8(self) -> bool:
        return self.quantize == "int8"

    def convert_options(self) -> dict:
        options = {"quantize": self.quantize}
        if self.is_int8:
            options["calibration_method"] = self.calibration_method
            options["debug"] = self.layer_errors
        if self.prune_sparsity is not None:
            options["prune_sparsity"] = self.prune_sparsity
        if self.prune_channels is not None:
            options["prune_channels"] = self.prune_channels
        if self.reconstruct:
            options["reconstruct"] = True
        return options


def _percent(fraction: float) -> str:
    """0.5 -> "50": names become file names, so no "%" or "." in them."""
    return f"{fraction * 100:g}".replace(".", "p")


def plan_variants(methods=("minmax",), prune_sparsities=(), prune_channels=(), reconstruct=False) -> list:
    """The variants to build, float32 first: it is the reference that fidelity is measured against.

    Pruned variants are full int8 calibrated with the first method asked for; ``reconstruct`` (a
    least-squares refit on the calibration samples) applies to the channel-pruned ones.
    """
    from edgeq.converter.api import CALIBRATION_METHODS

    methods = list(methods) or ["minmax"]
    unknown = [m for m in methods if m not in CALIBRATION_METHODS]
    if unknown:
        raise ModelError(f"unknown calibration method(s) {', '.join(unknown)}; choose from {', '.join(CALIBRATION_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ModelError(f"calibration method listed twice in {','.join(methods)}")
    specs = [VariantSpec("float32", "none"), VariantSpec("float16", "float16"), VariantSpec("dynamic-int8", "dynamic")]
    debug_method = "minmax" if "minmax" in methods else methods[0]
    specs += [VariantSpec(f"int8-{m}", "int8", m, layer_errors=(m == debug_method)) for m in methods]
    if reconstruct and not prune_channels:
        raise ModelError("--reconstruct refits the layers after removed channels: it needs --prune-channels")
    suffix = "-reconstruct" if reconstruct else ""
    for sparsity in prune_sparsities:
        specs.append(VariantSpec(f"int8-sparse{_percent(sparsity)}", "int8", methods[0], prune_sparsity=sparsity))
    for channels in prune_channels:
        specs.append(VariantSpec(f"int8-channels{_percent(channels)}{suffix}", "int8", methods[0],
                                 prune_channels=channels, reconstruct=reconstruct))
    return specs


def parse_fractions(text: Optional[str], option: str) -> list:
    """``"0.5,0.7"`` -> ``[0.5, 0.7]``; each strictly between 0 and 1."""
    if not text:
        return []
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ModelError(f"{option}: '{part}' is not a number (expected fractions like 0.5,0.7)") from None
        if not 0.0 < value < 1.0:
            raise ModelError(f"{option}: {value:g} is not a fraction between 0 and 1 (exclusive)")
        values.append(value)
    return values


# -- eval data and metrics -------------------------------------------------------------------

@dataclass
class EvalData:
    inputs: dict            # input name -> samples in the graph's layout, first axis = samples
    labels: Optional[np.ndarray]
    raw: dict               # every array of the eval file, as stored (handed to a user metric)
    count: int


def load_eval(path, graph, labels_key: Optional[str] = None, num_samples: Optional[int] = None) -> EvalData:
    """The eval .npz: the model's input key(s), NCHW or NHWC images, and optional labels.

    ``labels_key`` None uses ``y`` when present; a key that was asked for and is absent is an error.
    Layout detection and checks are ``load_calibration``'s, applied to the input arrays alone.
    """
    from edgeq.converter.calibrate import load_calibration

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"eval file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as loaded:
            raw = {key: loaded[key] for key in loaded.files}
    except Exception as error:  # not an npz, pickles, truncated: all bad input
        raise ModelError(f"eval file {path} is not a numpy .npz file without pickles: {error}") from None
    if labels_key is not None and labels_key not in raw:
        raise ModelError(f"eval file {path} has no labels array '{labels_key}' (has {', '.join(raw)})")
    if labels_key is None and "y" in raw and "y" not in graph.inputs:
        labels_key = "y"
    if num_samples is not None:
        raw = {key: value[:num_samples] for key, value in raw.items()}
    inputs = _inputs_via_calibration_loader(path, raw, graph, load_calibration)
    count = next(iter(inputs.values())).shape[0]
    labels = None
    if labels_key is not None:
        labels = np.asarray(raw[labels_key])
        if labels.ndim == 2:  # one-hot
            labels = np.argmax(labels, axis=1)
        if labels.ndim != 1 or labels.shape[0] != count or labels.dtype.kind not in "iub":
            raise ModelError(f"eval file {path}: labels '{labels_key}' must be {count} integer classes, "
                             f"got {labels.dtype} {list(labels.shape)}")
    return EvalData(inputs=inputs, labels=labels, raw=raw, count=count)


def _inputs_via_calibration_loader(path: Path, raw: dict, graph, load_calibration) -> dict:
    missing = [name for name in graph.inputs if name not in raw]
    if missing:
        raise ModelError(f"eval file {path}: no array for model input(s) {', '.join(missing)} (has {', '.join(raw)})")
    with tempfile.TemporaryDirectory(prefix="edgeq-eval-") as folder:
        staged = Path(folder) / path.name
        np.savez(staged, **{name: raw[name] for name in graph.inputs})
        try:
            return load_calibration(staged, graph)
        except ModelError as error:  # speak of the user's file, not of the staged copy
            raise ModelError(str(error).replace(str(staged), str(path)).replace("calibration", "eval")) from None


def load_metric(spec: str) -> Callable:
    """``module:function`` imported by name from sys.path and the current folder (runs the user's code)."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ModelError(f"--metric '{spec}': expected MODULE:FUNCTION, e.g. my_metrics:mean_iou")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ModelError(f"--metric '{spec}': cannot import {module_name}: {type(error).__name__}: {error}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f"--metric '{spec}': {module_name} has no function {function_name}")
    return function


def call_metric(metric: Callable, spec: str, outputs: list, raw: dict) -> dict:
    try:
        values = metric(outputs, raw)
    except Exception as error:
        raise ModelError(f"--metric '{spec}' failed: {type(error).__name__}: {error}") from None
    if not isinstance(values, dict) or not values:
        raise ModelError(f"--metric '{spec}' must return a non-empty dict of named numbers, got {type(values).__name__}")
    try:
        return {str(k): float(v) for k, v in values.items()}
    except (TypeError, ValueError):
        raise ModelError(f"--metric '{spec}' returned a value that is not a number: {values!r}") from None


def _class_scores(output: np.ndarray) -> np.ndarray:
    return np.asarray(output).reshape(output.shape[0], -1)


def top1_accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(_class_scores(output), axis=1) == labels))


def fidelity(outputs: list, reference: list) -> dict:
    """How close a variant's outputs are to the reference's: top-1 agreement (first output),
    mean per-sample cosine similarity and SQNR in dB over all outputs."""
    from edgeq.converter.quant_debug import power_ratio_db

    ours = np.concatenate([_class_scores(o).astype(np.float64) for o in outputs], axis=1)
    ref = np.concatenate([_class_scores(o).astype(np.float64) for o in reference], axis=1)
    agreement = float(np.mean(np.argmax(_class_scores(outputs[0]), 1) == np.argmax(_class_scores(reference[0]), 1)))
    norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1)
    dots = np.sum(ours * ref, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
    sqnr = power_ratio_db(float(np.sum(ref * ref)), float(np.sum((ref - ours) ** 2)))
    return {"top1_agreement": agreement, "cosine": float(np.mean(cosine)), "sqnr_db": sqnr}


def builtin_metrics(outputs: list, reference: list, labels: Optional[np.ndarray]) -> dict:
    metrics = {}
    if labels is not None:
        metrics["top1"] = top1_accuracy(outputs[0], labels)
    metrics.update(fidelity(outputs, reference))
    return metrics


def agreement_tolerance(quantize: str, float_ops: list) -> float:
    if quantize == "int8" and float_ops:
        return INT8_WITH_FLOAT_ISLANDS_TOLERANCE
    return AGREEMENT_TOLERANCE[quantize]


def engine_agreement(ours: list, litert: Optional[list], tolerance: float) -> dict:
    """Do the two engines give the same outputs: identical when ``tolerance`` is 0, else a relative
    max difference (over the largest LiteRT output) within it."""
    exact = tolerance == 0
    expected = "identical" if exact else f"relative difference <= {tolerance:g}"
    if litert is None:
        return {"expected": expected, "checked": False, "ok": True}
    identical = all(np.array_equal(a, b) for a, b in zip(ours, litert))
    diffs = [float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(ours, litert)]
    scales = [float(np.max(np.abs(b.astype(np.float64)))) if b.size else 0.0 for b in litert]
    relative = max(d / s if s > 0 else d for d, s in zip(diffs, scales))
    top1 = float(np.mean(np.argmax(_class_scores(ours[0]), 1) == np.argmax(_class_scores(litert[0]), 1)))
    ok = identical if exact else relative <= tolerance
    return {"expected": expected, "checked": True, "ok": bool(ok), "identical": bool(identical),
            "max_abs_difference": max(diffs), "max_relative_difference": relative, "top1_agreement": top1}


def pareto_front(points: list) -> list:
    """For (size, score) points, whether each is Pareto-optimal: no other point is at most as large
    and at least as good, and strictly better in one of the two. Smaller and higher are better."""
    flags = []
    for i, (size, score) in enumerate(points):
        dominated = any(
            other_size <= size and other_score >= score and (other_size < size or other_score > score)
            for j, (other_size, other_score) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


# -- running the models ----------------------------------------------------------------------

def outputs_on_edgeq(content: bytes, inputs: dict, batch_size: int = 64) -> list:
    from edgeq.runtime.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    names = interpreter.graph.outputs
    total = next(iter(inputs.values())).shape[0]
    chunks = {name: [] for name in names}
    for start in range(0, total, batch_size):
        result = interpreter.run({n: v[start:start + batch_size] for n, v in inputs.items()})
        for name in names:
            chunks[name].append(np.array(result[name]))
    return [np.concatenate(chunks[name]) for name in names]


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _native_stderr_silenced():
    """LiteRT's C++ side prints INFO lines (the XNNPACK delegate) straight to file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _litert_interpreter(content: bytes, reference_kernels: bool):
    """A LiteRT interpreter, one thread, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    with _native_stderr_silenced():
        interpreter = Interpreter(model_content=content, num_threads=1, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    return interpreter


def _feeds_in_input_order(interpreter, inputs: dict, index: slice) -> list:
    details = interpreter.get_input_details()
    names = list(inputs)
    by_name = [inputs[d["name"]] if d["name"] in inputs else inputs[names[i]] for i, d in enumerate(details)]
    return [(d["index"], np.ascontiguousarray(v[index], dtype=d["dtype"])) for d, v in zip(details, by_name)]


def outputs_on_litert(content: bytes, inputs: dict) -> list:
    """LiteRT's reference kernels, one sample at a time (the graph's batch is 1)."""
    interpreter = _litert_interpreter(content, reference_kernels=True)
    details = interpreter.get_output_details()
    total = next(iter(inputs.values())).shape[0]
    stacked = [[] for _ in details]
    for i in range(total):
        for tensor_index, value in _feeds_in_input_order(interpreter, inputs, slice(i, i + 1)):
            interpreter.set_tensor(tensor_index, value)
        interpreter.invoke()
        for out, detail in zip(stacked, details):
            out.append(interpreter.get_tensor(detail["index"]).copy())
    return [np.concatenate(out) for out in stacked]


def median_latency_ms(interpreter, feeds: list, repeats: int, warmup: int = 3) -> dict:
    """Timing of ``invoke`` alone on an allocated interpreter, inputs set once."""
    for tensor_index, value in feeds:
        interpreter.set_tensor(tensor_index, value)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - started) * 1e3)
    return {"median": float(np.median(times)), "min": float(np.min(times)), "repeats": repeats}


def measure_latency(content: bytes, inputs: dict, repeats: int, engine: str) -> dict:
    if engine == LITERT:
        interpreter = _litert_interpreter(content, reference_kernels=False)
    else:
        from edgeq.runtime.interpreter import Interpreter

        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
    return median_latency_ms(interpreter, _feeds_in_input_order(interpreter, inputs, slice(0, 1)), repeats)


_MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np
engine, path = sys.argv[1], sys.argv[2]

def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)

def reset_peak():
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak seen later is the
    # model's, not the import's (which is higher than a small model's whole footprint).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

if engine == "litert":
    from ai_edge_litert.interpreter import Interpreter
else:
    from edgeq.runtime.interpreter import Interpreter
try:
    reset_peak()
    baseline, method = status_bytes("VmRSS"), "VmHWM after resetting it through /proc/self/clear_refs"
except OSError:
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    baseline, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit, "ru_maxrss"
interpreter = Interpreter(model_path=path, num_threads=1)
interpreter.allocate_tensors()
for d in interpreter.get_input_details():
    interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
interpreter.invoke()
if method == "ru_maxrss":
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
else:
    peak = status_bytes("VmHWM")
print(json.dumps({"peak_rss_bytes": peak, "import_rss_bytes": baseline, "method": method}))
"""


def measure_peak_memory(model_file: Path, engines) -> dict:
    """Per engine, the RSS of a fresh process that loads and runs the model once (None where
    unmeasurable). The probes run at the same time: each process only measures itself."""
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return dict.fromkeys(engines)
    probes = {engine: subprocess.Popen([sys.executable, "-c", _MEMORY_PROBE, engine, str(model_file)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for engine in engines}
    return {engine: _probe_result(probe) for engine, probe in probes.items()}


def _probe_result(probe) -> dict:
    try:
        stdout, stderr = probe.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return {"error": "timed out"}
    if probe.returncode != 0:
        return {"error": (stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["model_bytes"] = result["peak_rss_bytes"] - result["import_rss_bytes"]
    return result


# -- building one variant (runs in a worker process) ------------------------------------------

@dataclass
class BuildJob:
    spec: VariantSpec
    model_path: str
    calibration: str
    num_calibration_samples: Optional[int]
    input_shapes: dict
    models_folder: str
    eval_inputs: dict
    with_litert: bool


@dataclass
class BuiltVariant:
    spec: VariantSpec
    file: str
    content: bytes
    seconds: float
    outputs: dict                       # engine -> list of stacked output arrays
    memory: dict                        # engine -> probe result
    float_ops: list = field(default_factory=list)
    layer_errors: list = field(default_factory=list)
    pruning: list = field(default_factory=list)


def build_variant(job: BuildJob) -> BuiltVariant:
    """Convert, save to the models folder, run the eval set on both engines, probe memory."""
    from edgeq.converter.api import convert

    spec = job.spec
    started = time.perf_counter()
    options = spec.convert_options()
    if spec.is_int8:
        options.update(calibration=job.calibration, num_calibration_samples=job.num_calibration_samples)
    path = Path(job.models_folder) / f"{spec.name}.tflite"
    result = convert(job.model_path, path, input_shapes=job.input_shapes or None, **options)
    seconds = time.perf_counter() - started
    outputs = {EDGEQ: outputs_on_edgeq(result.content, job.eval_inputs)}
    if job.with_litert:
        outputs[LITERT] = outputs_on_litert(result.content, job.eval_inputs)
    memory = measure_peak_memory(path, list(outputs))
    return BuiltVariant(spec, f"{MODELS_FOLDER}/{path.name}", result.content, seconds, outputs, memory,
                        list(result.float_ops), [e.as_dict() for e in result.layer_errors],
                        [r.as_dict() for r in getattr(result, "prune_reports", [])])


# -- the whole report ------------------------------------------------------------------------

@dataclass
class ReportOptions:
    model: str
    calibration: str
    eval: str
    output: str
    labels_key: Optional[str] = None
    methods: tuple = ("minmax",)
    prune_sparsities: tuple = ()
    prune_channels: tuple = ()
    reconstruct: bool = False
    metric: Optional[str] = None
    jobs: Optional[int] = None
    repeats: int = 30
    eval_samples: Optional[int] = None
    calibration_samples: Optional[int] = None
    input_shapes: dict = field(default_factory=dict)
    command: str = ""


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("edgeq", "numpy", "onnx", "ai-edge-litert", "matplotlib", "numba"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _prepare_output_folder(output: Path) -> None:
    """Refuse to replace anything but an earlier report (or an empty folder)."""
    if output.exists() and not output.is_dir():
        raise ModelError(f"-o {output}: a file is in the way; the report is a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / "report.json").is_file():
        raise ModelError(f"-o {output}: the folder exists and is not an edgeq report; choose another")


def _open_permissions(folder: Path) -> None:
    """Temporary files are private (0600/0700); the finished report gets the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _move_into_place(staging: Path, output: Path) -> None:
    previous = None
    if output.exists():
        previous = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, previous)
    os.replace(staging, output)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def make_report(options: ReportOptions, progress: bool = False) -> dict:
    """Build, measure and write the report folder; returns the report as a dict (report.json)."""
    from edgeq.converter.api import load_graph

    output = Path(options.output)
    _prepare_output_folder(output)
    for label, path in (("model", options.model), ("calibration file", options.calibration)):
        if not Path(path).is_file():
            raise ModelError(f"{label} {path} does not exist")
    specs = plan_variants(options.methods, options.prune_sparsities, options.prune_channels, options.reconstruct)
    metric = load_metric(options.metric) if options.metric else None
    graph, _ = load_graph(options.model, options.input_shapes or None)
    eval_data = load_eval(options.eval, graph, options.labels_key, options.eval_samples)
    jobs = options.jobs or default_jobs()
    if jobs < 1:
        raise ModelError(f"--jobs {jobs}: needs at least 1")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        (staging / MODELS_FOLDER).mkdir()
        built = _build_all(specs, options, eval_data, staging / MODELS_FOLDER, jobs, progress)
        load_before = _load_average()
        latency = _measure_all_latency(built, eval_data.inputs, options.repeats, progress)
        report = assemble_report(options, specs, built, latency, eval_data, metric)
        report["machine"] = {"cpus": os.cpu_count(), "load_average_before_timing": load_before,
                             "load_average_after_timing": _load_average()}
        write_report_files(report, staging)
        _open_permissions(staging)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _load_average() -> Optional[float]:
    """The 1-minute load average (POSIX): latency from a busy machine is to be read with care."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="variant", disable=not enabled, file=sys.stderr, leave=False)


def _build_all(specs, options, eval_data, models_folder: Path, jobs: int, progress: bool) -> dict:
    with_litert = litert_available()
    jobs_by_spec = [
        BuildJob(spec, str(options.model), str(options.calibration), options.calibration_samples,
                 dict(options.input_shapes), str(models_folder), eval_data.inputs, with_litert)
        for spec in specs
    ]
    built = {}
    # spawn, not fork: the parent may hold BLAS and tqdm threads, which fork does not copy safely
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool, \
            _progress_bar(len(specs), "building variants", progress) as bar:
        futures = {pool.submit(build_variant, job): job.spec for job in jobs_by_spec}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                built[spec.name] = future.result()
            except ModelError as error:
                raise ModelError(f"variant {spec.name}: {error}") from None
            bar.update(1)
    return built


def _measure_all_latency(built: dict, inputs: dict, repeats: int, progress: bool) -> dict:
    engines = [EDGEQ, LITERT] if litert_available() else [EDGEQ]
    latency = {}
    with _progress_bar(len(built), "timing variants", progress) as bar:
        for name, variant in built.items():
            latency[name] = {engine: measure_latency(variant.content, inputs, repeats, engine) for engine in engines}
            bar.update(1)
    return latency


def _headline_metric(metric_spec: Optional[str], labels, metrics_of_first: dict) -> str:
    if metric_spec:
        return next(iter(metrics_of_first))
    return "top1" if labels is not None else "top1_agreement"


def assemble_report(options: ReportOptions, specs: list, built: dict, latency: dict, eval_data: EvalData,
                    metric: Optional[Callable]) -> dict:
    reference = built[specs[0].name].outputs[EDGEQ]
    variants = []
    for spec in specs:
        variant = built[spec.name]
        accuracy = {}
        for engine, outputs in variant.outputs.items():
            if metric is not None:
                accuracy[engine] = call_metric(metric, options.metric, outputs, eval_data.raw)
            else:
                accuracy[engine] = builtin_metrics(outputs, reference, eval_data.labels)
        variants.append({
            "name": spec.name,
            "quantize": spec.quantize,
            "calibration_method": spec.calibration_method,
            "prune_sparsity": spec.prune_sparsity,
            "prune_channels": spec.prune_channels,
            "reconstruct": spec.reconstruct,
            "file": variant.file,
            "conversion_seconds": round(variant.seconds, 3),
            "size": size_figures(variant.content),
            "accuracy": accuracy,
            "engine_agreement": engine_agreement(variant.outputs[EDGEQ], variant.outputs.get(LITERT),
                                                 agreement_tolerance(spec.quantize, variant.float_ops)),
            "latency_ms": latency[spec.name],
            "memory": variant.memory,
            "float_ops": variant.float_ops,
            "pruning": variant.pruning,
        })
    headline = _headline_metric(options.metric, eval_data.labels, variants[0]["accuracy"][EDGEQ])
    _add_comparisons(variants, headline)
    debugged = next((s for s in specs if s.layer_errors), None)
    layer_errors = sorted(built[debugged.name].layer_errors, key=lambda e: e["sqnr_db"]) if debugged else []
    problems = [f"{v['name']}: edgeq and LiteRT outputs differ ({v['engine_agreement']['expected']} expected)"
                for v in variants if not v["engine_agreement"]["ok"]]
    return {
        "format": REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command,
        "versions": versions(),
        "model": {"path": str(options.model), "sha256": _sha256(options.model)},
        "calibration": {"path": str(options.calibration), "samples": options.calibration_samples},
        "eval": {
            "path": str(options.eval),
            "samples": eval_data.count,
            "labels": eval_data.labels is not None,
            "metric": options.metric or ("top-1 accuracy" if eval_data.labels is not None
                                         else "fidelity to the float32 variant"),
        },
        "headline_metric": headline,
        "methods": dict(METHODS_TEXT, engines=("edgeq runtime and LiteRT" if litert_available()
                                               else "edgeq runtime only (LiteRT is not installed)")),
        "variants": variants,
        "layer_errors": {"variant": debugged.name if debugged else None,
                         "measured_on": "calibration samples", "tensors": layer_errors},
        "checks": {"ok": not problems, "problems": problems},
    }


def size_figures(content: bytes) -> dict:
    from edgeq.runtime.size import size_breakdown

    return {
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(content, compresslevel=9, mtime=0)),
        "breakdown": size_breakdown(content),
    }


def _add_comparisons(variants: list, headline: str) -> None:
    """Relative to float32: how much smaller, how much less accurate, how much faster; Pareto flags."""
    base = variants[0]
    for v in variants:
        v["vs_float32"] = {
            "size_ratio": v["size"]["bytes"] / base["size"]["bytes"],
            "gzip_size_ratio": v["size"]["gzip_bytes"] / base["size"]["gzip_bytes"],
            "score_difference": v["accuracy"][EDGEQ][headline] - base["accuracy"][EDGEQ][headline],
            "speedup": {engine: base["latency_ms"][engine]["median"] / figures["median"]
                        for engine, figures in v["latency_ms"].items() if figures["median"] > 0},
        }
    flags = pareto_front([(v["size"]["bytes"], v["accuracy"][EDGEQ][headline]) for v in variants])
    for v, flag in zip(variants, flags):
        v["pareto"] = flag


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- writing ---------------------------------------------------------------------------------

def write_report_files(report: dict, folder: Path) -> None:
    from edgeq.runtime.fileio import finite_for_json, write_atomic

    plot = plot_accuracy_vs_size(report)
    layer_plot = plot_layer_sqnr(report["layer_errors"]["tensors"]) if report["layer_errors"]["tensors"] else None
    write_atomic(folder / PLOT_FILE, plot)
    if layer_plot is not None:
        write_atomic(folder / LAYER_PLOT_FILE, layer_plot)
    write_atomic(folder / "report.json", (json.dumps(finite_for_json(report), indent=2) + "\n").encode())
    write_atomic(folder / "report.md", render_markdown(report).encode())
    write_atomic(folder / "report.html", render_html(report, plot, layer_plot).encode())


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    # no timestamp in the PNG: the same report gives the same bytes
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def plot_accuracy_vs_size(report: dict) -> bytes:
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    headline = report["headline_metric"]
    variants = report["variants"]
    sizes = [v["size"]["bytes"] / 1024 for v in variants]
    scores = [v["accuracy"][EDGEQ][headline] for v in variants]
    front = sorted((s, a) for s, a, v in zip(sizes, scores, variants) if v["pareto"])
    floor = focus_floor(scores, [a for _, a in front])
    shown = [max(a, floor) for a in scores]
    names = [v["name"] if a >= floor else f"{v['name']} ({_number(a, 3)}, off scale)" for v, a in zip(variants, scores)]
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    try:
        others = [(s, a) for s, a, v, raw in zip(sizes, shown, variants, scores) if not v["pareto"] and raw >= floor]
        below = [(s, a) for s, a, raw in zip(sizes, shown, scores) if raw < floor]
        if others:
            axes.scatter(*zip(*others), color="#8a8a8a", s=36, label="dominated", zorder=3)
        if below:
            axes.scatter(*zip(*below), color="#8a8a8a", s=44, marker="v", label="below the axis", zorder=3)
        axes.scatter(*zip(*front), color="#d62728", s=56, marker="D", label="Pareto front", zorder=4)
        axes.step([s for s, _ in front], [a for _, a in front], where="post", color="#d62728", alpha=0.6, zorder=2)
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(size_tick_label))
        axes.xaxis.set_minor_formatter(FuncFormatter(size_tick_label))
        axes.tick_params(axis="x", which="both", labelsize=8)
        axes.set_xlabel("model size (KiB, log scale)")
        axes.set_ylabel(_metric_label(headline) + " (edgeq runtime)")
        axes.set_title("accuracy vs size: smaller and more accurate is better")
        axes.grid(True, which="both", alpha=0.3)
        legend = axes.legend(loc="lower right", fontsize=8)
        _pad_limits(axes, sizes, shown)
        _place_labels(axes, sizes, shown, names, legend)
        return _figure_png(figure)
    finally:
        plt.close(figure)


def focus_floor(scores: list, front_scores: list) -> float:
    """The lowest score the plot shows: the Pareto front's lowest score less half the front's spread
    (at least 0.02). Variants far below it (a broken calibration) are drawn on the bottom edge so
    they do not squash the differences that matter into a thin band."""
    top, low = max(scores), min(front_scores)
    floor = low - max(0.5 * (top - low), 0.02)
    lowest = min(scores)
    return lowest if lowest >= floor - (top - floor) else floor  # at most doubling the range: show it


def size_tick_label(value: float, _position=None) -> str:
    """Plain numbers on the log axis, only at 1, 2 and 5 times a power of ten (so they never crowd)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(lead - d) < 1e-6 for d in (1, 2, 5)) else ""


def coincident_groups(points: list, radius: float = 5.0) -> list:
    """Indices of points closer than ``radius`` (display units) to another of their group, in order:
    variants that land on the same spot share one label instead of overprinting."""
    groups = []
    for i, (x, y) in enumerate(points):
        near = [g for g in groups if any(math.hypot(x - points[j][0], y - points[j][1]) < radius for j in g)]
        merged = [j for g in near for j in g] + [i]
        groups = [g for g in groups if g not in near] + [sorted(merged)]
    return sorted(groups)


# Where a label may go relative to its point (offset in points, alignment), in order of preference.
_LABEL_SPOTS = [(8, 0, "left", "center"), (-8, 0, "right", "center"), (0, 8, "center", "bottom"),
                (0, -8, "center", "top"), (8, 6, "left", "bottom"), (8, -6, "left", "top"),
                (-8, 6, "right", "bottom"), (-8, -6, "right", "top"), (10, 20, "left", "bottom"),
                (10, -20, "left", "top"), (-10, 20, "right", "bottom"), (-10, -20, "right", "top")]
_LEADER = {"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}


def _place_labels(axes, xs, ys, names, legend) -> None:
    """Each group of coinciding points gets one label, at the first spot inside the axes that covers
    no point, no other label and not the legend."""
    from matplotlib.transforms import Bbox

    renderer = axes.figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    display = axes.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_bounds(x - 5, y - 5, 10, 10) for x, y in display]
    taken.append(legend.get_window_extent(renderer))
    for group in coincident_groups([tuple(p) for p in display]):
        text = "\n".join(names[i] for i in group)
        anchor = (xs[group[0]], ys[group[0]])
        spot = _LABEL_SPOTS[0]  # crowded everywhere: the first spot, overlapping, beats no label
        for dx, dy, ha, va in _LABEL_SPOTS:
            # measured without its leader line, which always touches its own point
            trial = axes.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8)
            box = trial.get_window_extent(renderer)
            trial.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                spot = (dx, dy, ha, va)
                break
        dx, dy, ha, va = spot
        axes.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8,
                      arrowprops=_LEADER)


def _pad_limits(axes, sizes, scores) -> None:
    low, high = min(scores), max(scores)
    margin = max((high - low) * 0.12, 0.005)
    axes.set_ylim(low - margin, high + margin * 1.5)
    axes.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)  # room for labels either side


def plot_layer_sqnr(errors: list) -> bytes:
    """Horizontal bars, one per int8 tensor in run order... shown worst first, as the table is."""
    plt = _pyplot()
    shown = errors[:40]
    values = [e["sqnr_db"] if math.isfinite(e["sqnr_db"]) else 99.0 for e in shown]
    figure, axes = plt.subplots(figsize=(7.5, 0.22 * len(shown) + 1.2))
    try:
        positions = np.arange(len(shown))
        axes.barh(positions, values, color=["#d62728" if v < 20 else "#1f77b4" for v in values])
        axes.set_yticks(positions, [_short(e["tensor"], 44) for e in shown], fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel("SQNR (dB) of the int8 tensor against float; higher is better")
        more = f" (worst {len(shown)} of {len(errors)})" if len(errors) > len(shown) else ""
        axes.set_title(f"per-layer quantization error{more}")
        axes.axvline(20, color="#555", linestyle=":", linewidth=1)
        axes.grid(True, axis="x", alpha=0.3)
        return _figure_png(figure)
    finally:
        plt.close(figure)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


_METRIC_LABELS = {"top1": "top-1 accuracy", "top1_agreement": "top-1 agreement with float32",
                  "cosine": "cosine similarity", "sqnr_db": "output SQNR (dB)"}


def _metric_label(name: str) -> str:
    return _METRIC_LABELS.get(name, name)


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞ (exact)" if value > 0 else "-∞"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _mib(memory: Optional[dict], key: str = "model_bytes") -> str:
    if not memory or key not in memory:
        return "–"
    return f"{memory[key] / 2**20:.1f}"


def summary_table(report: dict) -> tuple:
    """(header, rows) of the variants table, shared by the Markdown, HTML and terminal outputs."""
    headline = report["headline_metric"]
    label = _metric_label(headline)
    header = ["variant", "size", "× float32", "gzip -9", f"{label} (edgeq)", "Δ vs float32",
              f"{label} (LiteRT)", "engines agree", "edgeq ms", "LiteRT ms", "speedup (edgeq)",
              "edgeq MiB", "LiteRT MiB", "Pareto"]
    rows = []
    for v in report["variants"]:
        lit_accuracy = v["accuracy"].get(LITERT, {}).get(headline)
        agreement = v["engine_agreement"]
        agrees = ("identical" if agreement.get("identical") else "yes") if agreement["ok"] else "**NO**"
        if not agreement["checked"]:
            agrees = "not checked"
        lit_latency = v["latency_ms"].get(LITERT, {}).get("median")
        rows.append([
            v["name"], _kib(v["size"]["bytes"]), f"{v['vs_float32']['size_ratio']:.2f}",
            _kib(v["size"]["gzip_bytes"]), _number(v["accuracy"][EDGEQ][headline]),
            f"{v['vs_float32']['score_difference']:+.4f}", _number(lit_accuracy), agrees,
            f"{v['latency_ms'][EDGEQ]['median']:.3f}", f"{lit_latency:.3f}" if lit_latency is not None else "–",
            f"{v['vs_float32']['speedup'].get(EDGEQ, float('nan')):.2f}×",
            _mib(v["memory"].get(EDGEQ)), _mib(v["memory"].get(LITERT)), "★" if v["pareto"] else "",
        ])
    return header, rows


def layer_table(report: dict, count: int = 15) -> tuple:
    header = ["tensor", "op", "SQNR dB", "max abs error", "max error / scale"]
    rows = [[e["tensor"], e["op"], _number(e["sqnr_db"], 3), _number(e["max_abs_error"], 3),
             f"{e['max_error_in_scales']:.2f}"] for e in report["layer_errors"]["tensors"][:count]]
    return header, rows


def _markdown_table(header: list, rows: list) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])


def _other_metrics(report: dict) -> tuple:
    """Every accuracy figure of every variant on both engines (the table shows the headline only)."""
    names = list(report["variants"][0]["accuracy"][EDGEQ])
    header = ["variant", "engine"] + [_metric_label(n) for n in names]
    rows = []
    for v in report["variants"]:
        for engine, metrics in v["accuracy"].items():
            rows.append([v["name"], engine] + [_number(metrics.get(n)) for n in names])
    return header, rows


def _memory_rows(report: dict) -> tuple:
    header = ["variant", "engine", "after import MiB", "peak RSS MiB", "model MiB"]
    rows = []
    for v in report["variants"]:
        for engine, memory in v["memory"].items():
            if memory and "peak_rss_bytes" in memory:
                rows.append([v["name"], engine, _mib(memory, "import_rss_bytes"), _mib(memory, "peak_rss_bytes"),
                             _mib(memory)])
            else:
                rows.append([v["name"], engine, "–", "–", (memory or {}).get("error", "not measured")])
    return header, rows


def _intro_lines(report: dict) -> list:
    ev = report["eval"]
    lines = [
        f"Model `{report['model']['path']}`; eval `{ev['path']}` ({ev['samples']} samples, metric: {ev['metric']}); "
        f"calibration `{report['calibration']['path']}`.",
        "",
        f"Command: `{report['command']}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform")
        + f"; {report['versions']['platform']}.",
    ]
    machine = report.get("machine")
    if machine:
        lines += ["", f"Machine: {machine['cpus']} CPUs; 1-minute load average {machine['load_average_before_timing']} "
                      f"before and {machine['load_average_after_timing']} after timing (latencies compare "
                      "variants of one report; on a busy machine they are noisy)."]
    if not report["checks"]["ok"]:
        lines += ["", "**Check failed:** " + "; ".join(report["checks"]["problems"])]
    return lines


def _method_lines(report: dict) -> list:
    return [f"- **{k}**: {v}" for k, v in report["methods"].items()]


def render_markdown(report: dict) -> str:
    header, rows = summary_table(report)
    parts = ["# edgeq report", ""] + _intro_lines(report) + [
        "", "## Variants", "",
        "Size in KiB; Δ is the change of the headline metric against float32; latency is the median in ms; "
        "memory is the RSS a model adds to a fresh process (MiB); ★ marks the Pareto front (smaller and more "
        "accurate is better).", "",
        _markdown_table(header, rows), "",
        f"![accuracy vs size]({PLOT_FILE})", "",
        "## All accuracy figures", "", _markdown_table(*_other_metrics(report)), "",
        "## Memory", "", _markdown_table(*_memory_rows(report)), "",
    ]
    if report["layer_errors"]["tensors"]:
        lheader, lrows = layer_table(report)
        total = len(report["layer_errors"]["tensors"])
        parts += [
            f"## Per-layer quantization error ({report['layer_errors']['variant']})", "",
            f"SQNR of each int8 tensor against its float twin on the calibration samples, worst first "
            f"({len(lrows)} of {total}; all in report.json). Bar chart: `{LAYER_PLOT_FILE}`, also in report.html.",
            "", _markdown_table(lheader, lrows), "",
        ]
    parts += ["## How it was measured", ""] + _method_lines(report) + [""]
    return "\n".join(parts)


_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px; color: #222; padding: 0 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: right; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.pareto td:first-child { font-weight: bold; }
code { background: #f5f5f5; padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.fail { color: #b00; font-weight: bold; } img { max-width: 100%; }
"""


def _html_table(header: list, rows: list, row_classes: Optional[list] = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{html.escape(str(c).replace('**', ''))}</td>" for c in row)
        body.append(f"<tr{css}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _png_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _inline_markdown(text: str) -> str:
    """Escape, then the two bits of Markdown the intro uses: `code` and **bold**."""
    escaped = html.escape(text)
    pieces = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = escaped.split("**")
    return "".join(f'<span class="fail">{p}</span>' if i % 2 else p for i, p in enumerate(pieces))


def render_html(report: dict, plot: bytes, layer_plot: Optional[bytes]) -> str:
    """One file, no scripts and no external resources: styles inline, plots as data: URIs."""
    header, rows = summary_table(report)
    pareto = ["pareto" if v["pareto"] else "" for v in report["variants"]]
    intro = "".join(f"<p>{_inline_markdown(line)}</p>" for line in _intro_lines(report) if line)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>edgeq report</title>", f"<style>{_CSS}</style>", "</head><body>",
        "<h1>edgeq report</h1>", intro,
        "<h2>Variants</h2>",
        "<p>Size in KiB; Δ is the change of the headline metric against float32; latency is the median in ms; "
        "memory is the RSS a model adds to a fresh process (MiB); ★ and bold mark the Pareto front.</p>",
        _html_table(header, rows, pareto), _png_tag(plot, "accuracy vs size"),
        "<h2>All accuracy figures</h2>", _html_table(*_other_metrics(report)),
        "<h2>Memory</h2>", _html_table(*_memory_rows(report)),
    ]
    if report["layer_errors"]["tensors"]:
        lheader, lrows = layer_table(report)
        parts += [f"<h2>Per-layer quantization error ({html.escape(str(report['layer_errors']['variant']))})</h2>",
                  "<p>SQNR of each int8 tensor against its float twin on the calibration samples, worst first.</p>",
                  _png_tag(layer_plot, "per-layer SQNR"), _html_table(lheader, lrows)]
    parts += ["<h2>How it was measured</h2><ul>"]
    parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in report["methods"].items()]
    parts += ["</ul></body></html>", ""]
    return "\n".join(parts)


def terminal_table(report: dict) -> str:
    header, rows = summary_table(report)
    keep = [0, 1, 2, 3, 4, 5, 7, 8, 9, 13]
    cells = [[str(header[i]) for i in keep]] + [[str(r[i]).replace("**", "") for i in keep] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keep))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def json_ready(report: dict) -> dict:
    """The report as report.json holds it (infinities as null)."""
    from edgeq.runtime.fileio import finite_for_json

    return finite_for_json(report)
