"""The converter's commands: ``edgeq convert`` and ``edgeq report``. They need the convert extra (and the
report extra for ``report``); ``edgeq.cli`` joins them with the runtime's commands, and without the extra
it answers them with the one line that names it.

Exit codes: 0 success, 1 a check failed or an internal error, 2 bad input (file, model, option).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from collections import Counter

import click

from edgeq.runtime.cli.common import EXIT_FAILED, fail, reports_errors, verbosity_options
from edgeq.runtime.ir import ModelError


# -- samples as users hold them ----------------------------------------------------------------
def image_folder_options(command):
    """--size, --mean, --std and --layout: how a folder of images given as samples becomes the model's input."""
    from edgeq.runtime.cli.run import image_options

    command = image_options(command)
    return click.option("--size", type=click.IntRange(min=1), metavar="PIXELS",
                        help="Image folders: resize each image's shorter side to this, then crop the centre "
                        "to the model's input (default: resize straight to the input's size).")(command)


def samples_source(path, size, mean, std, layout):
    """What ``path`` names as samples: a folder of images (read as the image options say) or a file."""
    from pathlib import Path

    from edgeq.runtime.inputs import ImageFolder

    if path is None or not Path(path).is_dir():
        if path is not None and (size or mean or std or layout != "auto"):
            raise ModelError("--size, --mean, --std and --layout apply to folders of images; "
                             f"{path} is a file")
        return path
    return ImageFolder(str(path), size=size, mean=mean, std=std, layout=layout)


# -- convert ---------------------------------------------------------------------------------
@click.command()
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
@click.option("--no-names", is_flag=True, help="Store no tensor names (a smaller file). By default the inputs, "
              "the outputs and every op's result are named; constants (weights, biases) take the name of the op "
              "that uses them when edgeq reads the file.")
@click.option("--quantize", type=click.Choice(["none", "int8", "int16x8", "dynamic", "float16"]), default="none",
              show_default=True, help="int8: full integer (needs --calibration, except a QDQ model, which "
              "states its own scales); int16x8: int16 activations, int8 weights (TFLite's 16x8 mode; needs "
              "--calibration; ops without an int16 kernel stay float); dynamic: int8 weights, float activations; "
              "float16: float16 weights.")
@click.option("--calibration", type=click.Path(), help="Calibration samples: .npz keyed by input "
              "name, or .npy for one-input models; samples on the first axis, images NCHW or NHWC; or a "
              "folder of images (see --size, --mean, --std, --layout; needs Pillow).")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]),
              default="minmax", show_default=True, help="How activation ranges are chosen.")
@click.option("--calibration-samples", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--io", "io_dtype", type=click.Choice(["float32", "int8", "uint8"]), default="float32",
              show_default=True, help="Input/output type of an int8 model.")
@click.option("--float-fallback", type=click.Choice(["auto", "int16", "none"]), default="auto", show_default=True,
              help="With --quantize int8: auto gives int16 islands, or float islands where int16 is not enough, "
              "where int8 would wreck the outputs (mixed-range joins; the ops where error grows most while the "
              "outputs' SQNR is under --min-sqnr); int16 gives int16 islands only (integer-only file); none "
              "quantizes every op that has an int8 form to int8.")
@click.option("--min-sqnr", "min_sqnr_db", type=float, metavar="DB", help="SQNR the int8 outputs must reach "
              "against float on calibration samples: the float-island search's target, and a check: under "
              "it the file is written but convert exits 1; 0 accepts anything [default: 20].")
@click.option("--debug", is_flag=True, help="With --quantize int8: per-tensor error against the float model.")
@click.option("--no-equalize", is_flag=True, help="With --quantize int8: skip cross-layer equalization of "
              "consecutive weighted ops' channel ranges.")
@click.option("--smooth-quant", is_flag=True, help="With --quantize int8: move activation outliers after "
              "LayerNorms into the next layers' weights (SmoothQuant).")
@click.option("--no-bias-correction", is_flag=True, help="With --quantize int8: skip folding the mean output "
              "shift of int8 weights (measured on --calibration samples) into the biases.")
@click.option("--no-adaround", is_flag=True, help="With --quantize int8: round weights to nearest instead of "
              "choosing each rounding to reconstruct the layer's output on --calibration samples.")
@click.option("--prune-sparsity", type=click.FloatRange(0, 1, max_open=True), help="Zero this share of the "
              "smallest weights (CONV_2D / FULLY_CONNECTED; smaller only once compressed or --sparse-encoding).")
@click.option("--prune-scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
              help="One magnitude threshold across layers, or the same sparsity in every layer.")
@click.option("--prune-channels", type=click.FloatRange(0, 1, max_open=True), help="Remove this share of "
              "the output channels of every prunable layer (a smaller, faster dense model).")
@click.option("--prune-importance", type=click.Choice(["l1", "activation", "reconstruction"]),
              help="Rank channels by filter L1 norm, by mean |activation|, or by the reconstruction error their "
              "removal causes on --calibration samples [default: reconstruction when reconstructing, else l1].")
@click.option("--prune-allocation", type=click.Choice(["uniform", "sensitivity"]), help="Remove the same share "
              "of every layer's channels, or as many in all where the measured error grows least [default: "
              "sensitivity with reconstruction importance].")
@click.option("--reconstruct/--no-reconstruct", default=None, help="With --prune-channels or --prune-sparsity: "
              "refit the pruned layers and those after them by least squares on --calibration samples, in order, "
              "towards the unpruned model's outputs [default: on when --calibration is given].")
@click.option("--sparse-encoding", is_flag=True, help="Store float weights in TFLite's sparse (CSR) "
              "encoding where smaller (float models only).")
@click.option("--target-size", metavar="SIZE", help="A file-size budget (e.g. 150kB, 1.5MiB): search the pruning "
              "of every layer and the quantization mode that meet it with the least loss on --eval samples.")
@click.option("--target-ratio", type=click.FloatRange(0, 1, min_open=True), help="A budget as a share of the "
              "unpruned model's file in the --quantize mode (int8 unless given).")
@click.option("--max-drop", type=click.FloatRange(0), default=1.0, show_default=True, help="With a budget: the most "
              "top-1 accuracy points the model may lose against the unpruned one; over it, exit 1.")
@click.option("--eval", "eval_path", type=click.Path(), help="With a budget: labelled samples (.npz) the search "
              "measures accuracy on.")
@click.option("--labels-key", help="The labels array in the --eval file [default: y].")
@image_folder_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@verbosity_options
@reports_errors
def convert(model, output, input_shapes, keep_onnx_layout, no_names, quantize, calibration, calibration_method,
            calibration_samples, io_dtype, float_fallback, min_sqnr_db, debug, no_equalize, smooth_quant,
            no_bias_correction, no_adaround, prune_sparsity, prune_scope, prune_channels, prune_importance,
            prune_allocation, reconstruct, sparse_encoding, target_size, target_ratio, max_drop, eval_path, labels_key,
            as_json, quiet, verbose, size=None, mean=None, std=None, layout="auto"):
    """Convert an ONNX model (or a float .tflite, or a PyTorch .pt2 / TorchScript .pt) to a TFLite flatbuffer.

    \b
    Examples:
      edgeq convert model.onnx -o model.tflite
      edgeq convert model.pt2 -o model.tflite         # saved by torch.export.save; needs edgeq[torch]
      edgeq convert model.onnx -o model.tflite --input-shape images:1,3,640,640
      edgeq convert model.onnx -o model_int8.tflite --quantize int8 --calibration calib.npz
      edgeq convert model.onnx -o m.tflite --quantize int8 --calibration images/ --size 256 --mean 0.5 --std 0.25
      edgeq convert model.onnx -o m.tflite --quantize int8 --calibration calib.npz --io uint8 --debug
      edgeq convert model.onnx -o m.tflite --quantize int8 --calibration calib.npz --float-fallback none
      edgeq convert model_float.tflite -o model_int8.tflite --quantize int8 --calibration calib.npz
      edgeq convert model.onnx -o model_16x8.tflite --quantize int16x8 --calibration calib.npz
      edgeq convert model.onnx -o model_dynamic.tflite --quantize dynamic
      edgeq convert model.onnx -o small.tflite --prune-channels 0.3 --calibration calib.npz
      edgeq convert model.onnx -o sparse.tflite --prune-sparsity 0.7 --sparse-encoding
      edgeq convert model.onnx -o small.tflite --target-size 150kB --max-drop 1 --calibration c.npz --eval val.npz

    An int8 model's outputs are compared with the float model's on the calibration samples; under
    --min-sqnr the file is still written, and the one line on stderr names the figure, the layer
    where the SQNR drops most and what to try.

    With --target-size or --target-ratio, the model written is the one the search chose; when no
    candidate meets the budget within --max-drop, the best one found is written and the exit code is 1.

    Exit codes: 0 ok, 1 the int8 outputs' SQNR is under --min-sqnr, the budget cannot be met within
    --max-drop, or an internal error, 2 bad input.
    """
    from edgeq.converter.api import convert as convert_model
    from edgeq.converter.api import parse_input_shapes

    if target_size is not None or target_ratio is not None:
        context = click.get_current_context()
        explicit = [name for name in ("prune_sparsity", "prune_channels", "sparse_encoding", "debug")
                    if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if explicit:
            raise ModelError(f"--{explicit[0].replace('_', '-')} and a size budget: the budget search chooses "
                             "the pruning itself; drop one of them")
        _convert_to_budget(model, output, input_shapes, quantize, samples_source(calibration, size, mean, std, layout),
                           samples_source(eval_path, size, mean, std, layout) if eval_path else None, target_size,
                           target_ratio, max_drop, labels_key, as_json, quiet)
        return

    if debug and quantize not in ("int8", "int16x8"):
        raise ModelError("--debug compares int8 tensors with float ones: it needs --quantize int8 or int16x8")
    _refuse_unused_calibration_options(quantize)
    started = time.perf_counter()
    result = convert_model(
        model,
        output,
        input_shapes=parse_input_shapes(input_shapes),
        keep_onnx_layout=keep_onnx_layout,
        store_names=not no_names,
        quantize=quantize,
        calibration=samples_source(calibration, size, mean, std, layout),
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
        prune_allocation=prune_allocation,
        reconstruct=reconstruct,
        sparse_encoding=sparse_encoding,
        equalize=not no_equalize,
        smooth_quant=smooth_quant,
        bias_correction=not no_bias_correction,
        adaround=not no_adaround,
    )
    seconds = time.perf_counter() - started
    summary = {
        "output": str(result.output_path),
        "bytes": len(result.content),
        "seconds": round(seconds, 3),
        "ops": dict(Counter(op.type for op in result.graph.ops)),
        "inputs": [vars(t) for t in result.inputs],
        "outputs": [vars(t) for t in result.outputs],
        "quantize": quantize,
        "notes": result.notes,
        "float_ops": result.float_ops,
        "int16_islands": getattr(result.graph, "int16_ops", []) if quantize == "int8" else [],
        "int8_output_sqnr_db": _float_choice_summary(result.float_choice),
        "int8_check": result.int8_check.as_dict() if result.int8_check is not None else None,
        "layer_errors": [e.as_dict() for e in result.layer_errors],
    }
    if result.prune_reports:
        from edgeq.converter.prune import compressed_size

        summary["pruning"] = [report.as_dict() for report in result.prune_reports]
        summary["gzip_bytes"] = compressed_size(result.content)
    if as_json:
        from edgeq.runtime.fileio import finite_for_json

        click.echo(json.dumps(finite_for_json(summary), indent=2, default=list))
        _fail_unless_passed(result)
        return
    if quiet:
        _fail_unless_passed(result)
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
    _fail_unless_passed(result)


def _convert_to_budget(model, output, input_shapes, quantize, calibration, eval_source, target_size, target_ratio,
                       max_drop, labels_key, as_json, quiet) -> None:
    from edgeq.converter.api import parse_input_shapes, refuse_to_overwrite_a_source
    from edgeq.converter.budget import parse_size, search_budget
    from edgeq.runtime.fileio import finite_for_json, write_atomic

    if target_size is not None and target_ratio is not None:
        raise ModelError("--target-size and --target-ratio are two budgets: give one")
    if calibration is None or eval_source is None:
        raise ModelError("a size budget needs --calibration samples (to prune and quantize) and --eval samples "
                         "with labels (to measure what each candidate loses)")
    refuse_to_overwrite_a_source(output, model, calibration)
    search = search_budget(model, calibration, eval_source,
                           target_bytes=parse_size(target_size) if target_size is not None else None,
                           target_ratio=target_ratio, max_drop=max_drop,
                           quantize="int8" if quantize == "none" else quantize, labels_key=labels_key,
                           input_shapes=parse_input_shapes(input_shapes))
    if search.best is not None:
        write_atomic(output, search.contents[search.best])
    if as_json:
        click.echo(json.dumps(finite_for_json(search.as_dict() | {"output": str(output) if search.best is not None
                                                                   else None}), indent=2))
    elif not quiet:
        for line in search.format_lines():
            click.echo(line)
        if search.best is not None:
            click.echo(f"wrote {output} ({len(search.contents[search.best]):,} bytes)")
    if not search.met:
        fail(search.verdict(), EXIT_FAILED)
    if not (as_json or quiet):
        click.echo(search.verdict())


def _fail_unless_passed(result) -> None:
    """Exit 1 with the one line that says why, when the int8 outputs stay under --min-sqnr."""
    if not result.passed:
        fail(result.int8_check.failure_line(result.output_path), EXIT_FAILED)


def _refuse_unused_calibration_options(quantize: str) -> None:
    """--calibration-method chooses int8 activation ranges: given without --quantize int8 it would be
    silently ignored. (--calibration itself is checked by the API: pruning uses it too.)"""
    if quantize in ("int8", "int16x8"):
        return
    source = click.get_current_context().get_parameter_source("calibration_method")
    if source == click.core.ParameterSource.COMMANDLINE:
        raise ModelError("--calibration-method chooses int8 activation ranges: it needs --quantize int8")


def _float_choice_summary(choice) -> dict:
    if choice is None or choice.sqnr_db is None:
        return {}
    return {"before_error_search": choice.sqnr_before_search_db, "final": choice.sqnr_db,
            "ops_moved_by_error_search": choice.moved_by_search,
            "error_search_trials": [t.as_dict() for t in choice.trials]}


# -- report ----------------------------------------------------------------------------------
@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calibration", type=click.Path(), required=True,
              help="Calibration samples for the int8 variants (as for convert): a file or a folder of images.")
@click.option("--eval", "eval_path", type=click.Path(), required=True,
              help=".npz with the model input(s) (NCHW or NHWC images) and optional labels; or a folder of "
              "images with one subfolder per class (labels.txt there lists the classes in the model's output "
              "order, one per line; without it the sorted subfolder names are the classes).")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="report", show_default=True,
              help="The report folder (replaced if it holds an earlier report).")
@click.option("--labels-key", help="Labels array in the eval file [default: y when present]; without labels, "
              "accuracy is fidelity to the float32 variant.")
@click.option("--methods", default="minmax", show_default=True, metavar="M1,M2,...",
              help="Calibration methods, one full-int8 variant each: minmax, percentile, entropy, mse.")
@click.option("--prune-sparsity", metavar="F1,F2,...", help="int8 variants with this fraction of weights pruned.")
@click.option("--prune-channels", metavar="F1,F2,...", help="int8 variants with this fraction of channels removed.")
@click.option("--reconstruct/--no-reconstruct", default=None, help="Pruned variants: refit the layers "
              "pruning changed by least squares on the calibration samples [default: on].")
@click.option("--target-size", metavar="SIZE", help="Also run the size-budget search of edgeq convert --target-size "
              "(e.g. 150kB) and draw its path on the accuracy-vs-size plot.")
@click.option("--max-drop", type=click.FloatRange(0), default=1.0, show_default=True,
              help="With --target-size: the most top-1 points the search may lose.")
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
@image_folder_options
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
@verbosity_options
@reports_errors
def report(model, calibration, eval_path, output, labels_key, methods, prune_sparsity, prune_channels, reconstruct,
           target_size, max_drop,
           metric, jobs, repeats, eval_samples, calibration_samples, input_shapes, as_json, quiet, verbose,
           size=None, mean=None, std=None, layout="auto"):
    """Build the variants of a model and compare them: size, accuracy, latency, memory.

    Variants: float32, float16, dynamic-range int8, full int8 per calibration method, and int8 per
    pruning level asked for. Writes report.md, report.html (self-contained), report.json,
    accuracy_vs_size.png, layer_sqnr.png and the variants' .tflite files in models/.

    \b
    Examples:
      edgeq report model.onnx --calibration calib.npz --eval test.npz -o report/
      edgeq report model.onnx --calibration calib.npz --eval test.npz --methods minmax,entropy,mse
      edgeq report model.onnx --calibration calib.npz --eval test.npz --prune-sparsity 0.5 --prune-channels 0.25,0.5
      edgeq report model.onnx --calibration calib.npz --eval val.npz --metric my_metrics:mean_iou --json
      edgeq report model.onnx --calibration images/ --eval val_images/ --size 256 --mean 0.5 --std 0.25

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
        model=model, calibration=samples_source(calibration, size, mean, std, layout),
        eval=samples_source(eval_path, size, mean, std, layout), output=output, labels_key=labels_key,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        prune_sparsities=tuple(parse_fractions(prune_sparsity, "--prune-sparsity")),
        prune_channels=tuple(parse_fractions(prune_channels, "--prune-channels")),
        reconstruct=reconstruct, target_size=target_size, max_drop=max_drop,
        metric=metric, jobs=jobs, repeats=repeats, eval_samples=eval_samples,
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
        fail("; ".join(result["checks"]["problems"]), EXIT_FAILED)
