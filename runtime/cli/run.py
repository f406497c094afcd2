"""``edgeq run``: one inference of a .tflite file on the user's input, on edgeq's runtime or LiteRT."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from edgeq.runtime.cli.common import reports_errors, verbosity_options
from edgeq.runtime.inputs import IMAGE_LAYOUTS
from edgeq.runtime.ir import ModelError
from edgeq.runtime.measure import time_runs


def image_options(command):
    """--mean, --std and --layout: how an image file given to --input becomes the model's input."""
    command = click.option(
        "--layout", type=click.Choice(IMAGE_LAYOUTS), default="auto", show_default=True,
        help="Images: the model input's layout (auto: read from its shape; edgeq models are NHWC "
        "unless converted with --keep-onnx-layout).")(command)
    command = click.option("--std", metavar="S or S1,S2,S3", help="Images: then divide per channel.")(command)
    command = click.option("--mean", metavar="M or M1,M2,M3",
                           help="Images: subtract per channel after scaling pixels to [0, 1].")(command)
    return command


INPUT_FILES_HELP = ".npy (one-input models), .npz keyed by input name, or an image file (PNG, JPEG, ...; needs Pillow)."


def open_interpreter(model: str, engine: str, threads: int = 1, max_memory_bytes=None):
    """An interpreter of ``engine`` ("edgeq" or "litert") on the model file, tensors not yet allocated."""
    if not Path(model).is_file():
        raise ModelError(f"{model}: no such file")
    if engine == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter
        except ImportError:
            raise ModelError("--engine litert needs the ai-edge-litert package (pip install ai-edge-litert)") from None
        try:
            return LiteRTInterpreter(model_path=model, num_threads=threads)
        except ValueError as exc:
            raise ModelError(f"{model}: LiteRT cannot load it: {exc}") from None
    from edgeq.runtime.interpreter import Interpreter

    return Interpreter(model_path=model, num_threads=threads, max_memory_bytes=max_memory_bytes)


_BYTE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_byte_size(text):
    """``"512M"`` -> 536870912; None stays None; click.BadParameter for anything else."""
    if text is None:
        return None
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, suffix = (value[:-1], value[-1]) if value[-1:] in _BYTE_SUFFIXES else (value, "")
    try:
        size = int(float(number) * _BYTE_SUFFIXES[suffix])
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a size such as 1000000, 512M or 2G") from None
    if size <= 0:
        raise click.BadParameter(f"'{text}' must be positive")
    return size


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False), required=True, help=INPUT_FILES_HELP)
@click.option("--engine", type=click.Choice(["edgeq", "litert"]), default="edgeq", show_default=True,
              help="Which interpreter runs the model.")
@click.option("--output", "-o", "output_path", type=click.Path(dir_okay=False), help="Save the outputs as .npz.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to print for classifier-like outputs (probabilities, or a name such as "
              "logits/scores); given explicitly, for every [1, N] output.")
@image_options
@click.option("--max-memory", metavar="BYTES[K|M|G]", callback=lambda ctx, param, value: parse_byte_size(value),
              help="Refuse a model whose tensors need more memory than this (default: the memory available).")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs' summary as JSON.")
@verbosity_options
@reports_errors
def run(model, input_path, engine, output_path, top_k, mean, std, layout, max_memory, as_json, quiet, verbose):
    """Run a .tflite file on an input and print its outputs (top-k for classifiers).

    An image is converted to the input's channels (grey or RGB), resized to its height and width
    (bilinear), scaled to [0, 1], normalized with --mean/--std, and quantized for integer inputs.

    \b
    Examples:
      edgeq run model.tflite --input x.npy
      edgeq run model.tflite --input batch.npz --engine litert -o out.npz
      edgeq run model.tflite --input cat.jpg --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --top-k 3

    Exit codes: 0 ok, 1 internal error, 2 bad input (model, input file, options).
    """
    from edgeq.runtime.fileio import write_atomic
    from edgeq.runtime.inputs import load_inputs

    interpreter = open_interpreter(model, engine, max_memory_bytes=max_memory)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    feeds = load_inputs(input_path, details, mean, std, layout)
    for detail, value in zip(details, feeds):
        interpreter.set_tensor(detail["index"], value)
    first_seconds, seconds, repeats = _invoke_timed(interpreter)
    outputs = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    top_k_asked = click.get_current_context().get_parameter_source("top_k") == click.core.ParameterSource.COMMANDLINE

    if output_path:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        write_atomic(output_path, buffer.getvalue())
    summary = {
        "engine": engine,
        "seconds": round(seconds, 6),
        "first_call_seconds": round(first_seconds, 6),
        "timed_calls": repeats,
        "outputs": {name: _summarize_output(value, top_k if top_k_asked or _classifier_like(name, value) else 0)
                    for name, value in outputs.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(f"{engine}: invoke took {seconds * 1e3:.2f} ms (median of {repeats} calls after the first, "
                   f"which took {first_seconds * 1e3:.2f} ms with loading)")
        for name, info in summary["outputs"].items():
            click.echo(f"{name}: {info['shape']} {info['dtype']} min {info['min']:.6g} max {info['max']:.6g}")
            if "top_k" in info:
                ranked = ", ".join(f"{c}: {s:.4g}" for c, s in info["top_k"])
                click.echo(f"  top-{len(info['top_k'])}: {ranked}")


STEADY_CALLS, STEADY_SECONDS = 10, 1.0


def _invoke_timed(interpreter) -> tuple:
    """(first call's seconds, median seconds of the calls after it, how many): the first call pays for
    loading kernels and warming caches, so it says little about the steady time a user will see."""
    first = time_runs(interpreter.invoke, runs=1, warmup=0).wall_seconds[0]
    steady = time_runs(interpreter.invoke, runs=STEADY_CALLS, warmup=0, max_seconds=STEADY_SECONDS)
    return first, float(np.median(steady.wall_seconds)), len(steady.wall_seconds)


CLASSIFIER_NAMES = ("logit", "prob", "class", "score", "softmax", "pred")


def _classifier_like(name: str, value: np.ndarray) -> bool:
    """A [1, N] output that reads as class scores: probabilities (in [0, 1], summing to 1), or named so."""
    if value.ndim != 2 or value.shape[0] != 1 or value.shape[1] < 2:
        return False
    if any(word in name.lower() for word in CLASSIFIER_NAMES):
        return True
    scores = value.astype(np.float64)
    return value.dtype.kind == "f" and scores.min() >= 0 and scores.max() <= 1 and abs(scores.sum() - 1) < 1e-3


def _summarize_output(value: np.ndarray, top_k: int) -> dict:
    info = {
        "shape": list(value.shape),
        "dtype": value.dtype.name,
        "min": float(value.min()) if value.size else 0.0,
        "max": float(value.max()) if value.size else 0.0,
    }
    if value.ndim == 2 and value.shape[0] == 1 and value.shape[1] > 1 and top_k > 0:
        scores = value[0].astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:top_k]
        info["top_k"] = [(int(c), float(scores[c])) for c in order]
    return info
