"""Interpreter(num_threads=N) bounds the threads a run uses: numpy's OpenBLAS (through its C API, in a
process whose OpenBLAS started with a thread per core) and the native kernels' own. Where the native
kernels run, they use the N threads and OpenBLAS keeps one (its workers would spin against them);
without them, OpenBLAS gets the N.

Each case runs in a child process started without OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, so the only
bound is the interpreter's. While the model runs, a watcher thread lists /proc/self/task (threads the
native kernels start live only during their call) and, before and after, every thread's CPU time is
read from /proc/self/task/<tid>/stat (clock ticks): a thread that did work has more ticks after.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgeq.runtime import native

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc/self/task")

CHILD = r"""
import json, os, sys, threading, time
import numpy as np
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, Tensor

num_threads = int(sys.argv[1])
rng = np.random.default_rng(0)
graph = Graph()
graph.add_tensor(Tensor("x", (1, 28, 28, 512), np.float32))
graph.add_constant("w", rng.standard_normal((256, 3, 3, 512)).astype(np.float32))
graph.add_constant("d", rng.standard_normal((1, 3, 3, 256)).astype(np.float32))
graph.add_tensor(Tensor("h", (1, 28, 28, 256), np.float32))
graph.add_tensor(Tensor("y", (1, 28, 28, 256), np.float32))
# A 3x3 CONV_2D with over a million weights (a BLAS sgemm of 784 x 4608 x 256) and a DEPTHWISE_CONV_2D
# (the native kernel).
graph.add_op(Op("CONV_2D", ["x", "w", ""], ["h"], {"padding": "SAME", "fused_activation_function": "RELU6"}))
graph.add_op(Op("DEPTHWISE_CONV_2D", ["h", "d", ""], ["y"], {"padding": "SAME", "depth_multiplier": 1,
                                                             "fused_activation_function": "RELU6"}))
graph.inputs, graph.outputs = ["x"], ["y"]
interpreter = Interpreter.from_graph(graph, num_threads=num_threads)
x = rng.standard_normal((1, 28, 28, 512)).astype(np.float32)
interpreter.run([x])  # prepare and first-run buffers


def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


main = threading.get_native_id()
before_run = set(int(tid) for tid in os.listdir("/proc/self/task"))
seen, watcher, stop = set(), [], threading.Event()


def watch():
    watcher.append(threading.get_native_id())
    while not stop.is_set():
        seen.update(int(tid) for tid in os.listdir("/proc/self/task"))
        time.sleep(0.0001)


thread = threading.Thread(target=watch)
thread.start()
while not watcher:
    time.sleep(0.001)
before = cpu_ticks()
start = time.perf_counter()
while time.perf_counter() - start < 1.5:
    interpreter.run([x])
after = cpu_ticks()
stop.set()
thread.join()
others = [tid for tid in after if tid not in (main, watcher[0])]
print(json.dumps({
    "threads_started": len(seen - before_run - {watcher[0]}),
    "other_threads_working": sum(1 for tid in others if after[tid] - before.get(tid, 0) > 2),
    "main_ticks": after[main] - before[main],
}))
"""


def threads_used(num_threads: int, extra_env=None) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, "-c", CHILD, str(num_threads)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_one_thread_runs_everything_on_the_calling_thread():
    used = threads_used(1)
    assert used["main_ticks"] > 0
    assert used["threads_started"] == 0, used  # no native worker
    assert used["other_threads_working"] == 0, used  # OpenBLAS's workers stay idle


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
@pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.describe()}")
def test_two_threads_put_the_native_kernels_second_thread_to_work_and_leave_blas_on_one():
    used = threads_used(2)
    assert used["threads_started"] >= 1, used  # the native depthwise kernel's worker
    assert used["other_threads_working"] == 0, used  # OpenBLAS's workers stay idle


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_two_threads_without_the_native_kernels_put_a_blas_worker_to_work():
    used = threads_used(2, {"EDGEQ_NO_NATIVE": "1"})
    assert used["other_threads_working"] >= 1, used
