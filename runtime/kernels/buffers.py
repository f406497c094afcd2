"""Output and scratch buffers the kernels reuse from call to call instead of allocating."""
from __future__ import annotations


# While the interpreter prepares an op, the buffer holders its kernel makes (``holders_made_by``).
_made = None


class holders_made_by:
    """``with holders_made_by() as made:`` collects in ``made`` every output-buffer holder made inside,
    so that the interpreter can ``reserve`` their buffers at allocate time instead of on the first invoke."""

    def __enter__(self):
        global _made
        self.outer, _made = _made, []
        return _made

    def __exit__(self, *_):
        global _made
        _made = self.outer


def _touched(buffer):
    # Writing each page once now takes its page faults here rather than in the first invoke.
    buffer.reshape(-1).view("u1")[::4096] = 0
    return buffer


class OutputBuffers:
    """One output array per batch size, made on first use and reused by every later call: the
    kernel writes into it instead of allocating (the interpreter copies what it hands out)."""

    __slots__ = ("shape_tail", "dtype", "buffers")

    def __init__(self, shape_tail, dtype):
        self.shape_tail, self.dtype, self.buffers = tuple(shape_tail), dtype, {}
        if _made is not None:
            _made.append(self)

    def get(self, n):
        buffer = self.buffers.get(n)
        if buffer is None:
            import numpy as np

            buffer = self.buffers[n] = np.empty((n,) + self.shape_tail, self.dtype)
        return buffer

    def reserve(self, input_shape, output_shape) -> None:
        """Make (and touch) now the buffer a call on the graph's own shapes will use."""
        n = output_shape[0] if output_shape else 1
        size = n
        for d in self.shape_tail:
            size *= d
        expected = 1
        for d in output_shape:
            expected *= d
        if output_shape and size == expected:
            _touched(self.get(n))


class BuffersByShape:
    """One output array per input shape (elementwise kernels: the output has the input's shape), made
    on first use and reused, so an invoke allocates nothing."""

    __slots__ = ("dtype", "buffers")

    def __init__(self, dtype):
        self.dtype, self.buffers = dtype, {}
        if _made is not None:
            _made.append(self)

    def get(self, shape):
        buffer = self.buffers.get(shape)
        if buffer is None:
            import numpy as np

            buffer = self.buffers[shape] = np.empty(shape, self.dtype)
        return buffer

    def reserve(self, input_shape, output_shape) -> None:
        if input_shape is not None:
            _touched(self.get(tuple(input_shape)))


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
