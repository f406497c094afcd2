"""Conv -> CONV_2D / DEPTHWISE_CONV_2D (grouped: per-group CONV_2D + CONCATENATION); ConvTranspose -> TRANSPOSE_CONV."""
from __future__ import annotations

import numpy as np

from edgeq.runtime.ir import ModelError

from ..padding import NHWC, emit_pad_nhwc, explicit_pads, tflite_padding
from . import node_label, rule
from .spatial_1d import convert_as_2d, is_1d


def conv_geometry(ctx, node, attrs, weight_shape):
    label = node_label(node)
    x_shape = ctx.shape(node.input[0])
    if len(x_shape) != 4:
        raise ModelError(f"{label}: only 2-D convolutions (4-D input) are supported, got input shape {x_shape}")
    kernel = list(attrs.get("kernel_shape", weight_shape[2:]))
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    pads = explicit_pads(attrs, x_shape[2:], eff, strides, label)
    return x_shape, strides, dilations, eff, pads


def conv_options(padding, strides, dilations) -> dict:
    return {
        "padding": padding,
        "stride_w": int(strides[1]),
        "stride_h": int(strides[0]),
        "dilation_w_factor": int(dilations[1]),
        "dilation_h_factor": int(dilations[0]),
        "fused_activation_function": "NONE",
    }


def pointwise_layout(ctx, name, window, strides, pads, group):
    """The input's own layout when a 1x1 convolution can run on it as stored, else None.

    A 1x1, stride-1, unpadded convolution only mixes channels, so any 4-D storage with the channels
    last will do: a detector head's anchors-first view (DFL) then needs no TRANSPOSE to NHWC and back.
    """
    unit_window = all(w == 1 for w in window) and all(s == 1 for s in strides) and not any(map(any, pads))
    if ctx.is_const(name) or group != 1 or not unit_window:
        return None
    value = ctx.value(name)
    if value.perm[-1] != 1 or value.feature_order is not None:
        return None
    return value.perm


@rule("Conv")
def convert_conv(ctx, node, attrs):
    if is_1d(ctx, node):
        convert_as_2d(ctx, node, attrs, convert_conv)
        return
    label = node_label(node)
    if not ctx.is_const(node.input[1]):
        raise ModelError(f"{label}: weights must be constant")
    weight = ctx.const(node.input[1]).astype(np.float32)
    out_channels = weight.shape[0]
    bias = ctx.optional_const(node, 2, np.zeros(out_channels, np.float32)).astype(np.float32)
    x_shape, strides, dilations, eff, pads = conv_geometry(ctx, node, attrs, weight.shape)
    group = int(attrs.get("group", 1))
    in_channels = x_shape[1]

    perm = pointwise_layout(ctx, node.input[0], eff, strides, pads, group) or NHWC
    x_ir = ctx.stored(node.input[0], perm)
    padding, extra = tflite_padding(pads, x_shape[2:], eff, strides)
    if extra:
        x_ir = emit_pad_nhwc(ctx, x_ir, extra, node.output[0], node)
    options = conv_options(padding, strides, dilations)
    out = ctx.define(node.output[0], perm)
    base = node.output[0]

    if group == 1:
        w_ir = ctx.const_tensor(f"{base}/filter", weight.transpose(0, 2, 3, 1))
        b_ir = ctx.const_tensor(f"{base}/bias", bias)
        ctx.emit("CONV_2D", [x_ir, w_ir, b_ir], [out], options, node)
    elif group == in_channels and out_channels % in_channels == 0:
        w_ir = ctx.const_tensor(f"{base}/filter", weight.transpose(1, 2, 3, 0))
        b_ir = ctx.const_tensor(f"{base}/bias", bias)
        options["depth_multiplier"] = out_channels // in_channels
        ctx.emit("DEPTHWISE_CONV_2D", [x_ir, w_ir, b_ir], [out], options, node)
    else:
        emit_grouped_conv(ctx, node, x_ir, weight, bias, group, options, out)


def emit_grouped_conv(ctx, node, x_ir, weight, bias, group, options, out):
    """TFLite has no general grouped convolution: SPLIT channels, one CONV_2D per group, CONCATENATION."""
    base = node.output[0]
    x_shape = ctx.graph[x_ir].shape
    out_shape = ctx.graph[out].shape
    if x_shape[3] % group or weight.shape[0] % group:
        raise ModelError(f"{node_label(node)}: channels are not divisible by group={group}")
    in_per_group, out_per_group = x_shape[3] // group, weight.shape[0] // group
    parts = [ctx.temp(f"{base}/group{g}/input", x_shape[:3] + (in_per_group,)) for g in range(group)]
    ctx.emit("SPLIT", [ctx.int32_tensor(f"{base}/split_axis", 3), x_ir], parts, {"num_splits": group}, node)
    results = []
    for g in range(group):
        w = weight[g * out_per_group:(g + 1) * out_per_group].transpose(0, 2, 3, 1)
        w_ir = ctx.const_tensor(f"{base}/group{g}/filter", w)
        b_ir = ctx.const_tensor(f"{base}/group{g}/bias", bias[g * out_per_group:(g + 1) * out_per_group])
        result = ctx.temp(f"{base}/group{g}", out_shape[:3] + (out_per_group,))
        ctx.emit("CONV_2D", [parts[g], w_ir, b_ir], [result], dict(options), node)
        results.append(result)
    ctx.emit("CONCATENATION", results, [out], {"axis": 3, "fused_activation_function": "NONE"}, node)


@rule("ConvTranspose")
def convert_conv_transpose(ctx, node, attrs):
    """TRANSPOSE_CONV with VALID padding gives the full output; ONNX pads crop it with a SLICE."""
    if is_1d(ctx, node):
        convert_as_2d(ctx, node, attrs, convert_conv_transpose)
        return
    label = node_label(node)
    if not ctx.is_const(node.input[1]):
        raise ModelError(f"{label}: weights must be constant")
    weight = ctx.const(node.input[1]).astype(np.float32)  # [C_in, C_out/group, kH, kW]
    if int(attrs.get("group", 1)) != 1:
        raise ModelError(f"{label}: grouped ConvTranspose is not supported")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise ModelError(f"{label}: dilated ConvTranspose is not supported")
    x_shape = ctx.shape(node.input[0])
    if len(x_shape) != 4:
        raise ModelError(f"{label}: only 2-D ConvTranspose is supported")
    out_channels = weight.shape[1]
    bias = ctx.optional_const(node, 2, np.zeros(out_channels, np.float32)).astype(np.float32)
    kernel = weight.shape[2:]
    strides = list(attrs.get("strides", [1, 1]))
    onnx_out = ctx.shape(node.output[0])
    full = [(x_shape[2 + i] - 1) * strides[i] + kernel[i] for i in range(2)]
    total_pad = [full[i] + int(attrs.get("output_padding", [0, 0])[i]) - onnx_out[2 + i] for i in range(2)]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if "pads" in attrs and auto_pad in ("NOTSET", ""):
        begins = list(attrs["pads"][:2])
    elif auto_pad == "SAME_LOWER":
        begins = [t - t // 2 for t in total_pad]
    elif "output_shape" in attrs and auto_pad in ("NOTSET", ""):
        # The ONNX spec (and onnxruntime) put an odd padding's extra row at the start here.
        begins = [max(t, 0) - max(t, 0) // 2 for t in total_pad]
    else:  # SAME_UPPER or VALID: extra at the end
        begins = [t // 2 if auto_pad.startswith("SAME") else 0 for t in total_pad]
    canvas = [max(full[i], begins[i] + onnx_out[2 + i]) for i in range(2)]

    x_ir = ctx.stored(node.input[0], NHWC)
    base = node.output[0]
    w_ir = ctx.const_tensor(f"{base}/filter", weight.transpose(1, 2, 3, 0))
    b_ir = ctx.const_tensor(f"{base}/bias", bias)
    canvas_shape = (x_shape[0], canvas[0], canvas[1], out_channels)
    needs_crop = tuple(canvas) != tuple(onnx_out[2:])
    out = ctx.define(node.output[0], NHWC)
    full_ir = ctx.temp(f"{base}/uncropped", canvas_shape) if needs_crop else out
    options = {"padding": "VALID", "stride_w": int(strides[1]), "stride_h": int(strides[0]), "fused_activation_function": "NONE"}
    ctx.emit("TRANSPOSE_CONV", [ctx.int32_tensor(f"{base}/output_shape", canvas_shape), w_ir, x_ir, b_ir], [full_ir], options, node)
    if needs_crop:
        begin = [0, begins[0], begins[1], 0]
        size = list(ctx.graph[out].shape)
        ctx.emit("SLICE", [full_ir, ctx.int32_tensor(f"{base}/begin", begin), ctx.int32_tensor(f"{base}/size", size)], [out], {}, node)
