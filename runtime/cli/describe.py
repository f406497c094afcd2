"""``edgeq inspect``: what a .tflite file holds and where its bytes go."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from edgeq.runtime.ir import ModelError

from edgeq.runtime.cli.common import reports_errors, verbosity_options


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--arena", "with_arena", is_flag=True,
              help="Also the tensor arena TensorFlow Lite Micro needs, and the ops it lacks.")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@verbosity_options
@reports_errors
def inspect(model, with_arena, as_json, quiet, verbose):
    """Describe a .tflite file: inputs, outputs, ops, tensors and where the bytes go.

    \b
    Examples:
      edgeq inspect model.tflite
      edgeq inspect model.tflite --json | jq .ops
      edgeq inspect model.tflite --arena
    """
    from edgeq.runtime.size import size_breakdown
    from edgeq.runtime.tflite_format.reader import read_tflite

    from edgeq.runtime.ir import naming_file

    content = Path(model).read_bytes()
    try:
        graph = read_tflite(content)
    except ModelError as error:
        raise naming_file(error, model) from None
    description = describe_graph(graph, len(content))
    description["size_breakdown"] = size_breakdown(content)
    if with_arena:
        description["micro"] = micro_summary(graph)
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
    if with_arena:
        micro = description["micro"]
        click.echo(f"TFLite Micro: tensor arena {micro['arena_bytes']:,} bytes for activations "
                   f"(peak live {micro['peak_live_bytes']:,}, all activations {micro['activation_bytes']:,}); "
                   "add a few KB for the interpreter's own bookkeeping")
        lacking = micro["ops_tflm_lacks"]
        click.echo("  ops TFLite Micro lacks: " + (", ".join(lacking) if lacking else "none"))
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


def micro_summary(graph) -> dict:
    """The tensor arena TFLite Micro's greedy planner would need for ``graph``'s activations, the
    bounds it lies between, and the ops TFLite Micro has no kernel for."""
    from edgeq.runtime.arena import graph_arena
    from edgeq.runtime.micro import ops_tflm_lacks

    plan = graph_arena(graph)
    return {"arena_bytes": plan.size, "peak_live_bytes": plan.peak_live_bytes(),
            "activation_bytes": plan.sum_of_sizes, "ops_tflm_lacks": ops_tflm_lacks(graph)}


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
