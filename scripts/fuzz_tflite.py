#!/usr/bin/env python3
"""Fuzz edgeq's .tflite reader, validator and interpreter with mutated models.

Each case takes a valid model (the digits CNN sample converted to float and to int8, and a tiny
hand-built graph of PAD, TILE, CONCATENATION, RESHAPE, FULLY_CONNECTED, SOFTMAX), applies one to
three mutations (bit flips, byte overwrites, truncation, splices, and targeted writes of huge
dimensions, out-of-range indices and odd quantization scales at the offsets the flatbuffer binding
reports), then reads, allocates and invokes it. The only acceptable outcomes are a clean run or
ModelError / ValueError / RuntimeError (LiteRT's errors for bad models). Anything else — another
exception, a crash, a hang, an allocation beyond the memory guard — is a finding.

Cases are numbered and seeded: case i of seed s is the same mutation on every machine, so a finding
is reproduced with ``--replay I``.

    python scripts/fuzz_tflite.py --cases 100000 --seconds 600          # seeded loop, 2 workers
    python scripts/fuzz_tflite.py --replay 1234                          # one case, traceback shown
    python scripts/fuzz_tflite.py --atheris -- -max_total_time=600       # coverage-guided (atheris)

Each worker process runs under RLIMIT_AS (``--memory-mb``) and each case under a wall-clock
timeout (``--timeout``); a worker that dies or stalls is replaced and its case recorded.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACCEPTED_ERRORS = ("ModelError", "ValueError", "RuntimeError")
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

    cnn = ROOT / "sample_models" / "digits_cnn.onnx"
    calibration = ROOT / "sample_models" / "digits_cnn_calib.npz"
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


MUTATIONS = {
    "bit_flip": flip_bits,
    "byte_overwrite": overwrite_bytes,
    "int32_overwrite": overwrite_int32,
    "truncate": truncate,
    "splice": splice,
    "targeted": targeted,
}
# Targeted writes reach the validator most often; random damage mostly exercises the reader.
MUTATION_WEIGHTS = {"bit_flip": 2, "byte_overwrite": 1, "int32_overwrite": 1, "truncate": 1, "splice": 1, "targeted": 4}


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

    try:
        interpreter = Interpreter(model_content=content, max_memory_bytes=max_memory_bytes)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.ones(detail["shape"], detail["dtype"]))
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            interpreter.get_tensor(detail["index"])
    except (ValueError, RuntimeError) as error:  # ModelError is a ValueError
        return type(error).__name__ if type(error).__name__ in ACCEPTED_ERRORS else "ValueError"
    return "ok"


# -- the seeded loop, in guarded worker processes -----------------------------------------------

def _worker(connection, seed: int, memory_mb: int) -> None:
    import resource
    import traceback
    import warnings

    warnings.simplefilter("ignore")  # overflow in a float kernel on mutated weights is no finding
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seeds = seed_models()
    fields = [field_positions(data) for _, data in seeds]
    connection.send(("ready", None, None))
    while True:
        case = connection.recv()
        if case is None:
            return
        label, data = mutate(seeds, fields, seed, case)
        try:
            outcome, detail = run_model(data), ""
        except BaseException as error:  # a finding: report it with where it came from
            outcome = f"FINDING {type(error).__name__}"
            detail = f"{label}: {error!r}\n{traceback.format_exc(limit=-3)}"
        connection.send((outcome, label, detail))


class GuardedWorker:
    """A worker process under RLIMIT_AS whose every case must answer within ``timeout`` seconds."""

    def __init__(self, seed, memory_mb, timeout):
        self.seed, self.memory_mb, self.timeout = seed, memory_mb, timeout
        self._start()

    def _start(self):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, self.seed, self.memory_mb), daemon=True)
        self.process.start()
        if not self.connection.poll(300):
            raise RuntimeError("fuzz worker did not start")
        self.connection.recv()

    def run(self, case: int) -> tuple:
        self.connection.send(case)
        if self.connection.poll(self.timeout):
            try:
                return self.connection.recv()
            except EOFError:
                pass
            outcome = f"FINDING crash (exit code {self.process.exitcode})"
        else:
            outcome = f"FINDING hang (over {self.timeout} s)"
        self.process.kill()
        self.process.join()
        self._start()
        return outcome, f"case {case}", ""

    def close(self):
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


def fuzz(cases: int, seconds: float, seed: int, workers: int, memory_mb: int, timeout: float, log) -> collections.Counter:
    from concurrent.futures import ThreadPoolExecutor

    counts = collections.Counter()
    findings = []
    started = time.monotonic()
    pool = [GuardedWorker(seed, memory_mb, timeout) for _ in range(workers)]
    next_case = iter(range(cases))

    def drive(worker):
        for case in next_case:  # shared iterator: each case is taken once
            if time.monotonic() - started > seconds:
                return
            outcome, label, detail = worker.run(case)
            counts[outcome] += 1
            if outcome.startswith("FINDING"):
                findings.append((case, outcome, label, detail))
                log(f"case {case}: {outcome} {label}\n{detail}")

    try:
        with ThreadPoolExecutor(workers) as executor:
            list(executor.map(drive, pool))
    finally:
        for worker in pool:
            worker.close()
    total = sum(counts.values())
    log(f"{total} cases in {time.monotonic() - started:.0f} s (seed {seed}): "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    log(f"{len(findings)} findings" + ("" if not findings else ": cases " + " ".join(str(f[0]) for f in findings[:50])))
    return counts


def replay(case: int, seed: int) -> None:
    seeds = seed_models()
    fields = [field_positions(data) for _, data in seeds]
    label, data = mutate(seeds, fields, seed, case)
    print(f"case {case}: {label}, {len(data)} bytes")
    print("outcome:", run_model(data))


def atheris_main(argv) -> None:
    """Coverage-guided: libFuzzer mutates the seed models; its -rss_limit_mb and -timeout guard."""
    import atheris

    with atheris.instrument_imports():
        import edgeq.runtime.interpreter  # noqa: F401
        import edgeq.runtime.tflite_format.reader  # noqa: F401
        import edgeq.runtime.validate  # noqa: F401
    corpus = Path(os.environ.get("EDGEQ_FUZZ_CORPUS", "/tmp/edgeq_fuzz_corpus"))
    corpus.mkdir(parents=True, exist_ok=True)
    for label, data in seed_models():
        (corpus / f"{label}.tflite").write_bytes(data)

    def test_one_input(data: bytes) -> None:
        run_model(data)

    atheris.Setup([sys.argv[0], "-rss_limit_mb=2048", "-timeout=10", *argv, str(corpus)], test_one_input)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--memory-mb", type=int, default=2048, help="RLIMIT_AS of each worker")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one case may take")
    parser.add_argument("--replay", type=int, help="run one case in this process and show its traceback")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing with atheris/libFuzzer")
    parser.add_argument("libfuzzer_args", nargs="*", help="after --: options passed to libFuzzer")
    args = parser.parse_args()
    if args.atheris:
        atheris_main(args.libfuzzer_args)
    elif args.replay is not None:
        replay(args.replay, args.seed)
    else:
        counts = fuzz(args.cases, args.seconds, args.seed, args.workers, args.memory_mb, args.timeout,
                      lambda line: print(line, flush=True))
        sys.exit(1 if any(k.startswith("FINDING") for k in counts) else 0)


if __name__ == "__main__":
    main()
