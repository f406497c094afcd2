"""The one way edgeq's tables of per-op functions are filled: a decorator factory per table."""
from __future__ import annotations

from typing import Callable


def registrar(table: dict, what: str) -> Callable:
    """A decorator factory filling ``table``: ``@registered("ADD", "SUB")`` on a function stores it under each
    key; a key registered twice is a programming error, named with ``what`` ("kernel", "ONNX rule", ...)."""

    def registered(*keys: str) -> Callable:
        def decorate(function: Callable) -> Callable:
            for key in keys:
                if key in table:
                    raise RuntimeError(f"{what} for {key} registered twice")
                table[key] = function
            return function

        return decorate

    return registered
