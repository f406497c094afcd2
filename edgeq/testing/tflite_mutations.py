""".tflite mutations for fuzzing edgeq's reader, validator and interpreter: valid seed models (the
digits CNN sample converted to float and to int8, and a tiny hand-built graph of PAD, TILE,
CONCATENATION, RESHAPE, FULLY_CONNECTED, SOFTMAX), mutations (bit flips, byte overwrites, truncation,
splices, targeted writes of huge dimensions, out-of-range indices and odd quantization scales at the
offsets the flatbuffer binding reports, and small changes to shapes: a dimension or constant shape value
zeroed, off by one, doubled, bit-flipped or swapped), numbered seeded cases, and one case's run, whose
only accepted error is edgeq's own ModelError (InvokeError when an op fails mid-invoke). Shared by
tests/test_fuzz.py and scripts/fuzz_tflite.py.
"""
from __future__ import annotations

import collections
import struct
from pathlib import Path

import numpy as np

# The sample models live in the source tree, beside this package in a checkout.
SAMPLE_MODELS = Path(__file__).resolve().parents[2] / "sample_models"

ACCEPTED_ERRORS = ("ModelError",)
# The validator's limit on the tensors of one model while fuzzing: far below the memory guard, so an
# allocation the validator failed to foresee hits the guard (MemoryError) instead of passing unseen.
FUZZ_MODEL_MEMORY = 64 << 20

INTERESTING_INT32 = (0, 1, -1, 2, 3, 7, 255, 256, 65535, 65536, 2**24, 2**30, 2**31 - 1, -(2**31), 2**31 - 2)
INTERESTING_FLOAT32 = (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45, 3e38, 1e-10)


# -- seed models --------------------------------------------------------------------------------

def tiny_graph_model() -> bytes:
    """A hand-built float graph touching the ops whose output size follows from constants."""
    from edgeq.runtime.tflite_format.writer import write_tflite
    from edgeq.runtime.ir import Graph, Op, Tensor

    rng = np.random.default_rng(0)
    tensors = [
        Tensor("x", (1, 2, 3)),
        Tensor("paddings", (3, 2), np.int32, np.array([[0, 0], [1, 1], [0, 1]], np.int32)),
        Tensor("padded", (1, 4, 4)),
        Tensor("multiples", (3,), np.int32, np.array([1, 1, 2], np.int32)),
        Tensor("tiled", (1, 4, 8)),
        Tensor("joined", (1, 8, 8)),
        Tensor("flat_shape", (2,), np.int32, np.array([1, 64], np.int32)),
        Tensor("flat", (1, 64)),
        Tensor("w", (5, 64), data=rng.standard_normal((5, 64)).astype(np.float32)),
        Tensor("b", (5,), data=rng.standard_normal(5).astype(np.float32)),
        Tensor("logits", (1, 5)),
        Tensor("probs", (1, 5)),
    ]
    ops = [
        Op("PAD", ["x", "paddings"], ["padded"]),
        Op("TILE", ["padded", "multiples"], ["tiled"]),
        Op("CONCATENATION", ["tiled", "tiled"], ["joined"], {"axis": 1, "fused_activation_function": "NONE"}),
        Op("RESHAPE", ["joined", "flat_shape"], ["flat"]),
        Op("FULLY_CONNECTED", ["flat", "w", "b"], ["logits"], {"fused_activation_function": "RELU"}),
        Op("SOFTMAX", ["logits"], ["probs"], {"beta": 1.0}),
    ]
    return write_tflite(Graph(tensors, ops, ["x"], ["probs"]))


def seed_models() -> list:
    """[(label, bytes)] of the valid models every mutation starts from."""
    from edgeq.converter.api import convert

    cnn = SAMPLE_MODELS / "digits_cnn.onnx"
    calibration = SAMPLE_MODELS / "digits_cnn_calib.npz"
    return [
        ("digits_cnn_float", convert(str(cnn)).content),
        ("digits_cnn_int8", convert(str(cnn), quantize="int8", calibration=str(calibration)).content),
        ("tiny_graph", tiny_graph_model()),
    ]


# -- where the interesting integers are ---------------------------------------------------------

def _vector_positions(table, slot: int, element_size: int = 4) -> list:
    """Byte offsets of the elements of the vector in field ``slot`` of a flatbuffer table."""
    offset = table._tab.Offset(slot)
    if not offset:
        return []
    start = table._tab.Vector(offset)
    return [start + i * element_size for i in range(table._tab.VectorLen(offset))]


def _scalar_position(table, slot: int) -> list:
    offset = table._tab.Offset(slot)
    return [table._tab.Pos + offset] if offset else []


def field_positions(data: bytes) -> dict:
    """Kind -> byte offsets of the int32/float32 fields worth targeting, found through the binding."""
    import tflite

    model = tflite.Model.GetRootAs(data, 0)
    positions = collections.defaultdict(list)
    positions["opcode"] += [p for i in range(model.OperatorCodesLength())
                            for p in _scalar_position(model.OperatorCodes(i), 10)]  # builtin_code
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        positions["index"] += _vector_positions(subgraph, 6) + _vector_positions(subgraph, 8)  # inputs, outputs
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            positions["dim"] += _vector_positions(tensor, 4)
            positions["buffer"] += _scalar_position(tensor, 8)
            positions["type"] += _scalar_position(tensor, 6)
            if tensor.Type() == 2 and tensor.Buffer() > 0:  # INT32 constants: shapes, paddings, multiples...
                positions["shape_value"] += _vector_positions(model.Buffers(tensor.Buffer()), 4, 1)[::4]
            quant = tensor.Quantization()
            if quant is not None:
                positions["scale"] += _vector_positions(quant, 8)
                positions["zero_point"] += _vector_positions(quant, 10, 8)
                positions["axis"] += _scalar_position(quant, 16)
        for o in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(o)
            positions["opcode_index"] += _scalar_position(op, 4)
            positions["index"] += _vector_positions(op, 6) + _vector_positions(op, 8)
            positions["options_type"] += _scalar_position(op, 10)
    return {kind: sorted(set(found)) for kind, found in positions.items() if found}


# -- mutations ----------------------------------------------------------------------------------

def _put(data: bytearray, position: int, raw: bytes) -> None:
    if 0 <= position and position + len(raw) <= len(data):
        data[position:position + len(raw)] = raw


def flip_bits(data, rng, **_):
    for _ in range(int(rng.integers(1, 9))):
        bit = int(rng.integers(0, len(data) * 8))
        data[bit // 8] ^= 1 << (bit % 8)
    return data


def overwrite_bytes(data, rng, **_):
    start = int(rng.integers(0, len(data)))
    length = int(rng.integers(1, 9))
    filler = rng.choice([0x00, 0xFF, 0x7F, 0x80, int(rng.integers(0, 256))])
    _put(data, start, bytes([int(filler)] * min(length, len(data) - start)))
    return data


def overwrite_int32(data, rng, **_):
    position = int(rng.integers(0, max(len(data) // 4, 1))) * 4
    _put(data, position, struct.pack("<i", int(rng.choice(INTERESTING_INT32))))
    return data


def truncate(data, rng, **_):
    return data[:int(rng.integers(0, len(data)))]


def splice(data, rng, others=(), **_):
    donor = others[int(rng.integers(0, len(others)))] if others else bytes(data)
    start, length = int(rng.integers(0, len(donor))), int(rng.integers(1, 257))
    chunk = donor[start:start + length]
    at = int(rng.integers(0, len(data)))
    if rng.random() < 0.5:
        return data[:at] + chunk + data[at + len(chunk):]
    return data[:at] + chunk + data[at:]


def targeted(data, rng, fields=None, **_):
    """Write a telling value where the binding says a dimension, index, scale... lives."""
    if not fields:
        return overwrite_int32(data, rng)
    kind = sorted(fields)[int(rng.integers(0, len(fields)))]
    position = fields[kind][int(rng.integers(0, len(fields[kind])))]
    if kind == "scale":
        _put(data, position, struct.pack("<f", float(rng.choice(INTERESTING_FLOAT32))))
    elif kind == "zero_point":
        _put(data, position, struct.pack("<q", int(rng.choice((-129, 128, 2**40, -1, 255)))))
    elif kind in ("type", "options_type"):
        _put(data, position, bytes([int(rng.integers(0, 256))]))
    elif kind == "opcode":
        _put(data, position, struct.pack("<i", int(rng.choice((0, 1, 3, 4, 9, 22, 25, 32, 200, 2**31 - 1)))))
    else:
        values = INTERESTING_INT32 + tuple(range(0, 48))
        _put(data, position, struct.pack("<i", int(rng.choice(values))))
    return data


def reshape(data, rng, fields=None, **_):
    """A small change to one dimension or one value of a constant int32 tensor (a shape, paddings,
    multiples): 0, off by one, doubled, a flipped bit, or swapped with its neighbour. The kind of damage
    that passes a reader's range checks and meets the kernels' own arithmetic."""
    places = [p for kind in ("dim", "shape_value") for p in (fields or {}).get(kind, ())]
    if not places:
        return overwrite_int32(data, rng)
    position = places[int(rng.integers(0, len(places)))]
    if position + 4 > len(data):
        return data
    value = struct.unpack_from("<i", data, position)[0]
    change = int(rng.integers(0, 6))
    if change == 4 and position + 8 <= len(data):  # swap with the next element
        following = struct.unpack_from("<i", data, position + 4)[0]
        _put(data, position, struct.pack("<ii", following, value))
        return data
    new = (0, value + 1, value - 1, value * 2, value, value ^ (1 << int(rng.integers(0, 8))))[change]
    _put(data, position, struct.pack("<i", int(np.clip(new, -(2**31), 2**31 - 1))))
    return data


MUTATIONS = {
    "bit_flip": flip_bits,
    "byte_overwrite": overwrite_bytes,
    "int32_overwrite": overwrite_int32,
    "truncate": truncate,
    "splice": splice,
    "targeted": targeted,
    "reshape": reshape,
}
# Targeted writes reach the validator most often; random damage mostly exercises the reader.
MUTATION_WEIGHTS = {"bit_flip": 2, "byte_overwrite": 1, "int32_overwrite": 1, "truncate": 1, "splice": 1, "targeted": 4,
                    "reshape": 3}


def mutate(seeds: list, fields: list, seed: int, case: int) -> tuple:
    """(label, mutated bytes) of case number ``case``: the same on every run with this seed."""
    rng = np.random.default_rng([seed, case])
    which = int(rng.integers(0, len(seeds)))
    label, original = seeds[which]
    data = bytearray(original)
    names = list(MUTATIONS)
    weights = np.array([MUTATION_WEIGHTS[n] for n in names], float)
    applied = []
    for _ in range(int(rng.integers(1, 4))):
        if not data:
            break
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        data = bytearray(MUTATIONS[name](data, rng, others=[s for _, s in seeds], fields=fields[which]))
        applied.append(name)
    return f"{label}:{'+'.join(applied)}", bytes(data)


# -- one case -----------------------------------------------------------------------------------

def run_model(content: bytes, max_memory_bytes: int = FUZZ_MODEL_MEMORY) -> str:
    """Read, allocate and invoke; the outcome's name ("ok" or the accepted error's class name).
    Any other exception propagates: that is a finding."""
    from edgeq.runtime.interpreter import Interpreter
    from edgeq.runtime.ir import ModelError

    try:
        interpreter = Interpreter(model_content=content, max_memory_bytes=max_memory_bytes)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.ones(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            interpreter.get_tensor(detail["index"])
    except ModelError:  # InvokeError, a kernel failing mid-invoke, is one too
        return "ModelError"
    return "ok"
