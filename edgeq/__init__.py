"""edgeq: prune and quantize models to compact int8 TFLite files (``edgeq.converter``), and run them with a small
interpreter (``edgeq.runtime``).

``import edgeq`` needs only the runtime's dependencies; ``edgeq.convert`` imports the converter when first used.
"""
from edgeq import _startup

if _startup.running_as_the_edgeq_command():  # a Ctrl-C while the command starts: see _startup
    _startup.interrupts_end_quietly()

from edgeq.runtime import Interpreter  # noqa: E402  (after the handler above)

__all__ = ["Interpreter", "convert"]


def __getattr__(name):
    # The converter needs the convert extra (onnx, tqdm): imported on first use, not by ``import edgeq``.
    if name == "convert":
        from edgeq.converter import convert

        return convert
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
