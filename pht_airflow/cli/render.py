"""How ``pht`` shows things: the two consoles, the exit codes, and the printers and tables
several command groups share (JSON, signers, a train's spec, directory rows, a timeline).

Tables are for people; ``--json`` is for machines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON with sorted keys."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def signer_dict(s: Any) -> dict[str, Any]:
    """A verified signer as JSON."""
    return {"key_id": s.key_id, "role": s.role, "signer": s.signer}


def signers_table(signers: Sequence[Any], title: str) -> Table:
    """Verified signers as a table: role, signer, key id."""
    table = Table(title=title, title_justify="left")
    table.add_column("role")
    table.add_column("signer")
    table.add_column("key id")
    for s in signers:
        table.add_row(s.role or "-", s.signer or "-", s.key_id)
    return table


def render_spec(spec: Any, digest: str, name: str) -> None:
    """Print a train's spec, then its route with each station's key id and recipient."""
    head = Table(title=f"train {spec.name}", title_justify="left", show_header=False)
    head.add_column()
    head.add_column()
    rows = [
        ("reference", f"{name}@{digest}"),
        ("id", spec.id),
        ("creator", f"{spec.creator.id} ({spec.creator.key})"),
        ("mode", spec.mode),
        ("dataset", spec.dataset),
        ("results visibility", spec.results_visibility),
        ("result recipients", "\n".join(spec.result_recipients)),
        ("created", spec.to_dict()["created"]),
        ("expires", spec.to_dict()["expires"]),
    ]
    for k, v in rows:
        head.add_row(k, v)
    out.print(head)
    route = Table(title="route", title_justify="left")
    route.add_column("hop")
    route.add_column("station")
    route.add_column("key id")
    route.add_column("recipient")
    from ..keys import public_key_from_pem

    for i, entry in enumerate(spec.route):
        route.add_row(str(i), entry.station, public_key_from_pem(entry.key).key_id, entry.recipient)
    out.print(route)


def print_rows(
    rows: list[dict[str, Any]], title: str, columns: dict[str, str], as_json: bool
) -> None:
    """Print directory rows as JSON, or as a table of ``columns`` (heading -> field)."""
    if as_json:
        print_json(rows)
        return
    table = Table(title=title, title_justify="left")
    for heading in columns:
        table.add_column(heading)
    for r in rows:
        table.add_row(*(str(r[name]) for name in columns.values()))
    out.print(table)


def print_timeline(info: dict[str, Any]) -> None:
    """Print the central service's view of a train: each hop's state, the reason it failed
    (if it did), and the event timeline."""
    hops = Table(title=f"train {info['id']} ({info['status']})", title_justify="left")
    for col in ("hop", "station", "state", "result"):
        hops.add_column(col)
    for h in info.get("hops", []):
        hops.add_row(str(h["hop"]), h["station"], h["state"], (h["result_digest"] or "")[:19])
    out.print(hops)
    if info.get("reason"):
        out.print(f"reason: {info['reason']}", markup=False)
    for e in info.get("events", []):
        out.print(f"{e['time'][:19]}  {e['kind']:<9} {e['message']}", markup=False)
