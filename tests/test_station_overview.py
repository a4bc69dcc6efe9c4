"""What the station dashboard shows (station.overview), from a real config and audit log."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.dashboard import DIGESTS, HOSTILE_NAME, RESULT, dashboard_station, review_data

from pht_airflow.station.overview import (
    CELL_CHARS,
    PREVIEW_COLUMNS,
    PREVIEW_ROWS,
    ReviewError,
    overview,
    release_review,
    trains_seen,
)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _no_controls(value: Any) -> None:
    bad = [s for s in _strings(value) if any(unicodedata.category(c) in ("Cc", "Cf") for c in s)]
    assert not bad, bad


def test_trains_seen_newest_first_named_and_cleaned(tmp_path: Path, parties: Any) -> None:
    station = dashboard_station(tmp_path, parties)
    trains = trains_seen(station.config())
    assert [t["train_id"] for t in trains] == ["train-3", "train-2", "train-1"]
    first = trains[2]
    assert first["train_digest"] == DIGESTS[0]
    assert first["creators"] == [{"key_id": parties["alice"].key.key_id, "name": "alice"}]
    assert first["approvers"] == [{"key_id": parties["reviewer"].key.key_id, "name": "reviewer"}]
    assert first["result_digest"] == RESULT
    assert first["recipients"] == [
        {"recipient": parties["station-b"].age.recipient, "name": "station-b"}
    ]
    # Control and format characters are shown as escapes, never passed on.
    assert first["train_name"] == "<script>alert(1)</script>\\x1b[31mred\\u202eevil"
    assert first["approved_by"] == "nurse\\x1b]0;x\\x07"
    assert first["released_by"] == "dr-release" and first["rejected_by"] is None
    rejected = trains[1]
    assert rejected["outcome"] == "rejected"
    assert rejected["rejected_by"] == "dr-house"
    assert rejected["reason"] == "cell <b>3</b> is below 10\\x07"
    failed = trains[0]
    assert failed["failure"] == {
        "error": "VerificationError",
        "message": "no trusted creator signature",
    }
    assert failed["creators"] == [] and failed["hop"] is None
    _no_controls(trains)


def test_trains_seen_is_bounded(tmp_path: Path, parties: Any) -> None:
    station = dashboard_station(tmp_path, parties)
    assert [t["train_id"] for t in trains_seen(station.config(), limit=2)] == [
        "train-3",
        "train-2",
    ]


def test_overview_has_chain_trust_datasets_and_no_paths(tmp_path: Path, parties: Any) -> None:
    station = dashboard_station(tmp_path, parties)
    found = overview(
        station.config(),
        self_test={"state": "success", "when": "2026-12-05T06:00:00", "checks": {"keys": "ok"}},
    )
    assert found["station"] == "station-a"
    assert found["audit"] == {
        "ok": True,
        "records": 4,
        "message": "4 record(s), hash chain intact",
    }
    assert [k["name"] for k in found["trust"]["creators"]] == ["alice"]
    assert [k["name"] for k in found["trust"]["approvers"]] == ["reviewer"]
    assert found["datasets"] == [{"name": "cohort", "kind": "folder", "tables": [], "formats": []}]
    assert found["self_test"]["state"] == "success"
    shown = json.dumps(found)
    assert str(station.root) not in shown  # no host path, key file or data folder


def test_overview_reports_a_broken_chain(tmp_path: Path, parties: Any) -> None:
    station = dashboard_station(tmp_path, parties)
    lines = station.audit_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"dr-house", b"dr-hause")
    station.audit_path.write_bytes(b"".join(lines))
    found = overview(station.config())
    assert found["audit"]["ok"] is False
    assert found["audit"]["message"].startswith("line 3: its prev does not match")
    assert len(found["trains"]) == 3  # still listed, with the chain marked broken


def test_overview_of_a_station_with_no_log_yet(tmp_path: Path, parties: Any) -> None:
    station = dashboard_station(tmp_path, parties)
    station.audit_path.unlink()
    found = overview(station.config())
    assert found["trains"] == [] and found["audit"]["ok"] is True
    assert found["self_test"] is None


def test_release_review_marks_flagged_cells_and_bounds_the_preview() -> None:
    review = release_review(review_data(rows=PREVIEW_ROWS + 10))
    counts = review["files"][0]
    assert counts["verdict"] == "review"
    preview = counts["preview"]
    assert preview["columns"] == ["stage", "count"]
    assert preview["rows"][1][1] == {"value": "3", "flagged": True}
    assert sum(c["flagged"] for row in preview["rows"] for c in row) == 1
    assert len(preview["rows"]) == PREVIEW_ROWS and preview["truncated"] is True
    assert preview["rows_total"] == PREVIEW_ROWS + 12
    assert review["files"][1]["path"] == "notes\\x1b[2J.txt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(files="x"), "needs a list of files"),
        (lambda r: r["files"].append(3), "files[2] is not a mapping"),
        (lambda r: r["files"][0].update(reasons="x"), "files[0].reasons is not a list"),
        (lambda r: r["files"][0]["preview"].update(flagged=[[1]]), "flagged holds"),
        (lambda r: r["files"][0].update(preview=[]), "preview is not a mapping"),
    ],
)
def test_release_review_rejects_a_malformed_review(change: Any, message: str) -> None:
    raw = review_data()
    change(raw)
    with pytest.raises(ReviewError, match=re.escape(message)):
        release_review(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(
        st.fixed_dictionaries(
            {"path": _json, "bytes": _json, "verdict": _json, "reasons": _json, "preview": _json}
        ),
        max_size=4,
    ),
    verdict=_json,
)
def test_release_review_of_any_input_is_clean_or_refused(files: Any, verdict: Any) -> None:
    try:
        review = release_review({"files": files, "verdict": verdict})
    except ReviewError:
        return
    _no_controls(review)
    for f in review["files"]:
        preview = f["preview"]
        if preview:
            assert len(preview["rows"]) <= PREVIEW_ROWS
            assert all(len(row) <= PREVIEW_COLUMNS for row in preview["rows"])
            assert all(len(c["value"]) <= CELL_CHARS for row in preview["rows"] for c in row)


def test_hostile_name_fixture_has_what_it_claims() -> None:
    assert "\x1b" in HOSTILE_NAME and "\u202e" in HOSTILE_NAME  # the tests above mean something
