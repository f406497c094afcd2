"""ONNX subgraphs that TFLite holds as one builtin, rewritten into one ONNX node before the op rules run.

GELU: exporters write x * 0.5 * (1 + Erf(x / sqrt(2))) (nn.GELU before ONNX had a Gelu op). TFLite has
no ERF, but GELU computes exactly this, so the pattern becomes one ONNX ``Gelu`` node; an Erf outside
the pattern stays and is refused by name as an unsupported op.

The tanh approximation 0.5 * x * (1 + Tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))) (nn.GELU(approximate=
"tanh"), Hugging Face's gelu_new and gelu_fast) becomes a ``Gelu`` with approximate="tanh", TFLite
GELU's approximate option. Exporters write the cubic in many orders (Pow(x, 3), x * x * x, x * (c1 +
c2 * x * x)...), so the Tanh argument is matched by what it computes: a chain of Mul/Add/Div/Pow of x
and scalar constants, evaluated at sample points against the polynomial.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from onnx import helper

from .load import PreparedModel

# Exporters round the constants (1.4142, 0.7071); anything this close is sqrt(2) or 1/sqrt(2).
RELATIVE_TOLERANCE = 1e-3


class _Graph:
    """Producer and consumer lookups over the prepared model."""

    def __init__(self, prepared: PreparedModel):
        graph = prepared.proto.graph
        self.constants = prepared.constants
        self.outputs = {out.name for out in graph.output}
        self.producer = {name: node for node in graph.node for name in node.output}
        self.order = {id(node): index for index, node in enumerate(graph.node)}
        self.consumers: dict = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def scalar(self, name: str) -> Optional[float]:
        data = self.constants.get(name)
        if data is None or np.asarray(data).size != 1 or np.asarray(data).dtype.kind != "f":
            return None
        return float(np.asarray(data).reshape(()))

    def sole_consumer(self, name: str, op_type: str):
        """The one node reading ``name`` if it is an ``op_type`` and ``name`` is no graph output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs or users[0].op_type != op_type:
            return None
        return users[0]

    def split_constant(self, node, value: float):
        """(the other input, True) when one input of a binary ``node`` is the scalar ``value``."""
        for const_index in (1, 0) if node.op_type in ("Mul", "Add") else (1,):
            constant = self.scalar(node.input[const_index])
            if constant is not None and math.isclose(constant, value, rel_tol=RELATIVE_TOLERANCE):
                return node.input[1 - const_index]
        return None


def _other_input(node, name: str) -> Optional[str]:
    if list(node.input).count(name) != 1:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _erf_argument(g: _Graph, erf) -> Optional[tuple]:
    """(x, node) when Erf reads x / sqrt(2) or x * (1 / sqrt(2)) computed by ``node`` for Erf alone."""
    node = g.producer.get(erf.input[0])
    if node is None or g.sole_consumer(erf.input[0], "Erf") is None:
        return None
    if node.op_type == "Div":
        x = g.split_constant(node, math.sqrt(2.0))
    elif node.op_type == "Mul":
        x = g.split_constant(node, 1.0 / math.sqrt(2.0))
    else:
        return None
    return (x, node) if x is not None and x not in g.constants else None


def _half_of(g: _Graph, name: str, x: str):
    """The node computing ``name`` = x * 0.5 (or x / 2), or None."""
    node = g.producer.get(name)
    if node is None or node.op_type not in ("Mul", "Div"):
        return None
    half = g.split_constant(node, 0.5 if node.op_type == "Mul" else 2.0)
    return node if half == x else None


def match_erf_gelu(g: _Graph, erf) -> Optional[tuple]:
    """(x, nodes of the pattern, output) for the GELU around ``erf``, in the common exporter orderings:
    ((x * (1 + erf)) * 0.5), ((0.5 * (1 + erf)) * x) and ((x * 0.5) * (1 + erf))."""
    argument = _erf_argument(g, erf)
    if argument is None:
        return None
    x, scale_node = argument
    tail = _gelu_tail(g, erf, x)
    if tail is None:
        return None
    nodes, output = tail
    return x, [scale_node, erf] + nodes, output


def _gelu_tail(g: _Graph, activation, x: str) -> Optional[tuple]:
    """(nodes, output) of 0.5 * x * (1 + activation) after ``activation`` (an Erf or Tanh node):
    ((x * (1 + a)) * 0.5), ((0.5 * (1 + a)) * x) or ((x * 0.5) * (1 + a))."""
    add = g.sole_consumer(activation.output[0], "Add")
    if add is None or g.split_constant(add, 1.0) != activation.output[0]:
        return None
    product = g.sole_consumer(add.output[0], "Mul")
    other = _other_input(product, add.output[0]) if product is not None else None
    if other is None:
        return None
    half = _half_of(g, other, x)
    if half is not None and g.sole_consumer(other, "Mul") is product:  # (x * 0.5) * (1 + a)
        return [add, half, product], product.output[0]
    last = g.sole_consumer(product.output[0], "Mul")
    rest = _other_input(last, product.output[0]) if last is not None else None
    if rest is None or x not in (other, rest):
        return None
    if not _is_half(g, rest if other == x else other):  # (x * (1 + a)) * 0.5 or (0.5 * (1 + a)) * x
        return None
    return [add, product, last], last.output[0]


# The tanh approximation's argument, sqrt(2 / pi) * (x + 0.044715 * x^3), and the points it is checked at.
TANH_GELU_POINTS = np.linspace(-4.0, 4.0, 17)
POLYNOMIAL_OPS = {"Mul": np.multiply, "Add": np.add, "Div": np.divide, "Pow": np.power}
MAX_POLYNOMIAL_NODES = 8


def _tanh_gelu_argument(g: _Graph, tanh, x: str) -> Optional[list]:
    """The nodes computing the Tanh's input when it is sqrt(2 / pi) * (x + 0.044715 * x^3), from x and
    scalar constants by Mul/Add/Div/Pow nodes that feed only each other and the Tanh."""
    nodes, leaves, pending = [], set(), [tanh.input[0]]
    while pending:
        name = pending.pop()
        node = g.producer.get(name)
        if name == x or node is None or node.op_type not in POLYNOMIAL_OPS or name in g.constants:
            leaves.add(name)
            continue
        if node in nodes:
            continue
        nodes.append(node)
        if len(nodes) > MAX_POLYNOMIAL_NODES:
            return None
        pending.extend(n for n in node.input if g.scalar(n) is None)
    if leaves != {x} or not nodes:
        return None
    inside = {id(node) for node in nodes} | {id(tanh)}
    for node in nodes:  # every intermediate feeds the pattern alone
        if node.output[0] in g.outputs or any(id(user) not in inside for user in g.consumers.get(node.output[0], [])):
            return None
    values = {x: TANH_GELU_POINTS}
    order = sorted(nodes, key=lambda node: g.order[id(node)])
    with np.errstate(all="ignore"):
        for node in order:
            a, b = (values[n] if n in values else g.scalar(n) for n in node.input)
            values[node.output[0]] = POLYNOMIAL_OPS[node.op_type](a, b)
    expected = math.sqrt(2.0 / math.pi) * (TANH_GELU_POINTS + 0.044715 * TANH_GELU_POINTS ** 3)
    if not np.allclose(values[tanh.input[0]], expected, rtol=RELATIVE_TOLERANCE, atol=1e-4):
        return None
    return order


def _gelu_inputs(g: _Graph, activation) -> list:
    """The activations that may be the GELU's x, read off the tail after ``activation``: the other
    factors of the products with (1 + activation), and the inputs of a factor that halves one."""
    add = g.sole_consumer(activation.output[0], "Add")
    product = g.sole_consumer(add.output[0], "Mul") if add is not None else None
    other = _other_input(product, add.output[0]) if product is not None else None
    if other is None:
        return []
    names = [other]
    if g.producer.get(other) is not None and g.producer[other].op_type in ("Mul", "Div"):
        names += list(g.producer[other].input)
    last = g.sole_consumer(product.output[0], "Mul")
    if last is not None:
        names.append(_other_input(last, product.output[0]))
    return [n for n in dict.fromkeys(names) if n and n not in g.constants]


def match_tanh_gelu(g: _Graph, tanh) -> Optional[tuple]:
    """(x, nodes of the pattern, output) for the tanh-approximated GELU around ``tanh``."""
    for x in _gelu_inputs(g, tanh):
        inner = _tanh_gelu_argument(g, tanh, x)
        tail = _gelu_tail(g, tanh, x) if inner is not None else None
        if tail is not None:
            nodes, output = tail
            return x, inner + [tanh] + nodes, output
    return None


def _is_half(g: _Graph, name: str) -> bool:
    value = g.scalar(name)
    return value is not None and math.isclose(value, 0.5, rel_tol=RELATIVE_TOLERANCE)


def fuse_gelu(prepared: PreparedModel) -> int:
    """Replace every GELU written with Erf, or with Tanh as its tanh approximation, by one ``Gelu``
    node, in place; return how many."""
    g = _Graph(prepared)
    graph = prepared.proto.graph
    replaced: dict = {}  # id of the pattern's last node -> the Gelu node taking its place
    dropped: set = set()
    for activation in [node for node in graph.node if node.op_type in ("Erf", "Tanh")]:
        match = match_erf_gelu(g, activation) if activation.op_type == "Erf" else match_tanh_gelu(g, activation)
        if match is None:
            continue
        x, nodes, output = match
        if any(id(node) in dropped for node in nodes):
            continue
        dropped.update(id(node) for node in nodes)
        attributes = {"approximate": "tanh"} if activation.op_type == "Tanh" else {}
        replaced[id(nodes[-1])] = helper.make_node("Gelu", [x], [output], name=activation.name or output, **attributes)
    if not replaced:
        return 0
    kept = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped or id(node) in replaced]
    del graph.node[:]
    graph.node.extend(kept)
    return len(replaced)
