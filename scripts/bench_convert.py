"""How long ONNX -> int8 TFLite takes, and how much memory it needs, as a user sees it.

For every sample model (sample_models/manifest.json, with its calibration file), ResNet-50 (the onnx
wheel's light_resnet50.onnx, random calibration samples) and MobileNetV2 1.0 224
(edgeq.testing.mobilenet_v2, 100 random calibration samples), it measures:

* the whole ``python -m edgeq convert ... --quantize int8`` process, start-up included: wall
  and CPU seconds and peak RSS (``os.wait4`` on the child), median of ``--runs``;
* the phases inside one process (imports, ONNX import, calibration, quantization, writing), timed
  by a child running ``--phases`` (median of ``--runs`` too);
* the int8 file's size and its ratio to the float file's.

BLAS runs on ``--threads`` threads (OPENBLAS/OMP/MKL_NUM_THREADS of the children; default 1, the
reproducible figure on a shared machine); OPENBLAS_CORETYPE is passed through as it is.

    python scripts/bench_convert.py --json bench_convert.json [--runs 3] [--threads 1] [--only mobilenet_v2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "sample_models"
MOBILENET_SAMPLES = 100
RESNET_SAMPLES = 10
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- the models ------------------------------------------------------------------------------------

def sample_model_cases() -> list:
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    return [
        {"name": entry["name"], "model": SAMPLE_DIR / entry["file"], "calibration": SAMPLE_DIR / entry["calib_file"]}
        for entry in manifest["models"]
    ]


def random_calibration(path: Path, input_name: str, shape: tuple, count: int, seed: int = 0) -> Path:
    """``count`` standard-normal samples (what normalised images look like to a network)."""
    rng = np.random.default_rng(seed)
    np.savez(path, **{input_name: rng.standard_normal((count,) + tuple(shape[1:]), dtype=np.float32)})
    return path


def resnet50_case(workdir: Path) -> dict:
    import onnx

    model = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
    calibration = random_calibration(workdir / "resnet50_calib.npz", "gpu_0/data_0", (1, 3, 224, 224), RESNET_SAMPLES)
    return {"name": "resnet50 (light)", "model": model, "calibration": calibration}


def mobilenet_v2_case(workdir: Path) -> dict:
    import onnx

    from edgeq.testing.mobilenet_v2 import build_mobilenet_v2

    model = workdir / "mobilenet_v2_1.0_224.onnx"
    onnx.save(build_mobilenet_v2(224, 1.0, seed=0), str(model))
    calibration = random_calibration(workdir / "mobilenet_v2_calib.npz", "input", (1, 3, 224, 224), MOBILENET_SAMPLES)
    return {"name": "mobilenet_v2_1.0_224", "model": model, "calibration": calibration}


# -- measuring -------------------------------------------------------------------------------------

def child_environment(threads: int) -> dict:
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def run_child(command: list, env: dict) -> dict:
    """Wall and CPU seconds and peak RSS (MB) of one child process, reaped with ``os.wait4`` so that
    the resource usage is this child's alone; its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{stderr}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "stdout": stdout,
    }


def cli_command(case: dict, output: Path) -> list:
    return [sys.executable, "-m", "edgeq", "convert", str(case["model"]), "-o", str(output),
            "--quantize", "int8", "--calibration", str(case["calibration"]), "-q"]


def phases_command(case: dict, output: Path) -> list:
    return [sys.executable, str(Path(__file__).resolve()), "--phases", str(case["model"]),
            str(case["calibration"]), str(output)]


def measure_phases(model: str, calibration: str, output: str) -> dict:
    """One conversion in this process, phase by phase, as ``converter.api.convert`` does it."""
    clock = time.perf_counter
    started = clock()
    from edgeq.converter.api import load_graph
    from edgeq.converter.calibrate import calibrate, load_calibration
    from edgeq.converter.quantize import quantize_int8
    from edgeq.runtime.tflite_format.writer import write_tflite

    seconds = {"imports": clock() - started}
    mark = clock()
    float_graph, _ = load_graph(model)
    seconds["import_onnx"] = clock() - mark
    mark = clock()
    samples = load_calibration(calibration, float_graph)
    ranges = calibrate(float_graph, samples, progress=False)
    seconds["calibrate"] = clock() - mark
    mark = clock()
    graph = quantize_int8(float_graph, ranges)
    seconds["quantize"] = clock() - mark
    mark = clock()
    content = write_tflite(graph)
    seconds["write"] = clock() - mark
    seconds["total"] = clock() - started
    Path(output).write_bytes(content)
    float_bytes = len(write_tflite(float_graph))
    return {"seconds": seconds, "int8_bytes": len(content), "float_bytes": float_bytes,
            "samples": int(next(iter(samples.values())).shape[0])}


def median_of(runs: list, key: str) -> float:
    return statistics.median(run[key] for run in runs)


def bench_case(case: dict, runs: int, env: dict, workdir: Path) -> dict:
    output = workdir / f"{case['name'].split()[0]}_int8.tflite"
    whole = [run_child(cli_command(case, output), env) for _ in range(runs)]
    split = [json.loads(run_child(phases_command(case, output), env)["stdout"]) for _ in range(runs)]
    phases = {name: statistics.median(s["seconds"][name] for s in split) for name in split[0]["seconds"]}
    return {
        "model": case["name"],
        "calibration_samples": split[0]["samples"],
        "wall_s": median_of(whole, "wall_s"),
        "cpu_s": median_of(whole, "cpu_s"),
        "peak_rss_mb": median_of(whole, "peak_rss_mb"),
        "wall_s_runs": [round(r["wall_s"], 3) for r in whole],
        "phases_s": phases,
        "onnx_bytes": Path(case["model"]).stat().st_size,
        "float_bytes": split[0]["float_bytes"],
        "int8_bytes": split[0]["int8_bytes"],
        "int8_to_float": split[0]["int8_bytes"] / split[0]["float_bytes"],
    }


def startup_seconds(env: dict, runs: int) -> float:
    """``python -m edgeq --help``: interpreter start-up plus the CLI's own imports."""
    return statistics.median(
        run_child([sys.executable, "-m", "edgeq", "--help"], env)["wall_s"] for _ in range(runs)
    )


# -- report ----------------------------------------------------------------------------------------

COLUMNS = ("model", "samples", "wall s", "cpu s", "peak MB", "imports", "import", "calib", "quant", "write",
           "float KB", "int8 KB", "int8/float")


def table(results: list) -> str:
    rows = [COLUMNS]
    for r in results:
        p = r["phases_s"]
        rows.append((
            r["model"], str(r["calibration_samples"]), f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}", f"{p['imports']:.2f}", f"{p['import_onnx']:.2f}", f"{p['calibrate']:.2f}",
            f"{p['quantize']:.2f}", f"{p['write']:.2f}", f"{r['float_bytes'] / 1024:.0f}",
            f"{r['int8_bytes'] / 1024:.0f}", f"{r['int8_to_float']:.2f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--runs", type=int, default=3, help="runs per model; medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the conversion processes")
    parser.add_argument("--only", help="only models whose name contains this")
    parser.add_argument("--workdir", type=Path, help="where the generated models and outputs go (default: a temp dir)")
    parser.add_argument("--phases", nargs=3, metavar=("MODEL", "CALIBRATION", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phases:
        print(json.dumps(measure_phases(*args.phases)))
        return

    with tempfile.TemporaryDirectory(prefix="edgeq_bench_") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        env = child_environment(args.threads)
        cases = sample_model_cases() + [resnet50_case(workdir), mobilenet_v2_case(workdir)]
        if args.only:
            cases = [c for c in cases if args.only in c["name"]]
        results = []
        for case in cases:
            results.append(bench_case(case, args.runs, env, workdir))
            print(f"{case['name']}: {results[-1]['wall_s']:.2f} s", file=sys.stderr, flush=True)
        startup = startup_seconds(env, args.runs)

    report = {
        "command": " ".join([Path(sys.executable).name, "scripts/bench_convert.py"] + list(argv or sys.argv[1:])),
        "threads": args.threads,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "runs": args.runs,
        "cli_startup_s": startup,
        "results": results,
    }
    print(table(results))
    print(f"\nCLI start-up (python -m edgeq --help): {startup:.2f} s; BLAS threads: {args.threads}; "
          f"load average at the end: {', '.join(f'{x:.1f}' for x in report['load_average'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
