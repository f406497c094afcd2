"""SmoothQuant-style outlier migration (Xiao et al. 2023), a pass on the float graph before calibration.

Transformers trained at scale put a few hidden channels 20-100x above the rest after every
LayerNorm. int8 quantizes an activation with one scale per tensor, so those channels set the step
and the ordinary channels, where the information is, get a handful of levels. The layers reading
the LayerNorm's output have constant weights quantized per OUTPUT channel, which do not care how
large an input column is. So divide the activation's channel ``j`` by ``s_j`` and multiply the
weights' input column ``j`` by it: the same function, with the range moved from the activation
(per tensor) to the weights (per output channel, where it costs little).

Where the scale is absorbed: a LayerNorm, however exported, ends in ``MUL(x, gamma)`` (and usually
``ADD(., beta)``) with constant per-channel gamma and beta: dividing both by ``s`` divides the
LayerNorm's output channel ``j`` by ``s_j`` at no cost. The same holds for any per-channel affine
tail. Its readers that are FULLY_CONNECTED or BATCH_MATMUL ops with constant weights take ``s``
into their weights; any other reader (the residual ADD of a post-LN transformer) reads the original
values again through an inserted ``MUL(., s)``, so only the weighted readers see the smoothed tensor.

``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (alpha 0.5, the paper's default), with ``max|X_j|`` the
channel's absolute maximum on the calibration samples and ``max|W_j|`` the largest weight of input
column ``j`` over all weighted readers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.runtime.ir import Graph, Op

ALPHA = 0.5
# Smoothing a tail whose channels are already within this ratio of each other buys nothing.
MIN_OUTLIER_RATIO = 8.0


@dataclass
class SmoothQuantReport:
    layer_norms: list = field(default_factory=list)  # (tail op, channel range ratio before, after)

    def __str__(self):
        worst = max((before for _, before, _ in self.layer_norms), default=1.0)
        return (f"outlier smoothing: {len(self.layer_norms)} LayerNorm outputs, largest channel range "
                f"ratio {worst:.0f}x")


def _constant_operand(graph: Graph, op: Op):
    """(index of the non-constant input, the constant input's array) of a binary op, or None."""
    if len(op.inputs) != 2:
        return None
    a, b = (graph[n] for n in op.inputs)
    if b.is_constant and not a.is_constant:
        return 0, b.data
    if a.is_constant and not b.is_constant:
        return 1, a.data
    return None


def _per_channel(data: np.ndarray, channels: int) -> bool:
    return data.dtype == np.float32 and data.size == channels and data.shape[-1] == channels


def _weight_column_axis(graph: Graph, op: Op, tensor: str, channels: int):
    """The axis of ``op``'s constant weight holding input channel ``j``, if ``op`` reads ``tensor`` as its
    data input against constant weights of ``channels`` input channels; else None."""
    if not op.inputs or op.inputs[0] != tensor or tensor in op.inputs[1:]:
        return None
    if len(op.inputs) < 2 or not graph[op.inputs[1]].is_constant or graph[op.inputs[1]].dtype != np.float32:
        return None
    weights = graph[op.inputs[1]]
    if op.type == "FULLY_CONNECTED" and len(weights.shape) == 2 and weights.shape[1] == channels:
        return 1
    if op.type == "BATCH_MATMUL" and len(weights.shape) >= 2:
        axis = len(weights.shape) - (1 if op.options.get("adj_y") else 2)
        if not op.options.get("adj_x") and weights.shape[axis] == channels:
            return axis
    return None


def find_tails(graph: Graph) -> list:
    """``(mul, add or None, weighted readers [(op, axis)], other readers)`` for every per-channel affine
    tail (LayerNorm's gamma / beta) whose output at least one constant-weight matmul reads."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    tails = []
    for mul in graph.ops:
        if mul.type != "MUL" or mul.options.get("fused_activation_function", "NONE") != "NONE":
            continue
        operand = _constant_operand(graph, mul)
        channels = graph[mul.outputs[0]].shape[-1] if graph[mul.outputs[0]].shape else 0
        if operand is None or not channels or not _per_channel(operand[1], channels):
            continue
        add, tail = None, mul.outputs[0]
        readers = consumers.get(tail, [])
        if len(readers) == 1 and readers[0].type == "ADD" and tail not in outputs:
            beta = _constant_operand(graph, readers[0])
            if (beta is not None and _per_channel(beta[1], channels)
                    and readers[0].options.get("fused_activation_function", "NONE") == "NONE"):
                add, tail = readers[0], readers[0].outputs[0]
                readers = consumers.get(tail, [])
        if tail in outputs:
            continue  # the model's output keeps its values and its name
        weighted, others = [], []
        for reader in readers:
            axis = _weight_column_axis(graph, reader, tail, channels)
            (weighted if axis is not None else others).append((reader, axis) if axis is not None else reader)
        if weighted:
            tails.append((mul, add, weighted, others))
    return tails


def _tail_absmax(graph: Graph, samples: dict, names: set, batch_size: int) -> dict:
    from edgeq.converter.equalize import channel_absmax

    return channel_absmax(graph, samples, names, batch_size)


def _scaled_along(data: np.ndarray, axis: int, factors: np.ndarray) -> np.ndarray:
    shape = [1] * data.ndim
    shape[axis] = -1
    return (data.astype(np.float64) * factors.reshape(shape)).astype(np.float32)


def smooth_activation_outliers(graph: Graph, samples: dict, alpha: float = ALPHA, batch_size: int = 8,
                               min_ratio: float = MIN_OUTLIER_RATIO) -> tuple:
    """A copy of ``graph`` with the outliers of every per-channel affine tail read by constant-weight
    matmuls moved into their weights; returns (graph, SmoothQuantReport)."""
    graph = graph.copy()
    tails = find_tails(graph)
    report = SmoothQuantReport()
    if not tails:
        return graph, report
    tail_names = {(add or mul).outputs[0] for mul, add, _, _ in tails}
    absmax = _tail_absmax(graph, samples, tail_names, batch_size)
    for mul, add, weighted, others in tails:
        tail = (add or mul).outputs[0]
        x_max = absmax.get(tail)
        if x_max is None:
            continue
        x_max = x_max.astype(np.float64)
        live = x_max[x_max > 0]
        ratio = float(live.max() / np.median(live)) if live.size else 1.0
        if ratio < min_ratio:
            continue
        w_max = np.zeros_like(x_max)
        for reader, axis in weighted:
            weights = graph[reader.inputs[1]].data
            other = tuple(a for a in range(weights.ndim) if a != axis)
            w_max = np.maximum(w_max, np.max(np.abs(weights), axis=other))
        s = np.ones_like(x_max)
        usable = (x_max > 0) & (w_max > 0)
        s[usable] = x_max[usable] ** alpha / w_max[usable] ** (1 - alpha)
        _absorb(graph, mul, add, weighted, others, s)
        after = x_max / s
        report.layer_norms.append((str(add or mul), ratio, float(after.max() / np.median(after[after > 0]))))
    graph.remove_unused()
    return graph, report


def _absorb(graph: Graph, mul: Op, add, weighted: list, others: list, s: np.ndarray) -> None:
    """Divide the tail's channels by ``s``, multiply the weighted readers' columns by it, and give the
    other readers the original values through a ``MUL(., s)``."""
    for op in (mul, add):
        if op is None:
            continue
        index = 1 - _constant_operand(graph, op)[0]
        constant = graph[op.inputs[index]].data
        op.inputs[index] = graph.add_constant(op.inputs[index], (constant / s.reshape(constant.shape)).astype(np.float32))
    tail = (add or mul).outputs[0]
    for reader, axis in weighted:
        reader.inputs[1] = graph.add_constant(reader.inputs[1], _scaled_along(graph[reader.inputs[1]].data, axis, s))
    if others:
        restored = graph.add_activation(f"{tail}/unsmoothed", graph[tail].shape)
        factor = graph.add_constant(f"{tail}/smoothing", s.astype(np.float32))
        restore = Op("MUL", [tail, factor], [restored], {"fused_activation_function": "NONE"}, f"{tail}/unsmoothed")
        graph.ops.insert(graph.ops.index(add or mul) + 1, restore)
        for reader in others:
            reader.inputs = [restored if name == tail else name for name in reader.inputs]
