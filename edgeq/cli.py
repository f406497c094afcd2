"""The ``edgeq`` command: the runtime's commands (inspect, run, bench), which need only the base install,
joined with the converter's (convert, report), which are loaded when asked for and, without their extra,
answer with the one line that names it."""
import click

from edgeq.runtime.cli import COMMANDS as RUNTIME_COMMANDS
from edgeq.runtime.cli.common import EdgeqGroup, OptionalCommand

CONVERTER_COMMANDS = (
    OptionalCommand("convert", "edgeq.converter.cli:convert", extra="convert", part="the converter",
                    modules=("onnx", "tqdm"),
                    summary="Convert an ONNX model (or a float .tflite, a PyTorch .pt2) to a TFLite flatbuffer."),
    OptionalCommand("report", "edgeq.converter.cli:report", extra="report", part="the converter and matplotlib",
                    modules=("onnx", "tqdm", "matplotlib"),
                    summary="Build the variants of a model and compare them: size, accuracy, latency, memory."),
)


@click.group(cls=EdgeqGroup, optional_commands=CONVERTER_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeq")
def main():
    """edgeq: ONNX -> pruned, int8 TFLite for edge CPUs, and a small runtime to run it.

    \b
    Examples:
      edgeq convert model.onnx -o model.tflite
      edgeq inspect model.tflite
      edgeq run model.tflite --input x.npy --engine litert
      edgeq report model.onnx --calibration calib.npz --eval test.npz -o report/

    Exit codes: 0 ok, 1 failed check or internal error, 2 bad input, 130 interrupted (Ctrl-C).
    """


for _command in RUNTIME_COMMANDS:
    main.add_command(_command)

__all__ = ["main"]
