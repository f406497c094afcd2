"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction"), a pass on the float graph before calibration.

Two weighted ops in a row, ``producer -> [positively homogeneous ops] -> consumer``, compute the same
function when the producer's output channel ``c`` is divided by ``s_c > 0`` and the consumer's input
channel ``c`` multiplied by it, as long as everything between them commutes with a positive
per-channel scale: ``f(x / s) = f(x) / s``. That holds for no activation, RELU (fused or not),
LEAKY_RELU and PRELU with its slopes unchanged (``x / s < 0`` exactly when ``x < 0``, and either side
is linear), zero PAD and a MEAN over spatial axes; it does not hold for RELU6 (its clamp at 6 does not
scale), HARD_SWISH, SiLU, GELU... so no pair is formed across those.

``s_c = sqrt(r1_c / r2_c)``, with ``r1_c`` the producer's weight range of output channel ``c`` and
``r2_c`` the consumer's weight range of input channel ``c``, makes both ``sqrt(r1_c r2_c)``. Per-channel
int8 weights already give each output channel its own scale, so what this buys is elsewhere: the
producer's output is quantized with ONE scale per tensor, and a channel whose weights are 70x its
neighbours' (a BatchNorm-folded depthwise convolution of a pretrained MobileNet / PicoDet) also
produces activations 70x theirs, leaving the others a few int8 levels; equalized, the activation's
channels have comparable ranges. For a depthwise consumer, its per-channel weights absorb the scale
exactly; for a CONV_2D / FULLY_CONNECTED consumer, its input columns take it.

Pairs are equalized in graph order, and the whole pass is repeated so chains (conv -> depthwise ->
conv) settle: each step moves every channel's two ranges to their geometric mean, and a few sweeps
suffice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.runtime.ir import Graph, Op

# Weighted ops and the axes of their constant weight (input index 1): output channels, input channels.
# A DEPTHWISE_CONV_2D with depth multiplier 1 maps channel c to channel c: one axis for both.
WEIGHT_AXES = {
    "CONV_2D": (0, 3),  # filter [O, H, W, I]
    "DEPTHWISE_CONV_2D": (3, 3),  # filter [1, H, W, C]
    "FULLY_CONNECTED": (0, 1),  # weights [O, I]
}
# Fused activations through which a positive per-channel scale passes unchanged.
HOMOGENEOUS_FUSED = {"NONE", "RELU"}
SWEEPS = 8
# Producers whose channel ranges lie within this ratio are left alone: trained convolutions with
# ordinary BatchNorms span 2-6x, and equalizing them trades activation precision for consumer weight
# precision at a loss (measured on tests/models' U-Net: all-int8 SQNR 28.7 -> 28.2 dB); pretrained
# depthwise convolutions span 100-10000x, where it pays.
MIN_RANGE_RATIO = 8.0


@dataclass
class EqualizedPair:
    producer: str
    consumer: str
    between: list  # op types the scale passes through
    ratio_before: float  # largest / smallest producer channel range
    ratio_after: float = 0.0


@dataclass
class EqualizationReport:
    pairs: list = field(default_factory=list)

    def __str__(self):
        return f"cross-layer equalization: {len(self.pairs)} pairs of weighted ops"


def _is_grouped_conv(graph: Graph, op: Op) -> bool:
    """A CONV_2D whose filter has fewer input channels than its input (TFLite's grouped convolution)."""
    return op.type == "CONV_2D" and graph[op.inputs[1]].shape[3] != graph[op.inputs[0]].shape[-1]


def _has_constant_weights(graph: Graph, op: Op) -> bool:
    if op.type not in WEIGHT_AXES or len(op.inputs) < 2 or not graph[op.inputs[1]].is_constant:
        return False
    if graph[op.inputs[1]].dtype != np.float32 or _is_grouped_conv(graph, op):
        return False
    if len(op.inputs) > 2 and op.inputs[2] and not graph[op.inputs[2]].is_constant:
        return False
    if op.type == "DEPTHWISE_CONV_2D":  # depth multiplier 1: output channel c reads input channel c only
        return graph[op.inputs[1]].shape[3] == graph[op.inputs[0]].shape[-1]
    return True


def _passes_scale(graph: Graph, op: Op) -> bool:
    """Whether ``op`` (one data input, first) commutes with a positive per-channel scale of the last axis."""
    if op.type in ("RELU", "LEAKY_RELU"):
        return True
    if op.type == "PRELU":  # slopes per channel (or shared): unchanged under a positive scale
        return graph[op.inputs[1]].is_constant
    if op.type == "PAD":  # zero padding (PADV2's constant_values would not scale)
        return True
    if op.type == "MEAN":  # over spatial axes only: the channel axis stays last
        axes = graph[op.inputs[1]]
        rank = len(graph[op.inputs[0]].shape)
        return (axes.is_constant and rank - 1 not in {int(a) % rank for a in np.ravel(axes.data)}
                and len(graph[op.outputs[0]].shape) >= 1
                and graph[op.outputs[0]].shape[-1] == graph[op.inputs[0]].shape[-1])
    return False


def find_pairs(graph: Graph) -> list:
    """``(producer, consumer, ops between)`` for every weighted pair a per-channel scale can move across."""
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    pairs = []
    for producer in graph.ops:
        if not _has_constant_weights(graph, producer):
            continue
        if producer.options.get("fused_activation_function", "NONE") not in HOMOGENEOUS_FUSED:
            continue
        between, tensor = [], producer.outputs[0]
        while True:
            readers = consumers.get(tensor, [])
            if tensor in outputs or len(readers) != 1 or readers[0].inputs[0] != tensor:
                break
            reader = readers[0]
            if tensor in reader.inputs[1:]:
                break
            if _has_constant_weights(graph, reader):
                channels = graph[reader.inputs[1]].shape[WEIGHT_AXES[reader.type][1]]
                if channels == graph[producer.outputs[0]].shape[-1] and graph[tensor].shape[-1] == channels:
                    pairs.append((producer, reader, between))
                break
            if not _passes_scale(graph, reader):
                break
            between.append(reader)
            tensor = reader.outputs[0]
    return pairs


def channel_ranges(weights: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis but ``axis``."""
    other = tuple(a for a in range(weights.ndim) if a != axis)
    return np.max(np.abs(weights), axis=other)


def _scaled(weights: np.ndarray, axis: int, factors: np.ndarray) -> np.ndarray:
    shape = [1] * weights.ndim
    shape[axis] = -1
    return (weights.astype(np.float64) * factors.reshape(shape)).astype(np.float32)


def _set_constant(graph: Graph, op: Op, index: int, data: np.ndarray, readers: dict) -> None:
    """Give ``op``'s input ``index`` the values ``data``: in its own tensor when no other op reads it,
    else in a new constant (arrays are never changed in place: graph copies share them)."""
    name = op.inputs[index]
    if len(readers.get(name, [])) == 1 and name not in graph.outputs:
        graph[name].data = data.astype(graph[name].dtype)
    else:
        op.inputs[index] = graph.add_constant(name, data.astype(np.float32))
        readers.setdefault(op.inputs[index], []).append(op)


def equalize_pair(graph: Graph, producer: Op, consumer: Op, readers: dict, activation_range=None) -> np.ndarray:
    """Move a per-channel scale from ``producer``'s output channels to ``consumer``'s input channels;
    returns the factors ``s`` (producer divided by them, consumer multiplied). ``r1`` is the
    producer's weight range per output channel, or with ``activation_range`` (max |x| per channel of
    the consumer's input on calibration samples) that: the range that int8 shares across channels."""
    out_axis = WEIGHT_AXES[producer.type][0]
    in_axis = WEIGHT_AXES[consumer.type][1]
    w1 = graph[producer.inputs[1]].data
    w2 = graph[consumer.inputs[1]].data
    r1 = (channel_ranges(w1, out_axis) if activation_range is None else activation_range).astype(np.float64)
    r2 = channel_ranges(w2, in_axis).astype(np.float64)
    live = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] / r2[live])
    _set_constant(graph, producer, 1, _scaled(w1, out_axis, 1.0 / s), readers)
    if len(producer.inputs) > 2 and producer.inputs[2]:
        _set_constant(graph, producer, 2, (graph[producer.inputs[2]].data / s).astype(np.float32), readers)
    _set_constant(graph, consumer, 1, _scaled(w2, in_axis, s), readers)
    return s


def _range_ratio(graph: Graph, op: Op) -> float:
    ranges = channel_ranges(graph[op.inputs[1]].data, WEIGHT_AXES[op.type][0])
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.size else 1.0


def channel_absmax(graph: Graph, samples: dict, names, batch_size: int = 8) -> dict:
    """``{name: max |x| per channel (last axis)}`` of the float activations ``names`` over ``samples``."""
    from edgeq.runtime.interpreter import Interpreter

    names = set(names)
    found = {}

    def observe(name, value):
        if name in names and value is not None:
            value = np.abs(np.asarray(value, dtype=np.float32))
            peak = value.reshape(-1, value.shape[-1]).max(axis=0)
            found[name] = peak if name not in found else np.maximum(found[name], peak)

    run = Interpreter.from_graph(graph)
    total = next(iter(samples.values())).shape[0]
    for start in range(0, total, batch_size):
        run.run({n: samples[n][start:start + batch_size] for n in graph.inputs}, observe=observe)
    return found


def equalize_cross_layer(graph: Graph, samples: dict = None, sweeps: int = SWEEPS, batch_size: int = 8,
                         min_ratio: float = MIN_RANGE_RATIO) -> tuple:
    """A copy of ``graph`` with every equalizable pair whose producer's channel ranges span at least
    ``min_ratio`` equalized; returns (graph, EqualizationReport).

    With calibration ``samples``, each pair balances the consumer's input activation range per
    channel (measured) against the consumer's weight range, instead of the producer's weight range
    (Nagel et al.'s data-free proxy for it): what per-tensor activation quantization loses is set by
    the activations themselves, which the producer's input ranges and bias shape as well."""
    graph = graph.copy()
    pairs = [(p, c, b) for p, c, b in find_pairs(graph) if _range_ratio(graph, p) >= min_ratio]
    activations = None
    if samples is not None and pairs:
        activations = channel_absmax(graph, samples, [c.inputs[0] for _, c, _ in pairs], batch_size)
    report = EqualizationReport([EqualizedPair(str(p), str(c), [o.type for o in b], _range_ratio(graph, p))
                                 for p, c, b in pairs])
    readers = {}
    for op in graph.ops:
        for name in op.inputs:
            if name:
                readers.setdefault(name, []).append(op)
    for _ in range(sweeps):
        for producer, consumer, _between in pairs:
            measured = None if activations is None else activations.get(consumer.inputs[0])
            s = equalize_pair(graph, producer, consumer, readers, measured)
            if measured is not None:  # the activation is divided by s, exactly (homogeneous path)
                activations[consumer.inputs[0]] = measured / s
    for entry, (producer, _, _) in zip(report.pairs, pairs):
        entry.ratio_after = _range_ratio(graph, producer)
    graph.remove_unused()
    return graph, report
