"""Where the native kernels cannot be had, edgeq still installs and runs, on the numpy kernels or a lower
variant, and says which path runs in one line: a C compiler that fails at install, a container without
/proc, a CPU without the variant asked for. (An arm64 CPU without the dot product, under qemu, is
scripts/check_arm64.sh's.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.runtime import native

REPO = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.describe()}")

# Prepares and runs two int8 convolutions on whichever path the environment gives, then on numpy, and prints
# the path's line and whether the two agree.
RUN_TWO_CONVOLUTIONS = """
import numpy as np
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.testing.int8_graphs import weighted_op
results = []
for seed in (1, 2):
    graph, inputs = weighted_op("CONV_2D", (1, 7, 7, 5), (0.05, 3), (0.2, -5), out_c=6, seed=seed)
    results.append(Interpreter.from_graph(graph).run(inputs)["y"])
print(native.describe())
native.ENABLED = False
for seed, result in zip((1, 2), results):
    graph, inputs = weighted_op("CONV_2D", (1, 7, 7, 5), (0.05, 3), (0.2, -5), out_c=6, seed=seed)
    assert np.array_equal(Interpreter.from_graph(graph).run(inputs)["y"], result)
print("equal to numpy")
"""


def _environment(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEQ_")}
    env.update(extra)
    return env


def test_install_with_a_failing_compiler_succeeds_and_runs_numpy_saying_so_once(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, used from this environment (no network)
    source, target = tmp_path / "source", tmp_path / "installed"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("edgeq", "runtime", "converter"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, env=_environment(CC="false"), cwd=tmp_path, timeout=300)
    assert install.returncode == 0, install.stderr
    assert not list(target.glob("edgeq/runtime/native/_kernels*"))

    # Run from tmp_path with the installed copy first on the path: the checkout's edgeq must not be the one found.
    run = subprocess.run([sys.executable, "-c", RUN_TWO_CONVOLUTIONS], capture_output=True, text=True, cwd=tmp_path,
                         env=_environment(PYTHONPATH=str(target)), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "numpy int8 kernels (native: the extension is not built (reinstall edgeq where a C compiler is present))",
        "equal to numpy"]
    assert run.stderr.splitlines() == ["edgeq: native int8 kernels off, numpy kernels run: the extension is not "
                                       "built (reinstall edgeq where a C compiler is present)"]


def _can_hide_proc() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--", "sh", "-c", "mount -t tmpfs none /proc"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@needs_native
@pytest.mark.skipif(not _can_hide_proc(), reason="needs unshare and mount rights (root) to hide /proc")
def test_without_proc_the_best_variant_still_runs():
    # A tmpfs over /proc in a mount namespace of its own: no /proc/cpuinfo, /proc/self or anything else.
    # The variant is chosen from the CPU itself (cpuid, the aux vector), not from /proc.
    hide_proc_and_run = 'mount -t tmpfs none /proc && test ! -e /proc/cpuinfo && exec "$0" -c "$1"'
    run = subprocess.run(["unshare", "--mount", "--", "sh", "-c", hide_proc_and_run, sys.executable,
                          RUN_TWO_CONVOLUTIONS], capture_output=True, text=True, env=_environment(), cwd=REPO,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"native int8 kernels ({native.best_isa()})", "equal to numpy"]
    assert run.stderr == ""


@needs_native
def test_a_variant_the_cpu_lacks_falls_back_to_the_best_it_runs_with_one_line():
    # neon on x86-64, avx2 on aarch64: neither compiled in nor run by the CPU.
    missing = "avx2" if "neon" in native.supported_isas() else "neon"
    run = subprocess.run([sys.executable, "-c", RUN_TWO_CONVOLUTIONS], capture_output=True, text=True, cwd=REPO,
                         env=_environment(EDGEQ_NATIVE_ISA=missing), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"native int8 kernels ({native.best_isa()})", "equal to numpy"]
    assert run.stderr.splitlines() == [f"edgeq: EDGEQ_NATIVE_ISA={missing} is not a variant this CPU runs "
                                       f"({', '.join(native.supported_isas())}); using {native.best_isa()}"]


@pytest.mark.parametrize("no_native", ["1", ""])
def test_bench_says_which_int8_path_runs(tmp_path, no_native):
    from edgeq.runtime.tflite_format.writer import write_tflite
    from edgeq.testing.int8_graphs import weighted_op

    graph, _ = weighted_op("CONV_2D", (1, 7, 7, 5), (0.05, 3), (0.2, -5), out_c=6)
    model = tmp_path / "conv.tflite"
    model.write_bytes(write_tflite(graph))
    run = subprocess.run([sys.executable, "-m", "edgeq", "bench", str(model), "--runs", "2"], capture_output=True,
                         text=True, cwd=REPO, env=_environment(EDGEQ_NO_NATIVE=no_native), timeout=120)
    assert run.returncode == 0, run.stderr
    edgeq_row = next(line for line in run.stdout.splitlines() if line.startswith("edgeq "))
    expected = "numpy int8 kernels (native: disabled by EDGEQ_NO_NATIVE)" if no_native else native.describe()
    assert edgeq_row.endswith(f"({expected})"), run.stdout
