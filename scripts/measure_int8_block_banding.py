"""Whether fusing an int8 MobileNetV2 block (1x1 expand CONV_2D -> 3x3 DEPTHWISE_CONV_2D -> 1x1 project CONV_2D)
through bands of rows would pay on this machine, before writing such a kernel.

A fused kernel that reuses the native int8 kernels runs them on bands of a few rows, so that the
tensors between the three ops stay in L1 instead of going to L2 or memory. This script times the
three native kernels once on whole tensors (what the interpreter runs now) and once on bands of
BAND_ROWS output rows (the expand made for the band plus its two halo rows, its share counted). The
cost of a Python call to a native kernel (that of a tiny one) is taken off both, since a kernel in
C would not pay it. If "bands" is not clearly below "whole", the intermediates already stay close
enough to the core and a fused kernel of this design would not be faster.

Usage: python scripts/measure_int8_block_banding.py [--band-rows 8] [--threads 1]   (a quiet machine advised)
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.kernels import native_int8

# (height = width, block input channels, expanded channels) of MobileNetV2-224's stride-1 blocks
BLOCKS = ((112, 16, 96), (56, 24, 144), (28, 32, 192), (14, 64, 384), (7, 160, 960))
INPUT_ZERO_POINT = 3
rng = np.random.default_rng(0)


def pointwise(h, w, in_c, out_c):
    g = SimpleNamespace(in_h=h, in_w=w, in_c=in_c, out_h=h, out_w=w, out_c=out_c, k_h=1, k_w=1, stride_h=1,
                        stride_w=1, dil_h=1, dil_w=1, pad_top=0, pad_left=0)
    filters = rng.integers(-127, 128, (out_c, 1, 1, in_c)).astype(np.int8)
    return native_int8.prepare_conv(g, filters, rng.integers(-1000, 1000, out_c), INPUT_ZERO_POINT,
                                    rng.integers(1 << 30, (1 << 31) - 1, out_c), np.full(out_c, -9), 0, -128, 127)


def depthwise(in_h, w, c, out_h):
    filters = rng.integers(-127, 128, (1, 3, 3, c)).astype(np.int8)
    return native_int8.prepare_depthwise((1, in_h, w, c), filters, rng.integers(-1000, 1000, c), INPUT_ZERO_POINT,
                                         rng.integers(1 << 30, (1 << 31) - 1, c), np.full(c, -7), 0, -128, 127,
                                         {"stride_h": 1, "stride_w": 1}, out_h, w, 1, 1)


def best_ms(calls, repeats=15, inner=100):
    """Per call, the fastest of ``repeats`` loops of ``inner`` calls, for every callable, loops interleaved."""
    best = [float("inf")] * len(calls)
    for call in calls:
        call()
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            for _ in range(inner):
                call()
            best[i] = min(best[i], (time.perf_counter() - start) / inner * 1e3)
    return best


def measure(size, in_c, expanded, band_rows):
    x = rng.integers(-128, 128, (1, size, size, in_c)).astype(np.int8)
    expand, spatial, project = (pointwise(size, size, in_c, expanded), depthwise(size, size, expanded, size),
                                pointwise(size, size, expanded, in_c))
    e = expand(x)
    y = spatial(e)
    rows = min(band_rows, size)
    band_expand, band_spatial, band_project = (pointwise(rows + 2, size, in_c, expanded),
                                               depthwise(rows + 2, size, expanded, rows),
                                               pointwise(rows, size, expanded, in_c))
    xb = np.ascontiguousarray(x[:, :rows + 2]) if rows + 2 <= size else x
    if rows + 2 > size:  # a band as tall as the image: no halo to make
        band_expand, band_spatial = expand, spatial
    eb = band_expand(xb)
    yb = band_spatial(eb)
    tiny = pointwise(1, 1, 8, 8)
    xt = np.ascontiguousarray(x[:, :1, :1, :1].repeat(8, axis=3))
    times = best_ms([lambda: expand(x), lambda: spatial(e), lambda: project(y), lambda: band_expand(xb),
                     lambda: band_spatial(eb), lambda: band_project(yb), lambda: tiny(xt)])
    bands = size / rows
    whole = sum(times[:3]) - 3 * times[6]
    banded = (times[3] * rows / xb.shape[1] + times[4] + times[5]) * bands - 3 * times[6] * bands
    return whole, banded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--band-rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if native.isa() is None:
        raise SystemExit("no native int8 kernels on this machine")
    native.set_threads(args.threads)
    print(f"native variant {native.isa()}, {args.threads} thread(s), bands of {args.band_rows} rows")
    print(f"{'block':>22} {'whole ms':>9} {'bands ms':>9} {'gain':>6}")
    for size, in_c, expanded in BLOCKS:
        whole, banded = measure(size, in_c, expanded, args.band_rows)
        block = f"{size:>3}x{size:<3} {in_c:>3}->{expanded:>3}->{in_c:<3}"
        print(f"{block} {whole:9.3f} {banded:9.3f} {whole / banded:5.2f}x")


if __name__ == "__main__":
    main()
