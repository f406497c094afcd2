"""The runtime's commands, which work with the base install on a board: ``edgeq inspect``, ``edgeq run``,
``edgeq bench``, ``edgeq export-c``; and the plumbing every edgeq command shares (``common``). ``edgeq.cli`` joins them with
the converter's commands into the one ``edgeq`` command."""
from edgeq.runtime.cli.bench import bench
from edgeq.runtime.cli.describe import inspect
from edgeq.runtime.cli.export_c import export_c
from edgeq.runtime.cli.run import run

COMMANDS = (bench, export_c, inspect, run)

__all__ = ["COMMANDS", "bench", "export_c", "inspect", "run"]
