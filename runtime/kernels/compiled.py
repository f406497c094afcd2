"""Optional compiled twins (numba) of the kernels numpy cannot make fast: im2col, depthwise
convolution, max pooling, TFLite's int8 requantizations (per-channel conv, FULLY_CONNECTED,
QUANTIZE) and same-shape int8 ADD/SUB.

numpy alone pays for every temporary: a requantization is a dozen int64 passes over the
accumulators, a depthwise tap one pass per filter element. These loops (``_compiled_loops``) do the
same integer and float arithmetic in one pass, in the same order as the numpy kernels (taps in
(ky, kx) order, the bias added last, TFLite's double-rounding MultiplyByQuantizedMultiplier), so
both paths give identical results; tests/test_compiled_kernels.py holds them to that.

The numpy kernels stay the reference and run everywhere (armv7, no numba). This path is used only
when numba imports (``pip install edgeq[fast]``) and EDGEQ_NO_NUMBA is not set. Kernels ask
``enabled()`` in prepare; numba (about 100 MB of resident memory and a second of start-up) is
imported then, so a model without such ops never loads it. The loops compile on first use, only
for the ops a model has, and are cached on disk (``cache=True``) for later processes.
"""
from __future__ import annotations

import os

from edgeq.runtime.kernels.common import ACTIVATION_BOUNDS, NO_ACTIVATION

_DISABLED_BY_ENV = os.environ.get("EDGEQ_NO_NUMBA", "").strip() not in ("", "0")
_LOOPS = ("requantize_rows", "requantize_rows_folded", "bias_clamp", "requantize_rows_float_scale", "quantize_float", "im2col", "depthwise_float",
          "depthwise_int8", "depthwise_int8_folded", "add_sub_int", "max_pool")

# None until the first kernel asks; then whether the compiled path is used. Tests set it to
# True or False to run both paths (True only where ``available()``).
ENABLED = None
_available = None


def available() -> bool:
    """Whether numba imports here and is not disabled (imports it, and the loops, on first call)."""
    global _available
    if _available is None:
        _available = False
        if not _DISABLED_BY_ENV:
            try:
                from edgeq.runtime.kernels import _compiled_loops
            except Exception:  # numba not installed, or its llvmlite does not load on this machine
                pass
            else:
                globals().update({name: getattr(_compiled_loops, name) for name in _LOOPS})
                _available = True
    return _available


def enabled() -> bool:
    """Whether kernels prepared now should use the compiled path."""
    global ENABLED
    if ENABLED is None:
        ENABLED = available()
    return bool(ENABLED) and available()


# Fused float activations the compiled kernels apply as a clamp (TANH is left to numpy).
FLOAT_ACTIVATION_BOUNDS = {**dict.fromkeys(NO_ACTIVATION, (-float("inf"), float("inf"))), **ACTIVATION_BOUNDS}


def float_activation_bounds(op):
    """(low, high) of the op's fused activation as a clamp, or None when it is not one."""
    return FLOAT_ACTIVATION_BOUNDS.get(op.options.get("fused_activation_function", "NONE"))


class OutputBuffers:
    """One output array per batch size, made on first use and reused by every later call: the
    kernel writes into it instead of allocating (the interpreter copies what it hands out)."""

    __slots__ = ("shape_tail", "dtype", "buffers")

    def __init__(self, shape_tail, dtype):
        self.shape_tail, self.dtype, self.buffers = tuple(shape_tail), dtype, {}

    def get(self, n):
        buffer = self.buffers.get(n)
        if buffer is None:
            import numpy as np

            buffer = self.buffers[n] = np.empty((n,) + self.shape_tail, self.dtype)
        return buffer


class SharedScratch:
    """Working arrays that live only inside one kernel call (im2col columns, GEMM accumulators,
    int64 requantization temporaries), shared by every kernel that runs on the same thread: ops run
    one after another, so one buffer per purpose, as large as the largest request, serves them all
    instead of one per op (which kept every layer's temporaries resident). Callers must overwrite
    what they read and never hand a scratch array out of the call."""

    def __init__(self):
        import threading

        self._local = threading.local()

    def get(self, purpose, shape, dtype):
        # The hot path is one dict lookup: views are cached per request until their purpose's
        # buffer has to grow (then that purpose's views are dropped, so the old buffer is freed).
        local = self._local
        try:
            views = local.views
        except AttributeError:
            views = local.views = {}
            local.buffers = {}
        key = (purpose, shape, dtype)
        view = views.get(key)
        if view is None:
            view = views[key] = self._new_view(local, purpose, shape, dtype)
        return view

    def _new_view(self, local, purpose, shape, dtype):
        import numpy as np

        dtype = np.dtype(dtype)
        count = 1
        for size in shape:
            count *= size
        nbytes = count * dtype.itemsize
        buffer = local.buffers.get(purpose)
        if buffer is None or buffer.size < nbytes:
            for key in [key for key in local.views if key[0] == purpose]:
                del local.views[key]
            # 64-byte aligned, as numpy's own large allocations are, for BLAS and SIMD loads.
            raw = np.empty(nbytes + 64, np.uint8)
            offset = (-raw.ctypes.data) % 64
            buffer = local.buffers[purpose] = raw[offset:offset + nbytes]
        return buffer[:nbytes].view(dtype).reshape(shape)


SCRATCH = SharedScratch()
