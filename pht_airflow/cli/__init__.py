"""The ``pht`` command: a thin layer that parses, calls the library, and renders.

Errors become one red line on stderr and a non-zero exit (1 for errors, 3 for a failed
verification, 2 for usage), never a traceback unless ``--debug`` is given. Tables are for
people; ``--json`` is for machines.

This module holds the root group and the error handling; each command group lives in its own
module (``keys``, ``signatures``, ``train``, ``results``, ``central``, ``station``,
``audit``, ``bundle``), imported only when a command of it is asked for or listed. Shared
options are in ``options``, shared printers in ``render``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import PhtError, VerificationError
from .render import EXIT_ERROR, EXIT_USAGE, EXIT_VERIFICATION, err, plain, shown

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "EXIT_VERIFICATION", "PhtGroup", "main"]

# Command name -> "module:attribute" under this package, loaded on first use.
COMMANDS = {
    "audit": "audit:audit",
    "bundle": "bundle:bundle",
    "central": "central:central",
    "inspect": "signatures:inspect_cmd",
    "keys": "keys:keys",
    "results": "results:results",
    "sign": "signatures:sign_cmd",
    "station": "station:station",
    "train": "train:train",
    "verify": "signatures:verify_cmd",
}


class _State:
    debug: bool = False


def _fail(exc: PhtError) -> NoReturn:
    """Print one red line for a library error and exit with its code."""
    if _State.debug:
        raise exc
    err.print(f"[red]error:[/red] {shown(exc, limit=4000, multiline=True)}", markup=True)
    for line in getattr(exc, "details", []) or []:
        err.print(f"  {plain(line, limit=1000)}", markup=False)
    sys.exit(EXIT_VERIFICATION if isinstance(exc, VerificationError) else EXIT_ERROR)


class PhtGroup(click.Group):
    """A click group that turns :class:`PhtError` into one line and an exit code, and loads
    its subcommands from their modules only when they are used (``lazy_subcommands``)."""

    def __init__(
        self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            return self._load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, attribute = self.lazy_subcommands[cmd_name].split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhtError as exc:
            _fail(exc)


@click.group(
    cls=PhtGroup,
    lazy_subcommands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="pht")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Personal Health Train: keys, trains, signatures and results.

    Registry credentials come from --username / $PHT_REGISTRY_USERNAME and
    $PHT_REGISTRY_PASSWORD (never from a command-line argument).
    """
    _State.debug = debug
