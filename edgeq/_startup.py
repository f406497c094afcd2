"""A Ctrl-C while the edgeq command loads its modules (numpy, the runtime: a fraction of a second, more on a
busy machine) ends it as one later does: one line and exit 130, not Python's KeyboardInterrupt traceback.
The command's group puts Python's own handler back once it runs (``edgeq.runtime.cli.common``)."""
import os
import signal
import sys


def running_as_the_edgeq_command() -> bool:
    """Whether this process is the ``edgeq`` console script (not Python code importing edgeq)."""
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "edgeq"


def interrupts_end_quietly() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        signal.signal(signal.SIGINT, _end)


def _end(signum, frame):
    os.write(2, b"edgeq: error: interrupted\n")
    os._exit(130)  # nothing has been written yet: no file to clean up, no child to end


def restore() -> None:
    if signal.getsignal(signal.SIGINT) is _end:
        signal.signal(signal.SIGINT, signal.default_int_handler)

