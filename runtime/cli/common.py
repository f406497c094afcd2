"""What every ``edgeq`` command shares: exit codes, one-line errors, the verbosity options, and the click
group that joins the runtime's commands with the converter's, whether or not the converter is installed.

Exit codes: 0 success, 1 a check failed or an internal error, 2 bad input (file, model, option),
130 interrupted (Ctrl-C), as shells report a command ended by SIGINT.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass

import click

from edgeq import _startup
from edgeq.runtime.ir import ModelError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def fail(message: str, code: int) -> None:
    click.echo(f"edgeq: error: {message}", err=True)
    sys.exit(code)


def reports_errors(command):
    """One clear line and a non-zero exit instead of a traceback; ``--verbose`` keeps the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return command(*args, **kwargs)
        except ModelError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(f"{exc.filename}: {exc.strerror}", EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:  # the last line of defence: still one line unless asked
            if verbose:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)", EXIT_FAILED)

    return wrapper


def verbosity_options(command):
    command = click.option("--verbose", "-v", is_flag=True, help="More detail; tracebacks on internal errors.")(command)
    command = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(command)
    return command


@dataclass(frozen=True)
class OptionalCommand:
    """A command of an optional part of edgeq (the converter, the report), named by where it lives and
    by the extra that installs what it imports. Without those modules the group still lists it, and
    running it prints the one line that names the extra."""

    name: str
    target: str        # "package.module:attribute", imported only when the modules are there
    extra: str         # pip install "edgeq[<extra>]"
    part: str          # what is missing, for the message: "the converter"
    modules: tuple     # top-level modules the extra installs
    summary: str       # the group's one-line description of the command

    def missing_modules(self) -> list:
        return [module for module in self.modules if not _importable(module)]

    def hint(self) -> str:
        return f"'edgeq {self.name}' needs {self.part}: pip install \"edgeq[{self.extra}]\""

    def load(self) -> click.Command:
        if self.missing_modules():
            return self._placeholder()
        module_name, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except ImportError:  # a dependency of the extra that is not in ``modules``
            return self._placeholder()

    def _placeholder(self) -> click.Command:
        def refuse():
            fail(self.hint(), EXIT_BAD_INPUT)

        return click.Command(
            self.name, callback=refuse, add_help_option=False,
            help=f"(needs edgeq[{self.extra}]) {self.summary}",  # the need first: the listing cuts it short
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )


def _importable(module: str) -> bool:
    """Whether ``import module`` can work, without importing it (a blocked module, None in
    sys.modules or refused by an import hook, counts as absent)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _command_path(ctx) -> str:
    """``edgeq convert``, whatever name the program was started under (python -m edgeq, a test runner)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["edgeq", *reversed(names)])


class EdgeqGroup(click.Group):
    """The ``edgeq`` group: its own commands, plus optional commands loaded when asked for. It keeps
    the command line as typed in ``ctx.meta`` (the report records it)."""

    def __init__(self, *args, optional_commands=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.optional_commands = {command.name: command for command in optional_commands}

    def add_optional_command(self, command: OptionalCommand) -> None:
        self.optional_commands[command.name] = command

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(self.optional_commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        optional = self.optional_commands.get(name)
        return optional.load() if optional is not None else None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As click's, but a usage error is one line in edgeq's form, like every other error, and
        Ctrl-C while the command line is read exits 130 as it does later."""
        _startup.restore()  # from here on a Ctrl-C is a KeyboardInterrupt, handled as every command's
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            returned = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as error:  # bare "edgeq": the help is the answer
            click.echo(error.ctx.get_help())
            sys.exit(EXIT_OK)
        except click.exceptions.UsageError as error:
            hint = f" (see '{_command_path(error.ctx)} --help')" if error.ctx is not None else ""
            fail(error.format_message() + hint, EXIT_BAD_INPUT)
        except click.exceptions.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except click.exceptions.Abort:
            fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(returned if isinstance(returned, int) else EXIT_OK)

    def make_context(self, info_name, args, parent=None, **extra):
        command_line = ["edgeq", *args]  # the program, whatever name click was invoked under
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["command_line"] = command_line
        return ctx
