"""Mutated .tflite files either run or fail with edgeq's own ModelError (InvokeError when an op fails
mid-invoke), quickly and within bounded memory: never another exception (a bare numpy ValueError from a
kernel included), a crash or a hang.

The mutations and seed models are edgeq.testing.tflite_mutations (scripts/fuzz_tflite.py runs many
more cases in guarded worker processes); here a fixed, seeded set runs in-process, each case under a
wall-clock alarm and with its Python/numpy allocations traced, so an allocation the validator's memory
limit did not foresee fails the test instead of going unnoticed.
"""
from __future__ import annotations

import contextlib
import signal
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeq.testing import tflite_mutations as fuzz

SEEDED_CASES = 1000
SECONDS_PER_CASE = 5
# The validator refuses models needing more than tflite_mutations.FUZZ_MODEL_MEMORY (64 MB); kernels'
# working buffers may add to that, but nothing near this.
PEAK_ALLOCATION_LIMIT = 4 * (64 << 20)


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise CaseTimeout(f"a case took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def seeds():
    models = fuzz.seed_models()
    return models, [fuzz.field_positions(data) for _, data in models]


def run_guarded(content: bytes) -> str:
    """The outcome of one model; fails the test on a disallowed exception, a hang or a huge allocation."""
    tracemalloc.start()
    try:
        with time_limit(SECONDS_PER_CASE), warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outcome = fuzz.run_model(content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= PEAK_ALLOCATION_LIMIT, f"a case allocated {peak:,} bytes"
    return outcome


def test_every_seed_model_runs(seeds):
    models, _ = seeds
    for label, content in models:
        assert run_guarded(content) == "ok", label


@pytest.mark.slow  # a thousand cases
def test_seeded_mutations_run_or_fail_cleanly(seeds):
    models, fields = seeds
    outcomes = {}
    for case in range(SEEDED_CASES):
        label, content = fuzz.mutate(models, fields, seed=0, case=case)
        try:
            outcome = run_guarded(content)
        except Exception as error:
            raise AssertionError(f"case {case} ({label}): {type(error).__name__}: {error}") from error
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The mutations must reach past the reader: some models still run, most are refused.
    assert outcomes.get("ok", 0) > SEEDED_CASES // 20
    assert outcomes.get("ModelError", 0) > SEEDED_CASES // 2


mutation_steps = st.lists(
    st.tuples(st.sampled_from(sorted(fuzz.MUTATIONS)), st.integers(0, 2**32 - 1)), min_size=1, max_size=4)


@settings(max_examples=250, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.integers(0, 2), steps=mutation_steps)
def test_any_mutation_sequence_runs_or_fails_cleanly(seeds, which, steps):
    models, fields = seeds
    data = bytearray(models[which][1])
    for name, step_seed in steps:
        if not data:
            break
        rng = np.random.default_rng(step_seed)
        data = bytearray(fuzz.MUTATIONS[name](data, rng, others=[m for _, m in models], fields=fields[which]))
    assert run_guarded(bytes(data)) in ("ok", "ModelError")


SHAPE_CASES = 400


def test_shape_mutations_run_or_fail_with_model_error(seeds):
    """Dimensions and constant shapes off by one, zeroed, doubled, swapped or bit-flipped: what passes a
    reader's range checks and then meets a kernel's arithmetic (a RESHAPE's element count)."""
    models, fields = seeds
    outcomes = {}
    for case in range(SHAPE_CASES):
        rng = np.random.default_rng([7, case])
        which = case % len(models)
        data = bytearray(models[which][1])
        for _ in range(int(rng.integers(1, 3))):
            data = bytearray(fuzz.reshape(data, rng, fields=fields[which]))
        try:
            outcome = run_guarded(bytes(data))
        except Exception as error:
            raise AssertionError(f"shape case {case} ({models[which][0]}): {type(error).__name__}: {error}") from error
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) == {"ok", "ModelError"}, outcomes
