"""Mod with fmod=0 (the remainder takes the divisor's sign) -> FLOOR_MOD, broadcasting as ONNX does.

TFLite's FLOOR_MOD computes on float32, int32 and int64; narrower integers are computed in int32 (every
value and every remainder is exact there) and CAST back. fmod=1 (the dividend's sign, C's fmod) has no
TFLite builtin.
"""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from . import node_label, rule
from .elementwise import WIDER_TYPE, broadcast_shape, emit_cast, operand_as, reference_perm, wide_output

FLOOR_MOD_TYPES = {"float32", "int32", "int64"}


def floor_mod_dtype(node, dtype) -> np.dtype:
    name = np.dtype(dtype).name
    if name in FLOOR_MOD_TYPES:
        return np.dtype(name)
    if name != "float16" and WIDER_TYPE.get(name) in FLOOR_MOD_TYPES:
        return np.dtype(WIDER_TYPE[name])
    raise ModelError(f"{node_label(node)}: Mod on {name}: TFLite's FLOOR_MOD computes on float32, int32 and int64")


@rule("Mod")
def convert_mod(ctx, node, attrs):
    if attrs.get("fmod", 0):
        raise ModelError(f"{node_label(node)}: fmod=1 (C's fmod, the dividend's sign) has no TFLite builtin; "
                         f"fmod=0 (FLOOR_MOD) is supported")
    names = list(node.input)
    perm = reference_perm(ctx, names)
    shape = broadcast_shape(ctx, names)
    if len(shape) != len(perm):
        perm = layout.identity(len(shape))
    out = ctx.define(node.output[0], perm, shape)
    dtype = floor_mod_dtype(node, ctx.graph[out].dtype)
    operands = [operand_as(ctx, ctx.broadcast_operand(n, perm), dtype, f"{out}/operand{i}", node)
                for i, n in enumerate(names)]
    result = wide_output(ctx, out, dtype, node)
    ctx.emit("FLOOR_MOD", operands, [result], {}, node)
    if result != out:
        emit_cast(ctx, result, out, node)
