"""Empirical bias correction (Nagel et al. 2019, section 4.2), a pass on the float graph before
calibration.

int8 weights ``W_q`` differ from the float ones by ``dW = W_q - W``; on an input ``x`` the op's output
moves by ``op(x; dW)``, whose mean over the data is a per-output-channel shift that int8 rounding does
not average away: it is the same on every sample. It matters most where few weights make an output
(a depthwise 3x3 sums 9) and where the input is far from zero-mean (after hard-swish, ReLU or PReLU).
This pass runs the float graph on the calibration samples with our runtime, applies each weighted
op's kernel with ``dW`` (exactly the per-channel symmetric rounding ``converter.quantize`` will use)
to the op's real input, padding included, and subtracts the mean output per channel from the op's
bias, so the int8 op's expected output is the float op's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.runtime.ir import Graph, Op, Tensor

# Weighted ops and the per-channel axis converter.quantize gives their weights.
WEIGHT_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


@dataclass
class BiasCorrectionReport:
    corrected: list = field(default_factory=list)  # (op, largest |shift| / the output's range)

    def __str__(self):
        worst = max((share for _, share in self.corrected), default=0.0)
        return (f"bias correction: {len(self.corrected)} weighted ops, largest mean shift "
                f"{worst:.2%} of the output's range")


def weight_rounding_error(weights: np.ndarray, op_type: str) -> np.ndarray:
    """``dequantize(quantize(w)) - w`` for the int8 weights ``converter.quantize`` makes of ``weights``."""
    from edgeq.converter.quantize import PER_CHANNEL_FULLY_CONNECTED, quantize_symmetric, symmetric_weight_params

    axis = WEIGHT_CHANNEL_AXIS[op_type]
    if op_type == "FULLY_CONNECTED" and not PER_CHANNEL_FULLY_CONNECTED:
        axis = None
    scales = symmetric_weight_params(weights, axis)
    shape = [1] * weights.ndim
    if axis is not None:
        shape[axis] = -1
    dequantized = quantize_symmetric(weights, scales, axis).astype(np.float64) * scales.reshape(shape if axis is not None else ())
    return (dequantized - weights.astype(np.float64)).astype(np.float32)


def correctable_ops(graph: Graph) -> list:
    return [op for op in graph.ops
            if op.type in WEIGHT_CHANNEL_AXIS and len(op.inputs) >= 2 and graph[op.inputs[1]].is_constant
            and graph[op.inputs[1]].dtype == np.float32 and graph[op.inputs[0]].dtype == np.float32
            and (len(op.inputs) < 3 or not op.inputs[2] or graph[op.inputs[2]].is_constant)]


def _shift_kernel(graph: Graph, op: Op, registry: dict):
    """``x -> op(x; dW)`` with no bias and no fused activation, on a graph of its own."""
    weights = graph[op.inputs[1]].data
    error = weight_rounding_error(weights, op.type)
    channels = graph[op.outputs[0]].shape[-1]
    tensors = [Tensor("x", graph[op.inputs[0]].shape), Tensor("dw", error.shape, data=error),
               Tensor("zero", (channels,), data=np.zeros(channels, np.float32)),
               Tensor("y", graph[op.outputs[0]].shape)]
    options = dict(op.options, fused_activation_function="NONE")
    alone = Op(op.type, ["x", "dw", "zero"], ["y"], options, op.name)
    mini = Graph(tensors, [alone], ["x"], ["y"])
    evaluate = registry[op.type](alone, mini)
    return lambda x: evaluate(x, error, mini["zero"].data)


def correct_bias(graph: Graph, samples: dict, batch_size: int = 8) -> tuple:
    """A copy of ``graph`` whose weighted ops' biases absorb the mean output shift of their int8
    weights on ``samples``; returns (graph, BiasCorrectionReport)."""
    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.kernels import load_all_kernels

    graph = graph.copy()
    ops = correctable_ops(graph)
    registry = load_all_kernels()
    kernels = {id(op): _shift_kernel(graph, op, registry) for op in ops}
    readers = {}
    for op in ops:
        readers.setdefault(op.inputs[0], []).append(op)
    sums = {id(op): 0.0 for op in ops}
    counts = {id(op): 0 for op in ops}
    output_peak = {id(op): 0.0 for op in ops}
    produced_by = {op.outputs[0]: op for op in ops}

    def observe(name, value):
        if value is None:
            return
        for op in readers.get(name, ()):
            shift = np.asarray(kernels[id(op)](np.asarray(value, dtype=np.float32)), dtype=np.float64)
            flat = shift.reshape(-1, shift.shape[-1])
            sums[id(op)] = sums[id(op)] + flat.sum(axis=0)
            counts[id(op)] += flat.shape[0]
        if name in produced_by:
            op = produced_by[name]
            output_peak[id(op)] = np.maximum(output_peak[id(op)],
                                             np.abs(np.asarray(value)).reshape(-1, np.shape(value)[-1]).max(0))

    run = Interpreter.from_graph(graph)
    total = next(iter(samples.values())).shape[0]
    for start in range(0, total, batch_size):
        batch = {n: np.asarray(samples[n][start:start + batch_size]) for n in graph.inputs}
        for name, value in batch.items():
            observe(name, value)
        run.run(batch, observe=observe)

    report = BiasCorrectionReport()
    for op in ops:
        if not counts[id(op)]:
            continue
        shift = sums[id(op)] / counts[id(op)]
        channels = graph[op.outputs[0]].shape[-1]
        bias = (graph[op.inputs[2]].data.astype(np.float64) if len(op.inputs) > 2 and op.inputs[2]
                else np.zeros(channels))
        corrected = (bias - shift).astype(np.float32)
        if len(op.inputs) > 2 and op.inputs[2]:
            op.inputs[2] = graph.add_constant(op.inputs[2], corrected)  # arrays shared with graph copies stay
        else:
            op.inputs[2:] = [graph.add_constant(f"{op.outputs[0]}/bias", corrected)]
        peak = max(float(np.max(output_peak[id(op)])), 1e-12)
        report.corrected.append((str(op), float(np.max(np.abs(shift)) / peak)))
    graph.remove_unused()
    return graph, report
