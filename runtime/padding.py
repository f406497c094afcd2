"""TFLite's SAME and VALID paddings of a sliding window (convolutions, pools), written once.

The validator sizes outputs with it, the kernels size their outputs and place their windows with it,
and the ONNX importer recognizes which ONNX pads are TFLite's SAME with it, so the three cannot
disagree about a window (tensorflow/lite/kernels/padding.h: ComputeOutSize, ComputePaddingHeightWidth).
"""
from __future__ import annotations

from edgeq.runtime.ir import ModelError

PADDINGS = ("SAME", "VALID")


def dilated_size(filter_size: int, dilation: int = 1) -> int:
    """The input span one window covers: a dilated filter of k taps spans (k - 1) * dilation + 1."""
    return (filter_size - 1) * dilation + 1


def output_size(padding: str, in_size: int, filter_size: int, stride: int, dilation: int = 1) -> int:
    """Window positions along one axis: ceil(in / stride) for SAME; for VALID, the positions where
    the whole window fits (zero or less when it never does)."""
    if padding == "SAME":
        return (in_size + stride - 1) // stride
    if padding == "VALID":
        return (in_size + stride - dilated_size(filter_size, dilation)) // stride
    raise ModelError(f"unknown padding {padding!r} (SAME or VALID)")


def output_and_padding(padding: str, in_size: int, filter_size: int, stride: int, dilation: int = 1) -> tuple:
    """(output size, padding before, padding after) along one axis; an odd total padding puts the
    extra row or column at the end, as TFLite does."""
    out_size = output_size(padding, in_size, filter_size, stride, dilation)
    total = max((out_size - 1) * stride + dilated_size(filter_size, dilation) - in_size, 0)
    return out_size, total // 2, total - total // 2


def same_padding(in_size: int, filter_size: int, stride: int, dilation: int = 1) -> tuple:
    """(before, after): the padding TFLite's SAME adds along one axis."""
    return output_and_padding("SAME", in_size, filter_size, stride, dilation)[1:]


def explicit_output_size(in_size: int, before: int, after: int, filter_size: int, stride: int,
                         dilation: int = 1) -> int:
    """Window positions along one axis of an input padded by (before, after) and then read VALID."""
    return (in_size + before + after - dilated_size(filter_size, dilation)) // stride + 1
