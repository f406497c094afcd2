"""Interpreter(num_threads=N) bounds the threads a run uses: numpy's OpenBLAS (through its C API, in a
process whose OpenBLAS started with a thread per core) and the native kernels' own. Where the native
kernels run, they use the N threads and OpenBLAS keeps one (its workers would spin against them);
without them, OpenBLAS gets the N.

The native kernels' threads are a pool started on the first call that asks for them and parked
between calls: N - 1 workers named ``edgeq-worker``, the calling thread being the N-th.

Each case runs in a child process started without OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, so the only
bound is the interpreter's. While the model runs, a watcher thread lists /proc/self/task (a thread
started and ended within the runs shows up there) and, before and after, every thread's CPU time is
read from /proc/self/task/<tid>/stat (clock ticks): a thread that did work has more ticks after.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeq.runtime import native, threads
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, Tensor

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
graph.add_constant("v", rng.standard_normal((256, 3, 3, 256)).astype(np.float32))
graph.add_constant("d", rng.standard_normal((1, 3, 3, 256)).astype(np.float32))
graph.add_tensor(Tensor("h", (1, 28, 28, 256), np.float32))
graph.add_tensor(Tensor("g", (1, 28, 28, 256), np.float32))
graph.add_tensor(Tensor("y", (1, 28, 28, 256), np.float32))
# A 3x3 CONV_2D with over a million weights (a BLAS sgemm of 784 x 4608 x 256 at one thread), one with
# fewer (the native sgemm) and a DEPTHWISE_CONV_2D (the native kernel).
graph.add_op(Op("CONV_2D", ["x", "w", ""], ["h"], {"padding": "SAME", "fused_activation_function": "RELU6"}))
graph.add_op(Op("CONV_2D", ["h", "v", ""], ["g"], {"padding": "SAME", "fused_activation_function": "RELU6"}))
graph.add_op(Op("DEPTHWISE_CONV_2D", ["g", "d", ""], ["y"], {"padding": "SAME", "depth_multiplier": 1,
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


def thread_name(tid):
    try:
        with open(f"/proc/self/task/{tid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def blocks_sigint(tid):
    with open(f"/proc/self/task/{tid}/status") as status:
        blocked = next(line for line in status if line.startswith("SigBlk:")).split()[1]
    return bool(int(blocked, 16) & (1 << (2 - 1)))


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
workers = [tid for tid in after if thread_name(tid) == "edgeq-worker"]
others = [tid for tid in after if tid not in (main, watcher[0]) and tid not in workers]
# Idle: the process's CPU time (every thread's) while nothing runs.
time.sleep(0.2)
idle_start = time.process_time()
time.sleep(1.0)
idle_cpu = time.process_time() - idle_start
print(json.dumps({
    "threads_started": len(seen - before_run - {watcher[0]}),
    "native_workers": len(workers),
    "native_workers_working": sum(1 for tid in workers if after[tid] - before.get(tid, 0) > 2),
    "native_workers_blocking_sigint": sum(1 for tid in workers if blocks_sigint(tid)),
    "other_threads_working": sum(1 for tid in others if after[tid] - before.get(tid, 0) > 2),
    "main_ticks": after[main] - before[main],
    "idle_cpu_seconds": idle_cpu,
}))
"""


def threads_used(num_threads: int, extra_env=None) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(extra_env or {})
    result = subprocess.run([sys.executable, "-c", CHILD, str(num_threads)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.describe()}")
needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")


def test_one_thread_runs_everything_on_the_calling_thread():
    used = threads_used(1)
    assert used["main_ticks"] > 0
    assert used["native_workers"] == 0, used
    assert used["threads_started"] == 0, used
    assert used["other_threads_working"] == 0, used  # OpenBLAS's workers stay idle


@needs_two_cores
@needs_native
def test_two_threads_put_one_native_worker_to_work_and_leave_blas_on_one():
    used = threads_used(2)
    assert used["native_workers"] == 1, used
    assert used["native_workers_working"] == 1, used
    assert used["other_threads_working"] == 0, used  # OpenBLAS's workers stay idle


@needs_two_cores
@needs_native
def test_invokes_start_no_threads_once_the_native_workers_run():
    used = threads_used(3)
    assert used["native_workers"] == 2, used
    assert used["threads_started"] == 0, used


@needs_two_cores
@needs_native
def test_idle_native_workers_use_no_cpu():
    used = threads_used(2)
    assert used["native_workers"] == 1, used
    assert used["idle_cpu_seconds"] < 0.02, used


@needs_two_cores
@needs_native
def test_native_workers_leave_ctrl_c_to_the_python_thread():
    used = threads_used(2)
    assert used["native_workers_blocking_sigint"] == used["native_workers"] == 1, used


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_two_threads_without_the_native_kernels_put_a_blas_worker_to_work():
    used = threads_used(2, {"EDGEQ_NO_NATIVE": "1"})
    assert used["other_threads_working"] >= 1, used


# -- results do not depend on the thread count --------------------------------------------------------

def _on_threads(count: int, compute):
    previous = native.set_threads(count)
    try:
        return compute()
    finally:
        native.set_threads(previous)


@needs_native
def test_elementwise_kernels_give_the_same_values_on_one_and_three_threads():
    rng = np.random.default_rng(3)
    count = 300_001  # ranges of the split, and a tail shorter than any of them
    a, b = (rng.integers(-128, 128, count, dtype=np.int8) for _ in range(2))
    floats = (rng.standard_normal(count) * 3).astype(np.float32)
    isa = native.best_isa()
    params = native.AddParams(128, 3, 20, 1623821475, -1, 1499310134, -1, 1110016503, -19, -4, -128, 127, 0)
    table = native.pair_table(isa, params)
    rows = floats.reshape(-1, 1)[:300_000].reshape(-1, 60)
    bias = rng.standard_normal(60).astype(np.float32)
    kernels = {
        "QUANTIZE": lambda: native.quantize_int8(floats, 0.02, 5, -128, 127, np.empty(count, np.int8), isa),
        "DEQUANTIZE": lambda: native.dequantize_int8(isa, a, 0.02, 5, np.empty(count, np.float32)),
        "ADD": lambda: native.add_int8(isa, params, a, b, np.empty(count, np.int8)),
        "ADD from the pair table": lambda: native.lookup_pairs_int8(isa, table, a, b, np.empty(count, np.int8)),
        "bias and clamp": lambda: native.bias_activation_f32(isa, rows.copy(), bias, 0.0, 6.0),
        "float ADD": lambda: native.add_f32(floats, floats[::-1].copy(), 0.0, 6.0, np.empty(count, np.float32)),
    }
    for name, kernel in kernels.items():
        assert np.array_equal(_on_threads(1, kernel), _on_threads(3, kernel)), name


@needs_native
@pytest.mark.parametrize("kind", ["float max", "float average", "int8 max"])
@pytest.mark.parametrize("k, stride, pad", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_pools_give_the_same_values_on_one_and_three_threads(kind, k, stride, pad):
    rng = np.random.default_rng(k * 10 + stride)
    batch, size, channels = 2, 57, 64  # every case large enough to split
    out_size = (size + 2 * pad - k) // stride + 1
    geometry = native.conv_geometry(batch=batch, in_h=size, in_w=size, in_c=channels, out_h=out_size, out_w=out_size,
                                    out_c=channels, k_h=k, k_w=k, stride_h=stride, stride_w=stride, dil_h=1, dil_w=1,
                                    pad_top=pad, pad_left=pad, input_zero_point=0)
    isa = native.best_isa()
    shape = (batch, out_size, out_size, channels)
    if kind == "int8 max":
        x = rng.integers(-128, 128, (batch, size, size, channels), dtype=np.int8)
        kernel = lambda: native.max_pool_int8(geometry, x, -100, 120, np.empty(shape, np.int8), isa)  # noqa: E731
    else:
        x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
        kernel = lambda: native.pool_f32(isa, kind == "float average", geometry, x, -1.5, 2.0,  # noqa: E731
                                         np.empty(shape, np.float32))
    assert np.array_equal(_on_threads(1, kernel), _on_threads(3, kernel))


@needs_native
@pytest.mark.parametrize("rows, depth, columns, transposed", [(49, 1024, 2048, True), (196, 4608, 512, True),
                                                             (50, 700, 300, False), (3136, 27, 32, True),
                                                             (784, 1152, 128, False), (9, 2048, 1000, True)])
def test_blas_gemms_split_into_parts_are_bit_identical_to_one_call(monkeypatch, rows, depth, columns, transposed):
    splits = []
    split = native.blas_sgemm_split
    monkeypatch.setattr(native, "blas_sgemm_split", lambda *args: splits.append(args[-1]) or split(*args))
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    b = rng.standard_normal((columns, depth)).astype(np.float32).T if transposed else \
        rng.standard_normal((depth, columns)).astype(np.float32)
    with threads.ThreadLimit(1, threads.blas_controls(), blas_threads=1):  # as Interpreter(num_threads=1)
        expected = threads.matmul(a, b, np.empty((rows, columns), np.float32))
    for count in (2, 3):
        with threads.ThreadLimit(count, threads.blas_controls(), blas_threads=1):  # as Interpreter(num_threads=N)
            out = threads.matmul(a, b, np.empty((rows, columns), np.float32))
        assert np.array_equal(out, expected), (count, threads.gemm_split(rows, depth, columns, count))
    assert len(splits) == (0 if rows * depth * columns < 2 * threads.SPLIT_GEMM_MIN_MACS else 2), splits


def _float_conv_graph(x_shape, out_c, k, seed):
    rng = np.random.default_rng(seed)
    graph = Graph()
    graph.add_tensor(Tensor("x", x_shape, np.float32))
    graph.add_constant("w", (rng.standard_normal((out_c, k, k, x_shape[3])) * 0.05).astype(np.float32))
    graph.add_constant("b", rng.standard_normal(out_c).astype(np.float32))
    graph.add_tensor(Tensor("y", x_shape[:3] + (out_c,), np.float32))
    graph.add_op(Op("CONV_2D", ["x", "w", "b"], ["y"], {"padding": "SAME", "fused_activation_function": "RELU"}))
    graph.inputs, graph.outputs = ["x"], ["y"]
    return graph, [rng.standard_normal(x_shape).astype(np.float32)]


@pytest.mark.parametrize("x_shape, out_c, k", [((1, 28, 28, 64), 96, 3),    # the native float GEMM
                                               ((1, 14, 14, 512), 512, 3),  # over a million weights: BLAS
                                               ((1, 7, 7, 1024), 2048, 1)])
def test_float_convolutions_are_bit_identical_on_one_and_three_threads(x_shape, out_c, k):
    graph, inputs = _float_conv_graph(x_shape, out_c, k, seed=out_c)
    single = Interpreter.from_graph(graph, num_threads=1).run(inputs)["y"]
    threaded = Interpreter.from_graph(graph, num_threads=3).run(inputs)["y"]
    assert np.array_equal(single, threaded)


# -- the pool's life -----------------------------------------------------------------------------------

@needs_native
def test_pool_stops_and_starts_again():
    graph, inputs = _float_conv_graph((1, 28, 28, 64), 96, 3, seed=1)
    interpreter = Interpreter.from_graph(graph, num_threads=2)
    expected = interpreter.run(inputs)["y"].copy()
    assert native.pool_workers() >= 1
    native.shutdown_pool()
    assert native.pool_workers() == 0
    assert np.array_equal(interpreter.run(inputs)["y"], expected)
    assert native.pool_workers() >= 1


FORK_CHILD = r"""
import os, sys
import numpy as np
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, Tensor

rng = np.random.default_rng(0)
graph = Graph()
graph.add_tensor(Tensor("x", (1, 28, 28, 64), np.float32))
graph.add_constant("w", (rng.standard_normal((96, 3, 3, 64)) * 0.05).astype(np.float32))
graph.add_tensor(Tensor("y", (1, 28, 28, 96), np.float32))
graph.add_op(Op("CONV_2D", ["x", "w", ""], ["y"], {"padding": "SAME", "fused_activation_function": "RELU6"}))
graph.inputs, graph.outputs = ["x"], ["y"]
interpreter = Interpreter.from_graph(graph, num_threads=2)
x = rng.standard_normal((1, 28, 28, 64)).astype(np.float32)
expected = interpreter.run([x])["y"].copy()
assert native.pool_workers() == 1
pid = os.fork()
if pid == 0:  # the child: no workers until it asks, then its own
    status = 0 if native.pool_workers() == 0 else 3
    if status == 0:
        status = 0 if np.array_equal(interpreter.run([x])["y"], expected) else 4
    if status == 0:
        status = 0 if len(os.listdir("/proc/self/task")) == 2 else 5
    os._exit(status)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
assert np.array_equal(interpreter.run([x])["y"], expected)
print("ok")
"""


@needs_native
def test_a_forked_child_runs_on_workers_of_its_own():
    env = {key: value for key, value in os.environ.items() if key not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "1"  # the child's thread count is then the pool's alone
    result = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
