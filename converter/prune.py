"""Pruning of the float IR: magnitude (zeroed weights), structured (removed channels), and the
least-squares reconstruction of the layers after removed channels (He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks", the weight-refit step).

TFLite stores weights densely, so zeroed weights only make the file smaller once it is compressed
(``compressed_size``: what an OTA update or a flash compressor sees) or stored in TFLite's sparse
encoding (``encode_sparse_weights``). Removed channels make the dense file, the RAM and the
run time smaller. Every function takes a float Graph and returns a new one; arrays are never
changed in place (``Graph.copy`` shares them).
"""
from __future__ import annotations

import dataclasses
import gzip
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgeq.runtime.ir import Graph, ModelError, Op, Tensor

MAGNITUDE_SCOPES = ("global", "layer")
CHANNEL_IMPORTANCES = ("l1", "activation")
# Ops whose outputs are a weighted sum over their inputs: their weights are what pruning removes.
WEIGHTED_OPS = ("CONV_2D", "FULLY_CONNECTED")
# A ridge term relative to the mean diagonal of XᵀX keeps the refit stable when calibration
# activations are few or collinear (ReLU6 outputs often are).
RECONSTRUCTION_RIDGE = 1e-3
RECONSTRUCTION_MAX_ROWS = 40_000


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

def prune_magnitude(graph: Graph, sparsity: float, scope: str = "global", include_edges: bool = False,
                    include_depthwise: bool = False) -> tuple:
    """Zero the ``sparsity`` share of smallest-magnitude weights; returns (graph, PruneReport).

    ``scope="global"``: one magnitude threshold across the layers (layers with many small weights
    lose more); ``"layer"``: every layer reaches ``sparsity``. The first and last weighted layers
    (which see the raw input and produce the output, and are small) are left alone unless
    ``include_edges``; depthwise filters (9 weights per channel) only with ``include_depthwise``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ModelError(f"pruning sparsity must be in [0, 1), got {sparsity}")
    if scope not in MAGNITUDE_SCOPES:
        raise ModelError(f"unknown pruning scope {scope!r}; choose one of {', '.join(MAGNITUDE_SCOPES)}")
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
    report = PruneReport(f"magnitude ({scope})")
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


def prune_channels(graph: Graph, ratio: float, importance: str = "l1", calibration_samples: Optional[dict] = None,
                   reconstruct: bool = False) -> tuple:
    """Remove the ``ratio`` share of least important output channels of every prunable group of
    CONV_2D / FULLY_CONNECTED layers and rewire their consumers; returns (graph, PruneReport).

    Layers joined by a residual ADD form one group and lose the same channels (ranked by summed
    importance); channels that reach a model output, or an op that mixes channels in a way this
    cannot follow, stay. ``importance="activation"`` and ``reconstruct`` need
    ``calibration_samples`` ({input name: samples on axis 0}, in the graph's layout).
    ``reconstruct`` refits, by least squares, every layer whose inputs lost channels so that its
    outputs match the unpruned model's.
    """
    if not 0.0 <= ratio < 1.0:
        raise ModelError(f"channel pruning ratio must be in [0, 1), got {ratio}")
    if importance not in CHANNEL_IMPORTANCES:
        raise ModelError(f"unknown channel importance {importance!r}; choose one of {', '.join(CHANNEL_IMPORTANCES)}")
    if (importance == "activation" or reconstruct) and calibration_samples is None:
        raise ModelError("activation importance and reconstruction need calibration samples")
    original = graph
    graph = graph.copy()
    spaces = _ChannelSpaces(graph)
    groups = spaces.groups()
    activations = None
    if importance == "activation":
        from edgeq.runtime.interpreter import Interpreter

        wanted = {op.outputs[0] for producers in groups for op in producers}
        activations = Interpreter.from_graph(graph).run(calibration_samples, keep=wanted)
    kept_by_producer = {}
    report = PruneReport(f"channel ({importance}{', reconstructed' if reconstruct else ''})")
    for producers in groups:
        scores = channel_importance(graph, producers, importance, activations)
        remove = min(int(np.floor(ratio * scores.size)), scores.size - 1)
        kept = np.sort(np.argsort(-scores, kind="stable")[: scores.size - remove])
        for op in producers:
            kept_by_producer[id(op)] = kept
        report.groups.append({"layers": [op.outputs[0] for op in producers], "channels_before": int(scores.size),
                              "channels_after": int(kept.size), "kept": kept.tolist()})
    changed_inputs = _remove_channels(graph, kept_by_producer)
    if reconstruct and changed_inputs:
        reconstruct_consumers(original, graph, changed_inputs, calibration_samples)
    for op in _weighted_ops(graph, WEIGHTED_OPS + ("DEPTHWISE_CONV_2D",)):
        axis = -1 if op.type == "DEPTHWISE_CONV_2D" else 0
        before = original[op.inputs[1]].shape[axis] if op.inputs[1] in original.tensors else graph[op.inputs[1]].shape[axis]
        weights = graph[op.inputs[1]].data
        report.layers.append(LayerPruning(op.outputs[0], op.type, weights.size, _zero_share(weights),
                                          _zero_share(weights), before, weights.shape[axis]))
    report.notes.append(f"{len(groups)} groups pruned; {len(spaces.blocked)} channel sets kept whole "
                        "(model outputs or ops whose channels cannot be followed)")
    return graph, report


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


def _remove_channels(graph: Graph, kept_by_producer: dict) -> list:
    """Slice every producer's output channels and follow them through their consumers; returns
    (op, kept output channels) for the CONV_2D / FULLY_CONNECTED ops whose input channels changed:
    the ones reconstruction refits."""
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
    return changed_inputs


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


# -- reconstruction -----------------------------------------------------------------------------

def reconstruct_consumers(original: Graph, pruned: Graph, consumers: list, samples: dict) -> None:
    """Refit the weights and bias of ``consumers`` ((op of ``pruned``, indices of the original
    output channels it keeps) pairs) by least squares so their pre-activation outputs on
    ``samples`` match those of the same op in ``original``.

    Both graphs run side by side, op by op, on our runtime's kernels: the ops correspond one to one
    (pruning only slices constants). Each consumer sees the pruned model's actual inputs, after
    the layers before it were refitted, so errors do not pile up (He et al.'s formulation).
    """
    targets = {id(op): kept for op, kept in consumers}
    runs = [_StepwiseRun(g, samples) for g in (original, pruned)]
    if len(runs[0].graph.ops) != len(runs[1].graph.ops):
        raise ModelError("reconstruction needs the pruned graph's ops to match the original's one to one")
    for position, op in enumerate(pruned.ops):
        if id(op) in targets:
            reference_op = runs[0].graph.ops[position]
            reconstruct_consumer(pruned, op, runs[1].value(op.inputs[0]), targets[id(op)],
                                 original, reference_op, runs[0].value(reference_op.inputs[0]))
        for run in runs:
            run.step(position)


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


def reconstruct_consumer(pruned: Graph, op: Op, pruned_input: np.ndarray, kept_outputs: np.ndarray,
                         original: Graph, reference_op: Op, original_input: np.ndarray) -> None:
    """Least-squares refit of one CONV_2D / FULLY_CONNECTED op: min ‖X'W'ᵀ + b' − Y‖² + λ‖W'‖²,
    where X' is the im2col of its pruned input and Y the original op's pre-activation output
    (restricted to the output channels it keeps)."""
    weights = original[reference_op.inputs[1]].data.astype(np.float64)
    bias_name = reference_op.inputs[2] if len(reference_op.inputs) > 2 else ""
    bias = original[bias_name].data.astype(np.float64) if bias_name else np.zeros(weights.shape[0])
    new_weights = pruned[op.inputs[1]].data
    original_columns = _columns(original_input, reference_op, original)
    pruned_columns = _columns(pruned_input, op, pruned)
    rows = np.random.default_rng(0).permutation(pruned_columns.shape[0])[:RECONSTRUCTION_MAX_ROWS]
    flat_weights = weights.reshape(weights.shape[0], -1)[kept_outputs]
    target = original_columns[rows] @ flat_weights.T + bias[kept_outputs]
    design = np.concatenate([pruned_columns[rows], np.ones((rows.size, 1))], axis=1)
    gram = design.T @ design
    ridge = RECONSTRUCTION_RIDGE * np.mean(np.diag(gram)[:-1]) if gram.shape[0] > 1 else 0.0
    gram[np.arange(gram.shape[0] - 1), np.arange(gram.shape[0] - 1)] += ridge
    solution = np.linalg.solve(gram, design.T @ target)
    _set_data(pruned, op.inputs[1], solution[:-1].T.reshape(new_weights.shape))
    # An op without a bias input drops the intercept (rare: TFLite convolutions carry biases).
    if len(op.inputs) > 2 and op.inputs[2]:
        _set_data(pruned, op.inputs[2], solution[-1])


def _columns(inputs: np.ndarray, op: Op, graph: Graph) -> np.ndarray:
    """``op``'s input as a float64 matrix whose rows, times the flattened filter, give its outputs:
    a convolution's patches (the runtime's CONV_2D im2col), a fully connected layer's input rows."""
    if op.type == "FULLY_CONNECTED":
        return inputs.astype(np.float64).reshape(-1, graph[op.inputs[1]].shape[1])
    from edgeq.runtime.kernels.conv import im2col

    return im2col(inputs, op, graph, np.float64)
