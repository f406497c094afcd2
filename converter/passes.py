"""Graph -> Graph clean-ups that run after import (and on any float TFLite graph).

Each pass returns a new Graph and leaves its argument untouched. The passes that rewrite until
nothing changes (remove_identities, fold_batch_norm, cancel_transposes) go through
``rewrite_to_fixed_point``, which after a rewrite looks again only at the ops around the tensors it
touched, with producer and consumer maps kept current (``Uses``), instead of rescanning the graph.
"""
from __future__ import annotations

import heapq

import numpy as np

from edgeq.runtime.ir import Graph, Op
from edgeq.runtime.kernels.common import FUSED_CLAMPS

# Ops whose builtin options carry fused_activation_function (and whose kernels honour it).
# CONCATENATION has the option too, but LiteRT's reference kernel refuses it for float and its
# XNNPACK path ignores it, so an activation after a concat stays a separate op.
ACTIVATION_HOSTS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "DIV",
    "MAX_POOL_2D", "AVERAGE_POOL_2D",
}
# TANH is a valid fused_activation_function value, but TFLite's float kernels clamp only for the
# RELU family and silently ignore TANH, so it is never fused.
FUSABLE_ACTIVATIONS = frozenset(FUSED_CLAMPS)
# Producer -> axis of its weights that indexes output channels.
CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0}


class Uses:
    """Which op makes and which ops read every tensor of ``graph``, kept current by the rewrites that
    go through it instead of being recomputed after each one. Removed ops leave ``graph.ops`` (one
    list pass) in ``finish``."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()
        self.consumers = graph.consumers()  # an op once per input slot that reads the tensor
        self.removed: set = set()

    def sole_consumer(self, tensor: str):
        """The one op reading ``tensor`` once, if it is not a graph output; else None."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph.outputs:
            return None
        return users[0]

    def set_input(self, op: Op, index: int, name: str) -> None:
        old = op.inputs[index]
        if old:
            _drop(self.consumers[old], op)
        op.inputs[index] = name
        if name:
            self.consumers.setdefault(name, []).append(op)

    def set_output(self, op: Op, index: int, name: str) -> None:
        self.producer.pop(op.outputs[index], None)
        op.outputs[index] = name
        self.producer[name] = op

    def remove(self, op: Op) -> None:
        for name in op.inputs:
            if name:
                _drop(self.consumers[name], op)
        for name in op.outputs:
            self.producer.pop(name, None)
        self.removed.add(id(op))

    def rename(self, old: str, new: str) -> None:
        """``Graph.rename_tensor``, over the ops the maps say refer to ``old``."""
        readers = self.consumers.pop(old, [])
        for op in {id(op): op for op in readers}.values():
            op.inputs = [new if n == old else n for n in op.inputs]
        if readers:
            self.consumers.setdefault(new, []).extend(readers)
        maker = self.producer.pop(old, None)
        if maker is not None:
            maker.outputs = [new if n == old else n for n in maker.outputs]
            self.producer[new] = maker
        graph = self.graph
        graph.inputs = [new if n == old else n for n in graph.inputs]
        graph.outputs = [new if n == old else n for n in graph.outputs]

    def ops_around(self, tensors) -> list:
        """The ops that make or read any of ``tensors``."""
        found = []
        for name in tensors:
            if name in self.producer:
                found.append(self.producer[name])
            found.extend(self.consumers.get(name, []))
        return found

    def finish(self) -> None:
        if self.removed:
            self.graph.ops = [op for op in self.graph.ops if id(op) not in self.removed]


def _drop(ops: list, op: Op) -> None:
    """Remove ``op`` itself (not an equal op) from ``ops`` once."""
    for i, other in enumerate(ops):
        if other is op:
            del ops[i]
            return


def rewrite_to_fixed_point(graph: Graph, rewrite) -> None:
    """Apply ``rewrite(op, uses)`` in place until it changes no op.

    The rewrites happen in the order of rescanning ``graph.ops`` from the first op after each one,
    always at the earliest op that can change, but without the rescans: ``rewrite`` returns None
    when it leaves ``op`` alone, else the names of the tensors it touched, and since an op can only
    become rewritable when a tensor it makes or reads is touched (ops are removed, never added or
    reordered), only those ops are looked at again, earliest first.
    """
    uses = Uses(graph)
    ops = list(graph.ops)
    position = {id(op): i for i, op in enumerate(ops)}
    pending = list(range(len(ops)))  # a heap of positions in ``ops``
    queued = set(pending)
    while pending:
        index = heapq.heappop(pending)
        queued.discard(index)
        op = ops[index]
        if id(op) in uses.removed:
            continue
        touched = rewrite(op, uses)
        if touched is None:
            continue
        for other in (op, *uses.ops_around(touched)):
            other_index = position[id(other)]
            if id(other) not in uses.removed and other_index not in queued:
                queued.add(other_index)
                heapq.heappush(pending, other_index)
    uses.finish()


def bypass(graph: Graph, op: Op, uses: Uses) -> bool:
    """Remove a single-input op that does not change its data; False if the boundary forbids it."""
    src, dst = op.inputs[0], op.outputs[0]
    if graph[src].shape != graph[dst].shape or graph[src].dtype != graph[dst].dtype:
        return False
    if dst in graph.outputs:
        if src in graph.inputs or src in graph.outputs:
            return False
        uses.remove(op)
        uses.rename(src, dst)
        del graph.tensors[src]
        return True
    uses.remove(op)
    uses.rename(dst, src)
    del graph.tensors[dst]
    return True


def is_identity_op(graph: Graph, op: Op) -> bool:
    if op.type == "RESHAPE":
        return graph[op.inputs[0]].shape == graph[op.outputs[0]].shape
    if op.type == "TRANSPOSE":
        perm = graph[op.inputs[1]].data
        return perm is not None and list(perm) == list(range(len(perm)))
    if op.type == "CAST":
        return graph[op.inputs[0]].dtype == graph[op.outputs[0]].dtype
    return False


def _remove_identity(op: Op, uses: Uses):
    """Bypass an identity op, or let a RESHAPE of a RESHAPE (its only reader) read the first's input."""
    graph = uses.graph
    src, dst = op.inputs[0] if op.inputs else "", op.outputs[0] if op.outputs else ""
    if is_identity_op(graph, op) and bypass(graph, op, uses):
        return (src, dst)
    if op.type == "RESHAPE":
        parent = uses.producer.get(src)
        if parent is not None and parent.type == "RESHAPE" and uses.sole_consumer(src) is op:
            uses.set_input(op, 0, parent.inputs[0])
            return (src, parent.inputs[0])
    return None


def remove_identities(graph: Graph) -> Graph:
    """Drop RESHAPEs to the same shape, identity TRANSPOSEs and no-op CASTs; merge RESHAPE chains."""
    graph = graph.copy()
    rewrite_to_fixed_point(graph, _remove_identity)
    graph.remove_unused()
    return graph


def per_channel(data: np.ndarray, channels: int):
    """The constant as a [channels] vector if it varies along the last axis only, else None."""
    if data is None or data.dtype.kind != "f":
        return None
    if data.size == 1:
        return np.full(channels, float(data.reshape(())), np.float32)
    if data.shape[-1] == channels and data.size == channels:
        return data.reshape(channels).astype(np.float32)
    return None


def replace_constant(graph: Graph, op: Op, index: int, data: np.ndarray, uses: Uses) -> str:
    old = graph[op.inputs[index]]
    uses.set_input(op, index, graph.add_constant(old.name, data.astype(old.dtype)))
    return old.name


def fold_affine_into(graph: Graph, producer: Op, op: Op, channels_const: np.ndarray, uses: Uses):
    """Fold the per-channel MUL/ADD/SUB ``op`` into ``producer``'s weights and bias; the names of
    the constants it replaced, or None when it cannot."""
    weights = graph[producer.inputs[1]]
    bias_name = producer.inputs[2] if len(producer.inputs) > 2 else ""
    if producer.type == "TRANSPOSE_CONV":
        weights, bias_name = graph[producer.inputs[1]], (producer.inputs[3] if len(producer.inputs) > 3 else "")
    if weights.data is None or weights.quant is not None or not bias_name or graph[bias_name].data is None:
        return None
    bias = graph[bias_name].data.astype(np.float32)
    bias_index = producer.inputs.index(bias_name)
    const_is_second = graph[op.inputs[1]].data is not None
    if op.type == "MUL":
        axis = CHANNEL_AXIS[producer.type]
        shape = [1] * weights.data.ndim
        shape[axis] = -1
        return (replace_constant(graph, producer, 1, weights.data * channels_const.reshape(shape), uses),
                replace_constant(graph, producer, bias_index, bias * channels_const, uses))
    if op.type == "ADD":
        return (replace_constant(graph, producer, bias_index, bias + channels_const, uses),)
    if op.type == "SUB" and const_is_second:
        return (replace_constant(graph, producer, bias_index, bias - channels_const, uses),)
    return None


def _fold_into_producer(op: Op, uses: Uses):
    """A per-channel MUL/ADD/SUB by a constant after a conv/FC it alone reads, folded into it."""
    graph = uses.graph
    if op.type not in ("MUL", "ADD", "SUB") or op.options.get("fused_activation_function", "NONE") != "NONE":
        return None
    consts = [i for i, n in enumerate(op.inputs) if graph[n].data is not None]
    if len(consts) != 1:
        return None
    act = op.inputs[1 - consts[0]]
    producer = uses.producer.get(act)
    if producer is None or producer.type not in CHANNEL_AXIS:
        return None
    if producer.options.get("fused_activation_function", "NONE") != "NONE":
        return None
    if uses.sole_consumer(act) is not op or graph[act].shape != graph[op.outputs[0]].shape:
        return None
    channels = graph[act].shape[-1]
    channels_const = per_channel(graph[op.inputs[consts[0]]].data, channels)
    if channels_const is None:
        return None
    replaced = fold_affine_into(graph, producer, op, channels_const, uses)
    if replaced is None:
        return None
    output, inputs = op.outputs[0], list(op.inputs)
    uses.remove(op)
    uses.set_output(producer, 0, output)
    del graph.tensors[act]
    return (act, output, *inputs, *replaced, *producer.inputs)


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold per-channel MUL/ADD/SUB by constants (a BatchNormalization) into the preceding conv/FC."""
    graph = graph.copy()
    rewrite_to_fixed_point(graph, _fold_into_producer)
    graph.remove_unused()
    return graph


def fuse_activations(graph: Graph) -> Graph:
    """RELU/RELU6/RELU_N1_TO_1 after an op that can apply it itself become its fused activation."""
    graph = graph.copy()
    uses = Uses(graph)
    for op in graph.ops:
        if op.type not in FUSABLE_ACTIVATIONS:
            continue
        src = op.inputs[0]
        host = uses.producer.get(src)
        if host is None or host.type not in ACTIVATION_HOSTS or len(host.outputs) != 1:
            continue
        if host.options.get("fused_activation_function", "NONE") != "NONE":
            continue
        if uses.sole_consumer(src) is not op:
            continue
        host.options["fused_activation_function"] = op.type
        uses.remove(op)
        uses.set_output(host, 0, op.outputs[0])
        del graph.tensors[src]
    uses.finish()
    return graph


def _compose_transposes(op: Op, uses: Uses):
    """A TRANSPOSE of a TRANSPOSE becomes one TRANSPOSE of the first's input."""
    graph = uses.graph
    if op.type != "TRANSPOSE":
        return None
    parent = uses.producer.get(op.inputs[0])
    if parent is None or parent.type != "TRANSPOSE":
        return None
    outer, inner = graph[op.inputs[1]].data, graph[parent.inputs[1]].data
    if outer is None or inner is None:
        return None
    composed = np.asarray(inner)[np.asarray(outer)]
    before = list(op.inputs)
    uses.set_input(op, 0, parent.inputs[0])
    uses.set_input(op, 1, graph.add_constant(f"{op.outputs[0]}/perm", composed.astype(np.int32)))
    return (*before, *op.inputs, op.outputs[0])


def cancel_transposes(graph: Graph) -> Graph:
    """Compose TRANSPOSE after TRANSPOSE into one; drop the pair when they cancel."""
    graph = graph.copy()
    rewrite_to_fixed_point(graph, _compose_transposes)
    graph.remove_unused()
    return remove_identities(graph)


def dedupe_buffers(graph: Graph) -> Graph:
    """Let ops share one tensor for identical small constants (shapes, axes, perms)."""
    graph = graph.copy()
    seen: dict = {}
    rename: dict = {}
    for name, tensor in graph.tensors.items():
        if tensor.data is None or tensor.nbytes > 1024 or tensor.quant is not None:
            continue
        key = (tensor.dtype.str, tensor.shape, tensor.data.tobytes())
        if key in seen:
            rename[name] = seen[key]
        else:
            seen[key] = name
    for op in graph.ops:
        op.inputs = [rename.get(n, n) for n in op.inputs]
    graph.remove_unused()
    return graph


# Ops that TFLite runs "hybrid" (float activations, int8 constant weights): input index of the weights.
HYBRID_WEIGHTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}


def fold_dequantized_constants(graph: Graph) -> tuple:
    """Store weights kept in a narrow type as the float32 constants they stand for; returns
    (graph, number of constants made float32).

    On-device models often keep weights as float16 (or int8 with scale and zero point) constants
    behind a DEQUANTIZE, or as int8 weights that a float CONV_2D / FULLY_CONNECTED reads directly
    (dynamic-range quantization). To the quantizer such weights are not constant float32, so they
    could never become int8 weights; here each DEQUANTIZE of a constant becomes its float32 output
    (computed by the runtime's own DEQUANTIZE kernel), and each hybrid op gets float32 weights.
    """
    from edgeq.runtime.op_runner import run_op

    graph = graph.copy()
    folded = 0
    kept = []
    for op in graph.ops:
        source = graph[op.inputs[0]] if op.type == "DEQUANTIZE" else None
        if source is None or not source.is_constant or op.outputs[0] in graph.outputs:
            kept.append(op)
            continue
        target = graph[op.outputs[0]]
        (values,) = run_op(op, graph, [source.data])
        target.data = values.astype(target.dtype).reshape(target.shape)
        folded += 1
    graph.ops = kept
    float32 = np.dtype(np.float32)
    as_float: dict = {}  # int8 weights -> their float32 constant, made once however many ops share them
    for op in graph.ops:
        index = HYBRID_WEIGHTS.get(op.type)
        if index is None or graph[op.inputs[0]].dtype != float32 or graph[op.outputs[0]].dtype != float32:
            continue
        weights = graph[op.inputs[index]]
        if not weights.is_constant or weights.dtype.kind not in "iu" or weights.quant is None:
            continue
        if weights.name not in as_float:
            dequantize = Op("DEQUANTIZE", [weights.name], [weights.name])
            (values,) = run_op(dequantize, graph, [weights.data])
            as_float[weights.name] = graph.add_constant(f"{weights.name}_float", values, np.float32)
            folded += 1
        op.inputs[index] = as_float[weights.name]
        op.options.pop("asymmetric_quantize_inputs", None)  # a hybrid-only option
    graph.remove_unused()
    return graph, folded


def lower_custom_ops(graph: Graph) -> tuple:
    """Custom ops with a builtin equivalent become it, so LiteRT runs the converted file without the
    custom op's registration and int8 can quantize it: MediaPipe's Convolution2DTransposeBias becomes
    TRANSPOSE_CONV with a bias. Returns (graph, number of ops rewritten)."""
    from edgeq.runtime.kernels.custom import TRANSPOSE_CONV_BIAS, transpose_conv_equivalent

    graph = graph.copy()
    lowered = 0
    for position, op in enumerate(graph.ops):
        if op.type != "CUSTOM" or op.options.get("custom_code") != TRANSPOSE_CONV_BIAS:
            continue
        options, output_shape = transpose_conv_equivalent(op, graph)
        shape = graph.add_constant(f"{op.outputs[0]}/output_shape", np.array(output_shape, np.int32))
        x, filters, bias = op.inputs
        graph.ops[position] = Op("TRANSPOSE_CONV", [shape, filters, x, bias], list(op.outputs), options, op.name)
        lowered += 1
    return graph, lowered


def clean_up(graph: Graph) -> Graph:
    """The standard pass pipeline after import."""
    graph = remove_identities(graph)
    graph = fold_batch_norm(graph)
    graph = cancel_transposes(graph)
    graph = fuse_activations(graph)
    graph = dedupe_buffers(graph)
    return graph
