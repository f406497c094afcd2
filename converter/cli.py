"""The ``edgeq`` command line.

Exit codes: 0 success, 1 a check failed or an internal error, 2 bad input (file, model, option).
"""
from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np

from edgeq.runtime.memory import peak_rss_mb
from edgeq.runtime.ir import ModelError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str, code: int) -> None:
    click.echo(f"edgeq: error: {message}", err=True)
    sys.exit(code)


def reports_errors(command):
    """One clear line and a non-zero exit instead of a traceback; ``--verbose`` keeps the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return command(*args, **kwargs)
        except ModelError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            _fail(f"{exc.filename}: {exc.strerror}", EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_FAILED)
        except Exception as exc:  # the last line of defence: still one line unless asked
            if verbose:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)", EXIT_FAILED)

    return wrapper


def verbosity_options(command):
    command = click.option("--verbose", "-v", is_flag=True, help="More detail; tracebacks on internal errors.")(command)
    command = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(command)
    return command


class _RecordsCommandLine(click.Group):
    """The group keeps the command line as typed in ``ctx.meta``: the report records it."""

    def make_context(self, info_name, args, parent=None, **extra):
        command_line = ["edgeq", *args]  # the program, whatever name click was invoked under
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["command_line"] = command_line
        return ctx


@click.group(cls=_RecordsCommandLine, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeq")
def main():
    """edgeq: ONNX -> pruned, int8 TFLite for edge CPUs, and a small runtime to run it.

    \b
    Examples:
      edgeq convert model.onnx -o model.tflite
      edgeq inspect model.tflite
      edgeq run model.tflite --input x.npy --engine litert
      edgeq report model.onnx --calibration calib.npz --eval test.npz -o report/

    Exit codes: 0 ok, 1 failed check or internal error, 2 bad input.
    """


# -- convert ---------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The .tflite file to write.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D1,D2,...",
    help="Fix an input's shape (ONNX layout), e.g. input:1,3,224,224. Repeatable.",
)
@click.option("--keep-onnx-layout", is_flag=True, help="Keep 4-D inputs/outputs NCHW as in ONNX (default: NHWC).")
@click.option("--no-names", is_flag=True, help="Store no tensor names (a smaller file).")
@click.option("--quantize", type=click.Choice(["none", "int8", "dynamic", "float16"]), default="none",
              show_default=True, help="int8: full integer (needs --calibration); dynamic: int8 weights, "
              "float activations; float16: float16 weights.")
@click.option("--calibration", type=click.Path(dir_okay=False), help="Calibration samples: .npz keyed by input "
              "name, or .npy for one-input models; samples on the first axis, images NCHW or NHWC.")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]),
              default="minmax", show_default=True, help="How activation ranges are chosen.")
@click.option("--calibration-samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--io", "io_dtype", type=click.Choice(["float32", "int8", "uint8"]), default="float32",
              show_default=True, help="Input/output type of an int8 model.")
@click.option("--float-fallback", type=click.Choice(["auto", "none"]), default="auto", show_default=True,
              help="With --quantize int8: auto keeps float islands where int8 would wreck the outputs "
              "(mixed-range joins; the ops where error grows most while the outputs' SQNR is under "
              "--min-sqnr); none quantizes every op that has an int8 form.")
@click.option("--min-sqnr", "min_sqnr_db", type=float, metavar="DB", help="Target SQNR of the int8 outputs "
              "against float on calibration samples, for --float-fallback auto [default: 20].")
@click.option("--debug", is_flag=True, help="With --quantize int8: per-tensor error against the float model.")
@click.option("--prune-sparsity", type=click.FloatRange(0, 1, max_open=True), help="Zero this share of the "
              "smallest weights (CONV_2D / FULLY_CONNECTED; smaller only once compressed or --sparse-encoding).")
@click.option("--prune-scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
              help="One magnitude threshold across layers, or the same sparsity in every layer.")
@click.option("--prune-channels", type=click.FloatRange(0, 1, max_open=True), help="Remove this share of "
              "the output channels of every prunable layer (a smaller, faster dense model).")
@click.option("--prune-importance", type=click.Choice(["l1", "activation"]), default="l1", show_default=True,
              help="Rank channels by filter L1 norm or by mean |activation| on --calibration samples.")
@click.option("--reconstruct", is_flag=True, help="With --prune-channels: refit the layers after removed "
              "channels by least squares on --calibration samples.")
@click.option("--sparse-encoding", is_flag=True, help="Store float weights in TFLite's sparse (CSR) "
              "encoding where smaller (float models only).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
@reports_errors
def convert(model, output, input_shapes, keep_onnx_layout, no_names, quantize, calibration, calibration_method,
            calibration_samples, io_dtype, float_fallback, min_sqnr_db, debug, prune_sparsity, prune_scope, prune_channels, prune_importance,
            reconstruct, sparse_encoding, as_json, quiet, verbose):
    """Convert an ONNX model (or a float .tflite) to a TFLite flatbuffer.

    \b
    Examples:
      edgeq convert model.onnx -o model.tflite
      edgeq convert model.onnx -o model.tflite --input-shape images:1,3,640,640
      edgeq convert model.onnx -o model_int8.tflite --quantize int8 --calibration calib.npz
      edgeq convert model.onnx -o m.tflite --quantize int8 --calibration calib.npz --io uint8 --debug
      edgeq convert model.onnx -o m.tflite --quantize int8 --calibration calib.npz --float-fallback none
      edgeq convert model_float.tflite -o model_int8.tflite --quantize int8 --calibration calib.npz
      edgeq convert model.onnx -o model_dynamic.tflite --quantize dynamic
      edgeq convert model.onnx -o small.tflite --prune-channels 0.3 --reconstruct --calibration calib.npz
      edgeq convert model.onnx -o sparse.tflite --prune-sparsity 0.7 --sparse-encoding
    """
    from edgeq.converter.api import convert as convert_model
    from edgeq.converter.api import parse_input_shapes

    if debug and quantize != "int8":
        raise ModelError("--debug compares int8 tensors with float ones: it needs --quantize int8")
    started = time.perf_counter()
    result = convert_model(
        model,
        output,
        input_shapes=parse_input_shapes(input_shapes),
        keep_onnx_layout=keep_onnx_layout,
        store_names=not no_names,
        quantize=quantize,
        calibration=calibration,
        calibration_method=calibration_method,
        num_calibration_samples=calibration_samples,
        io_dtype=io_dtype,
        float_fallback=float_fallback,
        min_sqnr_db=min_sqnr_db,
        debug=debug,
        progress=not (quiet or as_json),
        prune_sparsity=prune_sparsity,
        prune_scope=prune_scope,
        prune_channels=prune_channels,
        prune_importance=prune_importance,
        reconstruct=reconstruct,
        sparse_encoding=sparse_encoding,
    )
    seconds = time.perf_counter() - started
    summary = {
        "output": str(result.output_path),
        "bytes": len(result.content),
        "seconds": round(seconds, 3),
        "ops": dict(Counter(op.type for op in result.graph.ops)),
        "inputs": [vars(t) for t in result.inputs],
        "outputs": [vars(t) for t in result.outputs],
        "notes": result.notes,
        "float_ops": result.float_ops,
        "int8_output_sqnr_db": _float_choice_summary(result.float_choice),
        "layer_errors": [e.as_dict() for e in result.layer_errors],
    }
    if result.prune_reports:
        from edgeq.converter.prune import compressed_size

        summary["pruning"] = [report.as_dict() for report in result.prune_reports]
        summary["gzip_bytes"] = compressed_size(result.content)
    if as_json:
        from edgeq.runtime.fileio import finite_for_json

        click.echo(json.dumps(finite_for_json(summary), indent=2, default=list))
        return
    if quiet:
        return
    for note in result.notes:
        click.echo(f"note: {note}")
    for kind, tensors in (("input", result.inputs), ("output", result.outputs)):
        for t in tensors:
            click.echo(f"{kind:6} {t.name}: {list(t.shape)} {t.dtype} {t.layout}")
    click.echo(
        f"wrote {result.output_path} ({len(result.content):,} bytes, {len(result.graph.ops)} ops) in {seconds:.2f} s"
    )
    if verbose:
        for op_type, count in sorted(summary["ops"].items()):
            click.echo(f"  {op_type}: {count}")
    for report in result.prune_reports:
        click.echo("\n".join(report.format_lines()))
    if result.prune_reports:
        click.echo(f"size: {len(result.content):,} bytes raw, {summary['gzip_bytes']:,} bytes gzip -9")
    if result.layer_errors:
        from edgeq.converter.quant_debug import format_table, worst_first

        click.echo("per-tensor error of the int8 model against the float model (calibration samples):")
        click.echo(format_table(result.layer_errors))
        worst = ", ".join(f"{e.tensor} ({e.sqnr_db:.1f} dB)" for e in worst_first(result.layer_errors, 3))
        click.echo(f"hurt most: {worst}")


def _float_choice_summary(choice) -> dict:
    if choice is None or choice.sqnr_db is None:
        return {}
    return {"before_error_search": choice.sqnr_before_search_db, "final": choice.sqnr_db,
            "ops_moved_by_error_search": choice.moved_by_search}


# -- inspect ---------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@verbosity_options
@reports_errors
def inspect(model, as_json, quiet, verbose):
    """Describe a .tflite file: inputs, outputs, ops, tensors and where the bytes go.

    \b
    Examples:
      edgeq inspect model.tflite
      edgeq inspect model.tflite --json | jq .ops
    """
    from edgeq.runtime.tflite_format.reader import read_tflite

    from edgeq.runtime.size import size_breakdown

    content = Path(model).read_bytes()
    graph = read_tflite(content)
    description = describe_graph(graph, len(content))
    description["size_breakdown"] = size_breakdown(content)
    if as_json:
        click.echo(json.dumps(description, indent=2))
        return
    click.echo(f"{model}: {len(content):,} bytes, {len(graph.ops)} ops, {len(graph.tensors)} tensors")
    for kind in ("inputs", "outputs"):
        for t in description[kind]:
            click.echo(f"  {kind[:-1]:6} {t['name']}: {t['shape']} {t['dtype']}{_quant_label(t)}")
    click.echo("ops:")
    for op_type, count in description["ops"].items():
        click.echo(f"  {op_type:28} {count}")
    click.echo(f"constant data: {description['constant_bytes']:,} bytes in {description['constants']} tensors")
    sizes = description["size_breakdown"]
    click.echo("bytes: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sizes.items() if k != "total"))
    if verbose:
        click.echo("tensors:")
        for t in description["tensors"]:
            kind = "const" if t["constant"] else "act"
            click.echo(f"  {t['name']:40} {str(t['shape']):20} {t['dtype']:8} {kind:5} {t['bytes']:>10,}{_quant_label(t)}")


def _quant_label(t: dict) -> str:
    q = t.get("quantization")
    if not q:
        return ""
    if len(q["scale"]) == 1:
        return f" (scale {q['scale'][0]:.6g}, zero point {q['zero_point'][0]})"
    return f" ({len(q['scale'])} per-channel scales, axis {q['axis']})"


def describe_graph(graph, file_bytes: int) -> dict:
    def tensor_entry(t):
        entry = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": t.dtype.name,
            "constant": t.is_constant,
            "bytes": t.nbytes,
        }
        if t.quant is not None:
            entry["quantization"] = {
                "scale": [float(s) for s in t.quant.scale],
                "zero_point": [int(z) for z in t.quant.zero_point],
                "axis": t.quant.axis,
            }
        return entry

    constants = [t for t in graph.tensors.values() if t.is_constant]
    return {
        "file_bytes": file_bytes,
        "inputs": [tensor_entry(graph[n]) for n in graph.inputs],
        "outputs": [tensor_entry(graph[n]) for n in graph.outputs],
        "ops": dict(sorted(Counter(op.kind for op in graph.ops).items())),
        "constants": len(constants),
        "constant_bytes": sum(t.nbytes for t in constants),
        "tensors": [tensor_entry(t) for t in graph.tensors.values()],
    }


# -- run -------------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False), required=True,
              help=".npy (one-input models), .npz keyed by input name, or an image file (PNG, JPEG, ...; "
              "needs Pillow).")
@click.option("--engine", type=click.Choice(["edgeq", "litert"]), default="edgeq", show_default=True,
              help="Which interpreter runs the model.")
@click.option("--output", "-o", "output_path", type=click.Path(dir_okay=False), help="Save the outputs as .npz.")
@click.option("--top-k", type=int, default=5, show_default=True, help="How many classes to print for classifiers.")
@click.option("--mean", metavar="M or M1,M2,M3", help="Images: subtract per channel after scaling pixels to [0, 1].")
@click.option("--std", metavar="S or S1,S2,S3", help="Images: then divide per channel.")
@click.option("--layout", type=click.Choice(["auto", "nhwc", "nchw"]), default="auto", show_default=True,
              help="Images: the model input's layout (auto: read from its shape; edgeq models are NHWC "
              "unless converted with --keep-onnx-layout).")
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

    interpreter = _make_interpreter(model, engine, max_memory)
    interpreter.allocate_tensors()
    if Path(input_path).suffix.lower() in IMAGE_SUFFIXES:
        feeds = [_image_input(input_path, interpreter.get_input_details(), mean, std, layout)]
    elif mean or std or layout != "auto":
        raise ModelError("--mean, --std and --layout apply to image inputs; give an image file to --input")
    else:
        feeds = _load_inputs(input_path, interpreter.get_input_details())
    for detail, value in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], value)
    started = time.perf_counter()
    interpreter.invoke()
    seconds = time.perf_counter() - started
    outputs = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}

    if output_path:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        write_atomic(output_path, buffer.getvalue())
    summary = {
        "engine": engine,
        "seconds": round(seconds, 6),
        "outputs": {name: _summarize_output(value, top_k) for name, value in outputs.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(f"{engine}: invoke took {seconds * 1e3:.2f} ms")
        for name, info in summary["outputs"].items():
            click.echo(f"{name}: {info['shape']} {info['dtype']} min {info['min']:.6g} max {info['max']:.6g}")
            if "top_k" in info:
                ranked = ", ".join(f"{c}: {s:.4g}" for c, s in info["top_k"])
                click.echo(f"  top-{len(info['top_k'])}: {ranked}")


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


def _make_interpreter(model: str, engine: str, max_memory_bytes=None):
    content = Path(model).read_bytes()
    if engine == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter
        except ImportError:
            raise ModelError("--engine litert needs the ai-edge-litert package (pip install ai-edge-litert)") from None
        try:
            return LiteRTInterpreter(model_content=content, num_threads=1)
        except ValueError as exc:
            raise ModelError(f"{model}: LiteRT cannot load it: {exc}") from None
    from edgeq.runtime.interpreter import Interpreter

    return Interpreter(model_content=content, num_threads=1, max_memory_bytes=max_memory_bytes)


def _load_inputs(path: str, details: list) -> list:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ModelError(f"{path}: not a numpy .npy/.npz file without pickles ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if len(details) != 1:
            names = ", ".join(d["name"] for d in details)
            raise ModelError(f"{path}: the model has {len(details)} inputs ({names}); give an .npz keyed by name")
        arrays = [loaded]
    else:
        with loaded:
            missing = [d["name"] for d in details if d["name"] not in loaded.files]
            if missing and len(details) == 1 and len(loaded.files) == 1:
                arrays = [loaded[loaded.files[0]]]
            elif missing:
                raise ModelError(f"{path}: no array for input(s) {', '.join(missing)} (has {', '.join(loaded.files)})")
            else:
                arrays = [loaded[d["name"]] for d in details]
    return [_fit_input(a, d, path) for a, d in zip(arrays, details)]


def _fit_input(array: np.ndarray, detail: dict, path: str) -> np.ndarray:
    shape = tuple(int(d) for d in detail["shape"])
    if array.shape != shape and array.size == int(np.prod(shape)) and array.ndim == len(shape) - 1:
        array = array.reshape(shape)
    if array.shape != shape:
        # an NCHW image for an NHWC model input is the common case
        if array.ndim == 4 and array.shape == (shape[0], shape[3], shape[1], shape[2]):
            array = array.transpose(0, 2, 3, 1)
        else:
            raise ModelError(f"{path}: input '{detail['name']}' has shape {list(array.shape)}, the model wants {list(shape)}")
    if not np.issubdtype(array.dtype, np.dtype(detail["dtype"])):
        if np.dtype(detail["dtype"]).kind == "f":
            array = array.astype(detail["dtype"])
        else:
            raise ModelError(f"{path}: input '{detail['name']}' is {array.dtype}, the model wants {np.dtype(detail['dtype']).name}")
    return np.ascontiguousarray(array)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _image_layout(shape: tuple, layout: str) -> str:
    """The input's layout: as told, or NHWC when the last axis holds 1 or 3 channels, else NCHW."""
    if len(shape) != 4:
        raise ModelError(f"an image needs a 4-D model input; this one has shape {list(shape)}")
    if layout != "auto":
        return layout
    if shape[3] in (1, 3):
        return "nhwc"
    if shape[1] in (1, 3):
        return "nchw"
    raise ModelError(f"input shape {list(shape)} has no 1- or 3-channel axis; say --layout nhwc or nchw")


def _channel_values(text, channels: int, option: str, default: float) -> np.ndarray:
    if not text:
        return np.full(channels, default, np.float32)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ModelError(f"{option} '{text}': expected a number or a comma list, one per channel") from None
    if len(values) not in (1, channels):
        raise ModelError(f"{option} '{text}': {len(values)} values for {channels} channel(s)")
    if option == "--std" and any(v == 0 for v in values):
        raise ModelError(f"{option} '{text}': a standard deviation of 0")
    return np.broadcast_to(np.array(values, np.float32), (channels,))


def _read_image(path: str, channels: int, height: int, width: int) -> np.ndarray:
    """H x W x C float32 pixels in [0, 1]."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ModelError("reading images needs Pillow: pip install 'edgeq[images]' (or pip install Pillow)") from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable image ({exc})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _image_input(path: str, details: list, mean, std, layout: str) -> np.ndarray:
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such file")
    if len(details) != 1:
        raise ModelError(f"{path}: an image feeds one input, the model has {len(details)}; give an .npz")
    detail = details[0]
    shape = tuple(int(d) for d in detail["shape"])
    layout = _image_layout(shape, layout)
    height, width, channels = shape[1:4] if layout == "nhwc" else (shape[2], shape[3], shape[1])
    if channels not in (1, 3):
        raise ModelError(f"input shape {list(shape)} read as {layout.upper()} has {channels} channels; "
                         "images give 1 or 3")
    pixels = _read_image(path, channels, height, width)
    pixels = (pixels - _channel_values(mean, channels, "--mean", 0.0)) / _channel_values(std, channels, "--std", 1.0)
    batch = pixels[None] if layout == "nhwc" else pixels.transpose(2, 0, 1)[None]
    if shape[0] != 1:
        raise ModelError(f"input shape {list(shape)}: an image fills a batch of 1")
    return np.ascontiguousarray(_as_input_dtype(batch, detail))


def _as_input_dtype(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels in the input's type: quantized with its scale and zero point for integer inputs."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise ModelError(f"input '{detail['name']}' is {dtype.name} without quantization parameters")
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


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



# -- report ----------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calibration", type=click.Path(dir_okay=False), required=True,
              help="Calibration samples for the int8 variants (as for convert).")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False), required=True,
              help=".npz with the model input(s) (NCHW or NHWC images) and optional labels.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="report", show_default=True,
              help="The report folder (replaced if it holds an earlier report).")
@click.option("--labels-key", help="Labels array in the eval file [default: y when present]; without labels, "
              "accuracy is fidelity to the float32 variant.")
@click.option("--methods", default="minmax", show_default=True, metavar="M1,M2,...",
              help="Calibration methods, one full-int8 variant each: minmax, percentile, entropy, mse.")
@click.option("--prune-sparsity", metavar="F1,F2,...", help="int8 variants with this fraction of weights pruned.")
@click.option("--prune-channels", metavar="F1,F2,...", help="int8 variants with this fraction of channels removed.")
@click.option("--reconstruct", is_flag=True, help="Pruned variants: least-squares reconstruction on calibration data.")
@click.option("--metric", metavar="MODULE:FUNCTION", help="Your own evaluation instead of the built-in metrics: "
              "imported by name from the current folder or sys.path, so it runs your code. It gets the outputs "
              "(list of arrays stacked over eval samples) and the eval file's arrays (dict) and returns "
              "{name: number}; the first is plotted, higher is better.")
@click.option("--jobs", type=int, help="Variants built in parallel [default: min(2, CPUs)].")
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed inferences per variant and engine.")
@click.option("--eval-samples", type=int, help="Use only the first N eval samples.")
@click.option("--calibration-samples", type=int, help="Use only the first N calibration samples.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
              help="Fix an input's shape (ONNX layout). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@reports_errors
def report(model, calibration, eval_path, output, labels_key, methods, prune_sparsity, prune_channels, reconstruct,
           metric, jobs, repeats, eval_samples, calibration_samples, input_shapes, as_json, quiet, verbose):
    """Build the variants of a model and compare them: size, accuracy, latency, memory.

    Variants: float32, float16, dynamic-range int8, full int8 per calibration method, and int8 per
    pruning level asked for. Writes report.md, report.html (self-contained), report.json,
    accuracy_vs_size.png, layer_sqnr.png and the variants' .tflite files in models/.

    \b
    Examples:
      edgeq report model.onnx --calibration calib.npz --eval test.npz -o report/
      edgeq report model.onnx --calibration calib.npz --eval test.npz --methods minmax,entropy,mse
      edgeq report model.onnx --calibration calib.npz --eval test.npz --prune-sparsity 0.5,0.7 --reconstruct
      edgeq report model.onnx --calibration calib.npz --eval val.npz --metric my_metrics:mean_iou --json

    Exit codes: 0 ok, 1 edgeq and LiteRT disagree (the report is still written) or internal error,
    2 bad input (files, options, --metric).
    """
    from edgeq.converter.api import parse_input_shapes
    from edgeq.converter.report import ReportOptions, json_ready, make_report, parse_fractions, terminal_table

    for option, value in (("--jobs", jobs), ("--repeats", repeats), ("--eval-samples", eval_samples),
                          ("--calibration-samples", calibration_samples)):
        if value is not None and value < 1:
            raise ModelError(f"{option} {value}: needs a positive number")
    command_line = click.get_current_context().meta.get("command_line") or sys.argv
    options = ReportOptions(
        model=model, calibration=calibration, eval=eval_path, output=output, labels_key=labels_key,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        prune_sparsities=tuple(parse_fractions(prune_sparsity, "--prune-sparsity")),
        prune_channels=tuple(parse_fractions(prune_channels, "--prune-channels")),
        reconstruct=reconstruct, metric=metric, jobs=jobs, repeats=repeats, eval_samples=eval_samples,
        calibration_samples=calibration_samples, input_shapes=parse_input_shapes(input_shapes),
        command=shlex.join(str(a) for a in command_line),
    )
    result = make_report(options, progress=not (quiet or as_json))
    if as_json:
        click.echo(json.dumps(json_ready(result), indent=2))
    elif not quiet:
        click.echo(terminal_table(result))
        click.echo(f"wrote {output}/: report.md, report.html, report.json, accuracy_vs_size.png, models/")
        if verbose and result["layer_errors"]["tensors"]:
            worst = result["layer_errors"]["tensors"][:5]
            click.echo("hurt most by int8: " + ", ".join(f"{e['tensor']} ({e['sqnr_db']:.1f} dB)" for e in worst))
    if not result["checks"]["ok"]:
        _fail("; ".join(result["checks"]["problems"]), EXIT_FAILED)


# -- bench -----------------------------------------------------------------------------------
BENCH_WARMUP_RUNS = 3


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--engine", type=click.Choice(["edgeq", "litert", "both"]), default="edgeq", show_default=True,
              help="edgeq's runtime, LiteRT (default kernels), or both, each in its own process.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help=f"Timed runs, after {BENCH_WARMUP_RUNS} warm-up runs.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="num_threads of the interpreter (BLAS threads for edgeq).")
@click.option("--profile", "with_profile", is_flag=True, help="Per-op times of edgeq's runtime: by op type and the slowest ops.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Slowest ops listed with --profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
@reports_errors
def bench(model, engine, runs, threads, with_profile, top, as_json, quiet, verbose):
    """Latency (median, p90) and peak memory of one inference, on random inputs.

    \b
    Examples:
      edgeq bench model.tflite
      edgeq bench model.tflite --engine both --runs 100
      edgeq bench model.tflite --profile --top 15
    """
    if not Path(model).is_file():
        raise ModelError(f"{model}: no such file")
    if engine == "both":
        results = [_bench_in_subprocess(model, name, runs, threads, with_profile and name == "edgeq", top)
                   for name in ("edgeq", "litert")]
    else:
        results = [_bench_engine(model, engine, runs, threads, with_profile, top)]
    by_engine = {r["engine"]: r for r in results}
    if "edgeq" in by_engine and "litert" in by_engine:
        ours, theirs = by_engine["edgeq"], by_engine["litert"]
        ours["latency_ratio_to_litert"] = ours["median_ms"] / theirs["median_ms"]
        ours["peak_rss_ratio_to_litert"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    output = {"model": model, "runs": runs, "threads": threads, "engines": results}
    if as_json:
        click.echo(json.dumps(output, indent=2))
    elif not quiet:
        click.echo(_bench_table(output, top))


def _bench_in_subprocess(model, engine, runs, threads, with_profile, top) -> dict:
    """One engine in a fresh process, so that its peak memory is its own."""
    import subprocess

    command = [sys.executable, "-m", "edgeq", "bench", model, "--engine", engine, "--runs", str(runs),
               "--threads", str(threads), "--top", str(top), "--json"] + (["--profile"] if with_profile else [])
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        message = (completed.stderr.strip().splitlines() or ["failed"])[-1]
        raise ModelError(f"{engine}: {message}")
    return json.loads(completed.stdout)["engines"][0]


def _random_input(detail: dict, rng) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail["shape"])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(int(info.min), -128), min(int(info.max), 127) + 1, shape).astype(dtype)


def _bench_engine(model, engine, runs, threads, with_profile, top) -> dict:
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    if engine == "litert":
        try:
            from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter
        except ImportError:
            raise ModelError("--engine litert needs ai-edge-litert (pip install ai-edge-litert)") from None
        interpreter = LiteRTInterpreter(model_path=model, num_threads=threads)
    else:
        from edgeq.runtime.interpreter import Interpreter

        interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    feeds = [(d["index"], _random_input(d, rng)) for d in interpreter.get_input_details()]
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def run_once():
        for index, value in feeds:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for index in outputs:
            interpreter.get_tensor(index)

    first = time.perf_counter()
    run_once()
    first_run_ms = (time.perf_counter() - first) * 1e3
    load_ms = (first - started) * 1e3
    for _ in range(BENCH_WARMUP_RUNS):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1e3
    result = {
        "engine": engine,
        "median_ms": float(np.median(times_ms)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "min_ms": float(times_ms.min()),
        "load_ms": load_ms,
        "first_run_ms": first_run_ms,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before,
    }
    if engine == "edgeq":
        from edgeq.runtime.kernels import compiled

        result["compiled_kernels"] = bool(compiled.ENABLED)  # asked for (so numba loaded) by some kernel
        if with_profile:
            result["profile"] = _profile_tables(interpreter.profile(runs=min(runs, 20)), top)
    return result


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
    return {"total_ms": total, "ops": len(per_op),
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
            extra += "   (compiled kernels)" if r.get("compiled_kernels") else "   (numpy kernels)"
        lines.append(f"{r['engine']:8s} {r['median_ms']:10.3f} {r['p90_ms']:10.3f} {r['peak_rss_mb']:12.1f}{extra}")
    for r in output["engines"]:
        profile = r.get("profile")
        if not profile:
            continue
        lines += ["", f"per op type ({profile['ops']} ops, {profile['total_ms']:.3f} ms summed medians):",
                  f"  {'op type':22s} {'count':>5s} {'ms':>10s} {'share':>6s} {'us/op':>9s}"]
        lines += [f"  {row['type']:22s} {row['count']:5d} {row['ms']:10.3f} {row['share']:6.1%} {row['us_per_op']:9.1f}"
                  for row in profile["by_type"]]
        lines += ["", f"slowest {len(profile['slowest'])} ops:", f"  {'#':>4s} {'op type':22s} {'ms':>10s}  output"]
        lines += [f"  {e['index']:4d} {e['type']:22s} {e['ms']:10.3f}  {e['output']}" for e in profile["slowest"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
