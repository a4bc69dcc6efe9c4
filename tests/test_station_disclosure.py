"""Automatic disclosure control: every rule gives its verdict and says why, on real files.

ACRO is not a dependency (it brings pandas, statsmodels and more): its report here is written
by hand in the format of ACRO's ``Records.finalise_json`` (``results.json``: per output a
status pass/review/fail, type, properties, files with their sdc, command, ...).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.stationkit import make_station

from pht_airflow.errors import ConfigError
from pht_airflow.station.config import load_config
from pht_airflow.station.data import DataSet, data_view, parse_datasets
from pht_airflow.station.disclosure import (
    MAX_FIELD_CHARS,
    MAX_JSON_DEPTH,
    DisclosureError,
    DisclosurePolicy,
    DisclosureReport,
    check_output,
    preview_tables,
)

POLICY = DisclosurePolicy()
# A value that appears only in the outputs' contents: never in a summary or a message.
SECRET = "Zeta-Quokka-7781"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def manifest(folder: Path, tables: dict[str, Any]) -> None:
    write(folder, "pht-output.json", json.dumps({"version": 1, "tables": tables}))


def check(folder: Path, policy: DisclosurePolicy = POLICY, **kw: Any) -> DisclosureReport:
    kw.setdefault("min_cell_count", 10)
    return check_output(folder, policy, **kw)


def by_path(report: DisclosureReport) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in report.summary()["files"]}


def assert_no_values(report: DisclosureReport) -> None:
    text = json.dumps(report.summary()) + report.block_message()
    assert SECRET not in text


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "output"
    folder.mkdir()
    return folder


# --- frequency tables -----------------------------------------------------------------------------


def test_a_clean_declared_frequency_table_passes(out: Path) -> None:
    write(out, "stages.csv", f"stage,n\n{SECRET},12\nII,40\nIII,\n")
    manifest(out, {"stages.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out, dataset_rows=1000)
    assert report.verdict == "pass"
    files = by_path(report)
    assert files["stages.csv"] == {
        "path": "stages.csv",
        "bytes": (out / "stages.csv").stat().st_size,
        "kind": "frequency",
        "verdict": "pass",
        "reasons": [],
    }
    assert files["pht-output.json"]["kind"] == "manifest"
    assert files["pht-output.json"]["verdict"] == "pass"
    assert report.block_message() == ""
    json.dumps(report.summary())  # JSON-safe
    assert_no_values(report)


def test_a_count_below_min_cell_count_needs_review_with_its_position(out: Path) -> None:
    write(out, "stages.csv", f"stage,n,mean_age\nI,25,61.5\n{SECRET},3,44.0\nIII,0,\n")
    manifest(out, {"stages.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["stages.csv"]["reasons"] == [
        "row 2, column 'n': a count below min_cell_count 10"
    ]
    assert report.block_message() == ""
    assert_no_values(report)
    (preview,) = preview_tables(out, report)
    assert preview["columns"] == ["stage", "n", "mean_age"]
    assert preview["rows"][1][0] == {"value": SECRET, "flagged": False}
    assert preview["rows"][1][1] == {"value": "3", "flagged": True}
    assert not any(cell["flagged"] for row in (0, 2) for cell in preview["rows"][row])


def test_zeros_pass_unless_the_station_says_they_are_disclosive(out: Path) -> None:
    write(out, "t.csv", "stage,n\nI,0\nII,20\n")
    manifest(out, {"t.csv": {"kind": "frequency", "count_columns": ["n"]}})
    assert check(out).verdict == "pass"
    strict = DisclosurePolicy(zeros_are_disclosive=True)
    report = check(out, strict)
    assert report.verdict == "review"
    assert by_path(report)["t.csv"]["reasons"] == [
        "row 1, column 'n': a count of 0 (zeros_are_disclosive) 10"
    ]


def test_a_declared_count_that_is_no_count_needs_review(out: Path) -> None:
    write(out, "t.csv", "stage,n\nI,<5\nII,-4\nIII,12.5\nIV,NaN\nV,\nVI,20.0\n")
    manifest(out, {"t.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["t.csv"]["reasons"] == [
        f"row {r}, column 'n': not a whole number ≥ 0 in a declared count" for r in (1, 2, 3)
    ]


def test_a_declared_count_column_missing_from_the_table_needs_review(out: Path) -> None:
    write(out, "t.csv", "stage,count\nI,20\n")
    manifest(out, {"t.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["t.csv"]["reasons"] == ["declared count column 'n' is not in the table"]


def test_an_undeclared_table_is_never_a_silent_pass(out: Path) -> None:
    write(out, "t.csv", "stage,n\nI,200\n")
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["t.csv"]["kind"] == "table"
    assert by_path(report)["t.csv"]["reasons"] == [
        "a table not declared a frequency table in pht-output.json: a person decides"
    ]


def test_many_flagged_cells_are_listed_up_to_a_bound_and_counted(out: Path) -> None:
    write(out, "t.csv", "k,n\n" + "".join(f"{i},1\n" for i in range(45)))
    manifest(out, {"t.csv": {"kind": "frequency", "count_columns": ["n"]}})
    reasons = by_path(check(out))["t.csv"]["reasons"]
    assert len(reasons) == 21
    assert reasons[-1] == "… and 25 more: cells below min_cell_count 10"


def test_json_records_are_a_table_checked_the_same_way(out: Path) -> None:
    rows = [{"stage": "I", "n": 40}, {"stage": SECRET, "n": 2}, {"stage": "III", "n": None}]
    write(out, "t.json", json.dumps(rows))
    manifest(out, {"t.json": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["t.json"]["kind"] == "frequency"
    assert by_path(report)["t.json"]["reasons"] == [
        "record 2, column 'n': a count below min_cell_count 10"
    ]
    assert_no_values(report)
    (preview,) = preview_tables(out, report)
    assert preview["rows"][1][1] == {"value": "2", "flagged": True}


def test_a_json_document_with_declared_count_fields(out: Path) -> None:
    """The demo train's result.json: a histogram and counts per stage in one object."""
    doc = {
        "patients": 240,
        "age_histogram": {"0-9": 0, "40-49": 120, "90+": 4},
        "stage_counts": {SECRET: 116},
        "stations": [{"station": "a", "patients": 240}],
    }
    write(out, "result.json", json.dumps(doc))
    manifest(
        out,
        {
            "result.json": {
                "kind": "frequency",
                "count_fields": ["patients", "age_histogram", "stage_counts"],
            }
        },
    )
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["result.json"]["reasons"] == [
        "field 'age_histogram', entry 3: a count below min_cell_count 10"
    ]
    assert_no_values(report)
    (preview,) = preview_tables(out, report)
    assert preview["columns"] == ["field", "value"]
    flagged = [row for row in preview["rows"] if row[1]["flagged"]]
    assert flagged == [
        [{"value": "age_histogram/90+", "flagged": False}, {"value": "4", "flagged": True}]
    ]
    doc["age_histogram"]["90+"] = 10
    write(out, "result.json", json.dumps(doc))
    assert check(out).verdict == "pass"


def test_an_undeclared_json_document_needs_review(out: Path) -> None:
    write(out, "r.json", json.dumps({"mean": 61.5}))
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["r.json"]["kind"] == "json"
    assert by_path(report)["r.json"]["reasons"] == ["JSON that is not a table: a person decides"]


def test_files_the_station_cannot_check_need_a_person(out: Path) -> None:
    write(out, "notes.txt", "n = 3\n")
    write(out, "report/summary.md", "# summary\n")
    write(out, "plot.png", b"\x89PNG\r\n\x1a\n")
    files = by_path(check(out))
    assert files["notes.txt"]["reasons"] == [
        "not a table: the station cannot check it, a person decides"
    ]
    assert files["report/summary.md"]["verdict"] == "review"
    assert files["plot.png"]["reasons"] == [
        "an image: the station cannot check it, a person decides"
    ]


def test_an_empty_output_and_an_empty_file_pass(out: Path) -> None:
    assert check(out).verdict == "pass"
    write(out, "empty.csv", "")
    assert by_path(check(out))["empty.csv"] == {
        "path": "empty.csv",
        "bytes": 0,
        "kind": "empty",
        "verdict": "pass",
        "reasons": [],
    }


# --- row-level data -------------------------------------------------------------------------------


def dataset(entry: dict[str, Any]) -> DataSet:
    problems: list[str] = []
    found = parse_datasets(
        {"registry": entry},
        problem=lambda path, text: problems.append(f"{'.'.join(path)}: {text}"),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "station.yaml:1",
    )
    assert not problems, problems
    return found["registry"]


def test_a_copy_of_the_data_set_is_blocked(tmp_path: Path, out: Path) -> None:
    """The train copies the data set it saw (without its identifier column) to its output."""
    source = write(
        tmp_path / "src",
        "registry.csv",
        "person_id,age,stage\n" + "".join(f"{i},{40 + i % 30},II\n" for i in range(60)),
    )
    ds = dataset(
        {
            "kind": "file",
            "path": str(source),
            "formats": ["parquet", "csv"],
            "identifier_columns": ["person_id"],
        }
    )
    work = tmp_path / "hop"
    work.mkdir()
    with data_view(ds, work) as view:
        assert view.rows == 60
        lines = (view.path / "registry.csv").read_text().splitlines()
        write(out, "copy.csv", "\n".join(",".join(line.split(",")[1:]) for line in lines) + "\n")
        rows = view.rows
    manifest(out, {"copy.csv": {"kind": "frequency", "count_columns": ["age"]}})
    report = check(out, dataset_rows=rows, identifier_columns=ds.identifier_columns)
    assert report.verdict == "block"
    reasons = by_path(report)["copy.csv"]["reasons"]
    assert reasons[0] == (
        "60 rows, at least row_fraction 0.5 of the data set's rows: row-level data may not leave"
    )
    assert report.block_message().startswith(
        "the station's disclosure control blocks this output:\n  - copy.csv: 60 rows, at least"
    )
    # Half the rows still count as row-level; fewer do not.
    write(out, "copy.csv", "age,stage\n" + "40,II\n" * 29)
    assert "row-level" not in json.dumps(check(out, dataset_rows=rows).summary())
    write(out, "copy.csv", "age,stage\n" + "40,II\n" * 30)
    assert check(out, dataset_rows=rows).verdict == "block"


def test_a_folder_data_set_has_no_row_count(tmp_path: Path) -> None:
    (tmp_path / "cohort").mkdir()
    ds = dataset({"kind": "folder", "path": str(tmp_path / "cohort")})
    with data_view(ds, tmp_path) as view:
        assert view.rows is None
        assert "rows" not in view.record()


@pytest.mark.parametrize("header", ["person_id", "Person-ID", " PERSON ID "])
def test_a_column_named_like_an_identifier_is_blocked(out: Path, header: str) -> None:
    write(out, "t.csv", f"{header},n\n1,40\n")
    manifest(out, {"t.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out, dataset_rows=10_000, identifier_columns=("person_id",))
    assert report.verdict == "block"
    assert by_path(report)["t.csv"]["reasons"] == [
        f"column {header!r} is named like an identifier column of the data set"
    ]


def test_an_identifier_key_anywhere_in_json_is_blocked(out: Path) -> None:
    write(out, "r.json", json.dumps({"groups": [{"stage": "I", "PERSON_ID": [1, 2]}]}))
    report = check(out, identifier_columns=("person_id",))
    assert report.verdict == "block"
    assert by_path(report)["r.json"]["reasons"][0] == (
        "column 'PERSON_ID' is named like an identifier column of the data set"
    )


# --- files: types, count, links -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"), [("model.pkl", "'.pkl'"), ("Makefile", "'no suffix'"), ("a.csv.gz", "'.gz'")]
)
def test_a_disallowed_file_type_is_blocked(out: Path, name: str, shown: str) -> None:
    write(out, name, b"\x80\x04K\x03.")
    report = check(out)
    assert report.verdict == "block"
    assert by_path(report)[name]["kind"] == "disallowed"
    assert by_path(report)[name]["reasons"] == [
        f"file type {shown} is not in policy.disclosure.allowed_types"
    ]
    assert f"  - {name}: file type {shown} is not" in report.block_message()


def test_the_station_chooses_the_allowed_types(out: Path) -> None:
    write(out, "paper.PDF", b"%PDF-1.7\n")
    assert check(out).verdict == "block"
    report = check(out, DisclosurePolicy(allowed_types=("pdf",)))
    assert by_path(report)["paper.PDF"]["kind"] == "document"
    assert report.verdict == "review"


def test_too_many_files_are_blocked(out: Path) -> None:
    for i in range(6):
        write(out, f"part/{i}.txt", "x")
    report = check(out, DisclosurePolicy(max_files=5))
    assert report.verdict == "block"
    assert report.summary()["reasons"] == ["6 files, more than policy.disclosure.max_files (5)"]
    assert report.block_message() == (
        "the station's disclosure control blocks this output:\n"
        "  - 6 files, more than policy.disclosure.max_files (5)"
    )
    assert check(out, DisclosurePolicy(max_files=6)).verdict == "review"


def test_links_are_blocked_and_never_followed(tmp_path: Path, out: Path) -> None:
    outside = write(tmp_path / "outside", "data.csv", "person_id\n1\n")
    os.symlink(outside, out / "data.csv")
    os.symlink(outside.parent, out / "folder")
    os.mkfifo(out / "pipe.csv")
    report = check(out)
    files = by_path(report)
    assert set(files) == {"data.csv", "folder", "pipe.csv"}  # nothing listed behind the link
    assert files["data.csv"]["reasons"] == ["a symbolic link: only regular files may leave"]
    assert files["folder"]["reasons"] == ["a symbolic link: only regular files may leave"]
    assert files["pipe.csv"]["reasons"] == ["not a regular file"]
    assert report.verdict == "block"
    assert preview_tables(out, report) == []


def test_names_shown_to_people_have_no_control_characters(out: Path) -> None:
    write(out, "t\x1b[31m.csv", "a\x1b]0;x,n\n1,2\n")
    (out / os.fsdecode(b"bad\xff.txt")).write_text("x")
    report = check(out)
    text = json.dumps(report.summary(), ensure_ascii=False)
    assert "\x1b" not in text and "\\\\x1b" in text
    assert "bad\\\\xff.txt" in text
    assert "\x1b" not in report.block_message()


def test_an_output_folder_that_is_not_there_is_a_station_error(tmp_path: Path) -> None:
    with pytest.raises(DisclosureError, match="is not a folder"):
        check(tmp_path / "missing")


# --- the manifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("[]", "not a pht-output manifest: expected an object with version and tables"),
        ('{"version": 2, "tables": {}}', "unsupported manifest version (expected 1)"),
        (
            '{"tables": {"t.csv": {"kind": "statistics", "count_columns": ["n"]}}}',
            'tables[\'t.csv\']: expected {"kind": "frequency", ...}',
        ),
        (
            '{"tables": {"t.csv": {"kind": "frequency"}}}',
            "tables['t.csv']: give exactly one of count_columns or count_fields",
        ),
        (
            '{"tables": {"t.csv": {"kind": "frequency", "count_columns": []}}}',
            "tables['t.csv'].count_columns must be a list of 1 to 500 names",
        ),
        ('{"tables": {}', "not valid JSON (line 1: Expecting ',' delimiter)"),
    ],
)
def test_an_invalid_manifest_blocks_the_output(out: Path, doc: str, reason: str) -> None:
    write(out, "pht-output.json", doc)
    report = check(out)
    assert report.verdict == "block"
    assert by_path(report)["pht-output.json"]["reasons"] == [f"the output manifest: {reason}"]


def test_a_manifest_naming_a_missing_file_needs_review(out: Path) -> None:
    manifest(out, {"gone.csv": {"kind": "frequency", "count_columns": ["n"]}})
    report = check(out)
    assert report.verdict == "review"
    assert by_path(report)["pht-output.json"]["reasons"] == [
        "declares 'gone.csv', which is not in the output"
    ]


# --- ACRO -----------------------------------------------------------------------------------------


def acro_output(
    out: Path, csv_text: str, status: str = "pass", command: str = "acro.crosstab(df.a, df.b)"
) -> None:
    """What ``acro.crosstab(...)`` then ``acro.finalise(out, "json")`` leave behind."""
    write(out, "output_0_0.csv", csv_text)
    sdc = {
        "summary": {
            "suppressed": False,
            "negative": 0,
            "missing": 0,
            "threshold": 0,
            "p-ratio": 0,
            "nk-rule": 0,
            "all-values-are-same": 0,
        },
        "cells": {
            "negative": [],
            "missing": [],
            "threshold": [],
            "p-ratio": [],
            "nk-rule": [],
            "all-values-are-same": [],
        },
    }
    results = {
        "version": "0.4.8",
        "results": {
            "output_0": {
                "uid": "output_0",
                "status": status,
                "type": "table",
                "properties": {"method": "crosstab"},
                "files": [{"name": "output_0_0.csv", "sdc": sdc}],
                "outcome": {},
                "command": command,
                "summary": f"{status}; ",
                "timestamp": "2026-12-05T06:00:00",
                "comments": [],
                "exception": "",
            }
        },
        "session_summary": {"DO_NOT_RELEASE": True, "purpose": "Session summary", "data": []},
    }
    write(out, "results.json", json.dumps(results, indent=4))
    digest = hashlib.sha256((out / "output_0_0.csv").read_bytes()).hexdigest()
    write(out, "checksums/output_0_0.csv.txt", digest)


CROSSTAB = f"income,High,Low\nregion,,\n{SECRET},3,25\nNorth,30,40\n"


def test_acro_says_pass_but_the_station_finds_a_small_cell(out: Path) -> None:
    acro_output(out, CROSSTAB, "pass")
    report = check(out)
    assert report.verdict == "review"
    files = by_path(report)
    assert files["output_0_0.csv"]["acro"] == "pass"
    assert files["output_0_0.csv"]["kind"] == "frequency"
    assert files["output_0_0.csv"]["reasons"] == [
        "row 2, column 'High': a count below min_cell_count 10"
    ]
    assert files["results.json"]["kind"] == "acro-report"
    assert files["results.json"]["reasons"] == [
        "ACRO's report (with a session summary marked DO_NOT_RELEASE): a person decides"
    ]
    assert files["checksums/output_0_0.csv.txt"]["kind"] == "acro-checksum"
    assert files["checksums/output_0_0.csv.txt"]["verdict"] == "pass"
    assert report.summary()["acro"] == {
        "version": "0.4.8",
        "outputs": 1,
        "statuses": {"pass": 1, "review": 0, "fail": 0},
    }
    assert_no_values(report)


def test_acro_saying_fail_raises_a_clean_table_to_review(out: Path) -> None:
    acro_output(out, "income,High,Low\nregion,,\nEast,30,25\n", "fail")
    files = by_path(check(out))
    assert files["output_0_0.csv"]["verdict"] == "review"
    assert files["output_0_0.csv"]["reasons"] == ["ACRO says fail"]


def test_an_acro_table_with_aggfunc_is_not_taken_for_counts(out: Path) -> None:
    acro_output(
        out, "income,High\nregion,\nEast,3.5\n", command="acro.crosstab(a, b, aggfunc='mean')"
    )
    files = by_path(check(out))
    assert files["output_0_0.csv"]["kind"] == "table"
    assert files["output_0_0.csv"]["reasons"] == [
        "a table not declared a frequency table in pht-output.json: a person decides"
    ]


def test_the_trains_manifest_wins_over_acro(out: Path) -> None:
    acro_output(out, CROSSTAB)
    manifest(out, {"output_0_0.csv": {"kind": "frequency", "count_columns": ["Low"]}})
    assert by_path(check(out))["output_0_0.csv"]["verdict"] == "pass"


def test_a_results_json_that_is_no_acro_report_is_an_ordinary_file(out: Path) -> None:
    write(out, "results.json", json.dumps({"results": {"x": {"status": "great"}}}))
    write(out, "checksums/x.txt", "0" * 64)
    files = by_path(check(out))
    assert files["results.json"]["kind"] == "json"
    assert files["results.json"]["reasons"] == ["JSON that is not a table: a person decides"]
    assert files["checksums/x.txt"]["kind"] == "text"


# --- hostile input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("a.csv", 'n\n"unterminated\n', "not valid CSV (unexpected end of data)"),
        ("a.csv", "a,b\n1,2,3\n", "line 2 has 3 fields, the header has 2"),
        ("a.csv", b"a,b\n\xff\xfe,1\n", "not UTF-8 text (byte 4)"),
        ("a.csv", "a,b\n\x00,1\n", "contains a NUL character"),
        (
            "a.csv",
            "a\n" + "x" * (MAX_FIELD_CHARS + 1) + "\n",
            f"line 2: a field longer than {MAX_FIELD_CHARS} characters",
        ),
        (
            "a.csv",
            ",".join(f"c{i}" for i in range(501)) + "\n",
            "more than max_columns (500) columns",
        ),
        ("a.json", "[1, 2", "not valid JSON (line 1: Expecting ',' delimiter)"),
        ("a.json", '{"n": NaN}', "not valid JSON: NaN is not a JSON number"),
        ("a.json", '{"n": 1, "n": 2}', "not valid JSON: the key 'n' appears twice in one object"),
        (
            "a.json",
            "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        ),
        (
            "a.json",
            "[" * 100_000 + "]" * 100_000,
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
        ),
        ("a.json", "1" * 5000, "not valid JSON (a number with too many digits)"),
    ],
)
def test_a_file_that_does_not_parse_as_its_suffix_says_is_blocked(
    out: Path, name: str, content: str | bytes, reason: str
) -> None:
    write(out, name, content)
    report = check(out)
    assert report.verdict == "block"
    assert by_path(report)[name]["reasons"] == [reason]
    assert preview_tables(out, report) == []


def test_tables_beyond_the_stations_bounds_are_blocked(out: Path) -> None:
    write(out, "big.csv", "n\n" + "1\n" * 200)
    small = DisclosurePolicy(max_table_bytes=100)
    assert by_path(check(out, small))["big.csv"]["reasons"] == [
        "larger than max_table_bytes (100 bytes): the station cannot check it"
    ]
    rows = DisclosurePolicy(max_rows=199)
    assert by_path(check(out, rows))["big.csv"]["reasons"] == ["more than max_rows (199) rows"]
    write(out, "big.csv", "")
    write(out, "big.json", json.dumps([{"n": 1}] * 200))
    assert by_path(check(out, rows))["big.json"]["reasons"] == ["more than max_rows (199) rows"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".json"]))
def test_any_bytes_give_a_verdict_never_a_crash(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write(Path(folder), "t" + suffix, content)
        write(
            Path(folder),
            "pht-output.json",
            json.dumps({"tables": {"t" + suffix: {"kind": "frequency", "count_columns": ["n"]}}}),
        )
        report = check(Path(folder), identifier_columns=("id",), dataset_rows=50)
        assert report.verdict in ("pass", "review", "block")
        json.dumps(report.summary())
        previews = preview_tables(Path(folder), report)
        assert len(json.dumps(previews)) < 200_000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(doc=json_values)
def test_any_json_document_gives_a_verdict(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write(Path(folder), "r.json", json.dumps(doc))
        write(
            Path(folder),
            "pht-output.json",
            json.dumps({"tables": {"r.json": {"kind": "frequency", "count_fields": ["a"]}}}),
        )
        report = check(Path(folder), identifier_columns=("id",))
        assert report.verdict in ("pass", "review", "block")
        json.dumps(report.summary())
        preview_tables(Path(folder), report)


@settings(max_examples=150, deadline=None)
@given(doc=json_values)
def test_any_manifest_gives_a_verdict(doc: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write(Path(folder), "pht-output.json", json.dumps(doc))
        write(Path(folder), "t.csv", "n\n20\n")
        report = check(Path(folder))
        assert report.verdict in ("pass", "review", "block")
        json.dumps(report.summary())


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    labels=st.text(string.ascii_letters + ',"\n ', max_size=12),
    k=st.integers(1, 20),
)
def test_exactly_the_counts_from_1_to_k_minus_1_are_flagged(
    counts: list[int], labels: str, k: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        rows = [{"label": labels, "n": c} for c in counts]
        with open(Path(folder) / "t.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["label", "n"])
            w.writeheader()
            w.writerows(rows)
        write(
            Path(folder),
            "pht-output.json",
            json.dumps({"tables": {"t.csv": {"kind": "frequency", "count_columns": ["n"]}}}),
        )
        report = check(Path(folder), min_cell_count=k)
        expected = {(i, 1) for i, c in enumerate(counts) if 0 < c < k}
        (table,) = [f for f in report.files if f.path == "t.csv"]
        assert table.flagged == expected
        assert table.verdict == ("review" if expected else "pass")


# --- previews -------------------------------------------------------------------------------------


def test_previews_are_bounded_and_escape_controls(out: Path) -> None:
    header = ",".join(f"c{i}" for i in range(30))
    body = "".join(",".join(["\x1b[2Jx" + "y" * 500] + ["5"] * 29) + "\n" for _ in range(80))
    write(out, "wide.csv", header + "\n" + body)
    manifest(out, {"wide.csv": {"kind": "frequency", "count_columns": ["c1"]}})
    report = check(out)
    (preview,) = preview_tables(out, report, max_rows=10, max_cols=5)
    assert len(preview["columns"]) == 5 and len(preview["rows"]) == 10
    assert all(len(row) == 5 for row in preview["rows"])
    assert preview["truncated_rows"] and preview["truncated_columns"]
    first = preview["rows"][0][0]["value"]
    assert first.startswith("\\x1b[2Jx") and len(first) <= 200
    assert preview["rows"][0][1] == {"value": "5", "flagged": True}


# --- the station config ---------------------------------------------------------------------------


@pytest.fixture()
def station(tmp_path: Path, parties: Any) -> Any:
    return make_station(
        tmp_path / "s",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )


def _with_disclosure(station: Any, disclosure: Any) -> Path:
    data = yaml.safe_load(station.config_path.read_text())
    data.setdefault("policy", {})["disclosure"] = disclosure
    station.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(station.config_path)


def test_the_config_sets_the_disclosure_policy(station: Any) -> None:
    assert station.config().policy.disclosure == DisclosurePolicy()
    path = _with_disclosure(
        station,
        {
            "allowed_types": [".CSV", "pdf"],
            "max_files": 3,
            "row_fraction": 0.25,
            "zeros_are_disclosive": True,
            "max_table_bytes": "1MiB",
            "max_rows": 10,
            "max_columns": 4,
        },
    )
    assert load_config(path).policy.disclosure == DisclosurePolicy(
        allowed_types=("csv", "pdf"),
        max_files=3,
        row_fraction=0.25,
        zeros_are_disclosive=True,
        max_table_bytes=1024 * 1024,
        max_rows=10,
        max_columns=4,
    )


def test_disclosure_config_errors_name_the_field(station: Any) -> None:
    path = _with_disclosure(
        station,
        {
            "allowed_types": "csv",
            "max_files": 0,
            "row_fraction": 2,
            "zeros_are_disclosive": "yes",
            "max_table_bytes": "lots",
            "colour": "blue",
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    for problem in (
        "policy.disclosure.colour: unknown field (expected one of allowed_types, max_files",
        "policy.disclosure.allowed_types: must be a list of file suffixes like [csv, json, png]",
        "policy.disclosure.max_files: must be a whole number from 1 to 100000",
        "policy.disclosure.row_fraction: must be a number above 0 and at most 1 (e.g. 0.5)",
        "policy.disclosure.zeros_are_disclosive: must be true or false",
        "policy.disclosure.max_table_bytes: 'lots' is not a size like 512MiB or 2GiB",
    ):
        assert problem in text
    path = _with_disclosure(station, ["csv"])
    with pytest.raises(ConfigError, match=r"policy\.disclosure: must be a mapping"):
        load_config(path)
