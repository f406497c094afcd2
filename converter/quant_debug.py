"""Quantization debugger: how far each int8 tensor is from its float twin, on the same samples.

For every activation that the int8 graph holds in int8 under the same name as in the float graph,
the int8 values are dequantized and compared with the float values: SQNR in dB (signal power over
error power) and the largest error in units of the tensor's scale (0.5 is the best rounding allows).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from edgeq.converter.quantize import quantize_affine
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph


@dataclass
class TensorError:
    tensor: str
    op: str
    sqnr_db: float
    max_abs_error: float
    max_error_in_scales: float
    scale: float

    def as_dict(self) -> dict:
        return asdict(self)


def power_ratio_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    signal = float(np.sum(reference * reference))
    noise = float(np.sum(np.square(reference - approximation)))
    return power_ratio_db(signal, noise)


def dequantize(values: np.ndarray, tensor) -> np.ndarray:
    quant = tensor.quant
    shape = [1] * values.ndim
    if quant.per_channel:
        shape[quant.axis] = -1
    scale = quant.scale.astype(np.float64).reshape(shape)
    zero_point = quant.zero_point.reshape(shape)
    return (values.astype(np.float64) - zero_point) * scale


def compared_tensors(float_graph: Graph, int8_graph: Graph) -> list:
    """(name, producing op) of the activations held in int8 under their float name, in run order."""
    pairs = []
    for op in int8_graph.ops:
        for name in op.outputs:
            tensor = int8_graph.tensors.get(name)
            twin = float_graph.tensors.get(name)
            if (tensor is not None and twin is not None and tensor.quant is not None
                    and tensor.dtype.kind in "iu" and twin.dtype == np.float32 and not twin.is_constant):
                pairs.append((name, str(op)))
    return pairs


def layer_errors(float_graph: Graph, int8_graph: Graph, samples: dict, batch_size: Optional[int] = None) -> list:
    """A ``TensorError`` per compared tensor, in run order, over all ``samples`` (name -> array), run
    ``batch_size`` at a time (by default as ``converter.calibrate.batch_size_for`` says)."""
    from edgeq.converter.calibrate import batch_size_for

    batch_size = batch_size or batch_size_for(float_graph, samples)
    pairs = compared_tensors(float_graph, int8_graph)
    names = {name for name, _ in pairs}
    float_run = Interpreter.from_graph(float_graph)
    total = next(iter(samples.values())).shape[0]

    def batches():  # one batch's float values at a time
        for start in range(0, total, batch_size):
            batch = {n: samples[n][start:start + batch_size] for n in float_graph.inputs}
            yield batch, float_run.run(batch, keep=names)

    totals = error_totals(int8_graph, batches(), names)
    errors = []
    for name, op in pairs:
        signal, noise, worst = totals.get(name, (0.0, 0.0, 0.0))
        scale = float(np.max(int8_graph[name].quant.scale))
        errors.append(TensorError(name, op, power_ratio_db(signal, noise), worst, worst / scale, scale))
    return errors


def error_totals(int8_graph: Graph, batches, names: Optional[set] = None) -> dict:
    """``{name: (signal power, error power, largest |error|)}`` summed over ``batches``, pairs of an
    input batch and the float graph's values on it (read one pair at a time), for every activation
    (or those in ``names``) the int8 graph holds under its float name, dequantized or float."""
    totals: dict = {}
    int8_run = Interpreter.from_graph(int8_graph)
    for batch, reference in batches:
        def observe(name, value):
            expected = reference.get(name)
            if expected is None or value is None or (names is not None and name not in names):
                return
            tensor = int8_graph[name]
            if tensor.quant is not None and tensor.dtype.kind in "iu":
                got = dequantize(np.asarray(value), tensor)
            else:
                got = np.asarray(value, dtype=np.float64)
            if got.shape != expected.shape:
                return
            expected = expected.astype(np.float64)
            error = expected - got
            signal, noise, worst = totals.get(name, (0.0, 0.0, 0.0))
            totals[name] = (signal + float(np.sum(expected * expected)), noise + float(np.sum(error * error)),
                            max(worst, float(np.max(np.abs(error))) if error.size else 0.0))

        int8_run.run(int8_feeds(int8_graph, batch), observe=observe)
    return totals


def int8_feeds(int8_graph: Graph, batch: dict) -> dict:
    """Float samples in the form the int8 graph's inputs take (float, or quantized for integer I/O)."""
    feeds = {}
    for name, value in batch.items():
        tensor = int8_graph[name]
        if tensor.dtype == np.float32 or tensor.quant is None:  # float, or integer data such as token ids
            feeds[name] = value
            continue
        feeds[name] = quantize_affine(value, float(tensor.quant.scale[0]), int(tensor.quant.zero_point[0]), tensor.dtype)
    return feeds


def worst_first(errors: list, count: int = 5) -> list:
    return sorted(errors, key=lambda e: e.sqnr_db)[:count]


def format_table(errors: list) -> str:
    """One line per tensor, worst SQNR first; the tensor's name comes last and whole, since names
    (``/features/features.3/body/body.2/Clip_output_0``) differ only at their ends."""
    ordered = sorted(errors, key=lambda e: (e.sqnr_db, e.tensor))
    width = max([len("op")] + [len(_op_type(e.op)) for e in ordered])
    lines = [f"{'SQNR dB':>8} {'max err':>10} {'/scale':>7}  {'op':{width}}  tensor"]
    for e in ordered:
        lines.append(f"{e.sqnr_db:8.1f} {e.max_abs_error:10.4g} {e.max_error_in_scales:7.2f}  "
                     f"{_op_type(e.op):{width}}  {e.tensor}")
    return "\n".join(lines)


def _op_type(op: str) -> str:
    """``"CONV_2D '/features/...'"`` -> ``"CONV_2D"``: the op's name is its output's, printed beside it."""
    return op.split(" ", 1)[0]
