"""The edgeq command on a board: with the base install alone (no onnx, tqdm or matplotlib), the runtime's
commands work and import nothing of the converter, and convert/report answer with the one line that
names the extra to install.

Absence is simulated: the command runs in a child process whose import system refuses the converter's
dependencies, as if they were not installed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq.converter.api import convert

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
CONVERTER_DEPENDENCIES = ("onnx", "tqdm", "matplotlib")

# Runs `edgeq ARGS...` with the modules in BLOCKED refused, then records which modules were imported.
RUN_WITHOUT = r"""
import json, sys

blocked, record, args = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:]


class RefuseBlocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, RefuseBlocked())
from edgeq.cli import main

try:
    main(args, prog_name="edgeq")
finally:
    with open(record, "w") as f:
        json.dump(sorted(sys.modules), f)
"""


def edgeq_without(blocked, *args, tmp_path: Path):
    """(completed process, modules imported) of `edgeq ARGS` with ``blocked`` modules absent."""
    record = tmp_path / "modules.json"
    completed = subprocess.run([sys.executable, "-c", RUN_WITHOUT, json.dumps(list(blocked)), str(record),
                                *map(str, args)], capture_output=True, text=True, timeout=300)
    return completed, json.loads(record.read_text())


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A float .tflite of the digits MLP and one of its test samples as .npy."""
    folder = tmp_path_factory.mktemp("base_install")
    convert(SAMPLES / "digits_mlp.onnx", folder / "mlp.tflite")
    np.save(folder / "x.npy", np.load(SAMPLES / "digits_mlp_test.npz")["input"][:1])
    return folder / "mlp.tflite", folder / "x.npy"


def imported_from(modules: list, packages) -> list:
    return [m for m in modules if m.split(".")[0] in packages or m.startswith("edgeq.converter")]


@pytest.mark.parametrize("command", [
    ["inspect", "{model}"],
    ["run", "{model}", "--input", "{x}", "--json"],
    ["bench", "{model}", "--runs", "3", "--json"],
])
def test_runtime_commands_work_without_the_converter_and_import_nothing_of_it(mlp, tmp_path, command):
    model, x = mlp
    args = [a.format(model=model, x=x) for a in command]
    completed, modules = edgeq_without(CONVERTER_DEPENDENCIES, *args, tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert imported_from(modules, CONVERTER_DEPENDENCIES) == []


def test_runtime_commands_import_nothing_of_the_converter_when_it_is_installed(mlp, tmp_path):
    completed, modules = edgeq_without((), "inspect", mlp[0], tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert imported_from(modules, CONVERTER_DEPENDENCIES) == []


def test_help_lists_the_converter_commands_and_the_extra_they_need(tmp_path):
    completed, _ = edgeq_without(CONVERTER_DEPENDENCIES, "--help", tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr
    listed = completed.stdout.split("Commands:")[1].split()
    for command in ("bench", "convert", "inspect", "report", "run"):
        assert command in listed
    assert "edgeq[convert]" in completed.stdout and "edgeq[report]" in completed.stdout


@pytest.mark.parametrize("args, extra", [
    (["convert", "model.onnx", "-o", "model.tflite"], "convert"),
    (["convert", "--help"], "convert"),
    (["report", "model.onnx", "--calibration", "c.npz", "--eval", "e.npz"], "report"),
])
def test_converter_commands_without_the_extra_print_one_line_naming_it_and_exit_2(tmp_path, args, extra):
    completed, _ = edgeq_without(CONVERTER_DEPENDENCIES, *args, tmp_path=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert completed.stderr.startswith(f"edgeq: error: 'edgeq {args[0]}' needs ")
    assert f'pip install "edgeq[{extra}]"' in completed.stderr


def test_report_without_matplotlib_names_the_report_extra_while_convert_works(mlp, tmp_path):
    completed, _ = edgeq_without(["matplotlib"], "report", "m.onnx", "--calibration", "c.npz", "--eval", "e.npz",
                                 tmp_path=tmp_path)
    assert completed.returncode == 2 and 'pip install "edgeq[report]"' in completed.stderr
    out = tmp_path / "mlp.tflite"
    completed, _ = edgeq_without(["matplotlib"], "convert", SAMPLES / "digits_mlp.onnx", "-o", out, tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert out.read_bytes() == mlp[0].read_bytes()
