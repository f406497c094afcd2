"""How many threads a run may use: the native kernels' own count, and numpy's BLAS (which the float
GEMMs run on) capped through OpenBLAS's C API.

threadpoolctl would find the BLAS for us, but it is not a dependency: numpy's wheels bundle
OpenBLAS (``scipy_openblas`` in numpy 2, ``openblas64_`` in numpy 1.2x), so its
``*_set_num_threads`` / ``*_get_num_threads`` are looked up once through ctypes in the library numpy
loaded. A numpy on another BLAS (a distribution's, MKL) keeps its own thread count; ``blas_controls``
finds none then, and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before start-up is the knob left.

Where the native kernels run, OpenBLAS gets one thread whatever N is: its workers busy-wait for a
while after each call (OpenBLAS's THREAD_TIMEOUT, about 0.1 s), so between the few GEMMs left to BLAS
a worker would spin on a core the native kernels' own threads need; measured on two cores, that made
MobileNetV2 and ResNet-50 float 2-4x slower at two threads than at one.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

from edgeq.runtime import native

# Exported names of OpenBLAS builds: numpy 2's scipy-openblas (ILP64), numpy 1.2x's openblas64_, a
# system OpenBLAS.
_OPENBLAS_PREFIXES = ("scipy_openblas", "openblas")
_OPENBLAS_SUFFIXES = ("64_", "_64_", "")


class BlasControl:
    """get() / set(count) of one loaded BLAS library's thread count, and the address of its
    cblas_sgemm (None if not found) with whether it takes 64-bit integers."""

    def __init__(self, path, get_function, set_function, sgemm=None, ilp64=False):
        self.path, self._get, self._set = path, get_function, set_function
        self.sgemm, self.ilp64 = sgemm, ilp64

    def get(self) -> int:
        return int(self._get())

    def set(self, count: int) -> None:
        self._set(int(count))


def _loaded_library_paths() -> list:
    """Files of the shared libraries this process has loaded whose name mentions BLAS."""
    import numpy  # noqa: F401  (loads numpy's bundled BLAS)

    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "blas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:  # no /proc (macOS, Windows): look beside numpy instead
        folder = os.path.dirname(os.path.dirname(numpy.__file__))
        for pattern in ("numpy.libs/*blas*", "numpy/.dylibs/*blas*", "numpy.libs/*blas*.dll"):
            paths += glob.glob(os.path.join(folder, pattern))
    return paths


def _control_for(path):
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
            setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
            if getter is not None and setter is not None:
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                sgemm = getattr(library, f"{prefix.replace('openblas', '')}cblas_sgemm{suffix}", None)
                address = ctypes.cast(sgemm, ctypes.c_void_p).value if sgemm is not None else None
                return BlasControl(path, getter, setter, address, "64" in suffix)
    return None


_controls = None


def blas_controls() -> list:
    """The thread controls of the BLAS libraries numpy uses (found once)."""
    global _controls
    if _controls is None:
        _controls = [control for control in map(_control_for, _loaded_library_paths()) if control is not None]
    return _controls


# The smallest part of a GEMM BLAS's sgemm is given on a thread: OpenBLAS takes other paths for small
# products (its small-matrix kernels, GEMV for one row) whose sums come in another order, so a smaller
# part could round differently from the one call over the whole. Measured with numpy's OpenBLAS: parts
# of at least 8 rows (or 32 columns of at least 8 rows) and 4M multiply-adds gave bit-identical results
# on 688 row splits and 534 column splits (k 27-4608, n 16-2048).
SPLIT_GEMM_MIN_ROWS = 8
SPLIT_GEMM_MIN_COLUMNS = 32
SPLIT_GEMM_MIN_MACS = 4_000_000


def _ranges(length: int, smallest_allowed: int, macs_per_unit: int, threads: int) -> int:
    """How many equal ranges (the last may be shorter) ``length`` units are split into: at most
    ``threads``, each at least ``smallest_allowed`` units and SPLIT_GEMM_MIN_MACS; 1 when none fits."""
    for ranges in range(min(threads, length), 1, -1):
        chunk = -(-length // ranges)
        smallest = min(chunk, length - (-(-length // chunk) - 1) * chunk)
        if smallest >= smallest_allowed and smallest * macs_per_unit >= SPLIT_GEMM_MIN_MACS:
            return ranges
    return 1


def gemm_split(rows: int, depth: int, columns: int, threads: int):
    """(by_columns, ranges) for a float GEMM on ``threads`` threads: columns where the weights outweigh
    the activations (each thread then packs only its share of them), rows otherwise; ranges 1: one call."""
    if rows < SPLIT_GEMM_MIN_ROWS:
        return False, 1
    if columns > rows:  # several ranges a thread: one whose core is taken leaves its ranges to the others
        return True, _ranges(columns, SPLIT_GEMM_MIN_COLUMNS, rows * depth, threads * 2)
    return False, _ranges(rows, SPLIT_GEMM_MIN_ROWS, depth * columns, threads)


def matmul(a, b, out):
    """out = a @ b (float32, 2-D; ``out`` C-contiguous), as np.matmul computes it; while the native
    kernels have more than one thread, BLAS's own sgemm runs on parts of the product on their threads
    (BLAS holds one thread of its own then, see above), each large enough that BLAS sums it as it sums
    the whole: the result does not depend on the thread count."""
    threads = native.threads()
    if threads > 1 and a.dtype == b.dtype == out.dtype == np.float32 and a.strides[1] == 4 \
            and out.flags.c_contiguous and (b.strides[1] == 4 or b.strides[0] == 4):
        by_columns, ranges = gemm_split(a.shape[0], a.shape[1], b.shape[1], threads)
        control = next((c for c in blas_controls() if c.sgemm is not None), None) if ranges > 1 else None
        # Only while BLAS runs on one thread of its own (Interpreter(num_threads=N) holds it there; with
        # num_threads=None it keeps its own count, and its threads split the product themselves).
        if control is not None and control.get() == 1 \
                and native.blas_sgemm_split(control.sgemm, control.ilp64, a, b, out, by_columns, ranges):
            return out
    return np.matmul(a, b, out=out)


class ThreadLimit:
    """While entered: the native kernels use up to ``num_threads`` threads and every BLAS library
    found has its thread count set to ``blas_threads`` (``num_threads`` unless told); exit restores
    what was there."""

    __slots__ = ("num_threads", "blas_threads", "controls", "saved", "saved_native")

    def __init__(self, num_threads: int, controls, blas_threads=None):
        self.num_threads, self.controls, self.saved, self.saved_native = num_threads, controls, [], 1
        self.blas_threads = num_threads if blas_threads is None else blas_threads

    def __enter__(self):
        self.saved_native = native.set_threads(self.num_threads)
        self.saved = [control.get() for control in self.controls]
        for control, current in zip(self.controls, self.saved):
            if current != self.blas_threads:
                control.set(self.blas_threads)
        return self

    def __exit__(self, *exc_info):
        native.set_threads(self.saved_native)
        for control, previous in zip(self.controls, self.saved):
            if previous != self.blas_threads:
                control.set(previous)
        return False


def thread_limit(num_threads):
    """A context factory for one interpreter's runs. ``num_threads=None`` (LiteRT's default) leaves
    BLAS as it is and lets the native kernels use every core."""
    if num_threads is None:
        limit = ThreadLimit(os.cpu_count() or 1, [])
    else:
        limit = ThreadLimit(num_threads, blas_controls(), 1 if native.enabled() else num_threads)
    return lambda: limit
