"""The ``edgeq`` command: the runtime's commands joined with the converter's."""
from edgeq.converter.cli import main

__all__ = ["main"]
