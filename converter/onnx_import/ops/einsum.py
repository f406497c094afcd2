"""Einsum -> BATCH_MATMUL, or FULLY_CONNECTED when the right operand is a constant without batch letters.

Letters are sorted into batch letters (both operands and the output), contracted letters (both operands,
not the output), and free letters of the left and of the right operand. Each operand is viewed as
[batch..., rows, columns]: the reordering is a layout change (absorbed as adj_x/adj_y when it swaps the
last two axes, otherwise one TRANSPOSE), and several letters on one side are merged by a RESHAPE. The
product is unmerged and its letters put in the output's order as a layout, so a consumer that can use
the layout needs no TRANSPOSE. A letter only one operand has and the output lacks is summed first (SUM).
"""
from __future__ import annotations

import string

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from ..context import Value
from . import node_label, rule
from .gemm import emit_batch_matmul, emit_fully_connected
from .shape_ops import emit_reshape


def parse_equation(equation: str, ranks: list) -> tuple:
    """(input terms, output term), one letter per axis, with every '...' spelt out in fresh letters."""
    equation = equation.replace(" ", "")
    inputs_part, arrow, output_part = equation.partition("->")
    terms = inputs_part.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operand terms for {len(ranks)} inputs")
    fresh = [c for c in string.ascii_letters if c not in equation]
    ellipsis_rank = max([rank - (len(term) - 3) for term, rank in zip(terms, ranks) if "..." in term], default=0)
    ellipsis = "".join(fresh[:ellipsis_rank])
    expanded = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            own = rank - (len(term) - 3)
            term = term.replace("...", ellipsis[ellipsis_rank - own:] if own else "")
        if len(term) != rank or (term and not term.isalpha()):
            raise ValueError(f"term '{term}' does not name the {rank} axes of its operand")
        expanded.append(term)
    if arrow:
        output = output_part.replace("...", ellipsis)
    else:  # implicit form: the broadcast letters, then every letter used once, alphabetically
        letters = "".join(expanded)
        output = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    if not output.isalpha() and output:
        raise ValueError(f"output term '{output}' is malformed")
    if len(set(output)) != len(output) or any(c not in "".join(expanded) for c in output):
        raise ValueError(f"output term '{output}' repeats a letter or names one no operand has")
    return expanded, output


@rule("Einsum")
def convert_einsum(ctx, node, attrs):
    equation = attrs["equation"]
    equation = equation.decode() if isinstance(equation, bytes) else equation
    label = f"{node_label(node)} (equation '{equation}')"
    names = list(node.input)
    try:
        terms, output = parse_equation(equation, [len(ctx.shape(n)) for n in names])
    except ValueError as exc:
        raise ModelError(f"{label}: {exc}") from None
    for name in names:
        if ctx.dtype(name) != np.float32:
            raise ModelError(f"{label}: {ctx.dtype(name).name} operands: Einsum converts on float32 only "
                             "(TFLite's BATCH_MATMUL, FULLY_CONNECTED and SUM)")
    if any(len(set(term)) != len(term) for term in terms):
        raise ModelError(f"{label}: a letter repeated within one operand (a diagonal) has no TFLite equivalent")
    if not output:
        raise ModelError(f"{label}: a scalar (0-D) result is not supported")
    if len(names) == 1:
        name, letters = sum_letters(ctx, node, names[0], terms[0], set(output), "summed")
        permute_to_output(ctx, node, name, letters, output)
        return
    if len(names) != 2:
        raise ModelError(f"{label}: only Einsum of one or two operands is supported")
    if all(ctx.is_const(n) for n in names):
        raise ModelError(f"{label}: internal: constant Einsum was not folded")
    check_sizes(ctx, names, terms, label)
    a, a_letters = sum_letters(ctx, node, names[0], terms[0], set(output) | set(terms[1]), "a_summed")
    b, b_letters = sum_letters(ctx, node, names[1], terms[1], set(output) | set(terms[0]), "b_summed")
    batch = [c for c in output if c in a_letters and c in b_letters]
    contracted = [c for c in a_letters if c in b_letters and c not in output]
    left = [c for c in output if c in a_letters and c not in b_letters]
    right = [c for c in output if c in b_letters and c not in a_letters]
    if ctx.is_const(b) and not batch and left and not ctx.is_const(a):
        emit_einsum_fully_connected(ctx, node, (a, a_letters), (b, b_letters), left, contracted, right, output)
    else:
        emit_einsum_batch_matmul(ctx, node, (a, a_letters), (b, b_letters), batch, left, contracted, right, output)


def check_sizes(ctx, names: list, terms: list, label: str) -> None:
    """A letter shared by both operands must have one size, except batch broadcasting (size 1)."""
    sizes: dict = {}
    for name, term in zip(names, terms):
        for letter, size in zip(term, ctx.shape(name)):
            sizes.setdefault(letter, set()).add(int(size))
    for letter, seen in sizes.items():
        if len(seen - {1}) > 1:
            raise ModelError(f"{label}: letter '{letter}' has the sizes {sorted(seen)}")


def letter_sizes(ctx, operands: list) -> dict:
    sizes: dict = {}
    for name, letters in operands:
        for letter, size in zip(letters, ctx.shape(name)):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return sizes


def sum_letters(ctx, node, name: str, letters: str, keep: set, tag: str) -> tuple:
    """(name, letters) of operand ``name`` summed over the letters not in ``keep``."""
    axes = [i for i, c in enumerate(letters) if c not in keep]
    if not axes:
        return name, letters
    kept = "".join(c for c in letters if c in keep)
    summed = f"{node.output[0]}/{tag}"
    if ctx.is_const(name):
        ctx.constants[summed] = ctx.const(name).sum(axis=tuple(axes), dtype=np.float32)
        return summed, kept
    value = ctx.value(name)
    out_perm = tuple(a - sum(1 for r in axes if r < a) for a in value.perm if a not in axes)
    shape = tuple(d for i, d in enumerate(value.shape) if i not in axes)
    out = ctx.define(summed, out_perm, shape)
    storage_axes = sorted(layout.storage_axis(value.perm, a) for a in axes)
    ctx.emit("SUM", [value.ir, ctx.int32_tensor(f"{out}/axes", storage_axes)], [out], {"keep_dims": False}, node)
    return summed, kept


def transposed(ctx, node, name: str, letters: str, order: list, tag: str) -> str:
    """``name`` with its axes in ``order``: a transposed constant, or the same data in a new layout."""
    perm = [letters.index(c) for c in order]
    if perm == list(range(len(perm))):
        return name
    new = f"{node.output[0]}/{tag}"
    if ctx.is_const(name):
        ctx.constants[new] = np.ascontiguousarray(np.transpose(ctx.const(name), perm))
        return new
    value = ctx.value(name)
    shape = tuple(value.shape[p] for p in perm)
    ctx.alias(new, Value(value.ir, layout.after_transpose(value.perm, perm), shape, value.dtype))
    return new


def reshaped(ctx, node, name: str, shape: tuple, tag: str) -> str:
    """``name`` reshaped to ``shape`` (a reshaped constant, or a RESHAPE in whatever layout is free)."""
    shape = tuple(int(d) for d in shape)
    if tuple(ctx.shape(name)) == shape:
        return name
    new = f"{node.output[0]}/{tag}"
    if ctx.is_const(name):
        ctx.constants[new] = ctx.const(name).reshape(shape)
        return new
    ctx.shapes[new] = shape
    emit_reshape(ctx, node, name, new)
    return new


def product(sizes: dict, letters: list) -> int:
    return int(np.prod([sizes[c] for c in letters], dtype=np.int64))


def emit_einsum_batch_matmul(ctx, node, a_operand, b_operand, batch, left, contracted, right, output) -> None:
    (a, a_letters), (b, b_letters) = a_operand, b_operand
    sizes = letter_sizes(ctx, [a_operand, b_operand])
    a_sizes = dict(zip(a_letters, ctx.shape(a)))
    b_sizes = dict(zip(b_letters, ctx.shape(b)))
    rows, depth, columns = product(sizes, left), product(sizes, contracted), product(sizes, right)
    a_view = transposed(ctx, node, a, a_letters, batch + left + contracted, "a_ordered")
    a_view = reshaped(ctx, node, a_view, [a_sizes[c] for c in batch] + [rows, depth], "a_matrix")
    b_view = transposed(ctx, node, b, b_letters, batch + contracted + right, "b_ordered")
    b_view = reshaped(ctx, node, b_view, [b_sizes[c] for c in batch] + [depth, columns], "b_matrix")
    result = f"{node.output[0]}/matmul"
    ctx.shapes[result] = tuple(sizes[c] for c in batch) + (rows, columns)
    emit_batch_matmul(ctx, node, a_view, b_view, out_name=result)
    result = reshaped(ctx, node, result, [sizes[c] for c in batch + left + right], "unmerged")
    permute_to_output(ctx, node, result, "".join(batch + left + right), output)


def emit_einsum_fully_connected(ctx, node, a_operand, b_operand, left, contracted, right, output) -> None:
    """A constant right operand without batch letters is a weight matrix [N, K] (a Linear layer)."""
    (a, a_letters), (b, b_letters) = a_operand, b_operand
    sizes = letter_sizes(ctx, [a_operand, b_operand])
    depth, columns = product(sizes, contracted), product(sizes, right)
    weight = np.transpose(ctx.const(b), [b_letters.index(c) for c in right + contracted]).reshape(columns, depth)
    a_view = transposed(ctx, node, a, a_letters, left + contracted, "a_ordered")
    a_view = reshaped(ctx, node, a_view, [sizes[c] for c in left] + [depth], "a_rows")
    result = f"{node.output[0]}/fully_connected"
    ctx.shapes[result] = tuple(sizes[c] for c in left) + (columns,)
    emit_fully_connected(ctx, node, a_view, weight.astype(np.float32), np.zeros(columns, np.float32), out_name=result)
    result = reshaped(ctx, node, result, [sizes[c] for c in left + right], "unmerged")
    permute_to_output(ctx, node, result, "".join(left + right), output)


def permute_to_output(ctx, node, name: str, letters: str, output: str) -> None:
    """Define the node's output as ``name`` with its letters in the output's order: a layout, no data moved."""
    final = transposed(ctx, node, name, letters, list(output), "output_order")
    ctx.alias(node.output[0], ctx.value(final))
