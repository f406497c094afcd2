"""Measuring the variants: each is converted, run on the eval set by both engines and probed for memory
in a worker process (``build_all``); latency is measured afterwards, serially, one variant at a time,
so variants never compete (``measure_all_latency``). Latency and memory go through the runtime's one
harness (``edgeq.runtime.measure``), as ``edgeq bench`` does."""
from __future__ import annotations

import contextlib
import gzip
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

from edgeq.converter.report.engines import (EDGEQ, LITERT, feeds_in_input_order, litert_available,
                                            litert_interpreter, outputs_on_edgeq, outputs_on_litert)
from edgeq.converter.report.plan import VariantSpec
from edgeq.runtime.ir import ModelError
from edgeq.runtime.measure import inference, peak_memory_in_fresh_processes, time_runs

MODELS_FOLDER = "models"


def measure_latency(content: bytes, inputs: dict, repeats: int, engine: str) -> dict:
    """Median and min of ``repeats`` single-sample inferences (the first eval sample) after warm-up,
    one thread; LiteRT with its default kernels."""
    if engine == LITERT:
        interpreter = litert_interpreter(content, reference_kernels=False)
    else:
        from edgeq.runtime.interpreter import Interpreter

        interpreter = Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
    feeds = feeds_in_input_order(interpreter, inputs, slice(0, 1))
    latency = time_runs(inference(interpreter, feeds), repeats).summary()
    return {"median": latency["median_ms"], "min": latency["min_ms"], "repeats": repeats}


@dataclass
class BuildJob:
    spec: VariantSpec
    model_path: str
    calibration: object  # a file name, or an edgeq.runtime.inputs.ImageFolder
    num_calibration_samples: Optional[int]
    input_shapes: dict
    models_folder: str
    eval_inputs: dict
    with_litert: bool


@dataclass
class BuiltVariant:
    spec: VariantSpec
    file: str
    content: bytes
    seconds: float
    outputs: dict                       # engine -> list of stacked output arrays
    memory: dict                        # engine -> probe result
    float_ops: list = field(default_factory=list)
    layer_errors: list = field(default_factory=list)
    pruning: list = field(default_factory=list)
    int8_check: Optional[dict] = None  # converter.api.Int8Check.as_dict() of an int8 variant


def build_variant(job: BuildJob) -> BuiltVariant:
    """Convert, save to the models folder, run the eval set on both engines, probe memory."""
    from edgeq.converter.api import convert

    spec = job.spec
    started = time.perf_counter()
    options = spec.convert_options()
    if spec.is_int8:
        options.update(calibration=job.calibration, num_calibration_samples=job.num_calibration_samples)
    path = Path(job.models_folder) / f"{spec.name}.tflite"
    result = convert(job.model_path, path, input_shapes=job.input_shapes or None, **options)
    seconds = time.perf_counter() - started
    outputs = {EDGEQ: outputs_on_edgeq(result.content, job.eval_inputs)}
    if job.with_litert:
        outputs[LITERT] = outputs_on_litert(result.content, job.eval_inputs)
    memory = peak_memory_in_fresh_processes(path, list(outputs))
    return BuiltVariant(spec, f"{MODELS_FOLDER}/{path.name}", result.content, seconds, outputs, memory,
                        list(result.float_ops), [e.as_dict() for e in result.layer_errors],
                        [r.as_dict() for r in getattr(result, "prune_reports", [])],
                        result.int8_check.as_dict() if result.int8_check is not None else None)


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="variant", disable=not enabled, file=sys.stderr, leave=False)


def build_all(specs, options, eval_data, models_folder: Path, jobs: int, progress: bool) -> dict:
    with_litert = litert_available()
    jobs_by_spec = [
        BuildJob(spec, str(options.model), _as_path_or_folder(options.calibration), options.calibration_samples,
                 dict(options.input_shapes), str(models_folder), eval_data.inputs, with_litert)
        for spec in specs
    ]
    built = {}
    # spawn, not fork: the parent may hold BLAS and tqdm threads, which fork does not copy safely. Made
    # before the block below: it starts multiprocessing's resource tracker, which unblocks SIGINT after.
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_setup)
    try:
        with _progress_bar(len(specs), "building variants", progress) as bar:
            # Workers start with Ctrl-C held back (they inherit the signal mask), so only this process
            # sees it; it then ends them and everything they started (see _end_workers).
            with sigint_blocked():
                futures = {pool.submit(build_variant, job): job.spec for job in jobs_by_spec}
            for future in as_they_complete(futures):
                spec = futures[future]
                try:
                    built[spec.name] = future.result()
                except ModelError as error:
                    raise ModelError(f"variant {spec.name}: {error}") from None
                bar.update(1)
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown()
    return built


# How often a waiting main thread wakes up; see as_they_complete.
WAKE_UP_SECONDS = 0.2


def as_they_complete(futures):
    """The futures as they finish, like ``concurrent.futures.as_completed``, but waking the main thread every
    WAKE_UP_SECONDS. A Ctrl-C that the kernel hands to another thread (while the main thread holds SIGINT back
    to start processes, any thread that does not gets it: BLAS, tqdm's monitor) only marks the signal pending;
    CPython raises KeyboardInterrupt in the main thread the next time that thread takes the GIL, which an
    unbounded wait never does until a variant is built, minutes later."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=WAKE_UP_SECONDS, return_when=FIRST_COMPLETED)
        yield from done


def _worker_setup() -> None:
    """A worker leads its own process group, so that it and the memory probes it starts end together."""
    os.setpgrp()


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers with their process groups (memory probes included) and let the pool notice,
    so that nothing is left running and exiting does not wait for variants nobody will read."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    for worker in workers:
        for kill in (lambda: os.killpg(worker.pid, signal.SIGKILL), worker.kill):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                kill()
    pool.shutdown(wait=True, cancel_futures=True)
    for worker in workers:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.join(timeout=5)


@contextlib.contextmanager
def sigint_blocked():
    """SIGINT held back while processes are started, then acted on as usual once the block ends.

    Blocked in this thread, so that a child inherits the mask and a Ctrl-C reaches only this process; and
    deferred in Python, because the kernel hands a SIGINT that this thread blocks to any thread that does not
    (BLAS, tqdm's monitor): CPython marks it pending and would raise KeyboardInterrupt here, in the middle
    of starting a child, which then prints a traceback as it reads a half-sent start-up message."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    received = []
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # runs the handler if one is pending
        signal.signal(signal.SIGINT, previous_handler)
    if received:  # only when the block ended normally: an error raised inside it goes on as it is
        if callable(previous_handler):
            previous_handler(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt
        elif previous_handler == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def measure_all_latency(built: dict, inputs: dict, repeats: int, progress: bool) -> dict:
    engines = [EDGEQ, LITERT] if litert_available() else [EDGEQ]
    latency = {}
    with _progress_bar(len(built), "timing variants", progress) as bar:
        for name, variant in built.items():
            latency[name] = {engine: measure_latency(variant.content, inputs, repeats, engine) for engine in engines}
            bar.update(1)
    return latency


def size_figures(content: bytes) -> dict:
    from edgeq.runtime.size import size_breakdown

    return {
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(content, compresslevel=9, mtime=0)),
        "breakdown": size_breakdown(content),
    }


def _as_path_or_folder(samples):
    """A file name as a string; a folder of images as the ImageFolder that says how to read it."""
    from edgeq.runtime.inputs import ImageFolder

    return samples if isinstance(samples, ImageFolder) else str(samples)
