"""One op of a graph, run by itself: its kernel's prepare, then its eval on the arrays given.

The interpreter prepares every op of a model through ``prepare_op`` once and then only calls the
evals; ``run_op`` is the one-off form, for a caller that runs a single op outside a whole-model
run: folding an op whose inputs are all constants, or walking a graph op by op while changing its
weights between ops (pruning's least-squares reconstruction). Every caller meets the same kernels
and the same errors.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

from edgeq.runtime import kernels
from edgeq.runtime.ir import Graph, ModelError, Op


@functools.lru_cache(maxsize=None)
def _kernels() -> dict:
    # Imported once: a graph walked op by op asks for a kernel hundreds of times.
    return kernels.load_all_kernels()


def has_kernel(op: Op) -> bool:
    """Whether the runtime has a kernel for ``op`` (for a custom op: one for its custom code)."""
    _kernels()
    return kernels.has_kernel(op)


def prepare_op(op: Op, graph: Graph) -> Callable:
    """``op``'s kernel prepared for ``graph``: ``eval(*inputs)``, which returns the output array, or
    a tuple of them for an op with several outputs. ``ModelError`` naming the op when there is no
    kernel for its type or its kernel cannot prepare it (a malformed op: a bare numpy error would
    not say which)."""
    if not has_kernel(op):
        raise ModelError(f"no kernel for op {op}")
    try:
        return _kernels()[op.type](op, graph)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"cannot prepare op {op}: {error}") from error


def run_op(op: Op, graph: Graph, inputs: Sequence) -> tuple:
    """Run ``op`` of ``graph`` once on ``inputs`` and return its outputs, a tuple in ``op.outputs``
    order.

    ``inputs`` holds one array per name in ``op.inputs`` (``None`` for an omitted optional input);
    constants are not read from the graph, so pass ``graph[name].data`` for them. Arrays may carry
    more samples on the first axis than the graph's tensor shapes say, as in ``Interpreter.run``.
    The op is prepared on every call, so it sees the graph's constants as they are now; an output
    may share memory with an input (a RESHAPE returns a view). ``ModelError`` naming the op when
    it has no kernel, cannot be prepared, or fails on these inputs."""
    evaluate = prepare_op(op, graph)
    try:
        result = evaluate(*inputs)
    except (ModelError, MemoryError):
        raise
    except Exception as error:
        raise ModelError(f"cannot run op {op}: {type(error).__name__}: {error}") from error
    return result if isinstance(result, tuple) else (result,)
