"""The report as a whole: plan the variants, measure them, assemble the figures into one dict
(report.json) and write the folder, which is assembled beside its destination and renamed into place
at the end, so a failure never leaves a partial report."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from edgeq.converter.report.engines import EDGEQ, LITERT, litert_available
from edgeq.converter.report.eval_data import EvalData, call_metric, load_eval, load_metric
from edgeq.converter.report.measure import (MODELS_FOLDER, build_all, measure_all_latency, sigint_blocked,
                                            size_figures)
from edgeq.converter.report.metrics import agreement_tolerance, builtin_metrics, engine_agreement, pareto_front
from edgeq.converter.report.plan import plan_variants
from edgeq.converter.report.plots import plot_accuracy_vs_size, plot_layer_sqnr
from edgeq.converter.report.render import LAYER_PLOT_FILE, PLOT_FILE, render_html, render_markdown
from edgeq.runtime.fileio import finite_for_json, write_atomic
from edgeq.runtime.ir import ModelError

REPORT_FORMAT = "edgeq-report/1"
METHODS_TEXT = {
    "size": "bytes of the .tflite file; gzip: the same bytes compressed with gzip level 9",
    "accuracy": "edgeq: our runtime on the whole eval set (batched); litert: LiteRT with its reference "
                "kernels (BUILTIN_REF), one sample at a time; the engines must agree: int8 outputs identical "
                "(within 2e-2 where ops stay float islands), float32/float16 within 1e-4 and dynamic range within 2e-2 of the largest output",
    "latency": "median of repeated single-sample inferences (set the input, invoke, read the outputs) after "
               "warm-up, 1 thread; edgeq's runtime and LiteRT's default kernels; measured serially, one "
               "variant at a time (the harness of edgeq bench)",
    "memory": "a fresh subprocess per engine imports it, notes its RSS ('runtime': the engine's own cost, "
              "the same for every model), resets its peak RSS (Linux: /proc/self/clear_refs; elsewhere the "
              "peak is ru_maxrss, import included), loads the model and runs it once on zeros; 'peak' is the "
              "peak RSS while loading and running, 'growth' is peak minus runtime: the model, plus any "
              "library that loading and running it imported (named in the table)",
}


@dataclass
class ReportOptions:
    model: str
    calibration: object  # a file name, or an edgeq.runtime.inputs.ImageFolder
    eval: object         # the same
    output: str
    labels_key: Optional[str] = None
    methods: tuple = ("minmax",)
    prune_sparsities: tuple = ()
    prune_channels: tuple = ()
    reconstruct: Optional[bool] = None  # None: on for pruned variants, as for convert
    target_size: Optional[str] = None   # a size budget (e.g. "150kB"): the budget search's path is drawn
    max_drop: float = 1.0
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
    for package in ("edgeq", "numpy", "onnx", "ai-edge-litert", "matplotlib"):
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
    from edgeq.runtime.inputs import ImageFolder

    for label, path in (("model", options.model), ("calibration file", options.calibration)):
        if not isinstance(path, ImageFolder) and not Path(path).is_file():
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
        built = build_all(specs, options, eval_data, staging / MODELS_FOLDER, jobs, progress)
        load_before = _load_average()
        latency = measure_all_latency(built, eval_data.inputs, options.repeats, progress)
        report = assemble_report(options, specs, built, latency, eval_data, metric)
        if options.target_size is not None:
            report["budget_search"] = _budget_search(options, eval_data)
        report["machine"] = {"cpus": os.cpu_count(), "load_average_before_timing": load_before,
                             "load_average_after_timing": _load_average()}
        write_report_files(report, staging)
        _open_permissions(staging)
        with sigint_blocked():  # a Ctrl-C between the two renames would leave no report at -o
            _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _budget_search(options: ReportOptions, eval_data: EvalData) -> dict:
    """edgeq convert --target-size's search on the report's eval set, for its path on the plot."""
    from edgeq.converter.budget import parse_size, search_budget

    if eval_data.labels is None:
        raise ModelError("--target-size weighs accuracy against labels: the eval samples have none")
    search = search_budget(options.model, options.calibration, options.eval,
                           target_bytes=parse_size(options.target_size), max_drop=options.max_drop, labels_key=options.labels_key,
                           input_shapes=options.input_shapes or None)
    return search.as_dict() | {"verdict": search.verdict(), "lines": search.format_lines()}


def _load_average() -> Optional[float]:
    """The 1-minute load average (POSIX): latency from a busy machine is to be read with care."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


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
            "int8_check": variant.int8_check,
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
    plot = plot_accuracy_vs_size(report)
    layer_plot = plot_layer_sqnr(report["layer_errors"]["tensors"]) if report["layer_errors"]["tensors"] else None
    write_atomic(folder / PLOT_FILE, plot)
    if layer_plot is not None:
        write_atomic(folder / LAYER_PLOT_FILE, layer_plot)
    write_atomic(folder / "report.json", (json.dumps(finite_for_json(report), indent=2) + "\n").encode())
    write_atomic(folder / "report.md", render_markdown(report).encode())
    write_atomic(folder / "report.html", render_html(report, plot, layer_plot).encode())
