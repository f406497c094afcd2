"""``edgeq export-c``: a .tflite file as a C array, as TensorFlow Lite Micro takes a model."""
from __future__ import annotations

from pathlib import Path

import click

from edgeq.runtime.cli.common import reports_errors, verbosity_options
from edgeq.runtime.ir import ModelError


@click.command("export-c")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True,
              help="The C/C++ source to write, e.g. model_data.cc.")
@click.option("--name", help="The array's C name (default: from the model's file name); its length is NAME_len.")
@click.option("--header", type=click.Path(dir_okay=False),
              help="The header declaring the array (default: the output with .h).")
@verbosity_options
@reports_errors
def export_c(model, output, name, header, quiet, verbose):
    """Write a .tflite file as a 16-byte aligned C array and its length, for TensorFlow Lite Micro.

    Give the array to tflite::GetModel(); `edgeq inspect --arena` tells the tensor arena it needs.

    \b
    Examples:
      edgeq export-c model.tflite -o model_data.cc
      edgeq export-c model.tflite -o src/model_data.cc --name g_model --header include/model_data.h
    """
    from edgeq.runtime.fileio import write_atomic
    from edgeq.runtime.micro import c_array_source, c_header_source, c_identifier
    from edgeq.runtime.tflite_format.schema import FILE_IDENTIFIER

    content = Path(model).read_bytes()
    if content[4:8] != FILE_IDENTIFIER:
        raise ModelError(f"{model}: not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier)")
    name = name or c_identifier(Path(model).stem)
    if c_identifier(name) != name:
        raise ModelError(f"--name {name!r} is not a C identifier")
    output = Path(output)
    header = Path(header) if header else output.with_suffix(".h")
    if header.resolve() == output.resolve():
        raise ModelError(f"--header {header} is the output itself; give the header its own file")
    include = _relative_include(header, output)
    write_atomic(header, c_header_source(name))
    write_atomic(output, c_array_source(content, name, include))
    if not quiet:
        click.echo(f"{output}: {name}[{len(content):,}] ({header} declares it)")


def _relative_include(header: Path, source: Path) -> str:
    """How ``source`` includes ``header``: by a relative path when the header lies under its folder,
    else by its file name (the build's include path finds it)."""
    try:
        return header.resolve().relative_to(source.resolve().parent).as_posix()
    except ValueError:
        return header.name
