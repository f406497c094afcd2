"""Float islands for int8 models: which ops stay float so that int8 does not wreck a model's outputs.

Full int8 works for most convolutional classifiers, but real models have places where one int8 scale
cannot hold what flows through. Two automatic mechanisms find them (``choose_float_ops``):

* **Mixed-range joins.** TFLite's int8 CONCATENATION and PACK need every input to share the output's
  scale. When the joined inputs' calibrated ranges differ widely (a detector's box coordinates in
  pixels next to class probabilities in [0, 1]), the narrow input is left a handful of levels. Such a
  join stays float, and so does the data movement after it (reshapes, transposes, slices) up to the
  first op that computes, since those would share the one scale again.
* **Error-driven.** The int8 graph runs on calibration samples beside the float graph. While the
  worst graph output's SQNR is under the target, ops where the error grows most (the largest drop
  in SQNR from their inputs to their output) go to float together with the producers of their
  inputs, so the tensors they read are no longer quantized either: a softmax behind wide logits, a
  LayerNorm's variance, GELU outliers. A defect repeated in every layer of a transformer cannot be
  fixed one layer at a time (the other layers keep the outputs where they were), so a move takes
  every instance of a pattern at once: all int8 ops of the top candidate's role (its type and the
  types of the ops feeding it) whose drop is similar. Moves are ranked by the error they remove where they act (the sum of their ops' drops);
  one is kept when the outputs get better, the worst one or on average; the loop stops at the
  target, after ``max_moves`` kept moves or ``max_moves * TRIALS_PER_MOVE`` trials. What was tried
  is reported (``FloatChoice.trials``).

Whatever the search achieves, the outputs' SQNR is measured; under the target, the op where the
SQNR drops most is named (``FloatChoice.worst_op``), which is what a user looks at first.

**int16 islands** come first (``int16_islands=True``): a join or a move is first tried with int16
activations (TFLite's 16x8 kernels, int8 <-> int16 QUANTIZE at its edges, which LiteRT runs), so the
file stays integer-only; it goes to float only where int16 does not help enough. In TFLite's 16x8
mode itself (every activation int16), joins are float only when their ranges are
``RANGE_RATIO_LIMIT * 256`` apart.
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
# The search aims this far above the target: its figure is measured on the samples it chose its moves
# on, which flatters it (on tests/models/mobile_dwsep: 20.2 dB there, 19.9 dB on the evaluation images).
SEARCH_MARGIN_DB = 0.5
DEFAULT_MAX_MOVES = 8
TRIALS_PER_MOVE = 3  # candidates tried per kept move, at most: each trial runs the int8 graph
MIN_GAIN_DB = 0.5  # a move is worth its float ops when the outputs gain this much
LOSS_ALLOWED_DB = 0.5  # ... and no output loses more than this
PATTERN_SHARE = 0.5  # an op joins the top candidate's pattern when its drop is at least this share of the top's
MIN_DROP_DB = 1.0  # smaller drops are rounding, not a defect worth a float island
SQNR_CAP_DB = 120.0  # exact tensors (infinite SQNR) count as this much when gains are computed
# What an int8 tensor's own rounding leaves at best (8 bits, about 6 dB each). An op's drop is measured
# from at most this: below it is the op's own rounding, not a defect (an op reading a graph input or
# an exact padding would otherwise seem to lose 100 dB).
INT8_ROUNDING_SQNR_DB = 48.0
ERROR_SAMPLES = 16  # calibration samples the error-driven search runs on, at most
REFERENCE_BYTES = 256 << 20  # the float values of every activation on those samples, at most


@dataclass
class Trial:
    """One move the error-driven search tried: the ops it moved to float (op keys) and their type,
    the drop in dB at each, the SQNR they gained at their outputs, how the outputs' SQNR changed
    (the worst output's SQNR, and each output's on average), whether it was kept."""

    ops: list
    op_type: str
    drops_db: list
    local_gain_db: float  # the SQNR gain at the moved ops' outputs, on average: the error removed there
    worst_output_gain_db: float
    mean_output_gain_db: float
    kept: bool
    island: str = "float"  # what the ops were moved to: "float" or "int16"

    def describe(self) -> str:
        where = f"{self.op_type} '{self.ops[0]}'" if len(self.ops) == 1 else f"{len(self.ops)} {self.op_type} ops"
        return (f"{where} to {self.island} ({'kept' if self.kept else 'not kept'}: {self.local_gain_db:+.1f} dB "
                f"there, worst output {self.worst_output_gain_db:+.1f} dB)")

    def as_dict(self) -> dict:
        return {"ops": list(self.ops), "op_type": self.op_type, "island": self.island,
                "drops_db": [round(d, 2) for d in self.drops_db],
                "local_gain_db": round(self.local_gain_db, 2),
                "worst_output_gain_db": round(self.worst_output_gain_db, 2),
                "mean_output_gain_db": round(self.mean_output_gain_db, 2), "kept": self.kept}


@dataclass
class FloatChoice:
    """The ops kept float (op key -> why); the outputs' worst SQNR with the mixed-range joins float,
    before the error-driven search, and at the end; how many ops the search moved to float and the
    moves it tried; under the target, the op where the SQNR drops most and by how much."""

    reasons: dict = field(default_factory=dict)
    int16: dict = field(default_factory=dict)  # op key -> why, for the ops given int16 activations (islands)
    sqnr_before_search_db: Optional[float] = None
    sqnr_db: Optional[float] = None
    moved_by_search: int = 0
    trials: list = field(default_factory=list)
    worst_op: Optional[str] = None
    worst_op_drop_db: Optional[float] = None

    def search_summary(self) -> str:
        """What the error search tried, in a few words ("" when it tried nothing)."""
        if not self.trials:
            return ""
        kept = sum(t.kept for t in self.trials)
        return (f"the error search tried {len(self.trials)} move{'s' * (len(self.trials) != 1)} and kept {kept}: "
                + "; ".join(t.describe() for t in self.trials))


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


def _candidates(float_graph: Graph, sqnr: dict, kept_float: set, tried: set = frozenset()) -> list:
    """(drop in dB, op) for int8 ops, the largest drop first."""
    producers = float_graph.producers()
    ranked = []
    for op in float_graph.ops:
        key = op_key(op)
        if key in kept_float or key in tried or key not in sqnr:
            continue
        activations = [n for n in op.inputs if n and (n in producers or n in float_graph.inputs)]
        inputs = [sqnr.get(n, float("inf")) for n in activations]
        best_input = min(min(inputs, default=float("inf")), INT8_ROUNDING_SQNR_DB)
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


def op_role(op, float_graph: Graph, producers: dict) -> tuple:
    """What an op does where it is: its type and the types of the ops making its inputs (a constant
    or graph input counts as such). Every layer of a transformer repeats the same roles."""
    sources = []
    for name in op.inputs:
        if not name:
            continue
        producer = producers.get(name)
        sources.append(producer.type if producer is not None else
                       ("constant" if float_graph[name].is_constant else "input"))
    return (op.type, tuple(sorted(sources)))


def candidate_moves(ranked: list, grouped: set, float_graph: Graph) -> list:
    """Moves to try, as lists of (drop, op), the most error removed first: for each op role among the
    candidates, every op of that role whose drop is similar to its largest (one pattern, such as the
    softmax of every attention layer), and each leading op alone. ``grouped``: op keys whose
    pattern was tried already (they are then tried alone only)."""
    moves, seen = [], set()
    producers = float_graph.producers()
    roles = {op_key(op): op_role(op, float_graph, producers) for _, op in ranked}
    for drop, op in ranked:
        if drop < MIN_DROP_DB:
            break
        role = roles[op_key(op)]
        if role not in seen and op_key(op) not in grouped:
            seen.add(role)
            pattern = [(d, o) for d, o in ranked if roles[op_key(o)] == role
                       and d >= max(drop * PATTERN_SHARE, MIN_DROP_DB) and op_key(o) not in grouped]
            if len(pattern) > 1:
                moves.append(pattern)
        moves.append([(drop, op)])
    moves.sort(key=lambda move: -sum(d for d, _ in move))  # stable: a pattern before its leading op
    return moves


def _capped(value: float) -> float:
    return float(np.clip(value, -SQNR_CAP_DB, SQNR_CAP_DB))


def output_gains(before: dict, after: dict, graph: Graph) -> list:
    """Each graph output's SQNR gain in dB from ``before`` to ``after`` (per-tensor SQNR dicts)."""
    return [_capped(after.get(n, float("inf"))) - _capped(before.get(n, float("inf"))) for n in graph.outputs]


def choose_float_ops(float_graph: Graph, ranges: dict, samples: dict, quantize, min_sqnr_db: float =
                     DEFAULT_MIN_SQNR_DB, max_moves: int = DEFAULT_MAX_MOVES, progress: bool = False,
                     batch_size: Optional[int] = None, search: bool = True, int16_islands: bool = False,
                     float_islands: bool = True, join_limit: float = RANGE_RATIO_LIMIT):
    """The int8 graph with float islands where int8 would wreck the outputs, and a ``FloatChoice``.

    ``quantize(keep_float: dict) -> Graph`` makes the int8 graph with the given ops kept float;
    ``samples`` are calibration samples (the first ``ERROR_SAMPLES`` are used), run ``batch_size``
    at a time (by default as ``converter.calibrate.batch_size_for`` says). ``search=False`` keeps no
    op float: the outputs' SQNR (and under ``min_sqnr_db`` the worst op) is only measured.
    ``int16_islands``: try every remedy with int16 activations first (``quantize(keep_float, keep_int16)``
    is then called with the int16 ops too); ``float_islands=False`` tries int16 islands only, so the
    file stays integer-only. ``join_limit``: the range ratio from which a join is a remedy at once.
    """
    from edgeq.converter.calibrate import batch_size_for

    choice = FloatChoice()
    for key, reason in (mixed_range_tails(float_graph, ranges, join_limit) if search else {}).items():
        if int16_islands and _int16_capable(float_graph, {key}):
            choice.int16[key] = reason.replace("one int8 scale would leave", "int8 would leave") + "; int16 island"
        elif float_islands:
            choice.reasons[key] = reason
    graph = _quantized(quantize, choice.reasons, choice.int16)
    total = min(ERROR_SAMPLES, _samples_within(REFERENCE_BYTES, float_graph), len(next(iter(samples.values()))))
    step = batch_size or batch_size_for(float_graph, samples)
    inputs = [{n: samples[n][start:min(start + step, total)] for n in float_graph.inputs}
              for start in range(0, total, step)]
    # Most models meet the target: their outputs alone are compared, which is cheap.
    outputs = set(float_graph.outputs)
    batches = [(batch, _float_values(float_graph, batch, outputs)) for batch in inputs]
    choice.sqnr_before_search_db = choice.sqnr_db = _worst_output(tensor_sqnr(graph, batches, outputs), float_graph)
    if choice.sqnr_db >= min_sqnr_db:
        return graph, choice
    batches = [(batch, _float_values(float_graph, batch)) for batch in inputs]
    sqnr = tensor_sqnr(graph, batches)
    if search and max_moves > 0:
        graph, sqnr = _search(float_graph, quantize, batches, choice, graph, sqnr, min_sqnr_db, max_moves, progress,
                              int16_islands, float_islands)
    if choice.sqnr_db < min_sqnr_db:
        ranked = _candidates(float_graph, sqnr, set(choice.reasons) | set(choice.int16))
        if ranked:
            choice.worst_op_drop_db, worst = ranked[0]
            choice.worst_op = str(worst)
    return graph, choice


def _quantized(quantize, keep_float: dict, keep_int16: dict) -> Graph:
    return quantize(keep_float, keep_int16) if keep_int16 else quantize(keep_float)


def _int16_capable(float_graph: Graph, keys: set) -> bool:
    """Whether every op of ``keys`` has an int16 form (so that the move can be an int16 island)."""
    from edgeq.converter.quantize import INT16_RULES

    by_key = {op_key(op): op for op in float_graph.ops}
    return all(key in by_key and by_key[key].type in INT16_RULES for key in keys)


def _search(float_graph: Graph, quantize, batches: list, choice: FloatChoice, graph: Graph, sqnr: dict,
            min_sqnr_db: float, max_moves: int, progress: bool, int16_islands: bool = False,
            float_islands: bool = True) -> tuple:
    """The error-driven moves (see the module's docstring); updates ``choice``, returns (graph, sqnr)."""
    budget = max_moves * TRIALS_PER_MOVE
    tried: set = set()  # ops tried alone
    grouped: set = set()  # ops whose pattern was tried
    moves = 0
    bar = _progress_bar(budget, progress)
    while choice.sqnr_db < min_sqnr_db and moves < max_moves and len(choice.trials) < budget:
        ranked = _candidates(float_graph, sqnr, set(choice.reasons) | set(choice.int16), tried)
        kept = False
        for move in candidate_moves(ranked, grouped, float_graph)[:TRIALS_PER_MOVE]:
            if len(choice.trials) >= budget:
                break
            if len(move) > 1:
                grouped.update(op_key(op) for _, op in move)
            else:
                tried.add(op_key(move[0][1]))
            moved = set().union(*(_move(op, float_graph) for _, op in move))
            islands = (["int16"] if int16_islands and _int16_capable(float_graph, moved) else []) + \
                (["float"] if float_islands else [])
            for island in islands:
                if len(choice.trials) >= budget:
                    break
                trial, trial_int16 = dict(choice.reasons), dict(choice.int16)
                target = trial_int16 if island == "int16" else trial
                for drop, op in move:
                    for key in _move(op, float_graph) - set(trial) - (set(trial_int16) if island == "int16" else set()):
                        target[key] = f"int8 error grows {drop:.1f} dB at {op}"
                        if island == "float":
                            trial_int16.pop(key, None)
                trial_graph = _quantized(quantize, trial, trial_int16)
                trial_sqnr = tensor_sqnr(trial_graph, batches)
                gains = output_gains(sqnr, trial_sqnr, float_graph)
                worst_gain = _capped(_worst_output(trial_sqnr, float_graph)) - _capped(choice.sqnr_db)
                kept = (min(gains) >= -LOSS_ALLOWED_DB
                        and (worst_gain >= MIN_GAIN_DB or float(np.mean(gains)) >= MIN_GAIN_DB))
                keys = [op_key(op) for _, op in move]
                local = float(np.mean([_capped(trial_sqnr.get(k, float("inf"))) - _capped(sqnr[k]) for k in keys]))
                choice.trials.append(Trial(keys, move[0][1].type, [d for d, _ in move], local, worst_gain,
                                           float(np.mean(gains)), kept, island))
                if bar is not None:
                    bar.update(1)
                if kept:
                    choice.moved_by_search += (len(trial) + len(trial_int16)) - (len(choice.reasons) + len(choice.int16))
                    choice.reasons, choice.int16, graph, sqnr = trial, trial_int16, trial_graph, trial_sqnr
                    choice.sqnr_db = _worst_output(sqnr, float_graph)
                    moves += 1
                    break
            if kept:
                break
        if not kept and not candidate_moves(_candidates(float_graph, sqnr, set(choice.reasons) | set(choice.int16),
                                                        tried), grouped, float_graph):
            break
    if bar is not None:
        bar.close()
    return graph, sqnr


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
