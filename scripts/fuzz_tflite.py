#!/usr/bin/env python3
"""Fuzz edgeq's .tflite reader, validator and interpreter with mutated models.

Each case takes a valid model (the digits CNN sample converted to float and to int8, and a tiny
hand-built graph of PAD, TILE, CONCATENATION, RESHAPE, FULLY_CONNECTED, SOFTMAX), applies one to
three mutations (bit flips, byte overwrites, truncation, splices, and targeted writes of huge
dimensions, out-of-range indices and odd quantization scales at the offsets the flatbuffer binding
reports, and small changes to the shapes: a dimension zeroed, off by one, doubled, swapped or bit-flipped;
edgeq.testing.tflite_mutations), then reads, allocates and invokes it. The only acceptable outcomes are a
clean run or edgeq's own ModelError (InvokeError, an op failing mid-invoke, is one). Anything else — another
exception such as a bare numpy ValueError, a crash, a hang, an allocation beyond the memory guard — is a
finding.

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
import sys
import time
from pathlib import Path

from edgeq.testing.tflite_mutations import field_positions, mutate, run_model, seed_models


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
