"""Float islands for int8 models: which ops stay float so that int8 does not wreck a model's outputs.

Full int8 works for most convolutional classifiers, but real models have places where one int8 scale
cannot hold what flows through. Two automatic mechanisms find them (``choose_float_ops``):

* **Mixed-range joins.** TFLite's int8 CONCATENATION and PACK need every input to share the output's
  scale. When the joined inputs' calibrated ranges differ widely (a detector's box coordinates in
  pixels next to class probabilities in [0, 1]), the narrow input is left a handful of levels. Such a
  join stays float, and so does the data movement after it (reshapes, transposes, slices) up to the
  first op that computes, since those would share the one scale again.
* **Error-driven.** The int8 graph runs on calibration samples beside the float graph. While the
  worst graph output's SQNR is under the target, the op where the error grows most (the largest
  drop in SQNR from its inputs to its output) goes to float together with the producers of its
  inputs, so the tensor it reads is no longer quantized either: a softmax behind an attention mask,
  a LayerNorm's variance, GELU outliers. A move is kept only if the outputs get better; the loop
  stops at the target or after ``max_moves`` kept moves.

TFLite's 16x8 mode (int16 activations) is the other answer to the same problem; edgeq's runtime has
no int16 kernels, so float islands are the mechanism here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgeq.runtime.ir import Graph

# Ops whose int8 kernels require all inputs and the output to share one scale, and join inputs.
JOINS = {"CONCATENATION", "PACK"}
# Ops that only move or select data: in int8 they share one scale between input and output.
DATA_MOVEMENT = {
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V",
    "UNPACK", "GATHER", "TILE", "BROADCAST_TO", "PAD", "PADV2", "CONCATENATION", "PACK",
}
# A join whose widest input range is more than this many times its narrowest leaves the narrow
# input fewer than 256 / 16 = 16 int8 levels.
RANGE_RATIO_LIMIT = 16.0
DEFAULT_MIN_SQNR_DB = 20.0
DEFAULT_MAX_MOVES = 8
TRIALS_PER_MOVE = 3  # candidates tried per kept move, at most: each trial runs the int8 graph
ERROR_SAMPLES = 16  # calibration samples the error-driven search runs on, at most
REFERENCE_BYTES = 256 << 20  # the float values of every activation on those samples, at most


@dataclass
class FloatChoice:
    """The ops kept float (op key -> why); the outputs' worst SQNR with the mixed-range joins float,
    before the error-driven search, and at the end; how many ops the search moved to float."""

    reasons: dict = field(default_factory=dict)
    sqnr_before_search_db: Optional[float] = None
    sqnr_db: Optional[float] = None
    moved_by_search: int = 0


def op_key(op) -> str:
    """An op's identity that survives ``Graph.copy`` and quantization: its first output's name."""
    return op.outputs[0]


def _width(lo_hi) -> float:
    lo, hi = lo_hi
    return max(float(hi), 0.0) - min(float(lo), 0.0)


def mixed_range_tails(graph: Graph, ranges: dict, limit: float = RANGE_RATIO_LIMIT) -> dict:
    """``{op key: reason}`` for joins of widely different ranges and the data movement after them."""
    consumers = graph.consumers()
    chosen: dict = {}
    for op in graph.ops:
        if op.type not in JOINS:
            continue
        widths = [_width(ranges[n]) for n in op.inputs if n in ranges and not graph[n].is_constant]
        widths = [w for w in widths if w > 0]
        if len(widths) < 2 or max(widths) <= limit * min(widths):
            continue
        ratio = max(widths) / min(widths)
        chosen[op_key(op)] = (f"joins ranges {ratio:.0f}x apart: one int8 scale would leave the narrow "
                              f"input {256 / ratio:.0f} levels")
        frontier = list(op.outputs)
        while frontier:
            for user in consumers.get(frontier.pop(), []):
                if user.type in DATA_MOVEMENT and op_key(user) not in chosen:
                    chosen[op_key(user)] = f"moves data of the float join {op}"
                    frontier.extend(user.outputs)
    return chosen


def _float_values(float_graph: Graph, batch: dict, names: Optional[set] = None) -> dict:
    """The float graph's value of every activation (or of ``names``) on ``batch``."""
    from edgeq.runtime.interpreter import Interpreter

    values = {n: np.asarray(v, dtype=np.float32) for n, v in batch.items()}

    def observe(name, value):
        if names is None or name in names:
            values[name] = np.array(value, dtype=np.float32)

    Interpreter.from_graph(float_graph).run(batch, observe=observe)
    return values


def tensor_sqnr(int8_graph: Graph, batches: list, names: Optional[set] = None) -> dict:
    """SQNR in dB of the activations (all, or ``names``) that the int8 graph holds under their float
    name, int8 or float; ``batches`` pairs each input batch with the float values on it."""
    from edgeq.converter.quant_debug import error_totals, power_ratio_db

    return {name: power_ratio_db(signal, noise)
            for name, (signal, noise, _) in error_totals(int8_graph, batches, names).items()}


def _worst_output(sqnr: dict, graph: Graph) -> float:
    # A graph output may be renamed inside the int8 graph; its float name is what was observed.
    values = [sqnr[n] for n in graph.outputs if n in sqnr]
    return min(values) if values else float("inf")


def _candidates(float_graph: Graph, sqnr: dict, kept_float: set, tried: set) -> list:
    """(drop in dB, op) for int8 ops, the largest drop first."""
    producers = float_graph.producers()
    ranked = []
    for op in float_graph.ops:
        key = op_key(op)
        if key in kept_float or key in tried or key not in sqnr:
            continue
        activations = [n for n in op.inputs if n and (n in producers or n in float_graph.inputs)]
        inputs = [sqnr.get(n, float("inf")) for n in activations]
        best_input = min(inputs, default=float("inf"))
        if not np.isfinite(best_input):
            best_input = 120.0  # a float graph input: only this op's own rounding counts
        ranked.append((best_input - sqnr[key], op))
    ranked.sort(key=lambda item: -item[0])
    return ranked


def _move(op, float_graph: Graph) -> set:
    """The op and the producers of its activation inputs: its inputs then need no quantizing."""
    producers = float_graph.producers()
    keys = {op_key(op)}
    for name in op.inputs:
        producer = producers.get(name) if name else None
        if producer is not None:
            keys.add(op_key(producer))
    return keys


def choose_float_ops(float_graph: Graph, ranges: dict, samples: dict, quantize, min_sqnr_db: float =
                     DEFAULT_MIN_SQNR_DB, max_moves: int = DEFAULT_MAX_MOVES, progress: bool = False,
                     batch_size: Optional[int] = None):
    """The int8 graph with float islands where int8 would wreck the outputs, and a ``FloatChoice``.

    ``quantize(keep_float: dict) -> Graph`` makes the int8 graph with the given ops kept float;
    ``samples`` are calibration samples (the first ``ERROR_SAMPLES`` are used), run ``batch_size``
    at a time (by default as ``converter.calibrate.batch_size_for`` says).
    """
    from edgeq.converter.calibrate import batch_size_for

    choice = FloatChoice(reasons=mixed_range_tails(float_graph, ranges))
    graph = quantize(choice.reasons)
    total = min(ERROR_SAMPLES, _samples_within(REFERENCE_BYTES, float_graph), len(next(iter(samples.values()))))
    step = batch_size or batch_size_for(float_graph, samples)
    inputs = [{n: samples[n][start:min(start + step, total)] for n in float_graph.inputs}
              for start in range(0, total, step)]
    # Most models meet the target: their outputs alone are compared, which is cheap.
    outputs = set(float_graph.outputs)
    batches = [(batch, _float_values(float_graph, batch, outputs)) for batch in inputs]
    choice.sqnr_before_search_db = choice.sqnr_db = _worst_output(tensor_sqnr(graph, batches, outputs), float_graph)
    if choice.sqnr_db >= min_sqnr_db or max_moves == 0:
        return graph, choice
    batches = [(batch, _float_values(float_graph, batch)) for batch in inputs]
    sqnr = tensor_sqnr(graph, batches)
    tried: set = set()
    moves = 0
    bar = _progress_bar(max_moves * TRIALS_PER_MOVE, progress)
    while choice.sqnr_db < min_sqnr_db and moves < max_moves and len(tried) < max_moves * TRIALS_PER_MOVE:
        ranked = _candidates(float_graph, sqnr, set(choice.reasons), tried)
        if not ranked or ranked[0][0] <= 0:
            break
        drop, op = ranked[0]
        tried.add(op_key(op))
        trial = dict(choice.reasons)
        for key in _move(op, float_graph) - set(trial):
            trial[key] = f"int8 error grows {drop:.1f} dB at {op}"
        trial_graph = quantize(trial)
        trial_sqnr = tensor_sqnr(trial_graph, batches)
        worst = _worst_output(trial_sqnr, float_graph)
        if bar is not None:
            bar.update(1)
        if worst <= choice.sqnr_db + 0.5:
            continue  # not worth a float island
        choice.moved_by_search += len(trial) - len(choice.reasons)
        choice.reasons, choice.sqnr_db, graph, sqnr = trial, worst, trial_graph, trial_sqnr
        moves += 1
    if bar is not None:
        bar.close()
    return graph, choice


def _samples_within(budget: int, graph: Graph) -> int:
    """How many samples' float activations fit in ``budget`` bytes (at least one)."""
    per_sample = sum(int(np.prod(t.shape[1:], dtype=np.int64)) * 4
                     for t in graph.tensors.values() if t.data is None and t.shape)
    return max(1, budget // max(per_sample, 1))


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="choosing float islands", unit="trial", leave=False)
