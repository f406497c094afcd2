#!/usr/bin/env python3
"""Latency and peak memory of edgeq's runtime, side by side with LiteRT and onnxruntime.

For every model (the digits samples, ResNet-50 and SqueezeNet from the onnx wheel with seeded random
weights, MobileNetV2 1.0 224) in float32 and int8:

- edgeq: our runtime on the .tflite we write (``Interpreter(num_threads=N)``, N = --threads, 1 by default);
- litert: LiteRT's default kernels (XNNPACK) on the same file, ``num_threads=N``;
- onnxruntime: the source ONNX model (float) and its QDQ int8 version from
  ``onnxruntime.quantization.quantize_static``, ``intra_op_num_threads=N``.

Each (model, variant, engine) runs in its own subprocess, which loads only numpy and that engine, so
its peak RSS (VmHWM, ``edgeq.runtime.memory``) is that engine's alone. Latency is one inference (set
input, invoke, read outputs) after warm-up runs, timed by the harness ``edgeq bench`` and the report use
(``edgeq.runtime.measure``): median and p90 of wall and CPU time. The edgeq worker also profiles per op
(``Interpreter.profile``). Results go to a JSON file and a table; ratios are to LiteRT. The first
invoke (which pays for anything a kernel sets up lazily) is recorded beside the steady median.

    python scripts/bench_runtime.py [--out bench_runtime.json] [--models resnet50,mobilenet_v2_224] [--threads 2]

To benchmark against OpenBLAS's own kernel choice, run it with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``); the JSON
records the BLAS library and the thread count it has while our interpreter runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from edgeq.runtime.measure import inference, time_runs
from edgeq.runtime.memory import peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
# edgeq-numpy: our runtime with the native kernels off (EDGEQ_NO_NATIVE=1), as on a board without a C compiler
# at install time.
ENGINES = ("edgeq", "edgeq-numpy", "litert", "onnxruntime")
VARIANTS = ("float", "int8")
SAMPLE_NAMES = ("digits_mlp", "digits_cnn", "digits_mobilenetv2")
ALL_MODELS = SAMPLE_NAMES + ("resnet50", "squeezenet", "mobilenet_v2_224")
CALIBRATION_SAMPLES = 4


# -- worker: one engine, one model, in its own process ----------------------------------------------

def _blas_info() -> list:
    """The OpenBLAS libraries numpy loaded and their thread counts (edgeq.runtime.threads finds them)."""
    from edgeq.runtime.threads import blas_controls

    return [{"library": os.path.basename(control.path), "num_threads": control.get()} for control in blas_controls()]


def worker(spec: dict) -> dict:
    import numpy as np

    engine, model_file, threads = spec["engine"], spec["model"], spec.get("threads", 1)
    x = np.load(spec["input"])
    baseline_rss = peak_rss_mb()
    load_start = time.perf_counter()
    note = None
    if engine.startswith("edgeq"):
        from edgeq.runtime.interpreter import Interpreter

        interpreter = Interpreter(model_path=model_file, num_threads=threads)
    elif engine == "litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_path=model_file, num_threads=threads)
        try:
            interpreter.allocate_tensors()
        except RuntimeError as error:
            # XNNPACK refuses some graphs outright; LiteRT's own optimized kernels still run them.
            note = f"XNNPACK refused the model ({str(error).splitlines()[0][:120]}); builtin optimized kernels"
            interpreter = Interpreter(model_path=model_file, num_threads=threads,
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    elif engine == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
        feed_name = session.get_inputs()[0].name
    else:
        raise ValueError(engine)
    imported_rss = peak_rss_mb()

    if engine != "onnxruntime":
        interpreter.allocate_tensors()
        run_once = inference(interpreter, [(interpreter.get_input_details()[0]["index"], x)])
    else:
        def run_once():
            return session.run(None, {feed_name: x})

    first_start = time.perf_counter()
    output = run_once()[0]
    first_invoke = time.perf_counter() - first_start
    load_seconds = first_start - load_start
    latency = time_runs(run_once, spec["min_runs"], spec["warmup"], min_seconds=spec["seconds"]).summary()
    peak_rss = peak_rss_mb()
    blas, profile = _blas_info(), None
    if engine.startswith("edgeq"):
        with interpreter._thread_limit():
            blas = _blas_info()  # as it runs: num_threads capped by Interpreter(num_threads=N)
        profile = interpreter.profile(runs=max(3, min(20, spec["min_runs"])))
    return {
        "note": note,
        "median_ms": latency["median_ms"],
        "p90_ms": latency["p90_ms"],
        "cpu_median_ms": latency["cpu_median_ms"],
        "cpu_p90_ms": latency["cpu_p90_ms"],
        "runs": latency["runs"],
        "load_ms": load_seconds * 1e3,
        "first_invoke_ms": first_invoke * 1e3,
        "peak_rss_mb": peak_rss,
        "rss_before_engine_mb": baseline_rss,
        "rss_after_load_mb": imported_rss,
        "output_shape": list(np.shape(output)),
        "blas": blas,
        "native_kernels": _native_kernels() if engine.startswith("edgeq") else None,
        "profile": profile,
    }


def _native_kernels():
    from edgeq.runtime import native

    return native.describe()


# -- model preparation (converter side, in the parent process) -------------------------------------

def _source_model(name: str, work: Path):
    """(ONNX path, NCHW input array, calibration array, note) for one benchmark model."""
    import numpy as np
    import onnx

    rng = np.random.default_rng(0)
    note = ""
    if name in SAMPLE_NAMES:
        entry = next(m for m in json.loads((SAMPLES / "manifest.json").read_text())["models"] if m["name"] == name)
        path = SAMPLES / entry["file"]
        test = np.load(SAMPLES / entry["test_file"])[entry["input_name"]].astype(np.float32)
        calibration = np.load(SAMPLES / entry["calib_file"])[entry["input_name"]][:32].astype(np.float32)
        note = "calibrated on 32 of its calibration samples"
        return path, test[:1], calibration, note
    path = work / f"{name}.onnx"
    if name == "mobilenet_v2_224":
        from edgeq.testing.mobilenet_v2 import build_mobilenet_v2

        model = build_mobilenet_v2(resolution=224, width=1.0, seed=0)
        note = "random weights and BN statistics (edgeq.testing.mobilenet_v2)"
    else:
        from edgeq.testing.light_models import load_light_model, with_random_weights

        model = with_random_weights(load_light_model(name))
        note = "onnx wheel's light model, seeded random weights (edgeq.testing.light_models.with_random_weights)"
    if not path.exists():
        onnx.save(model, str(path))
    initializers = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    shape = tuple(d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim)
    x = rng.standard_normal(shape).astype(np.float32)
    calibration = rng.standard_normal((CALIBRATION_SAMPLES,) + shape[1:]).astype(np.float32)
    note += f"; int8 calibrated on {CALIBRATION_SAMPLES} random normal samples"
    return path, x, calibration, note


def _onnx_qdq(onnx_path: Path, calibration, out_path: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(onnx_path))
    initializers = {t.name for t in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in initializers)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13 or any(i.name in initializers for i in model.graph.input):
        # The quantizer's own opset upgrade loses initializers listed as graph inputs (old light
        # models): upgrade first and keep weights out of the inputs.
        from onnx import version_converter

        kept = [i for i in model.graph.input if i.name not in initializers]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)  # initializers need not be inputs from IR 4 on
        model = version_converter.convert_version(model, 13)
        onnx_path = out_path.with_name(out_path.stem + "_opset13.onnx")
        onnx.save(model, str(onnx_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{input_name: sample[None]} for sample in calibration])

        def get_next(self):
            return next(self.samples, None)

    quantize_static(str(onnx_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def prepare_model(name: str, work: Path) -> dict:
    """Write the model's float and int8 .tflite, ONNX float and QDQ files and its inputs; returns
    the files per (variant, engine) and notes."""
    import numpy as np

    from edgeq.converter.api import convert

    path, x_nchw, calibration, note = _source_model(name, work)
    files = {"note": note, "runs": {}}
    calibration_file = work / f"{name}_calibration.npy"
    np.save(calibration_file, calibration)
    np.save(work / f"{name}_input_onnx.npy", x_nchw)
    for variant in VARIANTS:
        tflite_path = work / f"{name}_{variant}.tflite"
        try:
            if not tflite_path.exists():
                options = {"quantize": "int8", "calibration": str(calibration_file)} if variant == "int8" else {}
                started = time.perf_counter()
                convert(str(path), str(tflite_path), **options)
                print(f"  converted {tflite_path.name} in {time.perf_counter() - started:.1f} s", flush=True)
            from edgeq.runtime.tflite_format.reader import read_tflite

            graph = read_tflite(tflite_path.read_bytes())
            input_shape = tuple(graph[graph.inputs[0]].shape)
            x_tflite = x_nchw.transpose(0, 2, 3, 1) if x_nchw.ndim == 4 and input_shape != x_nchw.shape else x_nchw
            input_file = work / f"{name}_input_tflite.npy"
            np.save(input_file, np.ascontiguousarray(x_tflite))
            ops = len(graph.ops)
            for engine in ("edgeq", "edgeq-numpy", "litert"):
                files["runs"][(variant, engine)] = {"model": str(tflite_path), "input": str(input_file), "ops": ops}
        except Exception as error:  # noqa: BLE001 - a model that does not convert is reported, not fatal
            files.setdefault("skipped", []).append(f"{variant} .tflite: {type(error).__name__}: {error}")
        onnx_model = path if variant == "float" else work / f"{name}_qdq.onnx"
        try:
            if variant == "int8" and not onnx_model.exists():
                _onnx_qdq(path, calibration, onnx_model)
            files["runs"][(variant, "onnxruntime")] = {"model": str(onnx_model), "input": str(work / f"{name}_input_onnx.npy")}
        except Exception as error:  # noqa: BLE001
            files.setdefault("skipped", []).append(f"{variant} onnxruntime QDQ: {type(error).__name__}: {error}")
    return files


def run_worker(spec: dict, env: dict) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                               text=True, env=env, cwd=str(REPO))
    if completed.returncode != 0:
        return {"error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _profile_summary(profile: list, top: int = 8) -> dict:
    by_type = {}
    for entry in profile:
        total = by_type.setdefault(entry["type"], {"ms": 0.0, "count": 0})
        total["ms"] += entry["seconds"] * 1e3
        total["count"] += 1
    total_ms = sum(v["ms"] for v in by_type.values()) or 1.0
    for value in by_type.values():
        value["share"] = value["ms"] / total_ms
    ordered = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"]))
    slowest = sorted(profile, key=lambda e: -e["seconds"])[:top]
    return {"total_ms": total_ms, "by_type": ordered,
            "slowest_ops": [{"index": e["index"], "type": e["type"], "output": e["output"],
                             "ms": e["seconds"] * 1e3} for e in slowest]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_runtime.json", help="JSON results file.")
    parser.add_argument("--models", default=",".join(ALL_MODELS), help="Comma-separated subset of " + ", ".join(ALL_MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", default="/tmp/edgeq-bench", help="Where converted models are kept (reused).")
    parser.add_argument("--seconds", type=float, default=3.0, help="Timed seconds per (model, engine) at least.")
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="num_threads of every engine (1 by default).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    results = {
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                           "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}},
        "settings": {"threads": args.threads, "seconds": args.seconds, "min_runs": args.min_runs,
                     "warmup": args.warmup, "latency": "set input + invoke + read output, one sample",
                     "litert": f"ai_edge_litert Interpreter(num_threads={args.threads}), default op resolver (XNNPACK)",
                     "onnxruntime": f"intra_op_num_threads={args.threads}; int8 = quantize_static QDQ, per-channel QInt8"},
        "models": {},
        "load_average_at_start": os.getloadavg(),
    }
    engines = [e for e in args.engines.split(",") if e]
    for name in [m for m in args.models.split(",") if m]:
        print(f"{name}:", flush=True)
        try:
            files = prepare_model(name, work)
        except Exception as error:  # noqa: BLE001 - e.g. SqueezeNet's training Dropout
            results["models"][name] = {"skipped": f"{type(error).__name__}: {error}"}
            print(f"  skipped: {type(error).__name__}: {error}", flush=True)
            continue
        entry = results["models"][name] = {"note": files["note"], "skipped": files.get("skipped", []), "variants": {}}
        for variant in [v for v in args.variants.split(",") if v]:
            measured = entry["variants"][variant] = {}
            for engine in engines:
                run = files["runs"].get((variant, engine))
                if run is None:
                    continue
                spec = {"engine": engine, "model": run["model"], "input": run["input"], "seconds": args.seconds,
                        "min_runs": args.min_runs, "warmup": args.warmup, "threads": args.threads}
                result = run_worker(spec, dict(env, EDGEQ_NO_NATIVE="1") if engine == "edgeq-numpy" else env)
                if "ops" in run:
                    result["ops"] = run["ops"]
                if result.get("profile"):
                    result["profile"] = _profile_summary(result["profile"])
                measured[engine] = result
                shown = result.get("error") or f"median {result['median_ms']:.3f} ms, p90 {result['p90_ms']:.3f} ms, peak RSS {result['peak_rss_mb']:.0f} MB"
                print(f"  {variant:5s} {engine:12s} {shown}", flush=True)
            _add_ratios(measured)
        Path(args.out).write_text(json.dumps(results, indent=1))
    results["load_average_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print(format_table(results))
    print(f"\nJSON: {args.out}")
    return 0


def _add_ratios(measured: dict) -> None:
    reference = measured.get("litert")
    if not reference or "median_ms" not in reference:
        return
    for engine, result in measured.items():
        if "median_ms" in result:
            result["latency_ratio_to_litert"] = result["median_ms"] / reference["median_ms"]
            result["cpu_ratio_to_litert"] = result["cpu_median_ms"] / reference["cpu_median_ms"]
            result["rss_ratio_to_litert"] = result["peak_rss_mb"] / reference["peak_rss_mb"]
    for engine in ("edgeq", "edgeq-numpy"):
        ours = measured.get(engine)
        if ours and "median_ms" in ours and ours.get("ops"):
            ours["overhead_per_op_us"] = (ours["median_ms"] - reference["median_ms"]) * 1e3 / ours["ops"]
            ours["cpu_overhead_per_op_us"] = (ours["cpu_median_ms"] - reference["cpu_median_ms"]) * 1e3 / ours["ops"]


def format_table(results: dict) -> str:
    header = (f"{'model':18s} {'var':5s} {'engine':11s} {'median ms':>10s} {'p90 ms':>9s} {'x LiteRT':>8s} "
              f"{'CPU ms':>9s} {'x LiteRT':>8s} {'peak RSS MB':>11s} {'x LiteRT':>8s} {'1st/median':>10s} "
              f"{'us/op over':>10s}")
    lines = [header, "-" * len(header)]
    for name, entry in results["models"].items():
        if "variants" not in entry:
            lines.append(f"{name:18s} skipped: {entry.get('skipped')}")
            continue
        for variant, measured in entry["variants"].items():
            for engine, r in measured.items():
                if "error" in r:
                    lines.append(f"{name:18s} {variant:5s} {engine:11s} error: {r['error'][:80]}")
                    continue
                overhead = f"{r['overhead_per_op_us']:10.1f}" if "overhead_per_op_us" in r else ""
                lines.append(f"{name:18s} {variant:5s} {engine:11s} {r['median_ms']:10.3f} {r['p90_ms']:9.3f} "
                             f"{r.get('latency_ratio_to_litert', float('nan')):8.2f} {r['cpu_median_ms']:9.3f} "
                             f"{r.get('cpu_ratio_to_litert', float('nan')):8.2f} {r['peak_rss_mb']:11.1f} "
                             f"{r.get('rss_ratio_to_litert', float('nan')):8.2f} "
                             f"{r['first_invoke_ms'] / r['median_ms']:10.2f} {overhead}")
        for note in entry.get("skipped", []):
            lines.append(f"{name:18s} note: {note[:110]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
