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
from pht_airflow.station.data import DataSet, extract
from pht_airflow.station.secrets import DatabaseUrls


def _local_analysis(folder: Path) -> Path:
    """The demo's analysis with its /pht paths taken from the command line."""
    code = demo.ANALYSIS.replace("import csv\n", "import csv\nimport sys\n", 1)
    for fixed, arg in (('Path("/pht/data")', 1), ('Path("/pht/input/result.json")', 2),
                       ('Path("/pht/output/result.json")', 3)):  # fmt: skip
        assert fixed in code
        code = code.replace(fixed, f"Path(sys.argv[{arg}])")
    path = folder / "analysis.py"
    path.write_text(code)
    return path


def test_the_analysis_over_omop_tables_and_a_csv_file_matches_the_direct_computation(
    postgres_server: str, tmp_path: Path
) -> None:
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
    previous = tmp_path / "none.json"
    lookups = DatabaseUrls(uris)
    for station in demo.STATIONS:
        if station in demo.SQL_STATIONS:
            dataset = DataSet(name=demo.DATASET, kind="sql", connection=f"pht_omop_{station}",
                              targets={t: f'SELECT * FROM "{t}"' for t in demo.OMOP_TABLES},  # noqa: S608
                              formats=("parquet", "csv"), lookups=lookups)  # fmt: skip
        else:
            dataset = DataSet(name=demo.DATASET, kind="file", path=csv_files[0],
                              table="patients", formats=("parquet", "csv"))  # fmt: skip
        view = tmp_path / f"view-{station}"
        view.mkdir()
        extract(dataset, view)
        result = tmp_path / f"result-{station}.json"
        subprocess.run(  # noqa: S603 - the demo's analysis, on our own data
            [sys.executable, str(analysis), str(view), str(previous), str(result)],
            check=True, capture_output=True,
            env={"PHT_STATION_ID": station, "PHT_HOP": "0"},
        )  # fmt: skip
        previous = result
    stat = json.loads(previous.read_text())
    assert demo.comparable(stat) == demo.comparable(direct)
    assert [s["station"] for s in stat["stations"]] == list(demo.STATIONS)


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
