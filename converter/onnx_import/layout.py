"""Permutations between a tensor's ONNX axes and its storage axes.

A layout ``perm`` says storage axis ``j`` holds ONNX axis ``perm[j]``: the stored array is
``onnx_array.transpose(perm)``. 4-D feature maps are stored NHWC, perm (0, 2, 3, 1); other tensors
start with the identity. Ops rewrite their axis arguments through the layout instead of moving data,
and a layout that no op can absorb costs one TRANSPOSE where it is resolved.

Axes of size 1 carry no data: two layouts that order the other axes alike hold the same bytes
(``same_memory_order``), and going from one to the other is a RESHAPE, not a TRANSPOSE.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def identity(rank: int) -> tuple:
    return tuple(range(rank))


def nhwc_perm(rank: int) -> tuple:
    """The storage layout a feature map of this rank gets: channels last for 4-D, else identity."""
    return (0, 2, 3, 1) if rank == 4 else identity(rank)


def inverse(perm: Sequence[int]) -> tuple:
    inv = [0] * len(perm)
    for j, a in enumerate(perm):
        inv[a] = j
    return tuple(inv)


def storage_shape(onnx_shape: Sequence[int], perm: Sequence[int]) -> tuple:
    return tuple(int(onnx_shape[a]) for a in perm)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def storage_axis(perm: Sequence[int], onnx_axis: int) -> int:
    """Where ONNX axis ``onnx_axis`` lives in storage."""
    return list(perm).index(normalize_axis(onnx_axis, len(perm)))


def to_storage(array: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, perm))


def transpose_between(src: Sequence[int], dst: Sequence[int]) -> tuple:
    """The TRANSPOSE perm that turns storage in layout ``src`` into storage in layout ``dst``."""
    src = list(src)
    return tuple(src.index(a) for a in dst)


def after_transpose(perm: Sequence[int], onnx_perm: Sequence[int]) -> tuple:
    """Layout of ONNX ``Transpose(onnx_perm)`` applied to a tensor in layout ``perm``, data unmoved."""
    onnx_perm = list(onnx_perm)
    return tuple(onnx_perm.index(a) for a in perm)


def memory_order(shape: Sequence[int], perm: Sequence[int]) -> tuple:
    """The ONNX axes of size > 1 in storage order: what decides the bytes."""
    return tuple(a for a in perm if shape[a] != 1)


def same_memory_order(shape: Sequence[int], perm_a: Sequence[int], perm_b: Sequence[int]) -> bool:
    return memory_order(shape, perm_a) == memory_order(shape, perm_b)


def fill_unit_axes(order: Sequence[int], template: Sequence[int], shape: Sequence[int]) -> tuple:
    """A full perm whose non-unit axes come in ``order``, with unit axes placed as in ``template``."""
    rest = iter(order)
    return tuple(a if shape[a] == 1 else next(rest) for a in template)


def reshape_groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> list:
    """Pair up runs of non-unit input and output axes whose sizes multiply to the same number."""
    in_axes = [a for a, d in enumerate(in_shape) if d != 1]
    out_axes = [a for a, d in enumerate(out_shape) if d != 1]
    groups, i, j = [], 0, 0
    while i < len(in_axes) and j < len(out_axes):
        gi, gj = [in_axes[i]], [out_axes[j]]
        pi, pj = in_shape[in_axes[i]], out_shape[out_axes[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                pi *= in_shape[in_axes[i]]
                gi.append(in_axes[i])
                i += 1
            else:
                pj *= out_shape[out_axes[j]]
                gj.append(out_axes[j])
                j += 1
        groups.append((gi, gj))
    return groups


def _group_order(order: Sequence[int], groups: list, side: int) -> Optional[list]:
    """Indices of groups in the order they appear in ``order``, if every group is a contiguous ascending run."""
    result, pos = [], 0
    by_first = {g[side][0]: k for k, g in enumerate(groups)}
    order = list(order)
    while pos < len(order):
        k = by_first.get(order[pos])
        if k is None:
            return None
        axes = groups[k][side]
        if order[pos:pos + len(axes)] != list(axes):
            return None
        result.append(k)
        pos += len(axes)
    return result


def reshape_output_layout(in_shape, in_perm, out_shape, template) -> Optional[tuple]:
    """The layout in which ONNX Reshape(in -> out) is a plain storage reshape, or None if none exists."""
    groups = reshape_groups(in_shape, out_shape)
    order = _group_order(memory_order(in_shape, in_perm), groups, 0)
    if order is None:
        return None
    out_order = [a for k in order for a in groups[k][1]]
    return fill_unit_axes(out_order, template, out_shape)


def reshape_input_layout(in_shape, in_perm, out_shape, out_perm) -> Optional[tuple]:
    """The input layout that makes the output come out in ``out_perm`` by a plain storage reshape."""
    groups = reshape_groups(in_shape, out_shape)
    order = _group_order(memory_order(out_shape, out_perm), groups, 1)
    if order is None:
        return None
    in_order = [a for k in order for a in groups[k][0]]
    return fill_unit_axes(in_order, in_perm, in_shape)


def flattened_feature_order(in_shape: Sequence[int], in_perm: Sequence[int], batch_axes: int) -> Optional[np.ndarray]:
    """For a flatten of axes ``batch_axes:`` of a tensor stored in ``in_perm``: storage column j holds
    ONNX column ``order[j]``. None when the leading (batch) axes are not stored first, in order."""
    if tuple(in_perm[:batch_axes]) != identity(batch_axes):
        return None
    tail = [int(d) for d in in_shape[batch_axes:]]
    inner = [a - batch_axes for a in in_perm[batch_axes:]]
    return np.arange(int(np.prod(tail)), dtype=np.int64).reshape(tail).transpose(inner).ravel()
