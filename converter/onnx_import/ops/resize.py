"""Resize / Upsample (nearest, linear on H and W) -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR.

ONNX has many coordinate transformations and rounding modes; TFLite has two flags (align_corners,
half_pixel_centers). Rather than tabulating which combinations coincide, each TFLite candidate is run
(in numpy, as TFLite's reference kernels compute) against ONNX's reference evaluator on a probe input of
the node's own spatial size, and the first that agrees is used.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.ir import ModelError

from ..padding import NHWC
from . import node_label, rule

CANDIDATES = [(False, False), (False, True), (True, False)]


def tflite_scale(in_size, out_size, align_corners):
    if align_corners and out_size > 1:
        return (in_size - 1) / (out_size - 1)
    return in_size / out_size


def nearest_indices(in_size, out_size, align_corners, half_pixel):
    scale = np.float32(tflite_scale(in_size, out_size, align_corners))
    offset = np.float32(0.5 if half_pixel else 0.0)
    pos = (np.arange(out_size, dtype=np.float32) + offset) * scale
    idx = round_half_away(pos) if align_corners else np.floor(pos)  # TfLiteRound: ties away from zero
    idx = np.minimum(idx.astype(np.int64), in_size - 1)
    return np.maximum(idx, 0)


def tflite_nearest(x, out_hw, align_corners, half_pixel):
    ys = nearest_indices(x.shape[0], out_hw[0], align_corners, half_pixel)
    xs = nearest_indices(x.shape[1], out_hw[1], align_corners, half_pixel)
    return x[ys][:, xs]


def bilinear_weights(in_size, out_size, align_corners, half_pixel):
    scale = np.float32(tflite_scale(in_size, out_size, align_corners))
    pos = np.arange(out_size, dtype=np.float32)
    pos = (pos + 0.5) * scale - 0.5 if half_pixel else pos * scale
    lower = np.maximum(np.floor(pos), 0).astype(np.int64)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    frac = pos - lower
    return lower, upper, frac


def tflite_bilinear(x, out_hw, align_corners, half_pixel):
    y0, y1, fy = bilinear_weights(x.shape[0], out_hw[0], align_corners, half_pixel)
    x0, x1, fx = bilinear_weights(x.shape[1], out_hw[1], align_corners, half_pixel)
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def onnx_probe(ctx, node, in_hw, out_hw, probe):
    """The node's own output on a [1, 1, H, W] probe, from ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    inputs = list(node.input)
    feeds = {"probe": probe[None, None]}
    inits = []
    for i, name in enumerate(inputs[1:], start=1):
        if not name:
            continue
        data = ctx.const(name)
        if i == 3 and np.asarray(data).size == 4:  # sizes of all axes: the probe has N = C = 1
            # The node's own spatial sizes, not out_hw: keep_aspect_ratio_policy derives the output from them.
            data = np.array([1, 1, *np.asarray(data).reshape(-1)[2:]], dtype=np.int64)
        inits.append(numpy_helper.from_array(np.asarray(data), f"in{i}"))
        inputs[i] = f"in{i}"
    inputs[0] = "probe"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    probe_node = helper.make_node(node.op_type, inputs, ["out"], **attrs)
    graph = helper.make_graph(
        [probe_node], "probe",
        [helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, [1, 1, *in_hw])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    return ReferenceEvaluator(model).run(None, feeds)[0][0, 0]


@rule("Resize", "Upsample")
def convert_resize(ctx, node, attrs):
    label = node_label(node)
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(in_shape) != 4 or tuple(in_shape[:2]) != tuple(out_shape[:2]):
        raise ModelError(f"{label}: only resizing H and W of a 4-D tensor is supported")
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("nearest", "linear", "bilinear"):
        raise ModelError(f"{label}: Resize mode '{mode}' is not supported (nearest and linear are)")
    in_hw, out_hw = tuple(in_shape[2:]), tuple(out_shape[2:])
    probe = np.random.default_rng(0).standard_normal(in_hw).astype(np.float32)
    expected = onnx_probe(ctx, node, in_hw, out_hw, probe)
    kernel = tflite_nearest if mode == "nearest" else tflite_bilinear
    for align_corners, half_pixel in CANDIDATES:
        if np.allclose(kernel(probe, out_hw, align_corners, half_pixel), expected, atol=1e-5):
            break
    else:
        transform = attrs.get("coordinate_transformation_mode", b"half_pixel")
        transform = transform.decode() if isinstance(transform, bytes) else transform
        raise ModelError(
            f"{label}: Resize mode '{mode}' with coordinate_transformation_mode '{transform}' "
            f"has no TFLite equivalent for {in_hw} -> {out_hw}"
        )
    x_ir = ctx.stored(node.input[0], NHWC)
    out = ctx.define(node.output[0], NHWC)
    tfl_type = "RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"
    ctx.emit(tfl_type, [x_ir, ctx.int32_tensor(f"{out}/size", list(out_hw))], [out],
             {"align_corners": align_corners, "half_pixel_centers": half_pixel}, node)
