"""Pruning of the float IR: magnitude (zeroed weights), structured (removed channels), and the
least-squares reconstruction that keeps a model accurate without training: channels chosen by the
reconstruction error their removal causes (ThiNet's greedy selection, with Optimal Brain Surgeon's
refit of the rest), removals spread over the layers by that measured error, and every changed layer
refitted in order on the pruned model's own activations towards the unpruned model's outputs (He et
al. 2017, "Channel Pruning for Accelerating Very Deep Neural Networks").

TFLite stores weights densely, so zeroed weights only make the file smaller once it is compressed
(``compressed_size``: what an OTA update or a flash compressor sees) or stored in TFLite's sparse
encoding (``encode_sparse_weights``). Removed channels make the dense file, the RAM and the
run time smaller. Every function takes a float Graph and returns a new one; arrays are never
changed in place (``Graph.copy`` shares them).
"""
from __future__ import annotations

import dataclasses
import gzip
import heapq
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import numpy as np

from edgeq.runtime.ir import Graph, ModelError, Op, Tensor

MAGNITUDE_SCOPES = ("global", "layer")
CHANNEL_IMPORTANCES = ("l1", "activation", "reconstruction")
CHANNEL_ALLOCATIONS = ("uniform", "sensitivity")
# Ops whose outputs are a weighted sum over their inputs: their weights are what pruning removes.
WEIGHTED_OPS = ("CONV_2D", "FULLY_CONNECTED")
# A ridge term relative to the mean diagonal of XᵀX keeps the refit stable when calibration
# activations are few or collinear (ReLU6 outputs often are).
RECONSTRUCTION_RIDGE = 1e-3
RECONSTRUCTION_MAX_ROWS = 16_384
CROSS_VALIDATION_FOLDS = 4
# A depthwise channel has KH·KW + 1 unknowns: a few thousand rows pin them down.
DEPTHWISE_MAX_ROWS = 4096


# -- reports ------------------------------------------------------------------------------------

@dataclass
class LayerPruning:
    """One layer's result: its weight tensor, the share of zero weights, its output channels."""

    layer: str
    op_type: str
    weights: int
    sparsity_before: float
    sparsity_after: float
    channels_before: int
    channels_after: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PruneReport:
    method: str
    layers: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # channel pruning: producers pruned together
    notes: list = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """The share of zero weights over the layers pruning looked at."""
        total = sum(layer.weights for layer in self.layers)
        zeros = sum(layer.weights * layer.sparsity_after for layer in self.layers)
        return zeros / total if total else 0.0

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "layers": [layer.as_dict() for layer in self.layers],
            "groups": self.groups,
            "notes": self.notes,
        }

    def format_lines(self) -> list:
        if self.groups:
            before = sum(g["channels_before"] for g in self.groups)
            after = sum(g["channels_after"] for g in self.groups)
            lines = [f"{self.method} pruning: {len(self.groups)} groups keep {after} of {before} channels"]
        else:
            lines = [f"{self.method} pruning: {self.sparsity:.1%} of the weights in the layers shown are zero"]
        for layer in self.layers:
            channels = (f"channels {layer.channels_before} -> {layer.channels_after}"
                        if layer.channels_before != layer.channels_after else f"channels {layer.channels_after}")
            lines.append(f"  {layer.op_type:17} {layer.layer[:56]:56} sparsity {layer.sparsity_after:6.1%}  {channels}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return lines


def compressed_size(content: bytes) -> int:
    """Bytes after gzip -9: zeroed weights only pay off in a dense file once it is compressed."""
    return len(gzip.compress(content, 9))


def multiply_accumulates(graph: Graph) -> int:
    """Multiply-accumulates of one inference through the convolutions and fully connected layers."""
    total = 0
    for op in graph.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        weights = graph[op.inputs[1]].shape
        outputs = int(np.prod(graph[op.outputs[0]].shape))
        if op.type == "CONV_2D":
            total += outputs * int(np.prod(weights[1:]))
        elif op.type == "DEPTHWISE_CONV_2D":
            total += outputs * weights[1] * weights[2]
        else:
            total += outputs * weights[1]
    return total


def _zero_share(data: np.ndarray) -> float:
    return float(np.mean(data == 0)) if data.size else 0.0


def _weighted_ops(graph: Graph, op_types) -> list:
    """Ops of ``op_types`` with constant float weights, in execution order."""
    return [
        op for op in graph.ops
        if op.type in op_types and len(op.inputs) > 1 and graph[op.inputs[1]].is_constant
        and graph[op.inputs[1]].dtype.kind == "f"
    ]


def _set_data(graph: Graph, name: str, data: np.ndarray) -> None:
    """Give tensor ``name`` a new array (and shape): arrays may be shared with other graphs."""
    tensor = graph[name]
    graph.tensors[name] = dataclasses.replace(tensor, shape=data.shape, data=data.astype(tensor.dtype), sparsity=None)


# -- magnitude pruning --------------------------------------------------------------------------

def prune_magnitude(graph: Graph, sparsity: float, scope: str = "global", include_edges: Optional[bool] = None,
                    include_depthwise: bool = False, calibration_samples: Optional[dict] = None) -> tuple:
    """Zero the ``sparsity`` share of smallest-magnitude weights; returns (graph, PruneReport).

    ``scope="global"``: one magnitude threshold across the layers (layers with many small weights
    lose more); ``"layer"``: every layer reaches ``sparsity``. The first and last weighted layers
    (which see the raw input and produce the output, and are small) are left alone unless
    ``include_edges`` (by default: when the pruned weights are refitted, which absorbs the loss there
    too); depthwise filters (9 weights per channel) only with ``include_depthwise``.
    With ``calibration_samples`` the weights that remain are refitted (``refit_layers``: masked least
    squares per output channel, zeros stay zero), and so are the layers after them.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ModelError(f"pruning sparsity must be in [0, 1), got {sparsity}")
    if scope not in MAGNITUDE_SCOPES:
        raise ModelError(f"unknown pruning scope {scope!r}; choose one of {', '.join(MAGNITUDE_SCOPES)}")
    if include_edges is None:
        include_edges = calibration_samples is not None
    original = graph
    graph = graph.copy()
    every_layer = _weighted_ops(graph, WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",))
    edges = {id(every_layer[0]), id(every_layer[-1])} if every_layer and not include_edges else set()
    op_types = WEIGHTED_OPS + (("DEPTHWISE_CONV_2D",) if include_depthwise else ())
    targets = [op for op in _weighted_ops(graph, op_types) if id(op) not in edges]
    names = list(dict.fromkeys(op.inputs[1] for op in targets))  # a shared weight tensor once
    before = {name: _zero_share(graph[name].data) for name in names}
    if scope == "global" and names:
        magnitudes = np.concatenate([np.abs(graph[name].data).reshape(-1) for name in names])
        keep_global = _keep_largest(magnitudes, sparsity)
        start = 0
        for name in names:
            size = graph[name].data.size
            keep = keep_global[start:start + size].reshape(graph[name].shape)
            _set_data(graph, name, np.where(keep, graph[name].data, 0))
            start += size
    else:
        for name in names:
            data = graph[name].data
            keep = _keep_largest(np.abs(data).reshape(-1), sparsity).reshape(data.shape)
            _set_data(graph, name, np.where(keep, data, 0))
    op_of = {op.inputs[1]: op for op in targets}
    if calibration_samples is not None and names:
        masks = {name: graph[name].data != 0 for name in names}
        with _single_threaded_blas():
            refit_layers(original, graph, calibration_samples, {id(op) for op in targets}, masks)
    report = PruneReport(f"magnitude ({scope}{', reconstructed' if calibration_samples is not None else ''})")
    for name in names:
        channels = graph[name].shape[0] if op_of[name].type != "DEPTHWISE_CONV_2D" else graph[name].shape[-1]
        report.layers.append(LayerPruning(name, op_of[name].type, graph[name].data.size, before[name],
                                          _zero_share(graph[name].data), channels, channels))
    if edges:
        report.notes.append("first and last weighted layers left dense (include_edges=True prunes them)")
    return graph, report


def _keep_largest(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """A mask keeping all but the ``floor(sparsity * n)`` smallest values (ties broken by position)."""
    drop = int(np.floor(sparsity * magnitudes.size))
    keep = np.ones(magnitudes.size, bool)
    if drop > 0:
        keep[np.argpartition(magnitudes, drop - 1, kind="introselect")[:drop]] = False
    return keep


# -- TFLite's sparse encoding -------------------------------------------------------------------

def csr_encoding(data: np.ndarray) -> dict:
    """SparsityParameters storing ``data`` as CSR over its last axis: every leading dim dense, the
    last one SPARSE_CSR (array_segments per row, array_indices = the columns of the non-zeros)."""
    rows = data.reshape(-1, data.shape[-1]) != 0
    segments = np.concatenate([[0], np.cumsum(rows.sum(axis=1))])
    return {
        "traversal_order": list(range(data.ndim)),
        "block_map": [],
        "dim_metadata": [{"format": "DENSE", "dense_size": int(d)} for d in data.shape[:-1]]
        + [{"format": "SPARSE_CSR", "array_segments": segments, "array_indices": np.nonzero(rows)[1]}],
    }


def _index_bytes(largest: int) -> int:
    return 1 if largest < 1 << 8 else 2 if largest < 1 << 16 else 4


def csr_stored_bytes(data: np.ndarray) -> int:
    """Bytes of ``data`` in ``csr_encoding`` (values plus the narrowest index vectors the writer picks)."""
    nonzero = int(np.count_nonzero(data))
    rows = data.size // data.shape[-1]
    return (nonzero * data.dtype.itemsize + nonzero * _index_bytes(data.shape[-1] - 1)
            + (rows + 1) * _index_bytes(nonzero))


def encode_sparse_weights(graph: Graph) -> tuple:
    """Store CONV_2D / FULLY_CONNECTED float weights in TFLite's sparse (CSR) encoding where that is
    smaller, each expanded by a DENSIFY op; returns (graph, names of the encoded tensors).

    The DENSIFY op is what makes it portable: LiteRT's XNNPACK delegate (its default) reads a
    sparse FULLY_CONNECTED weight handed straight to the op as if it were dense and computes wrong
    outputs, while DENSIFY + dense weights run everywhere. int8 weights behind DENSIFY fail in
    LiteRT's default interpreter ("failed to delegate FULLY_CONNECTED node ... (TfLiteXNNPackDelegate)
    failed to prepare"), so only float models are encoded.
    """
    graph = graph.copy()
    encoded = []
    for op in list(graph.ops):
        if op.type not in WEIGHTED_OPS or len(op.inputs) < 2 or not op.inputs[1]:
            continue
        name = op.inputs[1]
        weights = graph[name]
        if not weights.is_constant:
            continue
        if weights.dtype != np.float32 or weights.quant is not None:
            raise ModelError(
                f"sparse encoding works on float32 weights only; '{name}' is {weights.dtype} "
                "(LiteRT's default interpreter cannot run int8 weights behind DENSIFY)"
            )
        if csr_stored_bytes(weights.data) >= weights.nbytes:
            continue
        sparse_name = graph.unique_name(f"{name}/sparse")
        graph.add_tensor(Tensor(sparse_name, weights.shape, weights.dtype, weights.data, None, csr_encoding(weights.data)))
        dense_name = graph.add_activation(f"{name}/densified", weights.shape)
        densify = Op("DENSIFY", [sparse_name], [dense_name], name=f"densify {name}")
        for user in graph.ops:
            user.inputs = [dense_name if n == name else n for n in user.inputs]
        graph.ops.insert(graph.ops.index(op), densify)
        encoded.append(name)
    graph.remove_unused()
    return graph, encoded


# -- structured (channel) pruning: which channels belong together ---------------------------------

_ELEMENTWISE = {"ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "PRELU"}
_UNARY = {
    "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "ELU",
    "GELU", "ABS", "NEG", "EXP", "SQRT", "RSQRT", "SQUARE", "QUANTIZE", "DEQUANTIZE",
    "MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D",
}
_REDUCTIONS = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"}
_PADS = {"PAD", "PADV2", "MIRROR_PAD"}


class _ChannelSpaces:
    """Which tensors' last axes index the same channels, found by union-find over the graph.

    Every CONV_2D / FULLY_CONNECTED output opens a space; ops that keep channels apart (activations,
    pools, spatial reductions and padding, depthwise convolutions) carry it on; elementwise ops
    between activations (a residual ADD) join their inputs' spaces into one. A CONCATENATION on
    the channel axis or a flattening RESHAPE makes a derived space whose channels map back to its
    parents'. Any other use of a tensor (a graph output, a softmax over channels, an unknown op)
    blocks its space, and a blocked derived space blocks its parents: such channels stay.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.parent: dict = {}
        self.producers: dict = {}  # space -> CONV_2D / FC ops whose output channels it is
        self.derived: dict = {}    # space -> parent spaces
        self.blocked: set = set()
        self.space_of: dict = {}   # tensor name -> space
        self._build()

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def _new_space(self, parents=None) -> int:
        space = len(self.parent)
        self.parent[space] = space
        if parents is not None:
            self.derived[space] = parents
        return space

    def _join(self, spaces: list) -> int:
        roots = list(dict.fromkeys(self.find(s) for s in spaces))
        if any(root in self.derived for root in roots) and len(roots) > 1:
            for root in roots:
                self.blocked.add(root)
        for root in roots[1:]:
            self.parent[root] = roots[0]
            self.producers.setdefault(roots[0], []).extend(self.producers.pop(root, []))
            if root in self.blocked:
                self.blocked.add(roots[0])
        return roots[0]

    def _block(self, name: str) -> None:
        if name in self.space_of:
            self.blocked.add(self.find(self.space_of[name]))

    def _build(self) -> None:
        graph = self.graph
        for op in graph.ops:
            tracked = [n for n in op.inputs if n in self.space_of]
            carried = self._carry(op, tracked)
            if carried is False:
                for name in tracked:
                    self._block(name)
            elif carried is not None:
                for out in op.outputs:
                    self.space_of[out] = carried
        for name in graph.outputs:
            self._block(name)
        # blocking a derived space blocks the spaces it was made from
        changed = True
        while changed:
            changed = False
            for space, parents in self.derived.items():
                if self.find(space) in self.blocked:
                    for p in parents:
                        if self.find(p) not in self.blocked:
                            self.blocked.add(self.find(p))
                            changed = True

    def _carry(self, op: Op, tracked: list):
        """The space of ``op``'s outputs; None when they carry no channels of interest; False when
        ``op`` uses a tracked tensor in a way that pins its channels."""
        graph = self.graph
        if op.type in WEIGHTED_OPS:
            if any(n in tracked for n in op.inputs[1:]):
                return False
            space = None
            if graph[op.inputs[1]].is_constant and graph[op.inputs[1]].dtype.kind == "f" and len(op.outputs) == 1:
                space = self._new_space()
                self.producers[space] = [op]
            return space
        if not tracked:
            return None
        first = graph[tracked[0]]
        channels = first.shape[-1] if first.shape else 0
        if op.type == "DEPTHWISE_CONV_2D":
            weights = graph[op.inputs[1]]
            if op.inputs[0] != tracked[0] or len(tracked) > 1 or not weights.is_constant or weights.shape[-1] != channels:
                return False
            return self.space_of[tracked[0]]
        if op.type in _UNARY and len(op.inputs) == 1:
            return self.space_of[tracked[0]]
        if op.type in _PADS:
            paddings = graph[op.inputs[1]].data if len(op.inputs) > 1 else None
            if op.inputs[0] != tracked[0] or len(tracked) > 1 or paddings is None or np.any(paddings[-1] != 0):
                return False
            return self.space_of[tracked[0]]
        if op.type in _REDUCTIONS:
            axes = graph[op.inputs[1]].data if len(op.inputs) > 1 else None
            rank = len(first.shape)
            if axes is None or np.any(np.asarray(axes) % rank == rank - 1) or op.inputs[0] != tracked[0]:
                return False
            return self.space_of[tracked[0]]
        if op.type in _ELEMENTWISE:
            out_shape = graph[op.outputs[0]].shape
            if any(graph[n].shape != out_shape for n in tracked):
                return False  # broadcasting between activations: channels do not line up one to one
            return self._join([self.space_of[n] for n in tracked])
        if op.type in ("RESHAPE", "SQUEEZE"):
            out_shape = graph[op.outputs[0]].shape
            if op.inputs[0] != tracked[0] or not out_shape:
                return False
            if out_shape[-1] == channels and out_shape[0] == first.shape[0]:
                return self.space_of[tracked[0]]  # leading axes regrouped, channels stay last
            if len(out_shape) == 2 and out_shape[0] == first.shape[0] and len(first.shape) > 2:
                return self._new_space([self.space_of[tracked[0]]])  # flatten of h, w, c
            return False
        if op.type == "CONCATENATION":
            rank = len(graph[op.outputs[0]].shape)
            if op.options.get("axis", 0) % rank != rank - 1:
                return False
            return self._new_space([self.space_of[n] for n in tracked])
        return False

    def groups(self) -> list:
        """Prunable groups: (producer ops) per unblocked space that has producers."""
        result = []
        for space, producers in self.producers.items():
            if self.find(space) == space and space not in self.blocked and producers:
                result.append(producers)
        return result


# -- structured pruning: choosing and removing channels -------------------------------------------

def channel_importance(graph: Graph, producers: list, importance: str, activations: Optional[dict]) -> np.ndarray:
    """One score per output channel of a group, summed over its producers: the L1 norm of each
    filter, or the mean |activation| of the channel on calibration samples."""
    scores = 0.0
    for op in producers:
        if importance == "l1":
            weights = graph[op.inputs[1]].data
            scores = scores + np.abs(weights).reshape(weights.shape[0], -1).sum(axis=1)
        else:
            values = activations[op.outputs[0]]
            scores = scores + np.abs(values).reshape(-1, values.shape[-1]).mean(axis=0)
    return np.asarray(scores, dtype=np.float64)


def prune_channels(graph: Graph, ratio: float, importance: Optional[str] = None,
                   calibration_samples: Optional[dict] = None, reconstruct: bool = False,
                   allocation: Optional[str] = None, max_weights: Optional[int] = None) -> tuple:
    """Remove the ``ratio`` share of the output channels of the prunable groups of CONV_2D /
    FULLY_CONNECTED layers and rewire their consumers; returns (graph, PruneReport).

    Layers joined by a residual ADD form one group and lose the same channels; channels that reach a
    model output, or an op that mixes channels in a way this cannot follow, stay.
    ``importance`` ranks a group's channels: "l1" (filter norm), "activation" (mean |activation|), or
    "reconstruction" (the default with ``reconstruct``): greedily, the channel whose removal raises the
    reconstruction error of the layers reading it least, the rest refitted (ThiNet / OBS).
    ``allocation``: "uniform" (every group loses ``ratio`` of its channels) or "sensitivity" (the default
    with reconstruction importance): as many channels in all, taken where the measured reconstruction
    error grows least, each group keeping at least 1 - MAX_GROUP_PRUNING of its channels.
    ``max_weights`` (sensitivity allocation) replaces ``ratio`` by a budget: channels go, the cheapest
    error per weight saved first, until at most that many weights remain (``weight_count``).
    ``reconstruct`` then refits every layer after a removed channel, in order, on the pruned model's
    own activations towards the unpruned model's outputs (``refit_layers``).
    "activation", "reconstruction" and ``reconstruct`` need ``calibration_samples`` ({input name:
    samples on axis 0}, in the graph's layout).
    """
    if not 0.0 <= ratio < 1.0:
        raise ModelError(f"channel pruning ratio must be in [0, 1), got {ratio}")
    if importance is None:
        importance = "reconstruction" if reconstruct or max_weights is not None else "l1"
    if importance not in CHANNEL_IMPORTANCES:
        raise ModelError(f"unknown channel importance {importance!r}; choose one of {', '.join(CHANNEL_IMPORTANCES)}")
    if allocation is None:
        allocation = "sensitivity" if importance == "reconstruction" else "uniform"
    if allocation not in CHANNEL_ALLOCATIONS:
        raise ModelError(f"unknown channel allocation {allocation!r}; choose one of {', '.join(CHANNEL_ALLOCATIONS)}")
    if max_weights is not None and allocation != "sensitivity":
        raise ModelError("a weight budget is spread by measured sensitivity: it needs allocation 'sensitivity'")
    if allocation == "sensitivity" and importance != "reconstruction":
        raise ModelError("sensitivity allocation measures reconstruction error: it needs importance 'reconstruction'")
    if (importance != "l1" or reconstruct) and calibration_samples is None:
        raise ModelError(f"{importance} importance and reconstruction need calibration samples")
    original = graph
    graph = graph.copy()
    spaces = _ChannelSpaces(graph)
    groups = spaces.groups()
    with _single_threaded_blas():
        orders, removals = _channel_orders(graph, spaces, groups, ratio, importance, allocation, calibration_samples,
                                           max_weights)
    kept_by_producer = {}
    label = ", ".join([importance] + ([allocation] if allocation != "uniform" else [])
                      + (["reconstructed"] if reconstruct else []))
    report = PruneReport(f"channel ({label})")
    for producers, order, remove in zip(groups, orders, removals):
        kept = np.sort(np.asarray(order[remove:], dtype=np.int64))
        for op in producers:
            kept_by_producer[id(op)] = kept
        report.groups.append({"layers": [op.outputs[0] for op in producers], "channels_before": len(order),
                              "channels_after": int(kept.size), "kept": kept.tolist()})
    changed_inputs, kept_of = _remove_channels(graph, kept_by_producer)
    if reconstruct and changed_inputs:
        with _single_threaded_blas():
            refit_layers(original, graph, calibration_samples, {id(op) for op, _ in changed_inputs}, kept_of=kept_of)
    for op in _weighted_ops(graph, WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",)):
        axis = -1 if op.type == "DEPTHWISE_CONV_2D" else 0
        before = original[op.inputs[1]].shape[axis] if op.inputs[1] in original.tensors else graph[op.inputs[1]].shape[axis]
        weights = graph[op.inputs[1]].data
        report.layers.append(LayerPruning(op.outputs[0], op.type, weights.size, _zero_share(weights),
                                          _zero_share(weights), before, weights.shape[axis]))
    report.notes.append(f"{len(groups)} groups pruned; {len(spaces.blocked)} channel sets kept whole "
                        "(model outputs or ops whose channels cannot be followed)")
    return graph, report


def _channel_orders(graph: Graph, spaces: _ChannelSpaces, groups: list, ratio: float, importance: str,
                    allocation: str, samples: Optional[dict], max_weights: Optional[int] = None) -> tuple:
    """Per group: its channels, the first to remove first, and how many to remove."""
    sizes = [graph[producers[0].outputs[0]].shape[-1] for producers in groups]
    uniform = [min(int(np.floor(ratio * size)), size - 1) for size in sizes]
    if importance != "reconstruction":
        activations = None
        if importance == "activation":
            from edgeq.runtime.interpreter import Interpreter

            wanted = {op.outputs[0] for producers in groups for op in producers}
            activations = Interpreter.from_graph(graph).run(samples, keep=wanted)
        orders = [_least_important_first(channel_importance(graph, producers, importance, activations))
                  for producers in groups]
        return orders, uniform
    fits = _consumer_fits(graph, spaces, groups, samples)
    orders, curves = [], []
    for producers, size, count in zip(groups, sizes, uniform):
        limit = count if allocation == "uniform" else min(int(np.floor(MAX_GROUP_PRUNING * size)), size - 1)
        consumers = fits.get(spaces.find(spaces.space_of[producers[0].outputs[0]]), [])
        if consumers:
            order, curve = _greedy_removal_order(consumers, size, limit)
        else:  # nothing reads these channels that a refit could measure: fall back to filter norms
            order, curve = _least_important_first(channel_importance(graph, producers, "l1", None)), [0.0]
        removed = set(order)
        orders.append(order + [c for c in range(size) if c not in removed])
        curves.append(curve)
    if allocation == "uniform":
        return orders, uniform
    if max_weights is None:
        return orders, _allocate(curves, sum(uniform))
    # Removing channels on both sides of a layer saves less than the two removals' sum: allocate,
    # count what remains, and ask for more than the shortfall again until the budget holds.
    per_channel = _weights_per_channel(graph, spaces, groups)
    budget = weight_count(graph) - max_weights
    for _ in range(BUDGET_ROUNDS):
        removals = _allocate(curves, budget, per_channel)
        shortfall = _weights_after(graph, groups, orders, removals) - max_weights
        if shortfall <= 0:
            break
        budget += 1.25 * shortfall
    return orders, removals


BUDGET_ROUNDS = 10


def _weights_after(graph: Graph, groups: list, orders: list, removals: list) -> int:
    """``weight_count`` of ``graph`` once each group lost its first ``removals`` channels."""
    trial = graph.copy()
    position = {id(op): index for index, op in enumerate(graph.ops)}
    kept = {}
    for producers, order, remove in zip(groups, orders, removals):
        for op in producers:
            kept[id(trial.ops[position[id(op)]])] = np.sort(np.asarray(order[remove:], dtype=np.int64))
    _remove_channels(trial, kept)
    return weight_count(trial)


def _slice_constant(graph: Graph, op: Op, index: int, kept: np.ndarray, axis: int, users: dict) -> None:
    """Keep ``kept`` along ``axis`` of ``op``'s constant input ``index``; a constant other ops
    also read is copied first so their view stays whole."""
    name = op.inputs[index]
    data = np.take(graph[name].data, kept, axis=axis)
    if len(users.get(name, [])) > 1:
        tensor = graph[name]
        new_name = graph.unique_name(name + "/pruned")
        graph.add_tensor(Tensor(new_name, data.shape, tensor.dtype, data, tensor.quant))
        users[name].remove(op)
        op.inputs[index] = new_name
    else:
        _set_data(graph, name, data)


def _remove_channels(graph: Graph, kept_by_producer: dict) -> tuple:
    """Slice every producer's output channels and follow them through their consumers; returns
    ((op, kept output channels) for the CONV_2D / FULLY_CONNECTED ops whose input channels changed:
    the ones reconstruction starts from, {tensor name: indices of the original channels it keeps})."""
    users = {name: list(ops) for name, ops in graph.consumers().items()}
    kept_of: dict = {}  # tensor name -> indices of its original channels that remain (last axis)
    changed_inputs = []
    for op in graph.ops:
        source = op.inputs[0] if op.inputs else ""
        incoming = kept_of.get(source)
        if op.type in WEIGHTED_OPS:
            kept = kept_by_producer.get(id(op))
            if incoming is not None:
                _slice_constant(graph, op, 1, incoming, 3 if op.type == "CONV_2D" else 1, users)
                outputs = graph[op.inputs[1]].shape[0]
                changed_inputs.append((op, kept if kept is not None else np.arange(outputs)))
            if kept is not None:
                _slice_constant(graph, op, 1, kept, 0, users)
                if len(op.inputs) > 2 and op.inputs[2]:
                    _slice_constant(graph, op, 2, kept, 0, users)
                kept_of[op.outputs[0]] = kept
            continue
        tracked = [n for n in op.inputs if n in kept_of]
        if not tracked:
            continue
        kept = kept_of[tracked[0]]
        channels = graph[tracked[0]].shape[-1]
        if op.type == "DEPTHWISE_CONV_2D":
            _slice_constant(graph, op, 1, kept, 3, users)
            if len(op.inputs) > 2 and op.inputs[2]:
                _slice_constant(graph, op, 2, kept, 0, users)
        elif op.type in _ELEMENTWISE:
            for index, name in enumerate(op.inputs):
                tensor = graph[name] if name else None
                if tensor is not None and tensor.is_constant and tensor.shape and tensor.shape[-1] == channels > 1:
                    _slice_constant(graph, op, index, kept, len(tensor.shape) - 1, users)
        elif op.type == "CONCATENATION":
            offset, pieces = 0, []
            for name in op.inputs:
                size = graph[name].shape[-1]
                pieces.append(offset + (kept_of[name] if name in kept_of else np.arange(size)))
                offset += size
            kept = np.concatenate(pieces)
        elif op.type in ("RESHAPE", "SQUEEZE"):
            if graph[op.outputs[0]].shape[-1] != channels:
                kept = _flattened(graph[tracked[0]].shape, kept)
            _set_reshape_target(graph, op, graph[op.outputs[0]].shape[:-1] + (kept.size,), users)
        for out in op.outputs:
            kept_of[out] = kept
    for name, kept in kept_of.items():
        tensor = graph[name]
        graph.tensors[name] = dataclasses.replace(tensor, shape=tensor.shape[:-1] + (kept.size,))
    return changed_inputs, kept_of


def _flattened(shape: tuple, kept: np.ndarray) -> np.ndarray:
    """Positions of the kept channels in a row-major flatten of an [N, ..., C] map (h, w, c order)."""
    positions = int(np.prod(shape[1:-1]))
    return (np.arange(positions)[:, None] * shape[-1] + kept[None, :]).reshape(-1)


def _set_reshape_target(graph: Graph, op: Op, shape: tuple, users: dict) -> None:
    if op.type == "RESHAPE":
        if "new_shape" in op.options:
            op.options["new_shape"] = list(shape)
        if len(op.inputs) > 1 and op.inputs[1] and graph[op.inputs[1]].is_constant:
            name = op.inputs[1]
            data = np.asarray(shape, dtype=graph[name].dtype)
            if len(users.get(name, [])) > 1:
                users[name].remove(op)
                op.inputs[1] = graph.add_constant(name + "/pruned", data)
            else:
                _set_data(graph, name, data)


# -- structured pruning: channels chosen by the reconstruction error they cause --------------------

SELECTION_MAX_ROWS = 8192
# Where a consumer has more input columns than calibration rows, least squares can absorb any removal
# on those rows and the errors measured there say nothing; a ridge growing with columns per row
# keeps the measured costs honest.
SELECTION_RIDGE_PER_COLUMN = 0.1
# No group loses more than this share of its channels, however cheap they look on calibration samples.
MAX_GROUP_PRUNING = 0.9
# The cost recorded for a removal whose error cannot be measured: far above any relative error.
UNMEASURABLE_COST = 1e6


def _channel_origins(graph: Graph, spaces: _ChannelSpaces) -> dict:
    """tensor name -> (space, channel) arrays, one entry per index of its last axis: which prunable
    channel each of its channels is (space -1: a channel no group owns, e.g. a concatenated input)."""
    origins: dict = {}
    for op in graph.ops:
        out = op.outputs[0] if op.outputs else ""
        if out not in spaces.space_of:
            continue
        if op.type in WEIGHTED_OPS:
            channels = graph[out].shape[-1]
            origins[out] = (np.full(channels, spaces.find(spaces.space_of[out])), np.arange(channels))
            continue
        tracked = [n for n in op.inputs if n in origins]
        if not tracked:
            continue
        if op.type == "CONCATENATION":
            parts = [origins[n] if n in origins else (np.full(graph[n].shape[-1], -1), np.arange(graph[n].shape[-1]))
                     for n in op.inputs]
            origin = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        elif op.type in ("RESHAPE", "SQUEEZE") and graph[out].shape[-1] != graph[tracked[0]].shape[-1]:
            repeats = graph[out].shape[-1] // graph[tracked[0]].shape[-1]
            origin = tuple(np.tile(part, repeats) for part in origins[tracked[0]])  # (h, w, c) flatten order
        else:
            origin = origins[tracked[0]]
        for name in op.outputs:
            origins[name] = origin
    return origins


@dataclass
class _ConsumerFit:
    """One consumer of a group's channels during greedy selection: the inverse Gram matrix of its
    input columns (plus intercept) and the weights that are least-squares optimal for the columns
    still there (Optimal Brain Surgeon's update, applied to a layer's reconstruction error)."""

    inverse_gram: np.ndarray  # [K + 1, K + 1]
    weights: np.ndarray       # [K + 1, O]
    blocks: np.ndarray        # [channels of the group, columns per channel]: the columns each channel feeds
    energy: float             # squared norm of the centred outputs: errors are relative to it

    def removal_costs(self, alive: np.ndarray) -> np.ndarray:
        """Increase of the squared output error, relative to ``energy``, if each channel still
        ``alive`` lost its columns and the remaining weights were refitted (inf for the others)."""
        costs = np.full(self.blocks.shape[0], np.inf)
        blocks = self.blocks[alive]
        with np.errstate(divide="ignore", invalid="ignore"):
            if blocks.shape[1] == 1:
                index = blocks[:, 0]
                found = np.sum(self.weights[index] ** 2, axis=1) / np.diag(self.inverse_gram)[index]
            else:
                sub = self.inverse_gram[blocks[:, :, None], blocks[:, None, :]]
                rows = self.weights[blocks]
                found = np.einsum("cko,cko->c", rows, _batched_solve(sub, rows))
        costs[alive] = np.nan_to_num(found, nan=np.inf) / self.energy
        return costs

    def remove(self, channel: int) -> None:
        block = self.blocks[channel]
        if block.size == 1:  # a rank-one downdate
            across = self.inverse_gram[:, block[0]].copy()
            pivot = across[block[0]]
            if pivot > 0:
                self.weights -= np.outer(across / pivot, self.weights[block[0]])
                self.inverse_gram -= np.outer(across / pivot, across)
            self.inverse_gram[block, :] = 0.0
            self.inverse_gram[:, block] = 0.0
            self.weights[block] = 0.0
            return
        across = self.inverse_gram[:, block]
        pivot = _inverse(self.inverse_gram[np.ix_(block, block)])
        self.weights -= across @ (pivot @ self.weights[block])
        self.inverse_gram -= across @ pivot @ across.T
        self.inverse_gram[block, :] = 0.0
        self.inverse_gram[:, block] = 0.0
        self.weights[block] = 0.0


def _inverse(matrix: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(matrix)


def _batched_solve(matrices: np.ndarray, right: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(matrices, right)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(matrices) @ right


def _least_important_first(scores: np.ndarray) -> list:
    """Channel indices, lowest score first (ties: the later channel goes first)."""
    return np.argsort(-scores, kind="stable")[::-1].tolist()


def _consumer_fits(graph: Graph, spaces: _ChannelSpaces, groups: list, samples: dict) -> dict:
    """space -> [_ConsumerFit] for every CONV_2D / FULLY_CONNECTED op that reads a group's channels,
    measured on the unpruned model's activations for ``samples``."""
    from edgeq.runtime.interpreter import Interpreter

    origins = _channel_origins(graph, spaces)
    roots = {spaces.find(spaces.space_of[producers[0].outputs[0]]) for producers in groups}
    consumers = [op for op in _weighted_ops(graph, WEIGHTED_OPS) if op.inputs[0] in origins
                 and np.isin(origins[op.inputs[0]][0], list(roots)).any()]
    activations = Interpreter.from_graph(graph).run(samples, keep={op.inputs[0] for op in consumers})
    fits: dict = {}
    for op in consumers:
        space_of_column, channel_of_column = origins[op.inputs[0]]
        taps = 1
        if op.type == "CONV_2D":
            _, k_h, k_w, _ = graph[op.inputs[1]].shape
            taps = k_h * k_w
        space_of_column, channel_of_column = np.tile(space_of_column, taps), np.tile(channel_of_column, taps)
        values = activations[op.inputs[0]]
        columns = _columns(values[_sample_subset(values, graph[op.outputs[0]].shape, SELECTION_MAX_ROWS)], op, graph)
        columns = columns[_sample_rows(columns.shape[0], SELECTION_MAX_ROWS)]
        weights = graph[op.inputs[1]].data.astype(np.float64)
        weights = np.concatenate([weights.reshape(weights.shape[0], -1).T, _bias(graph, op, weights.shape[0])[None]])
        design = np.concatenate([columns, np.ones((columns.shape[0], 1))], axis=1)
        gram = design.T @ design
        inputs = columns.shape[1]
        relative = max(RECONSTRUCTION_RIDGE, SELECTION_RIDGE_PER_COLUMN * inputs / columns.shape[0])
        gram[np.arange(inputs), np.arange(inputs)] += relative * max(np.mean(np.diag(gram)[:-1]), 1e-12)
        outputs = design @ weights
        energy = max(float(np.sum((outputs - outputs.mean(axis=0)) ** 2)), 1e-12)
        inverse = _inverse(gram)
        for root in np.unique(space_of_column[np.isin(space_of_column, list(roots))]):
            count = int(channel_of_column[space_of_column == root].max()) + 1
            blocks = np.stack([np.flatnonzero((space_of_column == root) & (channel_of_column == c))
                               for c in range(count)])
            fits.setdefault(int(root), []).append(_ConsumerFit(inverse.copy(), weights.copy(), blocks, energy))
    return fits


def _greedy_removal_order(fits: list, channels: int, limit: int) -> tuple:
    """Remove channels one at a time, each time the one whose loss (refitting the rest) raises the
    consumers' summed relative reconstruction error least (ThiNet's greedy selection, with the
    error measured after the refit). Returns (removal order, cumulative error after each removal)."""
    alive = np.ones(channels, bool)
    order, costs = [], [0.0]
    for _ in range(limit):
        total = np.zeros(channels)
        for fit in fits:
            total += fit.removal_costs(alive)
        channel = int(np.argmin(total))
        if not alive[channel]:  # every cost unmeasurable: take the first channel left
            channel = int(np.flatnonzero(alive)[0])
        alive[channel] = False
        order.append(channel)
        step = float(total[channel])
        costs.append(costs[-1] + (max(step, 0.0) if np.isfinite(step) else UNMEASURABLE_COST))
        for fit in fits:
            fit.remove(channel)
    return order, costs


def _allocate(curves: list, budget: float, weights: Optional[list] = None) -> list:
    """How many channels each group loses: removals until their weights add up to ``budget``, each
    time from the group whose next removal raises the measured error least per unit of weight
    (``weights``: what one of its channels holds, e.g. its parameters; 1 each by default, so the
    budget counts channels). Returns one count per curve."""
    counts = [0] * len(curves)
    weights = weights or [1.0] * len(curves)
    heap = [((curve[1] - curve[0]) / weights[g], g) for g, curve in enumerate(curves) if len(curve) > 1]
    heapq.heapify(heap)
    removed = 0.0
    while heap and removed < budget:
        _, g = heapq.heappop(heap)
        counts[g] += 1
        removed += weights[g]
        curve = curves[g]
        if counts[g] + 1 < len(curve):
            heapq.heappush(heap, ((curve[counts[g] + 1] - curve[counts[g]]) / weights[g], g))
    return counts


def weight_count(graph: Graph) -> int:
    """Weights and biases of the CONV_2D, FULLY_CONNECTED and DEPTHWISE_CONV_2D layers: what channel
    pruning removes and what most of a converted file holds."""
    layers = _weighted_ops(graph, WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",))
    names = {name for op in layers for name in op.inputs[1:3] if name}
    return sum(int(graph[name].data.size) for name in names)


def _weights_per_channel(graph: Graph, spaces: _ChannelSpaces, groups: list) -> list:
    """Per group: the weights one of its channels holds (its producers' filters and biases, the
    depthwise filters on its way, its consumers' input columns), what removing it saves."""
    origins = _channel_origins(graph, spaces)
    result = []
    for producers in groups:
        root = spaces.find(spaces.space_of[producers[0].outputs[0]])
        total = sum(int(np.prod(graph[op.inputs[1]].shape[1:])) + 1 for op in producers)
        for op in _weighted_ops(graph, WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",)):
            if op.inputs[0] not in origins:
                continue
            columns = int(np.sum(origins[op.inputs[0]][0] == root)) / graph[producers[0].outputs[0]].shape[-1]
            if not columns:
                continue
            weights = graph[op.inputs[1]].shape
            if op.type == "DEPTHWISE_CONV_2D":
                total += columns * (weights[1] * weights[2] + 1)
            elif op.type == "CONV_2D":
                total += columns * weights[0] * weights[1] * weights[2]
            else:
                total += columns * weights[0]
        result.append(float(total))
    return result


def _single_threaded_blas():
    """Selection and refits multiply small matrices (at most a few thousand columns): a second BLAS
    thread gains little there, and on a busy machine OpenBLAS threads spinning for a core make the
    same products 10-20x slower."""
    from edgeq.runtime.threads import ThreadLimit, blas_controls

    return ThreadLimit(1, blas_controls())


# -- reconstruction -----------------------------------------------------------------------------

def refit_layers(original: Graph, pruned: Graph, samples: dict, start: set, masks: Optional[dict] = None,
                 kept_of: Optional[dict] = None) -> list:
    """Refit, in execution order, every weighted op of ``pruned`` (CONV_2D, FULLY_CONNECTED,
    DEPTHWISE_CONV_2D) whose output no longer equals the same op's in ``original``: the ops in
    ``start`` (ids: the ones pruning changed) and every one downstream of them. Returns the refit ops.

    Each op is fitted by ridge least squares on the *pruned* network's actual input (the samples run
    through the already refitted prefix) towards the *original* network's output of that op, before
    its fused activation, so errors do not pile up from layer to layer (He et al. 2017). The
    intercept re-estimates the bias a folded batch norm left: pruning shifts channel means. The
    ridge pulls towards the op's current weights rather than towards zero, so a layer with more
    weights than calibration rows keeps what it had where the samples say nothing. ``masks``
    ({weight name: bool array}) keeps zero weights zero (masked least squares per output channel).
    ``kept_of`` (tensor -> indices of the original channels it keeps, from channel pruning) says which
    original output channels each op's outputs are. The ops of both graphs correspond one to one.
    """
    masks = masks or {}
    kept_of = kept_of or {}
    runs = [_StepwiseRun(g, samples) for g in (original, pruned)]
    if len(original.ops) != len(pruned.ops):
        raise ModelError("reconstruction needs the pruned graph's ops to match the original's one to one")
    changed: set = set()
    refit = []
    for position, op in enumerate(pruned.ops):
        activations = [n for n in op.inputs if n and not pruned[n].is_constant]
        if id(op) in start or any(n in changed for n in activations):
            reference_op = original.ops[position]
            kept = kept_of.get(op.outputs[0])
            if _refit_op(pruned, op, runs[1].value(op.inputs[0]) if op.inputs else None, original, reference_op,
                         runs[0].value(reference_op.inputs[0]) if op.inputs else None, kept, masks):
                refit.append(op)
            changed.update(op.outputs)
        for run in runs:
            run.step(position)
    return refit


class _StepwiseRun:
    """A graph run one op at a time (``runtime.op_runner.run_op``: each op is prepared as it runs,
    so it sees weights refitted after the run began), dropping each activation after its last reader."""

    def __init__(self, graph: Graph, samples: dict):
        self.graph = graph
        self.values = {name: np.asarray(samples[name], dtype=graph[name].dtype) for name in graph.inputs}
        last_reader = {}
        for position, op in enumerate(graph.ops):
            for name in op.inputs:
                last_reader[name] = position
        self.last_reader = last_reader

    def value(self, name: str) -> np.ndarray:
        tensor = self.graph[name]
        return tensor.data if tensor.is_constant else self.values[name]

    def step(self, position: int) -> None:
        from edgeq.runtime.op_runner import run_op

        op = self.graph.ops[position]
        outputs = run_op(op, self.graph, [self.value(n) if n else None for n in op.inputs])
        self.values.update(zip(op.outputs, outputs))
        for name in op.inputs:
            if name in self.values and self.last_reader.get(name) == position and name not in self.graph.outputs:
                del self.values[name]


def _refit_op(pruned: Graph, op: Op, pruned_input, original: Graph, reference_op: Op, original_input,
              kept_outputs, masks: dict) -> bool:
    """Refit one op in place (see ``refit_layers``); False for an op that has no weights to refit."""
    if op.type not in WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",) or len(op.inputs) < 2:
        return False
    weights = pruned[op.inputs[1]]
    if not weights.is_constant or weights.dtype.kind != "f" or not original[reference_op.inputs[1]].is_constant:
        return False
    if op.type == "DEPTHWISE_CONV_2D":
        if weights.shape[-1] != pruned[op.inputs[0]].shape[-1]:
            return False  # a depth multiplier: channels do not map one to one
        return _refit_depthwise(pruned, op, pruned_input, original, reference_op, original_input, kept_outputs,
                                masks.get(op.inputs[1]))
    reference_weights = original[reference_op.inputs[1]].data.astype(np.float64)
    reference_weights = reference_weights.reshape(reference_weights.shape[0], -1)
    reference_bias = _bias(original, reference_op, reference_weights.shape[0])
    if kept_outputs is not None:
        reference_weights, reference_bias = reference_weights[kept_outputs], reference_bias[kept_outputs]
    subset = _sample_subset(pruned_input, pruned[op.outputs[0]].shape, RECONSTRUCTION_MAX_ROWS)
    pruned_columns = _columns(pruned_input[subset], op, pruned)
    original_columns = _columns(original_input[subset], reference_op, original)
    rows = _sample_rows(pruned_columns.shape[0])
    target = original_columns[rows] @ reference_weights.T + reference_bias
    prior = weights.data.astype(np.float64).reshape(weights.shape[0], -1)
    prior_bias = _bias(pruned, op, prior.shape[0])
    mask = masks.get(op.inputs[1])
    per_sample = pruned_columns.shape[0] // subset.size
    solution, intercept = _ridge_towards(pruned_columns[rows], target, prior, prior_bias,
                                         None if mask is None else mask.reshape(prior.shape),
                                         folds=(rows // per_sample) % CROSS_VALIDATION_FOLDS)
    _set_data(pruned, op.inputs[1], solution.reshape(weights.shape))
    _set_bias(pruned, op, intercept)
    return True


def _refit_depthwise(pruned, op, pruned_input, original, reference_op, original_input, kept_outputs, mask) -> bool:
    """Per-channel refit of a depthwise convolution: each channel's KH·KW taps and bias on its own
    input channel's patches."""
    weights = pruned[op.inputs[1]]
    _, k_h, k_w, channels = weights.shape
    reference = original[reference_op.inputs[1]].data.astype(np.float64).reshape(k_h * k_w, -1)
    reference_bias = _bias(original, reference_op, reference.shape[1])
    subset = _sample_subset(pruned_input, pruned[op.outputs[0]].shape, DEPTHWISE_MAX_ROWS)
    pruned_patches = _depthwise_patches(pruned_input[subset], op, pruned)
    original_patches = _depthwise_patches(original_input[subset], reference_op, original)
    rows = _sample_rows(pruned_patches.shape[0], DEPTHWISE_MAX_ROWS)
    patches, original_patches = pruned_patches[rows], original_patches[rows]       # [R, K, C]
    if kept_outputs is not None:
        reference, reference_bias = reference[:, kept_outputs], reference_bias[kept_outputs]
        original_patches = original_patches[:, :, kept_outputs]
    target = np.einsum("rkc,kc->rc", original_patches, reference) + reference_bias  # [R, C]
    prior = weights.data.astype(np.float64).reshape(k_h * k_w, channels)
    design = np.ones((channels, k_h * k_w + 1, patches.shape[0]))          # [C, K + 1, R]: rows last, so
    design[:, :-1, :] = patches.transpose(2, 1, 0)                           # each channel's product is one GEMM
    gram = design @ design.transpose(0, 2, 1)                                # [C, K + 1, K + 1]
    moment = (design @ target.T[:, :, None])[:, :, 0]                        # [C, K + 1]
    taps = k_h * k_w
    ridge = RECONSTRUCTION_RIDGE * np.maximum(np.mean(np.diagonal(gram, axis1=1, axis2=2)[:, :taps], axis=1), 1e-12)
    gram[:, np.arange(taps), np.arange(taps)] += ridge[:, None]
    moment[:, :taps] += ridge[:, None] * prior.T
    if mask is not None:  # a zero tap stays zero: its row and column of the system become the identity's
        zero = np.concatenate([~mask.reshape(taps, channels).T, np.zeros((channels, 1), bool)], axis=1)
        gram *= ~(zero[:, :, None] | zero[:, None, :])
        gram[:, np.arange(taps + 1), np.arange(taps + 1)] += zero
        moment *= ~zero
    solution = _batched_solve(gram, moment[:, :, None])[:, :, 0]
    _set_data(pruned, op.inputs[1], solution[:, :taps].T.reshape(weights.shape))
    _set_bias(pruned, op, solution[:, taps])
    return True


def _ridge_towards(columns: np.ndarray, target: np.ndarray, prior: np.ndarray, prior_bias: np.ndarray,
                   mask: Optional[np.ndarray] = None, folds: Optional[np.ndarray] = None) -> tuple:
    """argmin over W, b of ‖X Wᵀ + b − Y‖² + λ‖W − P‖² (b free); with ``mask`` [O, K], W keeps zeros
    where the mask is False. Returns (W [O, K], b [O]).

    λ is relative to the mean diagonal of XᵀX: chosen by cross-validation over ``folds`` (a fold
    number per row: rows of one sample together) from RIDGE_CHOICES when given, else
    RECONSTRUCTION_RIDGE. With few samples per weight (a classifier's last layer refitted on a few
    dozen images) a weak pull towards the current weights overfits; with many it only slows the fit."""
    design = np.concatenate([columns, np.ones((columns.shape[0], 1))], axis=1)
    gram = design.T @ design
    moment = design.T @ target                               # [K + 1, O]
    inputs = columns.shape[1]
    scale = max(float(np.mean(np.diag(gram)[:-1])), 1e-12)
    relative = RECONSTRUCTION_RIDGE
    if folds is not None and np.unique(folds).size > 1:
        relative = _cross_validated_ridge(design, target, gram, moment, prior, folds)
    ridge = relative * scale
    gram[np.arange(inputs), np.arange(inputs)] += ridge
    moment[:inputs] += ridge * prior.T
    if mask is None or mask.all():
        solution = _solve(gram, moment)
        return solution[:-1].T, solution[-1]
    weights, bias = np.zeros_like(prior), np.array(prior_bias, dtype=np.float64)
    for output in range(prior.shape[0]):
        keep = np.concatenate([np.flatnonzero(mask[output]), [inputs]])
        solved = _solve(gram[np.ix_(keep, keep)], moment[keep, output])
        weights[output, keep[:-1]], bias[output] = solved[:-1], solved[-1]
    return weights, bias


RIDGE_CHOICES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _cross_validated_ridge(design, target, gram, moment, prior, folds) -> float:
    """The relative ridge of RIDGE_CHOICES with the least held-out error over ``folds``; each fold's
    error comes from its own XᵀX, XᵀY and ‖Y‖², so no fit touches the rows."""
    inputs = design.shape[1] - 1
    pieces = []
    for fold in np.unique(folds):
        rows = folds == fold
        part = design[rows]
        pieces.append((part.T @ part, part.T @ target[rows], float(np.sum(target[rows] ** 2))))
    errors = []
    for relative in RIDGE_CHOICES:
        total = 0.0
        for fold_gram, fold_moment, fold_energy in pieces:
            train_gram, train_moment = gram - fold_gram, moment - fold_moment
            ridge = relative * max(float(np.mean(np.diag(train_gram)[:-1])), 1e-12)
            train_gram[np.arange(inputs), np.arange(inputs)] += ridge
            train_moment[:inputs] += ridge * prior.T
            solution = _solve(train_gram, train_moment)
            total += (np.sum(solution * (fold_gram @ solution)) - 2 * np.sum(solution * fold_moment) + fold_energy)
        errors.append(total)
    return RIDGE_CHOICES[int(np.argmin(errors))]


def _solve(gram: np.ndarray, right: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(gram, right)
    except np.linalg.LinAlgError:  # a dead input (all-zero column) with no ridge on it: least norm
        return np.linalg.lstsq(gram, right, rcond=None)[0]


def _sample_subset(values: np.ndarray, output_shape: tuple, limit: int) -> np.ndarray:
    """Indices of evenly spread samples (axis 0 of ``values``) that give about ``limit`` output rows
    (positions of an output of ``output_shape``, batch 1): im2col of the rest would be discarded."""
    per_sample = max(int(np.prod(output_shape[:-1])), 1)
    count = values.shape[0]
    wanted = min(count, -(-2 * limit // per_sample))  # twice the rows, so the row sample still mixes samples
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(np.int64))


def _sample_rows(count: int, limit: int = RECONSTRUCTION_MAX_ROWS) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def _bias(graph: Graph, op: Op, outputs: int) -> np.ndarray:
    if len(op.inputs) > 2 and op.inputs[2]:
        return graph[op.inputs[2]].data.astype(np.float64)
    return np.zeros(outputs)


def _set_bias(graph: Graph, op: Op, bias: np.ndarray) -> None:
    # An op without a bias input drops the intercept (rare: TFLite convolutions carry biases).
    if len(op.inputs) > 2 and op.inputs[2]:
        _set_data(graph, op.inputs[2], bias)


def _columns(inputs: np.ndarray, op: Op, graph: Graph) -> np.ndarray:
    """``op``'s input as a float64 matrix whose rows, times the flattened filter, give its outputs:
    a convolution's patches (the runtime's CONV_2D im2col), a fully connected layer's input rows."""
    if op.type == "FULLY_CONNECTED":
        return inputs.astype(np.float64).reshape(-1, graph[op.inputs[1]].shape[1])
    from edgeq.runtime.kernels.conv import im2col

    return im2col(inputs, op, graph, np.float64)


class _Shapes:
    """Just enough of a Graph for ``im2col``: tensor shapes by name."""

    def __init__(self, shapes: dict):
        self.shapes = shapes

    def __getitem__(self, name):
        return SimpleNamespace(shape=self.shapes[name])


def _depthwise_patches(inputs: np.ndarray, op: Op, graph: Graph) -> np.ndarray:
    """A depthwise convolution's input as [N·OH·OW, KH·KW, C]: the CONV_2D im2col of the same window."""
    from edgeq.runtime.kernels.conv import im2col

    _, k_h, k_w, channels = graph[op.inputs[1]].shape
    window = Op("CONV_2D", [op.inputs[0], op.inputs[1]], list(op.outputs), dict(op.options))
    shapes = _Shapes({op.inputs[0]: graph[op.inputs[0]].shape, op.inputs[1]: (1, k_h, k_w, channels)})
    return im2col(inputs, window, shapes, np.float64).reshape(-1, k_h * k_w, channels)
