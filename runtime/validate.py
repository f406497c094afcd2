"""Checks a graph before anything runs it: a model file is untrusted input.

``read_tflite`` refuses what cannot be read at all (bad identifier or version, indices out of range,
buffers of the wrong size, malformed quantization vectors). ``validate_graph`` then refuses what can
be read but must not run: shapes too large or of absurd rank, more memory than the machine has,
ops reading tensors nothing writes (or writes only later: a cycle), tensors written twice, options
of the wrong type, ops with an implausible number of inputs or outputs, quantization that no kernel
can use, and ops whose declared output does not follow from their constant inputs (a PAD whose
paddings ask for terabytes). Every refusal is one ``ModelError`` naming the tensor or op at fault.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import numpy as np

from edgeq.runtime.tflite_format import schema
from edgeq.runtime.ir import Graph, ModelError, Op, Tensor
from edgeq.runtime.padding import PADDINGS, dilated_size, output_size

MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**31 - 1
# Used when the available memory cannot be read (no /proc/meminfo, no sysconf).
FALLBACK_MEMORY_BYTES = 4 << 30

# (fewest inputs, most inputs, fewest outputs, most outputs); None = no upper bound.
ARITY = {
    "CONV_2D": (2, 3, 1, 1),
    "DEPTHWISE_CONV_2D": (2, 3, 1, 1),
    "FULLY_CONNECTED": (2, 3, 1, 2),
    "TRANSPOSE_CONV": (3, 4, 1, 1),
    "BATCH_MATMUL": (2, 2, 1, 1),
    "PRELU": (2, 2, 1, 1),
    "MAX_POOL_2D": (1, 1, 1, 1),
    "AVERAGE_POOL_2D": (1, 1, 1, 1),
    "QUANTIZE": (1, 1, 1, 1),
    "DEQUANTIZE": (1, 1, 1, 1),
    "RESIZE_BILINEAR": (2, 2, 1, 1),
    "RESIZE_NEAREST_NEIGHBOR": (2, 2, 1, 1),
    "RESHAPE": (1, 2, 1, 1),
    "TRANSPOSE": (2, 2, 1, 1),
    "CONCATENATION": (1, None, 1, 1),
    "PAD": (2, 2, 1, 1),
    "PADV2": (2, 3, 1, 1),
    "MIRROR_PAD": (2, 2, 1, 1),
    "SQUEEZE": (1, 1, 1, 1),
    "EXPAND_DIMS": (2, 2, 1, 1),
    "STRIDED_SLICE": (4, 4, 1, 1),
    "SLICE": (3, 3, 1, 1),
    "GATHER": (2, 2, 1, 1),
    "SPLIT": (2, 2, 1, None),
    "SPLIT_V": (3, 3, 1, None),
    "TILE": (2, 2, 1, 1),
    "PACK": (1, None, 1, 1),
    "UNPACK": (1, 1, 1, None),
    "BROADCAST_TO": (2, 2, 1, 1),
    "SHAPE": (1, 1, 1, 1),
    "CAST": (1, 1, 1, 1),
    "SELECT_V2": (3, 3, 1, 1),
    "ARG_MAX": (2, 2, 1, 1),
    "ARG_MIN": (2, 2, 1, 1),
    "TOPK_V2": (2, 2, 2, 2),
    "CUMSUM": (2, 2, 1, 1),
    "CUSTOM": (0, None, 1, None),  # each custom op's kernel checks its own inputs
}
_BINARY = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW", "FLOOR_MOD")
_COMPARISONS = ("EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "LOGICAL_AND", "LOGICAL_OR")
_REDUCERS = ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "REDUCE_ANY", "REDUCE_ALL")
ARITY.update({op_type: (2, 2, 1, 1) for op_type in _BINARY + _COMPARISONS + _REDUCERS})
_UNARY_SAME_SHAPE = ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "EXP",
                     "LOG", "SQRT", "RSQRT", "ABS", "NEG", "FLOOR", "CEIL", "ROUND", "SIN", "COS", "SIGN", "ELU",
                     "SQUARE", "GELU", "LEAKY_RELU", "SOFTMAX", "LOG_SOFTMAX", "QUANTIZE", "DEQUANTIZE", "CAST",
                     "LOCAL_RESPONSE_NORMALIZATION", "L2_NORMALIZATION", "LOGICAL_NOT", "DENSIFY")
_ONE_IN_ONE_OUT = _UNARY_SAME_SHAPE + ("DEPTH_TO_SPACE", "SPACE_TO_DEPTH")
ARITY.update({op_type: (1, 1, 1, 1) for op_type in _ONE_IN_ONE_OUT if op_type not in ARITY})
# Inputs that may be omitted ("" / index -1), by op; every other input must be present.
_OPTIONAL_INPUTS = {
    "CONV_2D": {2},
    "DEPTHWISE_CONV_2D": {2},
    "FULLY_CONNECTED": {2},
    "TRANSPOSE_CONV": {3},
    "RESHAPE": {1},
    "PADV2": {2},
}
# Every op with a kernel is listed above (tests/test_op_catalogue.py holds them to it), and an op
# without one is refused before its arity is looked at; this is only a fallback.
DEFAULT_ARITY = (1, 1, 1, 1)
_QUANTIZED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo; else the free physical pages; else a fixed 4 GiB."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_MEMORY_BYTES


def validate_graph(graph: Graph, max_memory_bytes: Optional[int] = None) -> dict:
    """Raise ModelError, naming the tensor or op at fault, unless ``graph`` is safe to prepare and run.

    ``max_memory_bytes`` bounds the bytes of all tensors together (default: the available memory).
    Returns every tensor's shape as its op gives it (see ``infer_shapes``), for ``with_implied_shapes``.
    """
    for tensor in graph.tensors.values():
        check_tensor(tensor)
    check_boundary(graph)
    check_dataflow(graph)
    check_kernels_exist(graph)
    for position, op in enumerate(graph.ops):
        where = f"op #{position} ({op})"
        check_arity(op, where)
        check_options(op, where)
    shapes = infer_shapes(graph)
    check_memory(graph, shapes, available_memory_bytes() if max_memory_bytes is None else int(max_memory_bytes))
    check_kernel_requirements(with_implied_shapes(graph, shapes))
    return shapes


def with_implied_shapes(graph: Graph, shapes: dict) -> Graph:
    """``graph``, or a copy of it whose op outputs take the shapes their ops give.

    Kernels size their buffers from the graph's shapes in prepare; a file declaring a CONV_2D output
    of 25 channels for a 32-channel filter must not make one write past a 25-channel buffer. LiteRT
    likewise resizes every output in prepare and ignores what the file declares.
    """
    changed = {name: shape for name, shape in shapes.items() if tuple(graph.tensors[name].shape) != shape}
    if not changed:
        return graph
    graph = graph.copy()
    for name, shape in changed.items():
        graph.tensors[name] = dataclasses.replace(graph.tensors[name], shape=shape)
    return graph


# -- tensors -----------------------------------------------------------------------------------

def element_count(shape) -> int:
    return math.prod(int(d) for d in shape)


def check_tensor(tensor) -> None:
    name = f"tensor '{tensor.name}'"
    shape = tensor.shape
    if len(shape) > MAX_RANK:
        raise ModelError(f"{name}: rank {len(shape)} exceeds the largest supported rank {MAX_RANK}")
    if any(d < 0 or d > MAX_DIM for d in shape):
        raise ModelError(f"{name}: shape {list(shape)} has a dimension outside 0..{MAX_DIM}")
    if element_count(shape) > MAX_ELEMENTS:
        raise ModelError(f"{name}: shape {list(shape)} has more than {MAX_ELEMENTS} elements")
    if tensor.dtype not in schema.DTYPE_TO_TENSOR_TYPE:
        raise ModelError(f"{name}: dtype {tensor.dtype} has no TFLite tensor type")
    if tensor.data is not None and tuple(tensor.data.shape) != tuple(shape):
        raise ModelError(f"{name}: data of shape {list(tensor.data.shape)} for shape {list(shape)}")
    if tensor.quant is not None:
        check_quantization(tensor, name)


def check_quantization(tensor, name: str) -> None:
    quant = tensor.quant
    scales, zero_points = np.asarray(quant.scale), np.asarray(quant.zero_point)
    if scales.size == 0:
        raise ModelError(f"{name}: quantization without a scale")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise ModelError(f"{name}: quantization scales must be finite and non-negative, got {_head(scales)}")
    if tensor.dtype in _QUANTIZED_DTYPES and tensor.data is None and not np.all(scales > 0):
        raise ModelError(f"{name}: activation quantization scale must be positive, got {_head(scales)}")
    if zero_points.size not in (1, scales.size):
        raise ModelError(f"{name}: {zero_points.size} zero points for {scales.size} scales")
    if scales.size > 1:
        axis = int(quant.axis)
        if not 0 <= axis < len(tensor.shape) or tensor.shape[axis] != scales.size:
            raise ModelError(
                f"{name}: {scales.size} per-channel scales do not match dimension {axis} of shape {list(tensor.shape)}")
    if tensor.dtype.kind in "iu" and tensor.dtype.itemsize <= 2:
        info = np.iinfo(tensor.dtype)
        if np.any(zero_points < info.min) or np.any(zero_points > info.max):
            raise ModelError(f"{name}: zero point {_head(zero_points)} is outside the range of {tensor.dtype}")


def _head(values) -> list:
    values = np.ravel(values)
    return values[:4].tolist() + (["..."] if values.size > 4 else [])


def tensor_bytes(tensor, shapes: dict) -> int:
    """The bytes a tensor takes at the larger of its declared shape and the shape its op gives."""
    count = element_count(tensor.shape)
    if tensor.name in shapes:
        count = max(count, element_count(shapes[tensor.name]))
    return count * tensor.dtype.itemsize


def check_memory(graph: Graph, shapes: dict, max_memory_bytes: int) -> None:
    sizes = {name: tensor_bytes(t, shapes) for name, t in graph.tensors.items()}
    needed = sum(sizes.values())
    if needed > max_memory_bytes:
        largest = max(sizes, key=sizes.get)
        raise ModelError(
            f"the model's tensors need {needed:,} bytes, more than the limit of {max_memory_bytes:,}"
            f" (largest: tensor '{largest}', {sizes[largest]:,} bytes)")


# -- graph structure ---------------------------------------------------------------------------

def check_boundary(graph: Graph) -> None:
    for kind, names in (("input", graph.inputs), ("output", graph.outputs)):
        for name in names:
            if name not in graph.tensors:
                raise ModelError(f"graph {kind} '{name}' is not a tensor of the graph")
    if len(set(graph.inputs)) != len(graph.inputs):
        raise ModelError(f"a tensor is listed twice among the graph inputs {graph.inputs}")
    for name in graph.inputs:
        if graph.tensors[name].is_constant:
            raise ModelError(f"graph input '{name}' is a constant")


def check_dataflow(graph: Graph) -> None:
    """Ops run in their stored order: each must read only inputs, constants and earlier outputs."""
    written_by = {}
    for position, op in enumerate(graph.ops):
        for name in op.outputs:
            if name in written_by:
                raise ModelError(f"tensor '{name}' is written by op #{written_by[name]} and again by op #{position} ({op})")
            written_by[name] = position
    available = set(graph.inputs) | {name for name, t in graph.tensors.items() if t.is_constant}
    for position, op in enumerate(graph.ops):
        where = f"op #{position} ({op})"
        for name in list(op.inputs) + list(op.outputs):
            if name and name not in graph.tensors:
                raise ModelError(f"{where} refers to unknown tensor '{name}'")
        for name in op.inputs:
            if not name or name in available:
                continue
            if name in written_by:
                raise ModelError(
                    f"{where} reads tensor '{name}' before op #{written_by[name]} writes it"
                    " (ops out of order, or a cycle)")
            raise ModelError(f"{where} reads tensor '{name}', which no op writes and which is not a graph input")
        for name in op.outputs:
            if name in graph.inputs or graph.tensors[name].is_constant:
                kind = "graph input" if name in graph.inputs else "constant"
                raise ModelError(f"{where} writes tensor '{name}', a {kind}")
        available.update(op.outputs)
    for name in graph.outputs:
        if name not in available:
            raise ModelError(f"graph output '{name}' is written by no op and is not an input or constant")


def check_kernels_exist(graph: Graph) -> None:
    from edgeq.runtime.kernels import has_kernel, load_all_kernels

    load_all_kernels()
    missing = sorted({op.kind for op in graph.ops if not has_kernel(op)})
    if missing:
        raise ModelError(f"no kernel for op type(s): {', '.join(missing)}")


def check_kernel_requirements(graph: Graph) -> None:
    """Each op's check declared next to its kernel (``runtime.kernels.check``): what the kernel cannot
    run is refused here, at load, and not later in allocate_tensors."""
    from edgeq.runtime.kernels import CHECKS, load_all_kernels

    from edgeq.runtime.kernels.common import check_fused_activation

    load_all_kernels()
    for position, op in enumerate(graph.ops):
        try:
            check_fused_activation(op, graph)
            kernel_check = CHECKS.get(op.type)
            if kernel_check is not None:
                kernel_check(op, graph)
        except ModelError as error:
            raise ModelError(f"op #{position} ({op}): {error}") from None


def check_arity(op: Op, where: str) -> None:
    fewest_in, most_in, fewest_out, most_out = ARITY.get(op.type, DEFAULT_ARITY)
    count_in, count_out = len(op.inputs), len(op.outputs)
    if count_in < fewest_in or (most_in is not None and count_in > most_in):
        raise ModelError(f"{where}: {count_in} inputs, expected {_count_range(fewest_in, most_in)}")
    if count_out < fewest_out or (most_out is not None and count_out > most_out):
        raise ModelError(f"{where}: {count_out} outputs, expected {_count_range(fewest_out, most_out)}")
    optional = _OPTIONAL_INPUTS.get(op.type, set())
    for position, name in enumerate(op.inputs):
        if not name and position not in optional:
            raise ModelError(f"{where}: input {position} is required but omitted")


def _count_range(fewest, most) -> str:
    if most is None:
        return f"at least {fewest}"
    return str(fewest) if fewest == most else f"{fewest} to {most}"


def check_options(op: Op, where: str) -> None:
    """Every option the schema knows for this op has a value of the field's type."""
    table = schema.options_table_name(op.type)
    if table is None:
        return
    for field in schema.options_fields(table):
        if field.name not in op.options or field.kind == "unsupported":
            continue
        value = op.options[field.name]
        if not _option_value_fits(field, value):
            raise ModelError(f"{where}: option '{field.name}' = {value!r} is not a valid {_field_kind(field)}")


def _option_value_fits(field, value) -> bool:
    if field.kind == "vector":
        return isinstance(value, (list, tuple, np.ndarray)) and all(_is_int(v) for v in np.ravel(value))
    if field.enum is not None:
        return isinstance(value, str) and value in schema._enum_values(field.enum)
    if field.scalar_type == "Bool":
        return isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1))
    if field.scalar_type.startswith("Float"):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return _is_int(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _field_kind(field) -> str:
    if field.kind == "vector":
        return "list of integers"
    if field.enum is not None:
        return f"{field.enum.__name__} name"
    return field.scalar_type.lower()


# -- shape inference ---------------------------------------------------------------------------
# LiteRT recomputes every output shape in prepare and ignores the declared one; kernels here do the
# same where an output follows from constants (PAD's paddings, TILE's multiples). So the shapes that
# bound memory are the ones the ops give, propagated from the inputs; a declared output shape that
# differs is not refused (it is still counted: a kernel may allocate it).

def infer_shapes(graph: Graph) -> dict:
    """Name -> the shape each op will give its outputs, for the ops that can make data larger;
    ModelError when an op's inputs do not fit together or ask for an impossible shape."""
    shapes = {name: tuple(t.shape) for name, t in graph.tensors.items()}
    for position, op in enumerate(graph.ops):
        where = f"op #{position} ({op})"
        rule = SHAPE_RULES.get(op.type)
        if rule is None:
            continue
        inputs = [_Input(graph.tensors[name], shapes[name]) if name else None for name in op.inputs]
        try:
            implied = rule(op, inputs, where)
        except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as error:
            if isinstance(error, ModelError):
                raise
            raise ModelError(f"{where}: inputs do not fit together ({type(error).__name__}: {error})") from None
        if implied is None:
            continue
        for name, shape in zip(op.outputs, implied if isinstance(implied, list) else [implied]):
            shape = tuple(int(d) for d in shape)
            _check_implied_shape(shape, name, where)
            shapes[name] = shape
    return shapes


class _Input:
    """An op input for the shape rules: its propagated shape and, if constant, its values."""

    def __init__(self, tensor, shape):
        self.name, self.shape, self.data, self.dtype = tensor.name, tuple(shape), tensor.data, tensor.dtype


def _check_implied_shape(shape, name, where) -> None:
    if len(shape) > MAX_RANK or any(d < 0 or d > MAX_DIM for d in shape) or element_count(shape) > MAX_ELEMENTS:
        raise ModelError(f"{where}: would make output '{name}' of shape {list(shape)}, beyond the supported limits"
                         f" (rank <= {MAX_RANK}, at most {MAX_ELEMENTS} elements)")


def _rank(inp, ranks, where, what="input"):
    if len(inp.shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ModelError(f"{where}: {what} '{inp.name}' has shape {list(inp.shape)}; rank {expected} expected")
    return inp.shape


def _constant(inp, where, what) -> np.ndarray:
    if inp is None or inp.data is None:
        raise ModelError(f"{where}: {what} must be a constant tensor")
    return np.ravel(inp.data).astype(np.int64)


def _positive_option(op, key, where) -> int:
    value = int(op.options.get(key, 1))
    if not 1 <= value <= MAX_DIM:
        raise ModelError(f"{where}: option '{key}' = {value} must be at least 1")
    return value


def _window_output(op, in_shape, k_h, k_w, channels, where) -> tuple:
    n, h, w, _ = in_shape
    padding = op.options.get("padding", "SAME")
    if padding not in PADDINGS:
        raise ModelError(f"{where}: padding {padding!r} is not SAME or VALID")
    sizes = []
    for size, k, axis in ((h, k_h, "h"), (w, k_w, "w")):
        stride = _positive_option(op, f"stride_{axis}", where)
        dilation = _positive_option(op, f"dilation_{axis}_factor", where)
        # Kernels work (and pad) per window position: a window far beyond the input only reads
        # padding, and a 8-million-wide one runs for minutes. Twice the input covers every real model.
        extent = dilated_size(k, dilation)
        if extent > 2 * size + 1:
            raise ModelError(f"{where}: a window {extent} wide (filter {k}, dilation {dilation}) along {axis}"
                             f" is more than twice the input's {size}")
        sizes.append(max(output_size(padding, size, k, stride, dilation), 0))
    return (n, sizes[0], sizes[1], channels)


def _conv_shape(op, inputs, where):
    data = _rank(inputs[0], (4,), where)
    weights = _rank(inputs[1], (4,), where, "filter")
    if op.type == "CONV_2D":
        channels = weights[0]
        if weights[3] == 0 or data[3] % weights[3]:
            raise ModelError(f"{where}: input depth {data[3]} is not a multiple of filter depth {weights[3]}")
    else:
        channels = weights[3]
    _check_bias(inputs, channels, where)
    return _window_output(op, data, weights[1], weights[2], channels, where)


def _check_bias(inputs, channels, where) -> None:
    bias = inputs[2] if len(inputs) > 2 else None
    if bias is not None and element_count(bias.shape) != channels:
        raise ModelError(f"{where}: bias '{bias.name}' has {element_count(bias.shape)} values for {channels} channels")


def _pool_shape(op, inputs, where):
    data = _rank(inputs[0], (4,), where)
    k_h = _positive_option(op, "filter_height", where)
    k_w = _positive_option(op, "filter_width", where)
    return _window_output(op, data, k_h, k_w, data[3], where)


def _transpose_conv_shape(op, inputs, where):
    output_shape = _constant(inputs[0], where, "output_shape")
    _rank(inputs[2], (4,), where)
    weights = _rank(inputs[1], (4,), where, "filter")
    if output_shape.size != 4:
        raise ModelError(f"{where}: output_shape {output_shape.tolist()} is not 4 values")
    data = inputs[2].shape
    if weights[3] != data[3] or output_shape[3] != weights[0]:
        raise ModelError(f"{where}: filter {list(weights)} does not fit input {list(data)}"
                         f" and output_shape {output_shape.tolist()}")
    _check_bias(inputs[1:], weights[0], where) if len(inputs) > 3 else None
    for key in ("stride_h", "stride_w"):
        _positive_option(op, key, where)
    return tuple(output_shape.tolist())


def _fully_connected_shape(op, inputs, where):
    weights = _rank(inputs[1], (2,), where, "weights")
    data = inputs[0].shape
    out_c, in_c = weights
    count = element_count(data)
    if in_c == 0 or count % in_c:
        raise ModelError(f"{where}: input '{inputs[0].name}' {list(data)} does not split into rows of {in_c}")
    _check_bias(inputs, out_c, where)
    if op.options.get("keep_num_dims", False):
        if not data or data[-1] != in_c:
            raise ModelError(f"{where}: keep_num_dims needs an input whose last dimension is {in_c}")
        return data[:-1] + (out_c,)
    return (count // in_c, out_c)


def _batch_matmul_shape(op, inputs, where):
    a, b = (_rank(inp, range(2, MAX_RANK + 1), where) for inp in inputs[:2])
    a_rows, a_inner = (a[-1], a[-2]) if op.options.get("adj_x", False) else (a[-2], a[-1])
    b_inner, b_cols = (b[-1], b[-2]) if op.options.get("adj_y", False) else (b[-2], b[-1])
    if a_inner != b_inner:
        raise ModelError(f"{where}: inner dimensions {a_inner} and {b_inner} differ")
    return np.broadcast_shapes(a[:-2], b[:-2]) + (a_rows, b_cols)


def _broadcast_shape(op, inputs, where):
    a, b = inputs[0].shape, inputs[1].shape
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise ModelError(f"{where}: input shapes {list(a)} and {list(b)} do not broadcast") from None


def _select_shape(op, inputs, where):
    shapes = [t.shape for t in inputs]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ModelError(f"{where}: input shapes {[list(s) for s in shapes]} do not broadcast") from None


def _same_shape(op, inputs, where):
    return inputs[0].shape


def _pad_shape(op, inputs, where):
    data = inputs[0].shape
    paddings = _constant(inputs[1], where, "paddings")
    if paddings.size != 2 * len(data):
        raise ModelError(f"{where}: {paddings.size} padding values for an input of rank {len(data)}")
    pairs = paddings.reshape(-1, 2).tolist()
    if any(not 0 <= p <= MAX_DIM for pair in pairs for p in pair):
        raise ModelError(f"{where}: paddings {pairs} must be within 0..{MAX_DIM}")
    if op.type == "MIRROR_PAD":
        slack = 0 if op.options.get("mode", "REFLECT") == "REFLECT" else 1
        if any(max(a, b) > d - 1 + slack for d, (a, b) in zip(data, pairs)):
            raise ModelError(f"{where}: mirror paddings {pairs} exceed the input shape {list(data)}")
    return tuple(d + a + b for d, (a, b) in zip(data, pairs))


def _tile_shape(op, inputs, where):
    data = inputs[0].shape
    # A multiples tensor computed at run time could ask for any amount of memory: it must be constant.
    multiples = _constant(inputs[1], where, "multiples")
    if multiples.size != len(data) or (multiples < 0).any() or (multiples > MAX_DIM).any():
        raise ModelError(f"{where}: multiples {multiples.tolist()} do not fit an input of shape {list(data)}")
    return tuple(d * m for d, m in zip(data, multiples.tolist()))


def _broadcast_to_shape(op, inputs, where):
    target = _constant(inputs[1], where, "shape")
    if target.size > MAX_RANK or (target < 0).any() or (target > MAX_DIM).any():
        raise ModelError(f"{where}: target shape {target.tolist()} is not a valid shape")
    target = tuple(target.tolist())
    try:
        return np.broadcast_shapes(inputs[0].shape, target)
    except ValueError:
        raise ModelError(f"{where}: input {list(inputs[0].shape)} does not broadcast to {list(target)}") from None


def _resize_shape(op, inputs, where):
    data = _rank(inputs[0], (4,), where)
    size = _constant(inputs[1], where, "size")
    if size.size != 2 or (size < 1).any() or (size > MAX_DIM).any():
        raise ModelError(f"{where}: size {size.tolist()} must be two positive integers")
    return (data[0], int(size[0]), int(size[1]), data[3])


def _concatenation_shape(op, inputs, where):
    first = inputs[0].shape
    rank = len(first)
    axis = int(op.options.get("axis", 0))
    if not -rank <= axis < rank:
        raise ModelError(f"{where}: axis {axis} is out of range for rank {rank}")
    axis %= rank
    for inp in inputs[1:]:
        if len(inp.shape) != rank or any(a != b for i, (a, b) in enumerate(zip(inp.shape, first)) if i != axis):
            raise ModelError(f"{where}: input '{inp.name}' {list(inp.shape)} does not concatenate with {list(first)}")
    return first[:axis] + (sum(inp.shape[axis] for inp in inputs),) + first[axis + 1:]


def _pack_shape(op, inputs, where):
    first = inputs[0].shape
    axis = int(op.options.get("axis", 0))
    if not -(len(first) + 1) <= axis <= len(first):
        raise ModelError(f"{where}: axis {axis} is out of range for rank {len(first) + 1}")
    axis %= len(first) + 1
    if any(inp.shape != first for inp in inputs):
        raise ModelError(f"{where}: the inputs' shapes differ")
    return first[:axis] + (len(inputs),) + first[axis:]


def _transpose_shape(op, inputs, where):
    permutation = _constant(inputs[1], where, "perm").tolist()
    data = inputs[0].shape
    if sorted(permutation) != list(range(len(data))):
        raise ModelError(f"{where}: perm {permutation} is not a permutation of {len(data)} axes")
    return tuple(data[a] for a in permutation)


def _gather_shape(op, inputs, where):
    params, indices = inputs[0].shape, inputs[1].shape
    rank = len(params)
    axis = int(op.options.get("axis", 0))
    if not -rank <= axis < rank:
        raise ModelError(f"{where}: axis {axis} is out of range for rank {rank}")
    axis %= rank
    if inputs[1].data is not None:
        values = np.ravel(inputs[1].data).astype(np.int64)
        if values.size and (values.min() < -params[axis] or values.max() >= params[axis]):
            raise ModelError(f"{where}: an index is outside 0..{params[axis] - 1}")
    return params[:axis] + indices + params[axis + 1:]


def _reshape_shape(op, inputs, where):
    """The target shape (the constant shape input, else the new_shape option) with its -1 resolved;
    None for a shape computed at run time."""
    shape_input = inputs[1] if len(inputs) > 1 else None
    if shape_input is not None and shape_input.data is None:
        listed = len(shape_input.shape) == 1 and shape_input.shape[0] <= MAX_RANK
        if shape_input.dtype not in (np.int32, np.int64) or not listed:
            raise ModelError(f"{where}: shape input '{shape_input.name}' ({shape_input.dtype},"
                             f" {list(shape_input.shape)}) is not a list of at most {MAX_RANK} int32 dimensions")
        return None
    target = shape_input.data if shape_input is not None else op.options.get("new_shape")
    if target is None:
        return None
    target = [int(d) for d in np.ravel(target)]
    if len(target) > MAX_RANK:
        raise ModelError(f"{where}: target shape of rank {len(target)} exceeds {MAX_RANK}")
    count = element_count(inputs[0].shape)
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise ModelError(f"{where}: target shape {target} is not a shape (one -1 at most)")
    if -1 in target:
        known = element_count(d for d in target if d != -1)
        target[target.index(-1)] = count // known if known else 0
    if element_count(target) != count:
        raise ModelError(f"{where}: cannot reshape input '{inputs[0].name}' {list(inputs[0].shape)}"
                         f" ({count} values) to {target}")
    return tuple(target)


def _axis(inp, rank, where, what="axis", extra=0) -> int:
    """A constant one-value axis input, checked against ``rank`` (+ ``extra`` for an inserted axis)."""
    values = _constant(inp, where, what)
    if values.size != 1:
        raise ModelError(f"{where}: {what} {values.tolist()} must be one value")
    return _axis_value(int(values[0]), rank + extra, where, what)


def _axis_value(axis, rank, where, what="axis") -> int:
    if not -rank <= axis < rank:
        raise ModelError(f"{where}: {what} {axis} is out of range for rank {rank}")
    return axis % rank


def _indexed_shape(shape, index) -> tuple:
    """The shape numpy gives ``x[index]`` for an ``x`` of ``shape``, without allocating ``x``."""
    return np.broadcast_to(np.zeros((), np.int8), shape)[index].shape


def _squeeze_shape(op, inputs, where):
    data = inputs[0].shape
    dims = [int(d) for d in (op.options.get("squeeze_dims") or [])]
    axes = {_axis_value(d, len(data), where, "squeeze dimension") for d in dims}
    if not dims:
        axes = {i for i, d in enumerate(data) if d == 1}
    if any(data[a] != 1 for a in axes):
        raise ModelError(f"{where}: squeeze_dims {dims} name a dimension of {list(data)} that is not 1")
    return tuple(d for i, d in enumerate(data) if i not in axes)


def _expand_dims_shape(op, inputs, where):
    data = inputs[0].shape
    axis = _axis(inputs[1], len(data), where, extra=1)
    return data[:axis] + (1,) + data[axis:]


def _slice_shape(op, inputs, where):
    from edgeq.runtime.kernels.shape_ops import slice_index

    begin, size = _constant(inputs[1], where, "begin"), _constant(inputs[2], where, "size")
    try:
        return _indexed_shape(inputs[0].shape, slice_index(inputs[0].shape, begin, size))
    except ModelError as error:
        raise ModelError(f"{where}: {error}") from None


def _strided_slice_shape(op, inputs, where):
    from edgeq.runtime.kernels.shape_ops import strided_slice_index

    begin, end, strides = (_constant(inputs[i], where, what) for i, what in ((1, "begin"), (2, "end"), (3, "strides")))
    try:
        index = strided_slice_index(inputs[0].shape, begin, end, strides, op.options)
    except ModelError as error:
        raise ModelError(f"{where}: {error}") from None
    return _indexed_shape(inputs[0].shape, index)


def _split_shape(op, inputs, where):
    data = inputs[1].shape  # SPLIT takes (axis, input)
    axis = _axis(inputs[0], len(data), where)
    count = int(op.options.get("num_splits", len(op.outputs)) or len(op.outputs))
    if count != len(op.outputs) or data[axis] % count:
        raise ModelError(f"{where}: dimension {axis} of {list(data)} does not split into {len(op.outputs)} outputs"
                         f" (num_splits {count})")
    return [data[:axis] + (data[axis] // count,) + data[axis + 1:]] * count


def _split_v_shape(op, inputs, where):
    data = inputs[0].shape
    axis = _axis(inputs[2], len(data), where)
    sizes = _constant(inputs[1], where, "size_splits").tolist()
    if sizes.count(-1) == 1:
        sizes[sizes.index(-1)] = data[axis] - (sum(sizes) + 1)
    if len(sizes) != len(op.outputs) or any(s < 0 for s in sizes) or sum(sizes) != data[axis]:
        raise ModelError(f"{where}: size_splits {_constant(inputs[1], where, 'size_splits').tolist()} do not split"
                         f" dimension {axis} of {list(data)} into {len(op.outputs)} outputs")
    return [data[:axis] + (s,) + data[axis + 1:] for s in sizes]


def _unpack_shape(op, inputs, where):
    data = inputs[0].shape
    axis = _axis_value(int(op.options.get("axis", 0)), len(data), where)
    count = int(op.options.get("num", 0) or data[axis])
    if count != data[axis] or count != len(op.outputs):
        raise ModelError(f"{where}: {len(op.outputs)} outputs (num {count}) for dimension {axis} of {list(data)}")
    return [data[:axis] + data[axis + 1:]] * count


def _depth_to_space_shape(op, inputs, where):
    n, h, w, c = _rank(inputs[0], (4,), where)
    block = _positive_option(op, "block_size", where)
    if c % (block * block):
        raise ModelError(f"{where}: depth {c} is not a multiple of block_size² = {block * block}")
    return (n, h * block, w * block, c // (block * block))


def _space_to_depth_shape(op, inputs, where):
    n, h, w, c = _rank(inputs[0], (4,), where)
    block = _positive_option(op, "block_size", where)
    if h % block or w % block:
        raise ModelError(f"{where}: height {h} and width {w} are not multiples of block_size {block}")
    return (n, h // block, w // block, c * block * block)


def _reduce_shape(op, inputs, where):
    data = inputs[0].shape
    axes = {_axis_value(int(a), len(data), where) for a in _constant(inputs[1], where, "axis").tolist()}
    if op.options.get("keep_dims", False):
        return tuple(1 if i in axes else d for i, d in enumerate(data))
    return tuple(d for i, d in enumerate(data) if i not in axes)


def _arg_min_max_shape(op, inputs, where):
    data = inputs[0].shape
    axis = _axis(inputs[1], len(data), where)
    return data[:axis] + data[axis + 1:]


def _topk_shape(op, inputs, where):
    data = _rank(inputs[0], range(1, MAX_RANK + 1), where)
    k = _constant(inputs[1], where, "k")
    if k.size != 1 or not 0 <= int(k[0]) <= data[-1]:
        raise ModelError(f"{where}: k = {k.tolist()} is outside 0..{data[-1]}")
    return [data[:-1] + (int(k[0]),)] * 2


def _cumsum_shape(op, inputs, where):
    _axis(inputs[1], len(inputs[0].shape), where)
    return inputs[0].shape


def _custom_shape(op, inputs, where):
    """A custom op's output shape, from the function its kernel declares (``kernels.custom``)."""
    from edgeq.runtime.kernels.custom import output_shape

    tensors = [Tensor(inp.name, inp.shape, inp.dtype) for inp in inputs if inp is not None]
    try:
        return output_shape(op, Graph(tensors))
    except ModelError as error:
        raise ModelError(f"{where}: {str(error).removeprefix(f'op {op}: ')}") from None


def _shape_shape(op, inputs, where):
    return (len(inputs[0].shape),)


SHAPE_RULES = {
    "CONV_2D": _conv_shape,
    "DEPTHWISE_CONV_2D": _conv_shape,
    "TRANSPOSE_CONV": _transpose_conv_shape,
    "FULLY_CONNECTED": _fully_connected_shape,
    "BATCH_MATMUL": _batch_matmul_shape,
    "MAX_POOL_2D": _pool_shape,
    "AVERAGE_POOL_2D": _pool_shape,
    "PAD": _pad_shape,
    "PADV2": _pad_shape,
    "MIRROR_PAD": _pad_shape,
    "TILE": _tile_shape,
    "BROADCAST_TO": _broadcast_to_shape,
    "RESIZE_BILINEAR": _resize_shape,
    "RESIZE_NEAREST_NEIGHBOR": _resize_shape,
    "CONCATENATION": _concatenation_shape,
    "PACK": _pack_shape,
    "TRANSPOSE": _transpose_shape,
    "GATHER": _gather_shape,
    "RESHAPE": _reshape_shape,
    "PRELU": _broadcast_shape,
    "SELECT_V2": _select_shape,
    "SQUEEZE": _squeeze_shape,
    "EXPAND_DIMS": _expand_dims_shape,
    "SLICE": _slice_shape,
    "STRIDED_SLICE": _strided_slice_shape,
    "SPLIT": _split_shape,
    "SPLIT_V": _split_v_shape,
    "UNPACK": _unpack_shape,
    "DEPTH_TO_SPACE": _depth_to_space_shape,
    "SPACE_TO_DEPTH": _space_to_depth_shape,
    "ARG_MAX": _arg_min_max_shape,
    "ARG_MIN": _arg_min_max_shape,
    "TOPK_V2": _topk_shape,
    "CUMSUM": _cumsum_shape,
    "SHAPE": _shape_shape,
    "CUSTOM": _custom_shape,
    **{op_type: _reduce_shape for op_type in _REDUCERS},
    **{op_type: _broadcast_shape for op_type in _BINARY + _COMPARISONS},
    **{op_type: _same_shape for op_type in _UNARY_SAME_SHAPE},
}
