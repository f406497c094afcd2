"""Ctrl-C at any point of convert, report and bench: exit 130 within 5 s, one line on stderr and no
traceback, no process left behind, no partial output.

A terminal's Ctrl-C sends SIGINT to every process of the foreground process group; the tests start each
command in its own session and signal its whole group the same way."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
EXIT_WITHIN_SECONDS = 5
EDGEQ = str(Path(sys.executable).with_name("edgeq"))  # the console script, as a user starts it


def session_processes(session_id: int) -> list:
    """The pids of live processes in a session (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, session = fields[0], int(fields[3])
        if session == session_id and state != "Z":
            pids.append(int(entry.name))
    return pids


def terminal_like_signals():
    """A job started in the background inherits SIGINT ignored; a terminal's command does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([EDGEQ, *map(str, args)], cwd=cwd, start_new_session=True,
                            preexec_fn=terminal_like_signals, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def catches_sigint(pid: int) -> bool:
    """Whether the process has a SIGINT handler yet (SigCgt in /proc): before that, while the program is
    still being loaded, no program can do anything about a Ctrl-C."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGINT - 1)))


def edgeq_catches_sigint(pid: int) -> bool:
    """Whether edgeq's own SIGINT handler is in place. Python installs one of its own before it runs any of
    the program (its Ctrl-C prints a KeyboardInterrupt traceback), so a caught SIGINT alone does not tell;
    edgeq installs its handler first thing, before it loads numpy, so numpy's core module in the process's
    memory map tells."""
    try:
        mapped = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return catches_sigint(pid) and "_multiarray_umath" in mapped


def interrupt(process: subprocess.Popen, when) -> tuple:
    """Send a terminal's Ctrl-C once ``when(process)`` returns, counting from when edgeq catches SIGINT;
    returns (exit code, seconds to exit, stderr, processes of the session left after it exited)."""
    try:
        assert wait_for(lambda: edgeq_catches_sigint(process.pid), 30), "the command never started"
        when(process)
        assert process.poll() is None, "the command ended before the interrupt: choose an earlier point"
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        try:
            _, stderr = process.communicate(timeout=EXIT_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN_SECONDS} s after Ctrl-C")
        seconds = time.monotonic() - sent
        wait_for(lambda: not session_processes(process.pid), 2)
        return process.returncode, seconds, stderr, session_processes(process.pid)
    finally:
        with_leftovers = session_processes(process.pid)
        for pid in with_leftovers:
            os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.communicate()


def after(seconds: float):
    return lambda process: time.sleep(seconds)


def workers_running(delay: float):
    """Once the report's pool has started a worker (a process beyond the command and the resource tracker),
    plus ``delay`` seconds."""
    def when(process):
        assert wait_for(lambda: len(session_processes(process.pid)) >= 3, 60), "no worker started"
        time.sleep(delay)
    return when


def assert_clean_interrupt(code, seconds, stderr, left):
    assert code == 130, f"exit {code} after {seconds:.2f} s: {stderr}"
    assert seconds < EXIT_WITHIN_SECONDS, f"{seconds:.2f} s: {stderr}"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines() == ["edgeq: error: interrupted"]
    assert left == [], "processes left running"


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("m.onnx",))


# While the command imports numpy and edgeq (the first fraction of a second, more on a busy machine).
DURING_IMPORTS = 0.1

REPORT_POINTS = {
    "importing": after(DURING_IMPORTS),
    "starting": after(1.0),
    "loading": after(2.0),
    "pool_starting": workers_running(0.0),
    "pool_busy": workers_running(1.5),
    "pool_late": workers_running(4.0),
}


@pytest.mark.parametrize("point", list(REPORT_POINTS))
def test_ctrl_c_during_report_exits_cleanly_and_writes_nothing(tmp_path, point):
    process = start(["report", SAMPLES / "digits_cnn.onnx", "--calibration", SAMPLES / "digits_cnn_calib.npz",
                     "--eval", SAMPLES / "digits_cnn_test.npz", "-o", tmp_path / "report", "-q",
                     "--methods", "minmax,percentile,entropy,mse", "--prune-channels", "0.25,0.5"], tmp_path)
    assert_clean_interrupt(*interrupt(process, REPORT_POINTS[point]))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("seconds", [DURING_IMPORTS, 0.5, 1.0, 1.8])  # the conversion takes about 3 s
def test_ctrl_c_during_convert_exits_cleanly_and_writes_nothing(tmp_path, seconds):
    process = start(["convert", SAMPLES / "digits_mobilenetv2.onnx", "-o", tmp_path / "m.tflite", "-q",
                     "--quantize", "int8", "--calibration", SAMPLES / "digits_mobilenetv2_calib.npz",
                     "--calibration-method", "entropy", "--debug"], tmp_path)
    assert_clean_interrupt(*interrupt(process, after(seconds)))
    assert leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory):
    from edgeq.converter.api import convert

    path = tmp_path_factory.mktemp("bench") / "cnn.tflite"
    convert(str(SAMPLES / "digits_cnn.onnx"), path)
    return path


@pytest.mark.parametrize("engine", ["edgeq", "both"])
@pytest.mark.parametrize("seconds", [DURING_IMPORTS, 1.0, 2.5])
def test_ctrl_c_during_bench_exits_cleanly(tmp_path, bench_model, engine, seconds):
    process = start(["bench", bench_model, "--engine", engine, "--runs", "1000000", "-q"], tmp_path)
    assert_clean_interrupt(*interrupt(process, after(seconds)))


WAITING_FOR_VARIANTS = """
import signal, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from edgeq.converter.report.measure import as_they_complete

other_thread_ready, stop = threading.Event(), threading.Event()
other = threading.Thread(target=lambda: (other_thread_ready.set(), stop.wait(60)), daemon=True)
other.start()
other_thread_ready.wait()
variant = ThreadPoolExecutor(1).submit(time.sleep, 30)  # a variant that takes long to build
# The kernel hands a process's SIGINT to another thread when the main thread holds it back (as the report
# does while it starts its workers): the same as sending it to that thread.
threading.Timer(0.5, signal.pthread_kill, (other.ident, signal.SIGINT)).start()
try:
    list(as_they_complete([variant]))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    stop.set()
    variant.cancel()
    import os; os._exit(0)  # not waiting for the sleeping variant's thread
"""


def test_report_waiting_for_its_variants_notices_a_ctrl_c_taken_by_another_thread():
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-c", WAITING_FOR_VARIANTS], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               preexec_fn=terminal_like_signals)
    assert completed.stdout.strip() == "interrupted", (completed.returncode, completed.stderr)
    assert time.monotonic() - started < EXIT_WITHIN_SECONDS


STARTING_WORKERS = """
import signal, threading, time
from edgeq.converter.report.measure import sigint_blocked

other_thread_ready, stop = threading.Event(), threading.Event()
other = threading.Thread(target=lambda: (other_thread_ready.set(), stop.wait(60)), daemon=True)
other.start()
other_thread_ready.wait()
events = []
try:
    with sigint_blocked():
        # While this thread blocks SIGINT, the kernel hands a Ctrl-C to another thread.
        signal.pthread_kill(other.ident, signal.SIGINT)
        for _ in range(20):  # starting a worker: this thread takes the GIL back many times
            time.sleep(0.01)
        events.append("workers started")
except KeyboardInterrupt:
    events.append("interrupted")
print(",".join(events))
"""


def test_a_ctrl_c_while_the_report_starts_its_workers_waits_until_they_have_started():
    completed = subprocess.run([sys.executable, "-c", STARTING_WORKERS], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               preexec_fn=terminal_like_signals)
    assert completed.stdout.strip() == "workers started,interrupted", completed.stderr
