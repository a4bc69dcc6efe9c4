"""How ``pht`` shows things: the two consoles, the exit codes, and the printers and tables
several command groups share (JSON, signers, a train's spec, directory rows, a timeline).

Tables are for people; ``--json`` is for machines.

Everything a train, a registry, a webhook or the central service supplies is untrusted text:
it goes through :func:`plain` (for ``markup=False`` prints) or :func:`shown` (for rich markup,
table cells and titles), which show control, format and bidi characters as visible escapes
(:func:`pht_airflow.text.safe_text`) and, for markup, escape ``[...]`` so it prints literally.
The consoles do not replace ``:emoji:`` codes either.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..text import safe_text

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3

out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

#: Bound on one shown value (a name, a label, a spec field), in characters.
LIMIT = 200


def plain(value: Any, *, limit: int | None = LIMIT, multiline: bool = False) -> str:
    """Untrusted ``value`` as plain text for ``print(..., markup=False)``."""
    return safe_text(value, limit=limit, multiline=multiline)


def shown(value: Any, *, limit: int | None = LIMIT, multiline: bool = False) -> str:
    """Untrusted ``value`` as rich markup that prints it literally (a table cell, a title, or
    part of a marked-up line): control characters visible, ``[bold]`` shown as written."""
    return escape(safe_text(value, limit=limit, multiline=multiline))


# Characters a terminal acts on or hides. JSON allows most of them raw inside a string (C1
# controls, DEL, bidi and other format characters), so print_json writes them as \u escapes.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _json_escape_unsafe(text: str) -> str:
    return "".join(
        json.dumps(ch)[1:-1] if ch > "~" and unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON with sorted keys; characters a terminal would act on or
    hide are written as ``\\u`` escapes (the JSON means the same)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    click.echo(_json_escape_unsafe(text))


def signer_dict(s: Any) -> dict[str, Any]:
    """A verified signer as JSON."""
    return {"key_id": s.key_id, "role": s.role, "signer": s.signer}


def signers_table(signers: Sequence[Any], title: str) -> Table:
    """Verified signers as a table: role, signer, key id (``title`` is plain text)."""
    table = Table(title=shown(title), title_justify="left")
    table.add_column("role")
    table.add_column("signer")
    table.add_column("key id")
    for s in signers:
        table.add_row(shown(s.role or "-"), shown(s.signer or "-"), shown(s.key_id))
    return table


def render_spec(spec: Any, digest: str, name: str) -> None:
    """Print a train's spec, then its route with each station's key id and recipient."""
    head = Table(title=f"train {shown(spec.name)}", title_justify="left", show_header=False)
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
        head.add_row(k, shown(v, limit=None if k == "result recipients" else LIMIT, multiline=True))
    out.print(head)
    route = Table(title="route", title_justify="left")
    route.add_column("hop")
    route.add_column("station")
    route.add_column("key id")
    route.add_column("recipient")
    from ..keys import public_key_from_pem

    for i, entry in enumerate(spec.route):
        route.add_row(
            str(i),
            shown(entry.station),
            shown(public_key_from_pem(entry.key).key_id),
            shown(entry.recipient),
        )
    out.print(route)


def print_rows(
    rows: list[dict[str, Any]], title: str, columns: dict[str, str], as_json: bool
) -> None:
    """Print directory rows as JSON, or as a table of ``columns`` (heading -> field); an
    empty field (None) shows as ``-``."""
    if as_json:
        print_json(rows)
        return
    table = Table(title=shown(title), title_justify="left")
    for heading in columns:
        table.add_column(heading)
    for r in rows:
        table.add_row(*("-" if r[name] is None else shown(r[name]) for name in columns.values()))
    out.print(table)


def print_timeline(info: dict[str, Any]) -> None:
    """Print the central service's view of a train: each hop's state and why it ended without
    a result (failed, rejected or withheld at its station: who and why), the train's reason,
    and the event timeline. Every text from the service is shown with control characters
    escaped."""
    hops = Table(title=f"train {shown(info['id'])} ({shown(info['status'])})", title_justify="left")
    for col in ("hop", "station", "state", "result", "note"):
        hops.add_column(col)
    for h in info.get("hops", []):
        hops.add_row(
            shown(h["hop"]),
            shown(h["station"]),
            shown(h["state"]),
            shown(str(h["result_digest"] or "")[:19]),
            shown(h.get("note") or "", limit=300),
        )
    out.print(hops)
    if info.get("reason"):
        out.print(f"reason: {plain(info['reason'], limit=2000)}", markup=False)
    for e in info.get("events", []):
        time, kind = plain(str(e["time"])[:19]), plain(e["kind"], limit=40)
        out.print(f"{time}  {kind:<9} {plain(e['message'], limit=2000)}", markup=False)
