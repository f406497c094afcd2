"""Where every activation lives in one shared buffer: a greedy, lifetime-based arena plan.

The idea is TensorFlow Lite Micro's greedy memory planner: each non-constant tensor lives from the op
that writes it (or from the start, for a graph input) to the last op that reads it (or to the end, for
a graph output). Tensors are placed largest first, each at the lowest offset where it overlaps no
already-placed tensor whose lifetime overlaps its own. The arena is the highest end offset. The plan
is a pure function of the graph, so a runtime can share its activation buffers with the same offsets.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeq.runtime.ir import Graph

# TFLite Micro rounds every arena buffer to this many bytes.
ARENA_ALIGNMENT = 16


@dataclass(frozen=True)
class Lifetime:
    """One activation: its name, its (aligned) size in bytes, and the first and last op steps it is
    live at, both inclusive."""

    name: str
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: "Lifetime") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class ArenaPlan:
    """Offsets (bytes from the arena's start) of every activation, and the arena size they need."""

    lifetimes: tuple
    offsets: dict
    size: int

    @property
    def sum_of_sizes(self) -> int:
        return sum(lifetime.size for lifetime in self.lifetimes)

    def peak_live_bytes(self) -> int:
        """The lower bound no plan can beat: the most bytes live at one step."""
        steps = {step for lifetime in self.lifetimes for step in (lifetime.first, lifetime.last)}
        return max((sum(t.size for t in self.lifetimes if t.first <= step <= t.last) for step in steps), default=0)


def aligned(size: int, alignment: int = ARENA_ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


def tensor_lifetimes(graph: Graph, alignment: int = ARENA_ALIGNMENT) -> list:
    """The lifetime of every activation of ``graph`` (every tensor that is not constant data), over
    the op steps in graph order."""
    last_step = max(len(graph.ops) - 1, 0)
    first, last = {}, {}
    for name in graph.inputs:
        first[name] = last[name] = 0
    for step, op in enumerate(graph.ops):
        for name in op.inputs:
            if name and name in graph.tensors and not graph[name].is_constant:
                first.setdefault(name, step)
                last[name] = step
        for name in op.outputs:
            first.setdefault(name, step)
            last[name] = max(last.get(name, step), step)
    for name in graph.outputs:
        if name in first:
            last[name] = last_step
    return [Lifetime(name, aligned(graph[name].nbytes, alignment), first[name], last[name])
            for name in first if not graph[name].is_constant]


def plan_arena(lifetimes) -> ArenaPlan:
    """Greedy placement: largest first (earlier first among equals), each at the lowest offset that
    overlaps no placed tensor live at the same time."""
    order = sorted(lifetimes, key=lambda t: (-t.size, t.first, t.name))
    placed: list = []  # (offset, lifetime)
    offsets = {}
    for lifetime in order:
        offset = _lowest_free_offset(lifetime, placed)
        offsets[lifetime.name] = offset
        placed.append((offset, lifetime))
    size = max((offset + lifetime.size for offset, lifetime in placed), default=0)
    return ArenaPlan(tuple(lifetimes), offsets, size)


def _lowest_free_offset(lifetime: Lifetime, placed: list) -> int:
    busy = sorted((offset, offset + other.size) for offset, other in placed if other.overlaps_in_time(lifetime))
    candidate = 0
    for start, end in busy:
        if candidate + lifetime.size <= start:
            break
        candidate = max(candidate, end)
    return candidate


def graph_arena(graph: Graph) -> ArenaPlan:
    return plan_arena(tensor_lifetimes(graph))
