"""pht's shared printers show untrusted text (from the central service, a registry, a train)
visibly escaped: no raw control or bidi characters, rich markup printed as written."""

from __future__ import annotations

import json
import unicodedata
from types import SimpleNamespace

import pytest

from pht_airflow.cli import render

HOSTILE = "a\x1b[2J\u202e[bold red]b[/]\x9b\x7f:smile:\r\nc"
SHOWN = "a\\x1b[2J\\u202e[bold red]b[/]\\x9b\\x7f:smile:\\nc"


def _raw_controls(text: str) -> list[str]:
    return [
        ch for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]  # fmt: skip


@pytest.fixture()
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def test_plain_and_shown() -> None:
    assert render.plain(HOSTILE) == SHOWN
    assert render.shown("[bold]x[/bold]") == "\\[bold]x\\[/bold]"
    assert render.shown("trailing\\") == "trailing\\\\"


def test_timeline_from_the_central_service(wide: None) -> None:
    info = {
        "id": HOSTILE,
        "status": "failed",
        "reason": HOSTILE,
        "hops": [{"hop": 0, "station": HOSTILE, "state": "failed", "result_digest": None}],
        "events": [{"time": "2026-12-05T04:00:00Z", "kind": "failed", "message": HOSTILE}],
    }
    with render.out.capture() as captured:
        render.print_timeline(info)
    text = captured.get()
    assert _raw_controls(text) == []
    assert f"reason: {SHOWN}\n" in text
    assert f"2026-12-05T04:00:00  failed    {SHOWN}\n" in text
    assert text.count(SHOWN) == 4  # title, hop row, reason, event


def test_rows_and_signers(wide: None) -> None:
    with render.out.capture() as captured:
        render.print_rows([{"id": HOSTILE, "n": 3}], "stations", {"id": "id", "n": "n"}, False)
        signer = SimpleNamespace(role="approver", signer=HOSTILE, key_id="sha256:" + "a" * 64)
        render.out.print(render.signers_table([signer], f"verified {HOSTILE}"))
    text = captured.get()
    assert _raw_controls(text) == []
    assert text.count(SHOWN) == 3


def test_json_escapes_what_a_terminal_acts_on(capsys: pytest.CaptureFixture[str]) -> None:
    data = {"name": HOSTILE, "ok": "é 漢字 ✓", "tag": "\U000e0041", "lone": "\udc80"}
    render.print_json(data)
    out = capsys.readouterr().out
    assert _raw_controls(out) == []
    assert "é 漢字 ✓" in out  # printable text stays as it is
    assert "\\u202e" in out and "\\u009b" in out and "\\u007f" in out and "\\udb40\\udc41" in out
    assert json.loads(out) == data


def test_an_empty_field_shows_as_a_dash(wide: None) -> None:
    """A station that was never removed has ``removed: null``: its row reads ``-``, not None."""
    rows = [{"id": "station-a", "removed": None}, {"id": "station-b", "removed": "2026-12-05"}]
    with render.out.capture() as captured:
        render.print_rows(rows, "stations", {"id": "id", "removed": "removed"}, False)
    text = captured.get()
    assert "None" not in text
    assert [line.split("│")[2].strip() for line in text.splitlines() if "station-" in line] == [
        "-",
        "2026-12-05",
    ]
