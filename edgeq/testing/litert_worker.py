"""The child process behind edgeq.testing.litert: it holds LiteRT interpreters and serves requests read
from stdin, one pickle each, answering each on the original stdout. LiteRT's own printing goes to
stderr, so it cannot corrupt the answers.

A request is (method, handle, args, released handles); the answer is ("ok", value) or
("error", exception class name, message). ``load`` makes an interpreter and answers its handle.
"""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np


def _open_protocol_streams():
    """(requests, answers): stdin, and a private copy of stdout; fd 1 then points at stderr."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return sys.stdin.buffer, answers


def _load(content: bytes, options: dict):
    from ai_edge_litert import interpreter as litert

    resolver = getattr(litert.OpResolverType, options.pop("experimental_op_resolver_type"))
    return litert.Interpreter(model_content=content, experimental_op_resolver_type=resolver, **options)


def _run(interpreter, inputs: list) -> list:
    """Set every input in order, invoke, and return every output: one round trip for a whole run."""
    for detail, value in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _tensors(interpreter, indices) -> dict:
    """The tensors LiteRT gives by index; those it keeps elsewhere (constants) are left out."""
    found = {}
    for index in indices:
        try:
            found[index] = interpreter.get_tensor(index)
        except ValueError:
            pass
    return found


def _signature_run(interpreter, key, inputs: dict) -> dict:
    return {name: np.array(value) for name, value in interpreter.get_signature_runner(key)(**inputs).items()}


# The LiteRT Interpreter methods a client may call by name.
FORWARDED = {"allocate_tensors", "get_input_details", "get_output_details", "get_tensor_details",
             "set_tensor", "invoke", "get_tensor", "resize_tensor_input", "get_signature_list"}
EXTRA = {"run": _run, "tensors": _tensors, "signature_run": _signature_run}


def serve(requests, answers) -> None:
    interpreters, next_handle = {}, 0
    while True:
        try:
            method, handle, args, released = pickle.load(requests)
        except EOFError:
            return
        for gone in released:
            interpreters.pop(gone, None)
        try:
            if method == "exit":
                return
            if method == "abort":  # a test hook: proves a dying child is reported, not fatal
                os.abort()
            if method == "load":
                interpreters[next_handle] = _load(*args)
                value, next_handle = next_handle, next_handle + 1
            elif method in EXTRA:
                value = EXTRA[method](interpreters[handle], *args)
            elif method in FORWARDED:
                value = getattr(interpreters[handle], method)(*args)
            else:
                raise ValueError(f"unknown LiteRT worker request {method!r}")
            answer = ("ok", value)
        except Exception as error:  # noqa: BLE001 - every error goes back to the caller, as its class
            answer = ("error", type(error).__name__, str(error))
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


if __name__ == "__main__":
    serve(*_open_protocol_streams())
