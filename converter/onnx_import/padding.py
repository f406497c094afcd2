"""ONNX spatial padding (pads / auto_pad) against TFLite's two padding modes, SAME and VALID."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError
from edgeq.runtime.padding import same_padding

NHWC = (0, 2, 3, 1)


def decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def same_pads(in_size: int, eff_kernel: int, stride: int, lower: bool = False) -> tuple:
    """TFLite's SAME (= ONNX SAME_UPPER): the extra pad goes at the end; SAME_LOWER puts it first."""
    before, after = same_padding(in_size, eff_kernel, stride)
    return (after, before) if lower else (before, after)


def explicit_pads(attrs: dict, in_hw, eff_kernels, strides, label: str) -> list:
    """[(begin, end)] per spatial axis, whatever way the node spelled them."""
    auto_pad = decode(attrs.get("auto_pad", "NOTSET"))
    n = len(in_hw)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        lower = auto_pad == "SAME_LOWER"
        return [same_pads(in_hw[i], eff_kernels[i], strides[i], lower) for i in range(n)]
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad not in ("NOTSET", ""):
        raise ModelError(f"{label}: unknown auto_pad '{auto_pad}'")
    pads = list(attrs.get("pads", [0] * (2 * n)))
    if any(p < 0 for p in pads):
        raise ModelError(f"{label}: negative pads {pads} are not supported")
    return [(pads[i], pads[i + n]) for i in range(n)]


def tflite_padding(pads: list, in_hw, eff_kernels, strides) -> tuple:
    """("SAME"|"VALID", pads still to apply with a PAD op or None)."""
    if all(p == (0, 0) for p in pads):
        return "VALID", None
    if all(tuple(pads[i]) == same_pads(in_hw[i], eff_kernels[i], strides[i]) for i in range(len(pads))):
        return "SAME", None
    return "VALID", pads


def emit_pad_nhwc(ctx, x_ir: str, pads: list, base: str, node=None, value: float = 0.0) -> str:
    """PAD (or PADV2 for a nonzero fill) of the H and W axes of an NHWC tensor."""
    src = ctx.graph[x_ir]
    paddings = np.array([[0, 0], list(pads[0]), list(pads[1]), [0, 0]], dtype=np.int32)
    shape = tuple(int(d + p.sum()) for d, p in zip(src.shape, paddings))
    out = ctx.temp(f"{base}/padded", shape, src.dtype)
    inputs = [x_ir, ctx.int32_tensor(f"{base}/paddings", paddings)]
    if value == 0.0:
        ctx.emit("PAD", inputs, [out], {}, node)
    else:
        inputs.append(ctx.const_tensor(f"{base}/pad_value", np.array(value, dtype=src.dtype)))
        ctx.emit("PADV2", inputs, [out], {}, node)
    return out
