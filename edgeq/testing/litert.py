"""LiteRT (``ai_edge_litert``) as a referee, run in a child process.

LiteRT aborts the whole process (SIGABRT) on some files it dislikes, e.g. in ``allocate_tensors``. Every
interpreter made here lives in one persistent worker process (``python -m edgeq.testing.litert_worker``)
that this process talks to over pipes, so such an abort becomes a ``LiteRTDied`` error (an
AssertionError: a failing test) naming the model and its ops, and the next interpreter gets a fresh worker.

``Interpreter`` takes the same arguments and has the same methods as
``ai_edge_litert.interpreter.Interpreter`` (those the tests use), plus ``run`` and ``tensors``, which do a
whole run or fetch many tensors in one round trip. ``OpResolverType`` names the same resolvers.
"""
from __future__ import annotations

import atexit
import enum
import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STDERR_TAIL_LINES = 12
# The worker's stderr file is emptied once it grows past this between calls.
STDERR_FILE_LIMIT = 1 << 20


class OpResolverType(enum.Enum):
    """The resolvers of ``ai_edge_litert.interpreter.OpResolverType``, sent to the worker by name."""
    AUTO = "AUTO"
    BUILTIN = "BUILTIN"
    BUILTIN_REF = "BUILTIN_REF"
    BUILTIN_WITHOUT_DEFAULT_DELEGATES = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"


class LiteRTDied(AssertionError):
    """The LiteRT worker process died (or had died) while serving a request."""


def available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def _builtin_error(name: str, message: str) -> Exception:
    """The worker's exception as the same built-in class, so callers catch what LiteRT raises."""
    kind = {"ValueError": ValueError, "RuntimeError": RuntimeError, "IndexError": IndexError,
            "KeyError": KeyError, "TypeError": TypeError}.get(name)
    return kind(message) if kind else RuntimeError(f"{name}: {message}")


def _signal_name(returncode: int) -> str:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def model_ops(content: bytes) -> str:
    """The model's op types in order of first use, for a message; "unreadable" when the file is not."""
    try:
        from edgeq.runtime.tflite_format.reader import read_tflite

        return ", ".join(dict.fromkeys(op.type for op in read_tflite(content).ops)) or "none"
    except Exception:  # noqa: BLE001 - a file LiteRT died on may well be one we refuse too
        return "unreadable"


class _Worker:
    """One child process serving LiteRT requests; ``generation`` counts the processes started."""

    def __init__(self):
        self.process = None
        self.owner = None  # the process that started the worker: a forked copy must start its own
        self.generation = 0
        self.released = []
        self._stderr = tempfile.TemporaryFile(mode="a+b")

    def _start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeq.testing.litert_worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.owner = os.getpid()
        self.generation += 1
        self.released = []

    def alive(self) -> bool:
        return self.process is not None and self.owner == os.getpid() and self.process.poll() is None

    def call(self, method: str, handle, args: tuple, describe) -> object:
        """The worker's answer to one request; ``describe()`` names the model if the worker dies."""
        if not self.alive():
            self._start()
        if self._stderr.tell() > STDERR_FILE_LIMIT:
            self._stderr.truncate(0)
        self._stderr.seek(0, os.SEEK_END)
        stderr_start = self._stderr.tell()
        released, self.released = self.released, []
        # pickled whole before anything is written, so a request that cannot be pickled leaves the pipe clean
        request = pickle.dumps((method, handle, args, released), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
            answer = pickle.load(self.process.stdout)
        except (BrokenPipeError, EOFError, pickle.UnpicklingError, ConnectionResetError):
            raise self._died(method, describe, stderr_start) from None
        if answer[0] == "ok":
            return answer[1]
        raise _builtin_error(*answer[1:])

    def _died(self, method: str, describe, stderr_start: int) -> LiteRTDied:
        try:
            returncode = self.process.wait(5)
        except subprocess.TimeoutExpired:  # alive but its answer unreadable: it cannot be trusted further
            self.process.kill()
            returncode = self.process.wait()
        self.process = None
        self._stderr.seek(stderr_start)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-STDERR_TAIL_LINES:]
        doing = "loading" if method == "load" else f"in {method}() on"
        message = f"LiteRT died ({_signal_name(returncode)}) {doing} {describe()}"
        return LiteRTDied(message + ("\nLiteRT's last words:\n  " + "\n  ".join(tail) if tail else ""))

    def close(self):
        if self.alive():
            try:
                pickle.dump(("exit", None, (), []), self.process.stdin)
                self.process.stdin.close()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process = None


_WORKER = _Worker()
atexit.register(_WORKER.close)


def worker_pid():
    """The process id of the running worker, None before the first request or after it died."""
    return _WORKER.process.pid if _WORKER.alive() else None


def abort_worker() -> None:
    """Make the worker call os.abort(), as LiteRT does on a file it cannot take: a test hook that
    shows an abort becomes a LiteRTDied error and the next interpreter gets a fresh worker."""
    _WORKER.call("abort", None, (), lambda: "the worker's abort test hook")


class Interpreter:
    """``ai_edge_litert.interpreter.Interpreter`` in the worker process; see the module docstring."""

    def __init__(self, model_path=None, model_content=None, num_threads=None,
                 experimental_op_resolver_type=OpResolverType.AUTO, experimental_preserve_all_tensors=False):
        if model_content is None:
            model_content = Path(model_path).read_bytes()
        self._content = bytes(model_content)
        self._name = f"model {model_path}" if model_path is not None else f"a {len(self._content):,}-byte model"
        resolver = OpResolverType(getattr(experimental_op_resolver_type, "name", experimental_op_resolver_type))
        self._resolver = resolver.name
        options = {"experimental_op_resolver_type": resolver.name,
                   "experimental_preserve_all_tensors": experimental_preserve_all_tensors}
        if num_threads is not None:
            options["num_threads"] = num_threads
        self._handle = _WORKER.call("load", None, (self._content, options), self.describe)
        self._generation = _WORKER.generation

    def describe(self) -> str:
        return f"{self._name} with {self._resolver} kernels (ops: {model_ops(self._content)})"

    def _call(self, method: str, *args):
        if self._generation != _WORKER.generation or not _WORKER.alive():
            raise LiteRTDied(f"LiteRT's worker died after loading {self.describe()}; this interpreter is gone")
        return _WORKER.call(method, self._handle, args, self.describe)

    def __del__(self):
        # the worker frees the interpreter with the next request; nothing to do if that worker is gone
        try:
            if self._generation == _WORKER.generation:
                _WORKER.released.append(self._handle)
        except (AttributeError, TypeError):  # not fully made, or at interpreter shutdown
            pass

    def allocate_tensors(self):
        return self._call("allocate_tensors")

    def get_input_details(self) -> list:
        return self._call("get_input_details")

    def get_output_details(self) -> list:
        return self._call("get_output_details")

    def get_tensor_details(self) -> list:
        return self._call("get_tensor_details")

    def get_signature_list(self) -> dict:
        return self._call("get_signature_list")

    def set_tensor(self, tensor_index: int, value):
        return self._call("set_tensor", tensor_index, value)

    def invoke(self):
        return self._call("invoke")

    def get_tensor(self, tensor_index: int, subgraph_index: int = 0):
        return self._call("get_tensor", tensor_index, subgraph_index)

    def resize_tensor_input(self, input_index: int, tensor_size, strict: bool = False):
        return self._call("resize_tensor_input", input_index, tensor_size, strict)

    def get_signature_runner(self, signature_key=None):
        return lambda **inputs: self._call("signature_run", signature_key, inputs)

    def run(self, inputs: list) -> list:
        """Set the inputs in order, invoke, return every output: one round trip (allocate first)."""
        return self._call("run", list(inputs))

    def tensors(self, indices) -> dict:
        """{index: value} of the given tensors, leaving out those LiteRT keeps elsewhere (constants)."""
        return self._call("tensors", list(indices))
