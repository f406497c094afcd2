"""Every native variant this machine runs against edgeq's numpy kernels, op by op: the integers must be equal.

What tests/test_native_kernels.py holds against LiteRT, for machines where neither pytest nor LiteRT is
installed (scripts/check_arm64.sh runs it under qemu on arm64 and armhf). It needs only the runtime and
edgeq.testing.int8_graphs. Cases: FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D on random shapes (odd depths
and channel counts, dilation, both paddings) with zero points at the int8 range's ends, saturating and tiny
scales, per-channel and per-tensor weights, every fused activation; same-shape int8 ADD/SUB (the native one)
with saturating scales; QUANTIZE of floats with ties, huge values, infinities and NaN; int8 MAX_POOL_2D;
int8 SOFTMAX (to int8 and int16), MEAN over adjacent axes and CONCATENATION.

First, each variant must prepare native int8 CONV_2D, FULLY_CONNECTED and DEPTHWISE_CONV_2D kernels (the tap-pair
depthwise where the variant has one), and with --expect ISA the variant chosen on this CPU must be ISA.

Usage: python scripts/check_native_exactness.py [--expect ISA]
       (exit 1 when a variant differs or prepares other kernels, 2 without native kernels)
"""
from __future__ import annotations

import itertools
import sys

import numpy as np

from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph, Op, QuantParams, Tensor
from edgeq.runtime.op_runner import prepare_op
from edgeq.runtime.padding import output_size
from edgeq.testing.int8_graphs import BINARY_CASES, binary_graph, unary_graph, weighted_op

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
# (input scale, zero point), (output scale, zero point)
EDGE_PARAMS = {
    "typical": ((0.05, 3), (0.2, -5)),
    "input_zero_point_min": ((0.03, -128), (0.1, 4)),
    "input_zero_point_max": ((0.03, 127), (0.05, -128)),
    "output_zero_point_max": ((0.2, 0), (0.5, 127)),
    "saturating": ((0.5, -128), (0.001, 127)),
    "tiny_output_scale": ((0.9, 127), (1e-7, -128)),
    "coarse_output": ((0.01, 127), (3.0, 0)),
}


def weighted_cases():
    for params, act, per_channel in itertools.product(EDGE_PARAMS, ACTIVATIONS, (True, False)):
        in_q, out_q = EDGE_PARAMS[params]
        common = dict(act=act, per_channel=per_channel)
        yield f"FC 3x21->19 {params} {act} pc={per_channel}", \
            weighted_op("FULLY_CONNECTED", (3, 21), in_q, out_q, out_c=19, seed=7, **common)
        yield f"CONV 3x3 dil2 {params} {act} pc={per_channel}", \
            weighted_op("CONV_2D", (1, 7, 6, 5), in_q, out_q, k=3, dilation=2, out_c=11, seed=8, **common)
        for multiplier in (1, 2):
            yield f"DW x{multiplier} {params} {act} pc={per_channel}", \
                weighted_op("DEPTHWISE_CONV_2D", (2, 8, 7, 5), in_q, out_q, k=3, stride=2, out_c=5 * multiplier,
                            seed=9, **common)
    for depth, out_c in ((1, 1), (3, 7), (5, 16), (17, 17), (33, 31), (64, 33), (100, 65)):
        for rows in (1, 5):
            yield f"FC {rows}x{depth}->{out_c}", weighted_op("FULLY_CONNECTED", (rows, depth), (0.05, 3), (0.2, -5),
                                                             out_c=out_c, seed=depth * 100 + out_c)
    for (in_c, out_c), (k, stride, padding) in itertools.product(
            ((1, 5), (3, 17), (7, 33), (20, 40)),
            ((1, 1, "VALID"), (1, 2, "SAME"), (3, 1, "SAME"), (3, 2, "VALID"), (5, 2, "SAME"))):
        yield f"CONV {k}x{k}/{stride} {padding} {in_c}->{out_c}", \
            weighted_op("CONV_2D", (2, 9, 11, in_c), (0.05, 3), (0.2, -5), k=k, stride=stride, padding=padding,
                        out_c=out_c, seed=in_c * 10 + k)
    for channels, k in ((1, 3), (16, 3), (33, 5), (64, 3), (70, 9)):  # > 64 taps: the per-tap loop
        yield f"DW {k}x{k} c={channels}", weighted_op("DEPTHWISE_CONV_2D", (1, 11, 10, channels), (0.05, -128),
                                                      (0.02, 127), k=k, out_c=channels, seed=channels)
    # The tap-pair kernels: even and odd tap counts, channel tails, strides, dilation.
    for channels, k, stride, dilation in ((17, 2, 1, 1), (24, 3, 2, 1), (40, 3, 1, 2), (31, 5, 2, 1), (8, 7, 1, 1)):
        yield f"DW pairs {k}x{k}/{stride} dil{dilation} c={channels}", weighted_op(
            "DEPTHWISE_CONV_2D", (1, 12, 13, channels), (0.05, 7), (0.1, -3), k=k, stride=stride, dilation=dilation,
            out_c=channels, seed=channels + k)
    # The largest int16 sum of two products NEON's pair kernel forms: x = -128 against weights of -127.
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 20), (0.05, 0), (2.0, 0), k=3, out_c=20, seed=5)
    graph.tensors["w"].data[...] = -127
    inputs[0][...] = -128
    yield "DW pairs extreme products", (graph, inputs)
    # A weight of -128 could overflow that sum: the kernel refuses such weights, another one runs.
    graph, inputs = weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 20), (0.05, -128), (2.0, 0), k=3, out_c=20, seed=6)
    graph.tensors["w"].data[0, 1, 1, ::3] = -128
    inputs[0][..., ::2] = -128
    yield "DW weight -128", (graph, inputs)


def elementwise_cases():
    for op_type, (name, case) in itertools.product(("ADD", "SUB"), BINARY_CASES.items()):
        for act in ("NONE", "RELU6"):
            yield f"{op_type} {name} {act}", binary_graph(op_type, *case[:5], act, seed=3)
    for q_out in ((0.1, 3), (0.0123, -128), (0.05, 127), (1e-30, 0)):
        graph, inputs = unary_graph("QUANTIZE", (3, 200), (3, 200), None, q_out, dtype=np.float32,
                                    options={"_out_dtype": np.int8})
        x = inputs[0]
        x[0, :8] = np.array([0.5, 1.5, -0.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997], np.float32) * \
            np.float32(q_out[0])
        x[1, :8] = [np.inf, -np.inf, np.nan, 1e30, -1e30, 3e38, -3e38, 1e19]
        yield f"QUANTIZE scale {q_out[0]} zero point {q_out[1]}", (graph, inputs)
    for k, stride, padding, act in itertools.product((2, 3), (1, 2), ("SAME", "VALID"), ("NONE", "RELU6")):
        q = (0.05, 3)
        y_shape = (2, output_size(padding, 9, k, stride), output_size(padding, 8, k, stride), 3)
        options = {"padding": padding, "stride_w": stride, "stride_h": stride, "filter_width": k,
                   "filter_height": k, "fused_activation_function": act}
        yield f"MAX_POOL {k}x{k}/{stride} {padding} {act}", unary_graph("MAX_POOL_2D", (2, 9, 8, 3), y_shape, q, q,
                                                                       options)


def softmax_mean_concatenation_cases():
    for input_scale, beta, depth in itertools.product((0.004, 0.05, 0.5, 3.0), (1.0, 0.7), (1, 10, 1000)):
        for out_dtype, q_out in ((np.int8, (1 / 256, -128)), (np.int16, (1 / 65536, -32768))):
            graph, inputs = unary_graph("SOFTMAX", (2, depth), (2, depth), (input_scale, 5), q_out,
                                        options={"beta": beta, "_out_dtype": out_dtype}, seed=depth)
            inputs[0][1] = -128
            yield f"SOFTMAX scale {input_scale} beta {beta} depth {depth} to {np.dtype(out_dtype).name}", \
                (graph, inputs)
    for (shape, axes), keep, params in itertools.product(
            (((1, 13, 13, 100), (1, 2)), ((2, 5, 7, 6), (2,)), ((2, 5, 7, 6), (1, 2, 3)), ((1, 300, 600), (1,))),
            (True, False), ("typical", "saturating", "coarse_output", "tiny_output_scale")):
        y_shape = tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)
        yield f"MEAN {shape} over {axes} keep={keep} {params}", \
            unary_graph("MEAN", shape, y_shape, *EDGE_PARAMS[params], {"keep_dims": keep},
                        [("axis", np.array(axes, np.int32))], seed=len(shape))
    rng = np.random.default_rng(5)
    for widths in ((3, 4), (64, 64), (17, 33, 1), (256, 256)):
        graph = Graph()
        names = [f"x{k}" for k in range(len(widths))]
        for name, width in zip(names, widths):
            graph.add_tensor(Tensor(name, (2, 5, 7, width), np.int8, quant=QuantParams(0.05, 3)))
        graph.add_tensor(Tensor("y", (2, 5, 7, sum(widths)), np.int8, quant=QuantParams(0.05, 3)))
        graph.add_op(Op("CONCATENATION", names, ["y"], {"axis": 3}))
        graph.inputs, graph.outputs = names, ["y"]
        yield f"CONCATENATION of widths {widths}", \
            (graph, [rng.integers(-128, 128, (2, 5, 7, width)).astype(np.int8) for width in widths])


def run(graph, inputs, isa):
    """The graph's output with the numpy kernels (isa None) or native variant ``isa``."""
    native.ENABLED = isa is not None
    if isa is not None:
        native.use_isa(isa)
    with np.errstate(all="ignore"):  # QUANTIZE of infinities and NaN
        return next(iter(Interpreter.from_graph(graph).run(inputs).values()))


# Which prepared kernel each of these ops gets on a native variant (the numpy one's name has no "_native").
PATH_CASES = {
    "CONV_2D": weighted_op("CONV_2D", (1, 6, 6, 8), (0.05, 3), (0.2, -5), out_c=16, seed=1),
    "FULLY_CONNECTED": weighted_op("FULLY_CONNECTED", (2, 40), (0.05, 3), (0.2, -5), out_c=24, seed=2),
    "DEPTHWISE_CONV_2D": weighted_op("DEPTHWISE_CONV_2D", (1, 6, 6, 24), (0.05, 3), (0.2, -5), out_c=24, seed=3),
}
# Variants with a tap-pair depthwise kernel for depth multiplier 1.
PAIR_DEPTHWISE_VARIANTS = {"avx2", "avxvnni", "avx512vnni", "neon", "neon-dotprod"}


def prepared_kernel_names(isa) -> dict:
    native.ENABLED = True
    native.use_isa(isa)
    return {op_type: prepare_op(graph.ops[0], graph).__name__ for op_type, (graph, _) in PATH_CASES.items()}


def wrong_kernel_paths(isa) -> list:
    """What is not as it should be among the kernels ``isa`` prepares."""
    names = prepared_kernel_names(isa)
    wrong = [f"{op_type} prepared {name}, not a native kernel" for op_type, name in names.items()
             if not name.endswith("_int8_native") and not name.endswith("_int8_pairs_native")]
    pairs = names["DEPTHWISE_CONV_2D"].endswith("_pairs_native")
    if pairs != (isa in PAIR_DEPTHWISE_VARIANTS):
        wrong.append(f"DEPTHWISE_CONV_2D prepared {names['DEPTHWISE_CONV_2D']}")
    return wrong


def kernel_paths_as_expected(variants, expected_best) -> bool:
    """Whether this CPU gets ``expected_best`` (when given) and every variant prepares its native kernels."""
    if expected_best is not None and native.best_isa() != expected_best:
        print(f"FAIL: the variant chosen here is {native.best_isa()}, expected {expected_best}")
        return False
    right = True
    for isa in variants:
        wrong = wrong_kernel_paths(isa)
        for line in wrong:
            print(f"  FAIL {isa}: {line}")
        right = right and not wrong
        print(f"{isa}: kernels prepared: {', '.join(sorted(set(prepared_kernel_names(isa).values())))}")
    return right


def main() -> int:
    arguments = sys.argv[1:]
    expected_best = arguments[arguments.index("--expect") + 1] if "--expect" in arguments else None
    variants = native.supported_isas()
    print(native.describe())
    if not variants:
        return 2
    cases = list(weighted_cases()) + list(elementwise_cases()) + list(softmax_mean_concatenation_cases())
    failures = 0
    for isa in variants:
        differing = []
        for name, (graph, inputs) in cases:
            expected, got = run(graph, inputs, None), run(graph, inputs, isa)
            if expected.shape != got.shape or not np.array_equal(expected, got):
                differing.append(f"{name}: {int(np.count_nonzero(expected != got))} of {expected.size} differ")
        for line in differing:
            print(f"  FAIL {isa}: {line}")
        print(f"{isa}: native equals numpy on {len(cases) - len(differing)} of {len(cases)} cases")
        failures += len(differing)
    return 1 if failures or not kernel_paths_as_expected(variants, expected_best) else 0


if __name__ == "__main__":
    sys.exit(main())
