"""LSTM and GRU, unrolled over the (static) sequence into FULLY_CONNECTED, ADD, SUB, MUL, LOGISTIC, TANH,
SPLIT/SPLIT_V, UNPACK, PACK and RESHAPE.

Unrolled rather than lowered to UNIDIRECTIONAL_SEQUENCE_LSTM (or the bidirectional sequence ops) because
every op of the unrolled form already has a float and an int8 kernel in edgeq's runtime and in LiteRT,
and quantizes to int8 with the ordinary rules; the fused sequence ops would need their own quantization
scheme (int16 cell state, per-gate intermediate scales) and kernels for it. The sequence length is
static once the input shapes are, so the unrolled graph is fixed: about eleven ops per step and direction.

Per direction, the input projection of all timesteps is one FULLY_CONNECTED on X (carrying both ONNX
biases, so they are exact int32 in int8), unpacked along time into [B, gates] rows; each step adds the
recurrent FULLY_CONNECTED of the previous hidden state. ONNX gate order, with ``x`` the projected input
and ``r(h)`` the recurrent product:

    LSTM (i, o, f, c):  i, o, f = sigmoid(x + r(h))[:3H];  g = tanh(x + r(h))[3H:]
                        c' = f * c + i * g;  h' = o * tanh(c')
    GRU (z, r, h):      z, q = sigmoid(x_zr + r_zr(h))
                        n = tanh(x_n + r_n(q * h))              linear_before_reset = 0
                        n = tanh(x_n + q * (r_n(h) + Rb_n))     linear_before_reset = 1
                        h' = n + z * (h - n)                    = (1 - z) * n + z * h

A missing (or all-zero constant) initial state drops the terms it would multiply from the first step.
Steps keep the batch on their first axis, and Y, Y_h and Y_c are stored batch first ([B, T, D, H] and
[B, D, H]) whatever their ONNX layout, so a batch of samples on the first axis runs through unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgeq.runtime.ir import ModelError

from .. import layout
from . import rule
from .gemm import fc_input

DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
GATE_COUNT = {"LSTM": 4, "GRU": 3}
DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}
NO_ACTIVATION = {"fused_activation_function": "NONE"}


@dataclass(frozen=True)
class Sequence:
    """The static geometry of one recurrent node."""

    steps: int
    batch: int
    hidden: int
    directions: tuple
    batch_first: bool  # ONNX layout attribute 1: X is [B, T, I], Y is [B, T, D, H]

    @property
    def time_axis(self) -> int:
        return 1 if self.batch_first else 0

    @property
    def state_perm(self) -> tuple:
        """Layout storing an ONNX [D, B, H] (layout 0) or [B, D, H] (layout 1) state as [B, D, H]."""
        return layout.identity(3) if self.batch_first else (1, 0, 2)

    @property
    def output_perm(self) -> tuple:
        """Layout storing ONNX Y [T, D, B, H] (layout 0) or [B, T, D, H] (layout 1) as [B, T, D, H]."""
        return layout.identity(4) if self.batch_first else (2, 0, 1, 3)


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def label(node) -> str:
    """The node as error messages name it (an LSTM's Y output is often unnamed)."""
    return f"{node.op_type} node '{node.name or next((o for o in node.output if o), '')}'"


def optional_input(node, index: int) -> Optional[str]:
    return node.input[index] if len(node.input) > index and node.input[index] else None


# -- what is supported ---------------------------------------------------------------------------

def refusal(ctx, node, attrs, steps: int) -> Optional[str]:
    """Why this node cannot be unrolled, or None."""
    op_type = node.op_type
    if "clip" in attrs:
        return "cell clipping (clip)"
    names = tuple(text(a).lower() for a in attrs.get("activations", ()))
    default = DEFAULT_ACTIVATIONS[op_type]
    if names and names not in (default, default * 2):
        return f"activations {list(names)} (only the default {list(default)})"
    if attrs.get("input_forget", 0):
        return "coupled input and forget gates (input_forget)"
    if text(attrs.get("direction", "forward")) not in DIRECTIONS:
        return f"direction '{text(attrs['direction'])}'"
    for index, role in ((1, "W"), (2, "R"), (3, "B")):
        name = optional_input(node, index)
        if name is not None and not ctx.is_const(name):
            return f"computed weights ({role} is not a constant)"
    lengths = optional_input(node, 4)
    if lengths is not None:
        if not ctx.is_const(lengths):
            return "variable sequence lengths (sequence_lens is not a constant)"
        if np.any(ctx.const(lengths) != steps):
            return f"sequences shorter than the input (sequence_lens {ctx.const(lengths).tolist()})"
    peepholes = optional_input(node, 7) if op_type == "LSTM" else None
    if peepholes is not None and not (ctx.is_const(peepholes) and not np.any(ctx.const(peepholes))):
        return "peephole connections (input P)"
    if ctx.dtype(node.input[0]) != np.float32:
        return f"{ctx.dtype(node.input[0])} input (only float32)"
    return None


def sequence_of(ctx, node, attrs) -> Sequence:
    batch_first = bool(attrs.get("layout", 0))
    shape = ctx.shape(node.input[0])
    steps, batch = (shape[1], shape[0]) if batch_first else (shape[0], shape[1])
    reason = refusal(ctx, node, attrs, steps)
    if reason is not None:
        raise ModelError(f"{label(node)}: {reason} is not supported")
    hidden = ctx.const(node.input[2]).shape[-1]
    return Sequence(steps, batch, hidden, DIRECTIONS[text(attrs.get("direction", "forward"))], batch_first)


# -- op builders ---------------------------------------------------------------------------------

class Unroller:
    """Emits the ops of one node under one name prefix; every builder returns the IR output name."""

    def __init__(self, ctx, node):
        self.ctx = ctx
        self.node = node
        self.prefix = node.name or next(o for o in node.output if o)

    def shape(self, ir: str) -> tuple:
        return tuple(self.ctx.graph[ir].shape)

    def temp(self, kind: str, shape) -> str:
        return self.ctx.temp(f"{self.prefix}/{kind}", shape)

    def const(self, kind: str, data: np.ndarray) -> str:
        return self.ctx.const_tensor(f"{self.prefix}/{kind}", np.ascontiguousarray(data, dtype=np.float32))

    def emit(self, op_type, inputs, outputs, options=None):
        self.ctx.emit(op_type, inputs, outputs, options or {}, self.node)

    def fully_connected(self, x: str, weights: str, bias: Optional[str], kind: str) -> str:
        shape = self.shape(x)[:-1] + (self.shape(weights)[0],)
        out = self.temp(kind, shape)
        options = {"fused_activation_function": "NONE", "weights_format": "DEFAULT",
                   "keep_num_dims": len(shape) != 2, "asymmetric_quantize_inputs": False}
        self.emit("FULLY_CONNECTED", [x, weights, bias or ""], [out], options)
        return out

    def binary(self, op_type: str, a: str, b: str, kind: str) -> str:
        out = self.temp(kind, np.broadcast_shapes(self.shape(a), self.shape(b)))
        options = dict(NO_ACTIVATION, pot_scale_int16=False) if op_type in ("ADD", "SUB") else NO_ACTIVATION
        self.emit(op_type, [a, b], [out], options)
        return out

    def unary(self, op_type: str, x: str, kind: str) -> str:
        out = self.temp(kind, self.shape(x))
        self.emit(op_type, [x], [out])
        return out

    def split(self, x: str, sizes: list, kinds: list) -> list:
        """Split the last axis: SPLIT for equal parts, SPLIT_V otherwise."""
        shape = self.shape(x)
        axis = len(shape) - 1
        outs = [self.temp(kind, shape[:-1] + (size,)) for kind, size in zip(kinds, sizes)]
        axis_ir = self.ctx.int32_tensor(f"{self.prefix}/split_axis", [axis])
        if len(set(sizes)) == 1:
            self.emit("SPLIT", [axis_ir, x], outs, {"num_splits": len(outs)})
        else:
            sizes_ir = self.ctx.int32_tensor(f"{self.prefix}/split_sizes", sizes)
            self.emit("SPLIT_V", [x, sizes_ir, axis_ir], outs, {"num_splits": len(outs)})
        return outs

    def unpack(self, x: str, axis: int, kind: str) -> list:
        shape = self.shape(x)
        part = shape[:axis] + shape[axis + 1:]
        outs = [self.temp(f"{kind}_{i}", part) for i in range(shape[axis])]
        self.emit("UNPACK", [x], outs, {"num": len(outs), "axis": axis})
        return outs

    def pack(self, items: list, axis: int, out: str) -> None:
        self.emit("PACK", items, [out], {"values_count": len(items), "axis": axis})

    def reshape(self, x: str, out: str) -> None:
        shape = list(self.shape(out))
        shape_ir = self.ctx.int32_tensor(f"{out}/shape", shape)
        self.emit("RESHAPE", [x, shape_ir], [out], {"new_shape": shape})


# -- inputs --------------------------------------------------------------------------------------

def projected_steps(unroller: Unroller, x_name: str, weights: np.ndarray, bias: np.ndarray,
                    seq: Sequence, kind: str) -> list:
    """x_t W^T + bias for every timestep, in time order, each [B, rows of W]: one FULLY_CONNECTED."""
    x_ir, weights, perm = fc_input(unroller.ctx, x_name, weights)
    projected = unroller.fully_connected(
        x_ir, unroller.const(f"{kind}_weights", weights), unroller.const(f"{kind}_bias", bias), kind)
    return unroller.unpack(projected, perm.index(seq.time_axis), f"{kind}_step")


def initial_states(unroller: Unroller, name: Optional[str], seq: Sequence, kind: str) -> list:
    """Per direction, the [B, H] initial state, or None where it is zero."""
    ctx = unroller.ctx
    if name is None:
        return [None] * len(seq.directions)
    if ctx.is_const(name):
        states = layout.to_storage(ctx.const(name).astype(np.float32), seq.state_perm)  # [B, D, H]
        return [unroller.const(f"{kind}_{d}", states[:, d]) if np.any(states[:, d]) else None
                for d in range(len(seq.directions))]
    value = ctx.value(name)
    if value.perm[-1] == 2:  # hidden stored last: unpack the directions where they are stored
        return unroller.unpack(value.ir, value.perm.index(seq.state_perm[1]), kind)
    return unroller.unpack(ctx.stored(name, seq.state_perm), 1, kind)


def biases(ctx, node, gates: int, hidden: int, directions: int) -> tuple:
    """(Wb, Rb), each [D, gates * H]; zeros when B is absent."""
    name = optional_input(node, 3)
    if name is None:
        zeros = np.zeros((directions, gates * hidden), np.float32)
        return zeros, zeros
    both = ctx.const(name).astype(np.float32)
    return both[:, :gates * hidden], both[:, gates * hidden:]


def time_order(direction: str, steps: int) -> range:
    return range(steps) if direction == "forward" else range(steps - 1, -1, -1)


# -- cells ---------------------------------------------------------------------------------------

def lstm_direction(unroller, x_steps, recurrence, h, c, direction, hidden) -> tuple:
    """({t: h_t}, last h, last c) for one direction."""
    recurrent_weights = unroller.const("recurrent_weights", recurrence)
    hidden_by_time = {}
    for t in time_order(direction, len(x_steps)):
        gates = x_steps[t] if h is None else unroller.binary(
            "ADD", x_steps[t], unroller.fully_connected(h, recurrent_weights, None, "recurrent"), "gates")
        sigmoid_part, cell_part = unroller.split(gates, [3 * hidden, hidden], ["iof_pre", "g_pre"])
        i, o, f = unroller.split(unroller.unary("LOGISTIC", sigmoid_part, "iof"), [hidden] * 3, ["i", "o", "f"])
        written = unroller.binary("MUL", i, unroller.unary("TANH", cell_part, "g"), "written")
        c = written if c is None else unroller.binary("ADD", unroller.binary("MUL", f, c, "kept"), written, "c")
        h = unroller.binary("MUL", o, unroller.unary("TANH", c, "c_tanh"), "h")
        hidden_by_time[t] = h
    return hidden_by_time, h, c


def gru_direction(unroller, zr_steps, n_steps, recurrence, recurrent_bias_n, h, direction, hidden,
                  linear_before_reset) -> tuple:
    """({t: h_t}, last h) for one direction; ``recurrent_bias_n`` is Rb_n when it stays inside the reset."""
    zr_weights = unroller.const("recurrent_zr_weights", recurrence[:2 * hidden])
    n_weights = unroller.const("recurrent_n_weights", recurrence[2 * hidden:])
    n_bias = unroller.const("recurrent_n_bias", recurrent_bias_n) if np.any(recurrent_bias_n) else None
    hidden_by_time = {}
    for t in time_order(direction, len(zr_steps)):
        zr = zr_steps[t] if h is None else unroller.binary(
            "ADD", zr_steps[t], unroller.fully_connected(h, zr_weights, None, "recurrent_zr"), "zr_pre")
        z, reset = unroller.split(unroller.unary("LOGISTIC", zr, "zr"), [hidden, hidden], ["z", "r"])
        if linear_before_reset:
            recurrent = n_bias if h is None else unroller.fully_connected(h, n_weights, n_bias, "recurrent_n")
        else:
            recurrent = None if h is None else unroller.fully_connected(
                unroller.binary("MUL", reset, h, "reset_h"), n_weights, None, "recurrent_n")
            reset = None
        if recurrent is not None and reset is not None:
            recurrent = unroller.binary("MUL", reset, recurrent, "reset_recurrent")
        n_pre = n_steps[t] if recurrent is None else unroller.binary("ADD", n_steps[t], recurrent, "n_pre")
        n = unroller.unary("TANH", n_pre, "n")
        if h is None:
            h = unroller.binary("SUB", n, unroller.binary("MUL", z, n, "z_n"), "h")
        else:
            h = unroller.binary("ADD", n, unroller.binary("MUL", z, unroller.binary("SUB", h, n, "h_minus_n"),
                                                           "z_delta"), "h")
        hidden_by_time[t] = h
    return hidden_by_time, h


# -- outputs -------------------------------------------------------------------------------------

def emit_outputs(unroller: Unroller, node, seq: Sequence, hidden_by_time: list, finals: dict) -> None:
    """Y from every step's hidden state, and the final states (``finals``: output index -> per direction)."""
    ctx = unroller.ctx
    d_count = len(seq.directions)
    y_name = optional_input_output(node, 0)
    if y_name is not None:
        items = [hidden_by_time[d][t] for t in range(seq.steps) for d in range(d_count)]
        packed = unroller.temp("Y_packed", (seq.batch, seq.steps * d_count, seq.hidden))
        unroller.pack(items, 1, packed)
        onnx_shape = layout.storage_shape((seq.batch, seq.steps, d_count, seq.hidden), layout.inverse(seq.output_perm))
        unroller.reshape(packed, ctx.define(y_name, seq.output_perm, onnx_shape, np.float32))
    for index, states in finals.items():
        name = optional_input_output(node, index)
        if name is not None:
            onnx_shape = layout.storage_shape((seq.batch, d_count, seq.hidden), layout.inverse(seq.state_perm))
            unroller.pack(states, 1, ctx.define(name, seq.state_perm, onnx_shape, np.float32))


def optional_input_output(node, index: int) -> Optional[str]:
    return node.output[index] if len(node.output) > index and node.output[index] else None


# -- rules ---------------------------------------------------------------------------------------

@rule("LSTM")
def convert_lstm(ctx, node, attrs):
    seq = sequence_of(ctx, node, attrs)
    unroller = Unroller(ctx, node)
    hidden = seq.hidden
    weights, recurrence = ctx.const(node.input[1]).astype(np.float32), ctx.const(node.input[2]).astype(np.float32)
    input_bias, recurrent_bias = biases(ctx, node, 4, hidden, len(seq.directions))
    h0 = initial_states(unroller, optional_input(node, 5), seq, "initial_h")
    c0 = initial_states(unroller, optional_input(node, 6), seq, "initial_c")
    hidden_by_time, last_h, last_c = [], [], []
    for d, direction in enumerate(seq.directions):
        x_steps = projected_steps(unroller, node.input[0], weights[d], input_bias[d] + recurrent_bias[d], seq, "input")
        by_time, h, c = lstm_direction(unroller, x_steps, recurrence[d], h0[d], c0[d], direction, hidden)
        hidden_by_time.append(by_time)
        last_h.append(h)
        last_c.append(c)
    emit_outputs(unroller, node, seq, hidden_by_time, {1: last_h, 2: last_c})


@rule("GRU")
def convert_gru(ctx, node, attrs):
    seq = sequence_of(ctx, node, attrs)
    unroller = Unroller(ctx, node)
    hidden = seq.hidden
    linear_before_reset = bool(attrs.get("linear_before_reset", 0))
    weights, recurrence = ctx.const(node.input[1]).astype(np.float32), ctx.const(node.input[2]).astype(np.float32)
    input_bias, recurrent_bias = biases(ctx, node, 3, hidden, len(seq.directions))
    h0 = initial_states(unroller, optional_input(node, 5), seq, "initial_h")
    hidden_by_time, last_h = [], []
    for d, direction in enumerate(seq.directions):
        zr_bias = input_bias[d, :2 * hidden] + recurrent_bias[d, :2 * hidden]
        # Rb_n joins the input projection unless the reset gate multiplies it.
        n_bias = input_bias[d, 2 * hidden:] + (0 if linear_before_reset else recurrent_bias[d, 2 * hidden:])
        zr_steps = projected_steps(unroller, node.input[0], weights[d, :2 * hidden], zr_bias, seq, "input_zr")
        n_steps = projected_steps(unroller, node.input[0], weights[d, 2 * hidden:], n_bias, seq, "input_n")
        inner_bias = recurrent_bias[d, 2 * hidden:] if linear_before_reset else np.zeros(hidden, np.float32)
        by_time, h = gru_direction(unroller, zr_steps, n_steps, recurrence[d], inner_bias, h0[d], direction,
                                   hidden, linear_before_reset)
        hidden_by_time.append(by_time)
        last_h.append(h)
    emit_outputs(unroller, node, seq, hidden_by_time, {1: last_h})
