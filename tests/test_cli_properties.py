"""Properties of every command line, whatever options it combines: the exit code is 0, 1 or 2; an exit 2
says why in one line on stderr; a command that fails leaves no file behind; the input files are never
changed."""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.cli import main

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"

# Repeats weight the draw toward command lines that get far enough to write something.
MODELS = ["model.onnx"] * 4 + ["model.tflite"] * 2 + ["garbage.onnx", "missing.onnx", "calib.npz"]
OUTPUTS = ["out.tflite"] * 6 + ["sub/dir/out.tflite"] * 2 + ["out.onnx", "model.onnx", "model.tflite", "calib.npz",
                                                            "notes.txt", "folder"]
CONVERT_OPTIONS = {
    "--quantize": ["none", "int8", "int8", "int8", "dynamic", "float16", "int4"],
    "--calibration": ["calib.npz", "calib.npz", "calib.npz", "garbage.onnx", "missing.npz", "notes.txt"],
    "--calibration-method": ["minmax", "entropy", "bogus"],
    "--calibration-samples": ["1", "20", "0", "x"],
    "--io": ["float32", "int8", "uint8"],
    "--float-fallback": ["auto", "none"],
    "--min-sqnr": ["10", "-5", "nan"],
    "--prune-sparsity": ["0.5", "1.5", "0"],
    "--prune-channels": ["0.25", "-1"],
    "--prune-importance": ["l1", "activation"],
    "--input-shape": ["input:1,64", "input:0,64", "nope:1", "input"],
    "--debug": None, "--no-names": None, "--keep-onnx-layout": None, "--sparse-encoding": None,
    "--reconstruct": None, "--no-reconstruct": None, "--json": None, "-q": None, "-v": None,
}


def prepare(folder: Path) -> None:
    shutil.copy(SAMPLES / "digits_mlp.onnx", folder / "model.onnx")
    shutil.copy(SAMPLES / "digits_mlp_calib.npz", folder / "calib.npz")
    (folder / "garbage.onnx").write_bytes(b"\x08\x01garbage" * 20)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "folder").mkdir()


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    from edgeq.converter.api import convert

    return convert(str(SAMPLES / "digits_mlp.onnx")).content


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def error_lines(stderr: str) -> list:
    """stderr's lines, progress bars aside."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


option_sets = st.dictionaries(st.sampled_from(sorted(CONVERT_OPTIONS)), st.integers(0, 10), max_size=4)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=st.sampled_from(MODELS), output=st.sampled_from(OUTPUTS), options=option_sets)
def test_convert_exits_0_1_or_2_changes_no_input_and_leaves_nothing_on_failure(tflite_model, model, output, options):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        prepare(folder)
        (folder / "model.tflite").write_bytes(tflite_model)
        args = ["convert", str(folder / model), "-o", str(folder / output)]
        for option, pick in options.items():
            values = CONVERT_OPTIONS[option]
            args += [option] if values is None else [option, values[pick % len(values)]]
            if values is not None and values[pick % len(values)] in MODELS + OUTPUTS + ["missing.npz"]:
                args[-1] = str(folder / args[-1])
        before = snapshot(folder)
        result = CliRunner().invoke(main, args)
        after = snapshot(folder)

        assert result.exit_code in (0, 1, 2), (args, result.output, result.exception)
        if result.exit_code == 2:
            assert len(error_lines(result.stderr)) == 1, (args, result.stderr)
            assert error_lines(result.stderr)[0].startswith("edgeq: error: ")
        assert "Traceback" not in result.output
        changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
        output_path = str(Path(output))
        if result.exit_code == 0:
            assert changed <= {output_path, *(str(p) for p in Path(output_path).parents if str(p) != ".")}, args
        elif result.exit_code == 2:
            assert changed == set(), (args, changed, result.stderr)
        # exit 1 (a check failed) may keep the file it checked, as convert's low-SQNR exit does
        assert changed.isdisjoint({"model.onnx", "model.tflite", "calib.npz", "garbage.onnx", "notes.txt"}) \
            or output_path == "model.tflite" and result.exit_code == 0 and model != "model.tflite", (args, changed)
