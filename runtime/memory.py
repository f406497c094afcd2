"""How much memory a process uses, and the probe that measures one model's memory in a fresh process.

Stdlib only at import, so reading the figures adds nothing to the process they describe. The probe
runs as a script by its file path (``python .../memory.py ENGINE MODEL``), not with ``python -m``:
importing the ``edgeq`` package first would add edgeq's own import to every engine's figures, LiteRT's
too. ``edgeq.runtime.measure.peak_memory_in_fresh_processes`` starts it.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

PROBE_ENGINES = ("edgeq", "litert")


def _status_kib(field: str) -> Optional[int]:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in KiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _max_rss_bytes() -> int:
    import resource

    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def peak_rss_bytes() -> int:
    """Peak resident memory of this process. VmHWM belongs to the process image, so unlike ru_maxrss
    it does not carry over a parent's peak through fork + exec; ru_maxrss is the fallback where /proc
    is missing."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else _max_rss_bytes()


def peak_rss_mb() -> float:
    """``peak_rss_bytes`` in MiB."""
    return peak_rss_bytes() / 2**20


def reset_peak_rss() -> Optional[int]:
    """Reset the peak to the current RSS and return that RSS in bytes (Linux: writing 5 to
    /proc/self/clear_refs resets VmHWM); None where the peak cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def libraries_loaded(modules_before, modules_after) -> list:
    """The libraries (top-level packages outside Python's standard library and edgeq) first imported
    between the two snapshots of ``sys.modules``: what a model made its runtime load, such as a compiler
    for some of its kernels, whose memory is the runtime's rather than the model's."""
    def top_level(names):
        return {name.partition(".")[0] for name in names}

    new = top_level(modules_after) - top_level(modules_before)
    standard = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
    return sorted(name for name in new if not name.startswith("_") and name not in standard and name != "edgeq"
                  and getattr(sys.modules.get(name), "__file__", None))  # not a module an extension makes up


def probe_model_memory(engine: str, model_path: str) -> dict:
    """In this (fresh) process: import the engine, reset the peak RSS, load the model, run it once on
    zeros. ``import_rss_bytes`` is the RSS after the import (the runtime's own cost, the same for every
    model), ``peak_rss_bytes`` the peak while loading and running, ``loaded_libraries`` what loading and
    running the model imported (``libraries_loaded``)."""
    import numpy as np

    if engine == "litert":
        from ai_edge_litert.interpreter import Interpreter
    elif engine == "edgeq":
        from edgeq.runtime.interpreter import Interpreter
    else:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(PROBE_ENGINES)}")
    baseline = reset_peak_rss()
    if baseline is not None:
        method = "VmHWM after resetting it through /proc/self/clear_refs"
        peak = peak_rss_bytes
    else:  # the peak cannot be reset: ru_maxrss, the import included
        baseline, method, peak = _max_rss_bytes(), "ru_maxrss", _max_rss_bytes
    modules_before = list(sys.modules)
    interpreter = Interpreter(model_path=model_path, num_threads=1)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    return {"peak_rss_bytes": peak(), "import_rss_bytes": baseline, "method": method,
            "loaded_libraries": libraries_loaded(modules_before, list(sys.modules))}


if __name__ == "__main__":
    # Run by path, this file's folder (the runtime package) is sys.path[0]; nothing is imported from it.
    del sys.path[0]
    engine_name, model_file = sys.argv[1:3]
    print(json.dumps(probe_model_memory(engine_name, model_file)))
