"""``edgeq bench``: latency and peak memory of one inference, through the runtime's one harness
(``edgeq.runtime.measure``)."""
from __future__ import annotations

import json
import sys
import time

import click

from edgeq.runtime.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, fail, reports_errors, verbosity_options
from edgeq.runtime.cli.run import INPUT_FILES_HELP, image_options, open_interpreter
from edgeq.runtime.ir import ModelError
from edgeq.runtime.measure import WARMUP_RUNS


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--engine", type=click.Choice(["edgeq", "litert", "both"]), default="edgeq", show_default=True,
              help="edgeq's runtime, LiteRT (default kernels), or both, each in its own process.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help=f"Timed runs, after {WARMUP_RUNS} warm-up runs.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="num_threads of the interpreter (BLAS threads for edgeq).")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help=f"Time on this input instead of random values: {INPUT_FILES_HELP}")
@image_options
@click.option("--profile", "with_profile", is_flag=True, help="Per-op times of edgeq's runtime: by op type and the slowest ops.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Slowest ops listed with --profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
@reports_errors
def bench(model, engine, runs, threads, input_path, mean, std, layout, with_profile, top, as_json, quiet, verbose):
    """Latency (median, p90) and peak memory of one inference, on random inputs or on --input.

    One inference is set the inputs, invoke, read the outputs; the figures are wall-clock times
    of one sample after warm-up runs.

    \b
    Examples:
      edgeq bench model.tflite
      edgeq bench model.tflite --engine both --runs 100
      edgeq bench model.tflite --profile --top 15
      edgeq bench model.tflite --input cat.jpg --mean 0.5 --std 0.25
    """
    if not input_path and (mean or std or layout != "auto"):
        raise ModelError("--mean, --std and --layout apply to image inputs; give an image file to --input")
    feeding = {"input_path": input_path, "mean": mean, "std": std, "layout": layout}
    if engine == "both":
        results = [_bench_in_subprocess(model, name, runs, threads, with_profile and name == "edgeq", top, feeding)
                   for name in ("edgeq", "litert")]
    else:
        results = [_bench_engine(model, engine, runs, threads, with_profile, top, feeding)]
    by_engine = {r["engine"]: r for r in results}
    if "edgeq" in by_engine and "litert" in by_engine:
        ours, theirs = by_engine["edgeq"], by_engine["litert"]
        ours["latency_ratio_to_litert"] = ours["median_ms"] / theirs["median_ms"]
        ours["peak_rss_ratio_to_litert"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    output = {"model": model, "runs": runs, "threads": threads, "input": input_path or "random", "engines": results}
    if as_json:
        click.echo(json.dumps(output, indent=2))
    elif not quiet:
        click.echo(_bench_table(output, top))


def _bench_in_subprocess(model, engine, runs, threads, with_profile, top, feeding) -> dict:
    """One engine in a fresh process, so that its peak memory is its own."""
    import subprocess

    command = [sys.executable, "-m", "edgeq", "bench", model, "--engine", engine, "--runs", str(runs),
               "--threads", str(threads), "--top", str(top), "--layout", feeding["layout"], "--json"]
    command += ["--profile"] if with_profile else []
    for option, key in (("--input", "input_path"), ("--mean", "mean"), ("--std", "std")):
        if feeding[key]:
            command += [option, feeding[key]]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        message = (completed.stderr.strip().splitlines() or ["failed"])[-1].removeprefix("edgeq: error: ")
        if completed.returncode == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        fail(f"{engine}: {message}", completed.returncode if completed.returncode in (1, 2) else EXIT_FAILED)
    return json.loads(completed.stdout)["engines"][0]


def _bench_engine(model, engine, runs, threads, with_profile, top, feeding) -> dict:
    from edgeq.runtime.inputs import load_inputs
    from edgeq.runtime.measure import inference, random_feeds, time_runs
    from edgeq.runtime.memory import peak_rss_mb

    rss_before = peak_rss_mb()
    started = time.perf_counter()
    interpreter = open_interpreter(model, engine, threads)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if feeding["input_path"]:
        values = load_inputs(feeding["input_path"], details, feeding["mean"], feeding["std"], feeding["layout"])
        feeds = [(detail["index"], value) for detail, value in zip(details, values)]
    else:
        feeds = random_feeds(details, index_bounds=_index_bounds_of(model))
    run_once = inference(interpreter, feeds)
    first = time.perf_counter()
    run_once()
    first_run_ms = (time.perf_counter() - first) * 1e3
    load_ms = (first - started) * 1e3
    latency = time_runs(run_once, runs).summary()
    result = {
        "engine": engine,
        "median_ms": latency["median_ms"],
        "p90_ms": latency["p90_ms"],
        "min_ms": latency["min_ms"],
        "cpu_median_ms": latency["cpu_median_ms"],
        "load_ms": load_ms,
        "first_run_ms": first_run_ms,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before,
    }
    if engine == "edgeq":
        from edgeq.runtime import native

        result["int8_kernels"] = native.describe()  # the one line saying which int8 path ran
        if with_profile:
            result["profile"] = _profile_tables(interpreter.profile(runs=min(runs, 20)), top)
    return result


def _index_bounds_of(model: str) -> dict:
    """The token-id inputs of the model file and their table sizes (see ``measure.index_bounds``)."""
    from pathlib import Path

    from edgeq.runtime.measure import index_bounds
    from edgeq.runtime.tflite_format.reader import read_tflite

    try:
        return index_bounds(read_tflite(Path(model).read_bytes()))
    except ModelError:  # LiteRT may run what our reader refuses; it then gets the usual random values
        return {}


def _profile_tables(per_op: list, top: int) -> dict:
    by_type = {}
    for entry in per_op:
        row = by_type.setdefault(entry["type"], {"type": entry["type"], "count": 0, "ms": 0.0})
        row["count"] += 1
        row["ms"] += entry["seconds"] * 1e3
    total = sum(row["ms"] for row in by_type.values()) or 1.0
    for row in by_type.values():
        row["share"] = row["ms"] / total
        row["us_per_op"] = row["ms"] * 1e3 / row["count"]
    slowest = sorted(per_op, key=lambda e: -e["seconds"])[:top]
    return {"total_ms": total, "ops": len(per_op), "folded": sum(1 for e in per_op if "folded_into" in e),
            "by_type": sorted(by_type.values(), key=lambda row: -row["ms"]),
            "slowest": [{"index": e["index"], "type": e["type"], "output": e["output"], "ms": e["seconds"] * 1e3}
                        for e in slowest]}


def _bench_table(output: dict, top: int) -> str:
    lines = [f"{output['model']}: {output['runs']} runs, {output['threads']} thread(s)",
             f"{'engine':8s} {'median ms':>10s} {'p90 ms':>10s} {'peak RSS MB':>12s}"]
    for r in output["engines"]:
        extra = ""
        if "latency_ratio_to_litert" in r:
            extra = f"   x LiteRT: latency {r['latency_ratio_to_litert']:.2f}, memory {r['peak_rss_ratio_to_litert']:.2f}"
        if r["engine"] == "edgeq":
            extra += f"   ({r['int8_kernels']})" if r.get("int8_kernels") else ""
        lines.append(f"{r['engine']:8s} {r['median_ms']:10.3f} {r['p90_ms']:10.3f} {r['peak_rss_mb']:12.1f}{extra}")
    for r in output["engines"]:
        profile = r.get("profile")
        if not profile:
            continue
        folded = (f"; {profile['folded']} PADs run inside the convolutions they feed"
                  if profile.get("folded") else "")
        lines += ["", f"per op type ({profile['ops']} ops{folded}, {profile['total_ms']:.3f} ms summed medians):",
                  f"  {'op type':22s} {'count':>5s} {'ms':>10s} {'share':>6s} {'us/op':>9s}"]
        lines += [f"  {row['type']:22s} {row['count']:5d} {row['ms']:10.3f} {row['share']:6.1%} {row['us_per_op']:9.1f}"
                  for row in profile["by_type"]]
        lines += ["", f"slowest {len(profile['slowest'])} ops:", f"  {'#':>4s} {'op type':22s} {'ms':>10s}  output"]
        lines += [f"  {e['index']:4d} {e['type']:22s} {e['ms']:10.3f}  {e['output']}" for e in profile["slowest"]]
    return "\n".join(lines)
