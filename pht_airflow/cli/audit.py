"""``pht audit``: check a station's tamper-evident audit log."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .render import EXIT_VERIFICATION, err, out, plain, shown


@click.group()
def audit() -> None:
    """Check a station's tamper-evident audit log."""


@audit.command("verify")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def audit_verify(path: Path) -> None:
    """Check every line's hash chain; name the first edited, removed or reordered line."""
    from ..station.audit import audit_verify_main

    ok, message = audit_verify_main(str(path))
    if ok:
        out.print(plain(message, limit=2000, multiline=True), markup=False)
        return
    err.print(f"[red]error:[/red] {shown(message, limit=2000, multiline=True)}")
    sys.exit(EXIT_VERIFICATION)
