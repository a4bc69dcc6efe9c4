"""The demo's data: OMOP tables in PostgreSQL and a CSV file give the train's analysis what the
direct computation counts, without the 2-minute ``make demo``.

The real PostgreSQL (``postgres_server``), the stations' real extraction into the train's view
(``/pht/data/<table>.parquet`` and ``.csv``), and the demo's analysis run by Python over each
view in turn, as the sequential train runs it; the sandbox and Airflow are left out (``make
demo`` runs them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pht_airflow.dev import demo
from pht_airflow.station.config import load_config, parse_size
from pht_airflow.station.data import DataSet, extract
from pht_airflow.station.disclosure import (
    DisclosureReport,
    check_output,
    parse_disclosure_policy,
)
from pht_airflow.station.secrets import DatabaseUrls


def _local_analysis(folder: Path) -> Path:
    """The demo's analysis with its /pht paths taken from the command line (data folder,
    previous result, output folder)."""
    code = demo.ANALYSIS.replace("import csv\n", "import csv\nimport sys\n", 1)
    for fixed, arg in (('Path("/pht/data")', 1), ('Path("/pht/input/result.json")', 2),
                       ('Path("/pht/output")', 3)):  # fmt: skip
        assert fixed in code
        code = code.replace(fixed, f"Path(sys.argv[{arg}])")
    path = folder / "analysis.py"
    path.write_text(code)
    return path


def _demo_disclosure(output: Path, identifiers: list[str], rows: int) -> DisclosureReport:
    """The demo stations' disclosure control over one hop's output."""
    policy = parse_disclosure_policy(demo.DISCLOSURE, _no_problem, parse_size)
    return check_output(
        output,
        policy,
        min_cell_count=demo.MIN_CELL_COUNT,
        dataset_rows=rows,
        identifier_columns=identifiers,
    )


def _no_problem(path: tuple[str, ...], text: str) -> None:
    raise AssertionError(f"policy.disclosure{path}: {text}")


def test_the_analysis_over_omop_tables_and_a_csv_file_matches_the_direct_computation(
    postgres_server: str, tmp_path: Path
) -> None:
    """Each hop's output passes the demo stations' disclosure control (every count declared,
    none below min_cell_count), so no hop waits for a person's release."""
    uris = {
        f"pht_omop_{s}": demo.load_omop(postgres_server, s, demo.cohort(s, demo.STATIONS[s]))
        for s in demo.SQL_STATIONS
    }
    csv_files = []
    for station in demo.STATIONS:
        if station not in demo.SQL_STATIONS:
            path = tmp_path / station / "patients.csv"
            demo.write_cohort(path, demo.cohort(station, demo.STATIONS[station]))
            csv_files.append(path)
    direct = demo.direct_statistic(postgres_server, csv_files)
    assert direct["patients"] == sum(demo.STATIONS.values())

    analysis = _local_analysis(tmp_path)
    for mode in ("sequential", "parallel"):
        none = previous = tmp_path / "none.json"
        results = []
        lookups = DatabaseUrls(uris)
        for station in demo.STATIONS:
            if station in demo.SQL_STATIONS:
                dataset = DataSet(name=demo.DATASET, kind="sql", connection=f"pht_omop_{station}",
                                  targets={t: f'SELECT * FROM "{t}"' for t in demo.OMOP_TABLES},  # noqa: S608
                                  formats=("parquet", "csv"), lookups=lookups)  # fmt: skip
            else:
                dataset = DataSet(name=demo.DATASET, kind="file", path=csv_files[0],
                                  table="patients", formats=("parquet", "csv"))  # fmt: skip
            view = tmp_path / f"view-{mode}-{station}"
            view.mkdir()
            rows = max(t.rows for t in extract(dataset, view).tables)  # as DataView.rows
            output = tmp_path / f"output-{mode}-{station}"
            output.mkdir()
            subprocess.run(  # noqa: S603 - the demo's analysis, on our own data
                [sys.executable, str(analysis), str(view), str(previous), str(output)],
                check=True, capture_output=True,
                env={"PHT_STATION_ID": station, "PHT_HOP": "0"},
            )  # fmt: skip
            report = _demo_disclosure(output, ["person_id", "id"], rows)
            assert report.verdict == "pass", report.summary()
            assert {f.path: (f.kind, f.verdict) for f in report.files} == {
                "pht-output.json": ("manifest", "pass"),
                "result.json": ("frequency", "pass"),
            }
            results.append(json.loads((output / "result.json").read_text()))
            previous = output / "result.json" if mode == "sequential" else none
        stat = results[-1] if mode == "sequential" else demo.combine(results)
        assert demo.comparable(stat) == demo.comparable(direct)
        assert list(stat["stations"]) == list(demo.STATIONS)


def test_a_cell_below_the_demo_threshold_would_need_a_release(tmp_path: Path) -> None:
    """The demo's policy is not vacuous: the old age bins (a 10-19 bin of 3 patients at aachen)
    would have made the hop wait for a person."""
    (tmp_path / "result.json").write_text(json.dumps({
        "patients": 2400, "age_histogram": {"10-19": 3, "20-29": 26}, "stage_counts": {},
        "stations": {"aachen": 2400}}))  # fmt: skip
    counts = ["patients", "age_histogram", "stage_counts", "stations"]
    manifest = {
        "version": 1,
        "tables": {"result.json": {"kind": "frequency", "count_fields": counts}},
    }
    (tmp_path / "pht-output.json").write_text(json.dumps(manifest))
    report = _demo_disclosure(tmp_path, ["id"], 2400)
    assert report.verdict == "review"
    (flagged,) = [f for f in report.files if f.path == "result.json"]
    assert flagged.reasons == ("field 'age_histogram', entry 1: a count below min_cell_count 10",)
    (tmp_path / "notes.txt").write_text("a note")
    report = _demo_disclosure(tmp_path, ["id"], 2400)
    assert (report.verdict, report.reasons) == (
        "block",
        ("3 files, more than policy.disclosure.max_files (2)",),
    )
    (tmp_path / "pht-output.json").unlink()
    report = _demo_disclosure(tmp_path, ["id"], 2400)
    assert report.verdict == "block"
    assert {f.path: (f.verdict, f.reasons[0]) for f in report.files} == {
        "notes.txt": ("block", "file type '.txt' is not in policy.disclosure.allowed_types"),
        "result.json": ("review", "JSON that is not a table: a person decides"),
    }


def test_the_demo_station_configs_load_with_their_disclosure_policy(tmp_path: Path) -> None:
    d = demo.Demo(tmp_path / "demo")
    d.root.mkdir()
    d.make_keys()
    d.central_url = "http://127.0.0.1:9"
    d.postgres = None
    d.write_stations("127.0.0.1:5000")
    for station in demo.STATIONS:
        config = load_config(d.root / "stations" / f"{station}.yaml")
        assert config.policy.min_cell_count == demo.MIN_CELL_COUNT
        assert config.policy.disclosure.allowed_types == ("json",)
        assert config.policy.disclosure.max_files == 2


def test_the_verdict_line_names_each_file_and_escapes_control_characters() -> None:
    record = {"station": "aachen", "hop": 0, "outcome": "success",
              "disclosure": {"verdict": "pass", "files": [
                  {"path": "result.json", "verdict": "pass"},
                  {"path": "pht-output.json", "verdict": "pass"}]}}  # fmt: skip
    assert demo.verdict_line(record) == (
        "aachen hop 0: disclosure pass (result.json: pass, pht-output.json: pass); outcome success"
    )
    hostile = {"station": "bonn\x1b[2J", "hop": 1, "outcome": "success", "released_by": "eve\n",
               "disclosure": {"verdict": "review", "files": [{"path": "a\x07b.json",
                                                            "verdict": "review"}]}}  # fmt: skip
    line = demo.verdict_line(hostile)
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line
    assert line.startswith("bonn\\x1b[2J hop 1: disclosure review (a\\x07b.json: review)")
    assert "released by eve\\n" in line
    assert demo.verdict_line({"station": "cologne", "hop": 2, "outcome": "failure"}) == (
        "cologne hop 2: disclosure not checked (no files); outcome failure"
    )


def test_each_hospital_role_reads_only_its_own_database(postgres_server: str) -> None:
    """The Connection a station gets can read its tables, write nothing, and not connect to
    another hospital's database."""
    uri = demo.load_omop(postgres_server, "testhosp", demo.cohort("testhosp", 20))
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT count(*) FROM person").fetchone() == (20,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM measurement")
    with psycopg.connect(uri, autocommit=True) as conn:  # read-only by default, not only
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM measurement")
    demo.load_omop(postgres_server, "otherhosp", demo.cohort("otherhosp", 10))
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(uri.rsplit("/", 1)[0] + "/omop_otherhosp")
