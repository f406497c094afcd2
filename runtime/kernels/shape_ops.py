"""Ops that move or select data without arithmetic: reshape, transpose, concat, pad, slices, ...

Every kernel works for a batch larger than the graph's static one on the first axis: shapes fixed
in the model are rescaled on that axis (``batched_shape``), and a slice that takes the whole static
batch takes the whole actual batch.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.kernels import check, register
from edgeq.runtime.kernels.common import (
    batched_shape,
    constant_input,
    fused_activation,
    input_tensor,
    with_activation,
)
from edgeq.runtime.ir import ModelError


def _static_batch(shape):
    return shape[0] if shape else 1


def _resolve_shape(target, size, op):
    target = [int(d) for d in target]
    if target.count(-1) > 1:
        raise ModelError(f"op {op}: more than one -1 in shape {target}")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        target[target.index(-1)] = size // known if known else 0
    return tuple(target)


@register("RESHAPE")
def prepare_reshape(op, graph):
    in_shape = graph[op.inputs[0]].shape
    shape_tensor = input_tensor(op, graph, 1)
    if shape_tensor is not None and shape_tensor.data is None:
        def reshape_dynamic(x, shape):
            return x.reshape(tuple(int(d) for d in np.ravel(shape)))

        return reshape_dynamic
    if shape_tensor is not None:
        target = np.ravel(shape_tensor.data)
    elif op.options.get("new_shape") is not None:
        target = op.options["new_shape"]
    else:
        target = graph[op.outputs[0]].shape
    target = _resolve_shape(target, int(np.prod(in_shape, dtype=np.int64)), op)
    static_batch = _static_batch(in_shape)
    if not in_shape or not target:
        return lambda x, _shape=None: x.reshape(target)

    def reshape(x, _shape=None):
        if x.shape[0] == static_batch:
            return x.reshape(target)
        return x.reshape(batched_shape(target, static_batch, x.shape[0]))

    return reshape


@register("TRANSPOSE")
def prepare_transpose(op, graph):
    permutation = tuple(int(a) for a in constant_input(op, graph, 1, "perm"))

    def transpose(x, _perm=None):
        return x.transpose(permutation)

    return transpose


@register("CONCATENATION")
def prepare_concatenation(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axis = op.options.get("axis", 0) % max(rank, 1)

    align = _batch_aligner(op, graph, axis)

    def concatenation(*xs):
        return np.concatenate(align(xs), axis=axis)

    output = graph[op.outputs[0]]
    quantized = output.dtype in (np.int8, np.uint8, np.int16) and output.quant is not None
    if _is_plain_copy(op, graph, axis, quantized):
        return _native_concatenation(op, graph, axis)
    if quantized:
        return _quantized_concatenation(op, graph, axis, align)
    return with_activation(concatenation, fused_activation(op))


def _is_plain_copy(op, graph, axis, quantized) -> bool:
    """Whether the join is a byte copy the native kernel does: computed inputs of the output's type
    and quantization (nothing to requantize, no activation), joined on an axis after the batch (so
    each input's bytes per outer index are fixed)."""
    from edgeq.runtime import native

    output = graph[op.outputs[0]]
    if native.isa() is None or axis == 0 or not op.inputs or len(output.shape) < 2:
        return False
    if not quantized and fused_activation(op) is not None:
        return False
    for name in op.inputs:
        tensor = graph[name]
        if tensor.data is not None or tensor.dtype != output.dtype or len(tensor.shape) != len(output.shape):
            return False
        if quantized and (tensor.quant is None or not _same_quantization(tensor.quant, output.quant)):
            return False
    return True


def _same_quantization(quant, output_quant) -> bool:
    return (np.float32(quant.scale[0]) == np.float32(output_quant.scale[0])
            and int(quant.zero_point[0]) == int(output_quant.zero_point[0]))


def _native_concatenation(op, graph, axis):
    """CONCATENATION as one memcpy per input slice into an output buffer reused from call to call."""
    from edgeq.runtime import native
    from edgeq.runtime.kernels.buffers import OutputBuffers

    output = graph[op.outputs[0]]
    itemsize = np.dtype(output.dtype).itemsize
    widths = [int(np.prod(graph[name].shape[axis:], dtype=np.int64)) * itemsize for name in op.inputs]
    outer_per_sample = int(np.prod(output.shape[1:axis], dtype=np.int64))
    copy = native.Concatenation(widths)
    outputs = OutputBuffers(tuple(output.shape[1:]), output.dtype)
    contiguous = np.ascontiguousarray

    def concatenation_native(*xs):
        n = xs[0].shape[0]
        for x in xs:
            if x.shape[0] != n:
                raise ModelError(f"op {op}: inputs of batch {n} and {x.shape[0]} cannot be joined")
        return copy(n * outer_per_sample, [contiguous(x) for x in xs], outputs.get(n))

    return concatenation_native


def _batch_aligner(op, graph, axis):
    """When the graph's batch is 1 and a larger batch runs, an input that is the same for every sample
    (a constant such as ViT's class token, stored with batch 1) is repeated over the actual batch, so
    a join on another axis sees one per sample."""
    constants = {i for i, name in enumerate(op.inputs) if graph[name].data is not None}
    if axis == 0 or not constants or _static_batch(graph[op.outputs[0]].shape) != 1:
        return lambda xs: xs

    def align(xs):
        # Only constants are repeated: a computed batch-1 input next to a larger batch is a shape
        # error (np.concatenate says so), not something to paper over with one sample's values.
        batch = max(x.shape[0] for x in xs)
        return [np.broadcast_to(x, (batch,) + x.shape[1:]) if i in constants and x.shape[0] == 1 else x
                for i, x in enumerate(xs)]

    return align


def _quantized_concatenation(op, graph, axis, align):
    """Inputs whose params equal the output's are copied; any other is requantized as TFLite's
    ConcatenationWithScaling does: round(x * (s_in / s_out) - zp_in * (s_in / s_out)) + zp_out in
    float32, clamped. (LiteRT's int8 kernel refuses differing params; its uint8 kernel rescales.)"""
    from edgeq.runtime.fixedpoint import round_half_away

    output = graph[op.outputs[0]]
    out_scale, out_zero_point = np.float32(output.quant.scale[0]), int(output.quant.zero_point[0])
    info = np.iinfo(output.dtype)
    converters = []
    for name in op.inputs:
        quant = graph[name].quant
        if quant is None or (np.float32(quant.scale[0]) == out_scale and int(quant.zero_point[0]) == out_zero_point):
            converters.append(None)
            continue
        scale = np.float32(np.float32(quant.scale[0]) * (np.float32(1) / out_scale))
        bias = np.float32(-int(quant.zero_point[0]) * scale)

        def convert(x, scale=scale, bias=bias):
            q = round_half_away(x.astype(np.float32) * scale + bias).astype(np.int64) + out_zero_point
            return np.clip(q, info.min, info.max).astype(output.dtype)

        converters.append(convert)

    def concatenation_quantized(*xs):
        return np.concatenate([x if c is None else c(x) for c, x in zip(converters, align(xs))], axis=axis)

    return concatenation_quantized


@register("PAD", "PADV2")
def prepare_pad(op, graph):
    in_tensor = graph[op.inputs[0]]
    paddings = constant_input(op, graph, 1, "paddings").astype(np.int64).reshape(-1, 2)
    if (paddings < 0).any():
        raise ModelError(f"op {op}: negative paddings {paddings.tolist()}")
    # TFLite pads a quantized tensor with its zero point, i.e. with real 0.
    value = int(in_tensor.quant.zero_point[0]) if in_tensor.quant is not None else 0
    if op.type == "PADV2" and input_tensor(op, graph, 2) is not None:
        value = constant_input(op, graph, 2, "constant_values").reshape(-1)[0]
    out_tail = tuple(int(d + a + b) for d, (a, b) in zip(in_tensor.shape[1:], paddings[1:]))
    interior_tail = tuple(slice(int(a), int(a) + d) for d, (a, _) in zip(in_tensor.shape[1:], paddings[1:]))
    batch_before, batch_after = int(paddings[0, 0]), int(paddings[0, 1])

    def pad(x, _paddings=None, _value=None):
        n = x.shape[0]
        out = np.full((n + batch_before + batch_after,) + out_tail, value, dtype=x.dtype)
        out[(slice(batch_before, batch_before + n),) + interior_tail] = x
        return out

    return pad


@register("SQUEEZE")
def prepare_squeeze(op, graph):
    in_shape = graph[op.inputs[0]].shape
    rank = len(in_shape)
    dims = op.options.get("squeeze_dims") or []
    if len(dims) == 0:
        axes = tuple(i for i, d in enumerate(in_shape) if d == 1)
    else:
        axes = tuple(sorted(int(a) % rank for a in dims))

    def squeeze(x):
        return np.squeeze(x, axis=axes)

    return squeeze


@register("EXPAND_DIMS")
def prepare_expand_dims(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axis = int(np.ravel(constant_input(op, graph, 1, "axis"))[0])
    if axis < 0:
        axis += rank + 1

    def expand_dims(x, _axis=None):
        return np.expand_dims(x, axis)

    return expand_dims


def _whole_batch(index_0, static_batch):
    """A slice on axis 0 that takes all of the static batch should take all of any batch."""
    if not isinstance(index_0, slice):
        return index_0
    start, stop, step = index_0.start, index_0.stop, index_0.step
    if step in (None, 1) and start in (None, 0) and (stop is None or stop >= static_batch):
        return slice(None)
    return index_0


def strided_slice_index(in_shape, begin, end, strides, options) -> tuple:
    """The numpy index STRIDED_SLICE takes with these constant inputs and options (masks, offset);
    the validator sizes the output with it too."""
    begin, end, strides = (np.ravel(v).astype(np.int64) for v in (begin, end, strides))
    begin_mask, end_mask = options.get("begin_mask", 0), options.get("end_mask", 0)
    ellipsis_mask, new_axis_mask = options.get("ellipsis_mask", 0), options.get("new_axis_mask", 0)
    shrink_axis_mask, offset = options.get("shrink_axis_mask", 0), options.get("offset", False)
    if (strides == 0).any():
        raise ModelError("a stride is 0")
    if not len(begin) == len(end) == len(strides):
        raise ModelError(f"begin, end and strides have {len(begin)}, {len(end)} and {len(strides)} values")
    index = []
    for i in range(len(begin)):
        bit = 1 << i
        if ellipsis_mask & bit:
            index.append(Ellipsis)
        elif new_axis_mask & bit:
            index.append(None)
        elif shrink_axis_mask & bit:
            index.append(int(begin[i]))
        else:
            start = None if begin_mask & bit else int(begin[i])
            stop = None if end_mask & bit else int(begin[i] + end[i] if offset else end[i])
            index.append(slice(start, stop, int(strides[i])))
    if index and in_shape:
        index[0] = _whole_batch(index[0], in_shape[0])
    return tuple(index)


def slice_index(in_shape, begin, size) -> tuple:
    """The numpy index SLICE takes for constant ``begin`` and ``size`` (-1: to the end); refuses
    what TFLite's SLICE refuses: a count other than the rank, a begin or end outside the input."""
    begin, size = np.ravel(begin).astype(np.int64), np.ravel(size).astype(np.int64)
    if not len(begin) == len(size) == len(in_shape):
        raise ModelError(f"begin and size have {len(begin)} and {len(size)} values"
                         f" for an input of rank {len(in_shape)}")
    for b, s, d in zip(begin.tolist(), size.tolist(), in_shape):
        if not 0 <= b <= d or s < -1 or (s != -1 and b + s > d):
            raise ModelError(f"begin {begin.tolist()} and size {size.tolist()}"
                             f" do not fit an input of shape {list(in_shape)}")
    index = [slice(int(b), None if s == -1 else int(b + s)) for b, s in zip(begin, size)]
    if index and in_shape:
        index[0] = _whole_batch(index[0], in_shape[0])
    return tuple(index)


def _with_op(build, op, *args):
    try:
        return build(*args)
    except ModelError as error:
        raise ModelError(f"op {op}: {error}") from None


@register("STRIDED_SLICE")
def prepare_strided_slice(op, graph):
    in_shape = graph[op.inputs[0]].shape
    begin, end, strides = (constant_input(op, graph, i, what) for i, what in ((1, "begin"), (2, "end"), (3, "strides")))
    index = _with_op(strided_slice_index, op, in_shape, begin, end, strides, op.options)

    def strided_slice(x, _begin=None, _end=None, _strides=None):
        return x[index]

    return strided_slice


@register("SLICE")
def prepare_slice(op, graph):
    in_shape = graph[op.inputs[0]].shape
    begin, size = constant_input(op, graph, 1, "begin"), constant_input(op, graph, 2, "size")
    index = _with_op(slice_index, op, in_shape, begin, size)

    def slice_(x, _begin=None, _size=None):
        return x[index]

    return slice_


@check("GATHER")
def check_gather(op, graph):
    if op.options.get("batch_dims", 0):
        raise ModelError("batch_dims other than 0 is not supported")


@register("GATHER")
def prepare_gather(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axis = op.options.get("axis", 0) % max(rank, 1)

    def gather(params, indices):
        # np.take casts indices to the platform's intp only where that is safe: int64 ids on a 32-bit
        # board (armv7) would be refused.
        return np.take(params, indices.astype(np.intp, copy=False), axis=axis)

    return gather


@register("SPLIT")
def prepare_split(op, graph):
    # TFLite's SPLIT takes (axis, input) in that order.
    rank = len(graph[op.inputs[1]].shape)
    axis = int(np.ravel(constant_input(op, graph, 0, "axis"))[0]) % rank
    num_splits = op.options.get("num_splits", len(op.outputs))

    def split(_axis, x):
        return tuple(np.split(x, num_splits, axis=axis))

    return split


@register("SPLIT_V")
def prepare_split_v(op, graph):
    in_shape = graph[op.inputs[0]].shape
    axis = int(np.ravel(constant_input(op, graph, 2, "axis"))[0]) % len(in_shape)
    sizes = [int(s) for s in np.ravel(constant_input(op, graph, 1, "size_splits"))]
    if -1 in sizes:
        sizes[sizes.index(-1)] = in_shape[axis] - (sum(sizes) + 1)
    boundaries = list(np.cumsum(sizes)[:-1])

    def split_v(x, _sizes=None, _axis=None):
        return tuple(np.split(x, boundaries, axis=axis))

    return split_v


@register("TILE")
def prepare_tile(op, graph):
    multiples_tensor = input_tensor(op, graph, 1)
    if multiples_tensor.data is not None:
        constant_multiples = tuple(int(m) for m in np.ravel(multiples_tensor.data))
        return lambda x, _multiples=None: np.tile(x, constant_multiples)
    return lambda x, multiples: np.tile(x, tuple(int(m) for m in np.ravel(multiples)))


@register("PACK")
def prepare_pack(op, graph):
    rank = len(graph[op.inputs[0]].shape)
    axis = op.options.get("axis", 0) % (rank + 1)

    def pack(*xs):
        return np.stack(xs, axis=axis)

    return pack


@register("UNPACK")
def prepare_unpack(op, graph):
    in_shape = graph[op.inputs[0]].shape
    axis = op.options.get("axis", 0) % len(in_shape)
    count = op.options.get("num", 0) or in_shape[axis]
    indices = [(slice(None),) * axis + (i,) for i in range(count)]

    def unpack(x):
        return tuple(x[index] for index in indices)

    return unpack


@register("CAST")
def prepare_cast(op, graph):
    out_dtype = graph[op.outputs[0]].dtype

    def cast(x):
        return x.astype(out_dtype)

    return cast


@register("SHAPE")
def prepare_shape(op, graph):
    out_dtype = graph[op.outputs[0]].dtype

    def shape(x):
        return np.array(x.shape, dtype=out_dtype)

    return shape


@register("MIRROR_PAD")
def prepare_mirror_pad(op, graph):
    paddings = constant_input(op, graph, 1, "paddings").astype(np.int64).reshape(-1, 2)
    mode = {"REFLECT": "reflect", "SYMMETRIC": "symmetric"}[op.options.get("mode", "REFLECT")]
    pad_width = [tuple(int(p) for p in pair) for pair in paddings]

    def mirror_pad(x, _paddings=None):
        return np.pad(x, pad_width, mode=mode)

    return mirror_pad


@register("BROADCAST_TO")
def prepare_broadcast_to(op, graph):
    in_shape = graph[op.inputs[0]].shape
    target = tuple(int(d) for d in np.ravel(constant_input(op, graph, 1, "shape")))
    static_batch = _static_batch(in_shape)
    batch_is_leading = len(in_shape) == len(target)

    def broadcast_to(x, _shape=None):
        shape = target
        if batch_is_leading and x.ndim and x.shape[0] != static_batch:
            shape = batched_shape(target, static_batch, x.shape[0])
        return np.broadcast_to(x, shape)

    return broadcast_to


@register("DEPTH_TO_SPACE")
def prepare_depth_to_space(op, graph):
    _, height, width, depth = graph[op.inputs[0]].shape
    block = int(op.options["block_size"])
    out_depth = depth // (block * block)

    def depth_to_space(x):
        # TFLite's channel order is (block row, block column, output channel): ONNX's DCR.
        n = x.shape[0]
        blocks = x.reshape(n, height, width, block, block, out_depth).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(n, height * block, width * block, out_depth)

    return depth_to_space


@register("SPACE_TO_DEPTH")
def prepare_space_to_depth(op, graph):
    _, height, width, depth = graph[op.inputs[0]].shape
    block = int(op.options["block_size"])

    def space_to_depth(x):
        n = x.shape[0]
        blocks = x.reshape(n, height // block, block, width // block, block, depth).transpose(0, 1, 3, 2, 4, 5)
        return blocks.reshape(n, height // block, width // block, block * block * depth)

    return space_to_depth


@register("DENSIFY")
def prepare_densify(op, graph):
    # The reader already expanded the sparse-encoded constant to a dense array.
    return lambda values: values
