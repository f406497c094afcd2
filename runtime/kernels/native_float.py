"""The float32 kernels on the native library (runtime.native): DEPTHWISE_CONV_2D with its bias and
fused activation, the bias + activation pass after a float GEMM, MAX/AVERAGE_POOL_2D, CONV_2D's im2col,
and int8 AVERAGE_POOL_2D. Each ``prepare_*`` returns None when the native path does not apply (library
absent or off, an activation that is not a clamp), and the kernel module goes on with its numpy path.
The float results equal numpy's up to the rounding of fused multiply-adds; the pools' are identical.
"""
from __future__ import annotations

import ctypes

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.native import GeometryPerBatch
from edgeq.runtime.kernels.buffers import SCRATCH, OutputBuffers


def pool_geometries(in_h, in_w, channels, out_h, out_w, options, pads) -> GeometryPerBatch:
    """The geometry of a MAX/AVERAGE_POOL_2D window over NHWC input, per batch size."""
    return GeometryPerBatch(
        in_h=in_h, in_w=in_w, in_c=channels, out_h=out_h, out_w=out_w, out_c=channels,
        k_h=options.get("filter_height", 1), k_w=options.get("filter_width", 1),
        stride_h=options.get("stride_h", 1), stride_w=options.get("stride_w", 1), dil_h=1, dil_w=1,
        pad_top=pads[0], pad_left=pads[2], input_zero_point=0)


def _float32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare_depthwise(in_shape, filters, bias, options, out_h, out_w, pad_top, pad_left, bounds):
    """DEPTHWISE_CONV_2D on float32: ``filters`` [1, KH, KW, C*M], ``bias`` [C*M] or None, ``bounds`` the
    fused activation's (low, high) or None when it is not a clamp."""
    isa = native.isa()
    if isa is None or bounds is None:
        return None
    _, in_h, in_w, in_c = in_shape
    _, k_h, k_w, out_c = filters.shape
    if in_c == 0 or out_c % in_c:
        return None  # the numpy path reports the bad filter depth
    taps = _float32(filters[0])
    bias = None if bias is None else _float32(bias)
    geometries = GeometryPerBatch(
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c, k_h=k_h, k_w=k_w,
        stride_h=options.get("stride_h", 1), stride_w=options.get("stride_w", 1),
        dil_h=options.get("dilation_h_factor", 1), dil_w=options.get("dilation_w_factor", 1),
        pad_top=pad_top, pad_left=pad_left, input_zero_point=0)
    low, high = bounds
    outputs = OutputBuffers((out_h, out_w, out_c), np.float32)
    depthwise = native.depthwise_f32_caller(isa, out_c // in_c, taps, bias, low, high)
    return _per_batch_kernel(depthwise, geometries, outputs, "depthwise_conv_2d_native")


def bias_activation(bias, bounds):
    """epilogue(out [rows, channels] float32, contiguous) in place: + bias (or none), clamped to
    ``bounds``; None when the activation is not a clamp."""
    isa = native.isa()
    if isa is None or bounds is None:
        return None
    bias = None if bias is None else _float32(bias)
    low, high = bounds
    run = native.bias_activation_f32
    return lambda out: run(isa, out, bias, low, high)


def prepare_pool(average, in_shape, options, out_h, out_w, pads, bounds):
    """float32 MAX_POOL_2D (or AVERAGE_POOL_2D) over the in-input positions of each window."""
    isa = native.isa()
    if isa is None or bounds is None:
        return None
    _, in_h, in_w, channels = in_shape
    geometries = pool_geometries(in_h, in_w, channels, out_h, out_w, options, pads)
    low, high = bounds
    outputs = OutputBuffers((out_h, out_w, channels), np.float32)
    pool = native.pool_f32

    def pool_2d_native(x):
        n = x.shape[0]
        return pool(isa, average, geometries.get(n), _float32(x), low, high, outputs.get(n))

    pool_2d_native.__name__ = "average_pool_2d_native" if average else "max_pool_2d_native"
    return pool_2d_native


def prepare_average_pool_int8(in_shape, options, out_h, out_w, pads, low, high):
    """int8 AVERAGE_POOL_2D (reference_integer_ops::AveragePool)."""
    isa = native.isa()
    if isa is None:
        return None
    _, in_h, in_w, channels = in_shape
    geometries = pool_geometries(in_h, in_w, channels, out_h, out_w, options, pads)
    outputs = OutputBuffers((out_h, out_w, channels), np.int8)
    sums = np.empty(max(channels, 1), np.int32)
    pool = native.average_pool_int8

    def average_pool_2d_int8_native(x):
        n = x.shape[0]
        return pool(isa, geometries.get(n), np.ascontiguousarray(x), low, high, sums, outputs.get(n))

    return average_pool_2d_int8_native


def im2col(g, fill):
    """im2col(x float32 [N, H, W, C]) -> [N * OH * OW, KH * KW * C] float32 columns in shared scratch,
    for conv.ConvGeometry ``g``; None without the native library."""
    if native.isa() is None:
        return None
    geometries = GeometryPerBatch(
        in_h=g.in_h, in_w=g.in_w, in_c=g.in_c, out_h=g.out_h, out_w=g.out_w, out_c=g.out_c, k_h=g.k_h, k_w=g.k_w,
        stride_h=g.stride_h, stride_w=g.stride_w, dil_h=g.dil_h, dil_w=g.dil_w, pad_top=g.pad_top,
        pad_left=g.pad_left, input_zero_point=0)
    rows_per_sample, patch = g.out_h * g.out_w, g.k_h * g.k_w * g.in_c
    run, fill = native.im2col_f32, float(fill)

    def im2col_native(x):
        n = x.shape[0]
        columns = SCRATCH.get("patches", (n * rows_per_sample, patch), np.float32)
        return run(geometries.get(n), _float32(x), fill, columns)

    return im2col_native


# Where the native float GEMM beats OpenBLAS's sgemm (with its separate bias + activation pass), single
# thread, on the GEMM shapes of MobileNetV2, ResNet-50 and SqueezeNet: the AVX-512 micro-kernel on every
# shape measured (1.07-2.9x); the AVX2 one only on shallow ones (1.5-1.8x up to depth 32, slower past
# 64); elsewhere (portable C, NEON unmeasured) BLAS.
NATIVE_GEMM_MAX_DEPTH = {"avx512vnni": None, "avxvnni": 32, "avx2": 32}


def conv(g, filters, bias, bounds):
    """conv(x float32 [N, H, W, C]) -> [N, OH, OW, out_c] = clamp(CONV_2D + bias) for conv.ConvGeometry ``g``,
    ``filters`` [out_c, KH, KW, C]: im2col and the native GEMM a band of output pixels at a time, so the
    patches never fill more than L2. None where the native GEMM does not run (see ``gemm``)."""
    prepared = _packed_gemm_operands(filters.reshape(filters.shape[0], -1), bias, bounds)
    if prepared is None:
        return None
    isa, packed, bias, (low, high) = prepared
    geometries = GeometryPerBatch(
        in_h=g.in_h, in_w=g.in_w, in_c=g.in_c, out_h=g.out_h, out_w=g.out_w, out_c=g.out_c, k_h=g.k_h, k_w=g.k_w,
        stride_h=g.stride_h, stride_w=g.stride_w, dil_h=g.dil_h, dil_w=g.dil_w, pad_top=g.pad_top,
        pad_left=g.pad_left, input_zero_point=0)
    outputs = OutputBuffers((g.out_h, g.out_w, g.out_c), np.float32)
    run = native.conv_f32_caller(isa, packed, bias, low, high)
    return _per_batch_kernel(run, geometries, outputs, "conv_2d_banded_native")


def _per_batch_kernel(run, geometries: GeometryPerBatch, outputs: OutputBuffers, name: str):
    """kernel(x) = run(geometry, x, out) with the geometry (by reference, made once) and the output
    buffer of x's batch size, x made contiguous float32 if it is not; ``name`` is the kernel's name."""
    by_reference = {}  # batch size -> ctypes.byref(its geometry)

    def kernel(x, _filters=None, _bias=None):
        n = x.shape[0]
        geometry = by_reference.get(n)
        if geometry is None:
            geometry = by_reference[n] = ctypes.byref(geometries.get(n))
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = _float32(x)
        return run(geometry, x, outputs.get(n))

    kernel.__name__ = kernel.__qualname__ = name
    return kernel


def _packed_gemm_operands(weights, bias, bounds):
    """(isa, packed weights, padded bias, bounds) for the native GEMM, or None where it does not run."""
    isa = native.isa()
    if isa is None or bounds is None or isa not in NATIVE_GEMM_MAX_DEPTH:
        return None
    channels, depth = weights.shape
    max_depth = NATIVE_GEMM_MAX_DEPTH[isa]
    if max_depth is not None and depth > max_depth:
        return None
    packed = native.sgemm_pack(isa, weights)
    if bias is not None:
        padded = np.zeros(-(-channels // native.SGEMM_BIAS_MULTIPLE) * native.SGEMM_BIAS_MULTIPLE, np.float32)
        padded[:channels] = bias
        bias = padded
    return isa, packed, bias, bounds


def gemm(weights, bias, bounds):
    """gemm(a [rows, depth] float32, out [rows, channels] float32) -> out = clamp(a . weights^T + bias)
    for ``weights`` [channels, depth], on the native micro-kernel where it beats BLAS; None elsewhere (or
    when the activation is not a clamp). The packed weights are a copy: callers keep to layers whose
    weights they would copy anyway, or small ones."""
    prepared = _packed_gemm_operands(weights, bias, bounds)
    if prepared is None:
        return None
    isa, packed, bias, (low, high) = prepared
    run = native.sgemm_caller(isa, packed, weights.shape[0], bias, low, high)

    def gemm_native(a, out):
        if a.strides[-1] != 4 or a.dtype != np.float32:
            a = np.ascontiguousarray(a, dtype=np.float32)
        return run(a, out)

    return gemm_native
