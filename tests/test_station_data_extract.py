"""Data sets extracted into the train's view, against the real PostgreSQL.

Tables and named queries become ``<table>.parquet`` (and ``.csv``) with ``schema.json``; the
values round-trip exactly (NULLs, empty strings, quotes, commas and newlines in text, time
zones, decimals); the transaction is read-only; a failing query or a refused connection is a
clear error and leaves nothing behind; the view is wiped after success and failure; memory
stays bounded for a table several times the bound.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pht_airflow.errors import ConfigError
from pht_airflow.station.data import (
    DataSet,
    DataSetError,
    data_digest,
    data_view,
    describe,
    extract,
    parse_datasets,
)
from pht_airflow.station.secrets import DatabaseUrls

PEOPLE = [
    (1, "F", 1950, datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), Decimal("61.5"), 1.62,
     True, 'has "quotes", commas\nand a newline', date(1950, 5, 1)),
    (2, "M", 1961, None, None, None, False, "", date(1961, 1, 31)),
    (3, "", 1972, datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), Decimal("80.0"), 1.8,
     None, None, None),
]  # fmt: skip


def _seed(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE person (person_id bigint PRIMARY KEY, gender text, "
            "year_of_birth int, registered timestamptz, weight numeric(5,1), height float8, "
            "active boolean, note text, born date)"
        )
        conn.execute(
            "CREATE TABLE measurement (measurement_id serial, person_id bigint, "
            "value_as_number numeric, unit varchar(10))"
        )
        conn.execute(
            "CREATE FUNCTION purge() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN DELETE FROM person; RETURN 1; END $$"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO person VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", PEOPLE)
            cur.executemany(
                "INSERT INTO measurement (person_id, value_as_number, unit) VALUES (%s,%s,%s)",
                [(1, 5.5, "mmol/L"), (1, 6.25, "mmol/L"), (3, 7, "mmol/L")],
            )


@pytest.fixture()
def omop(postgres_url: str) -> str:
    _seed(postgres_url)
    return postgres_url


def sql_dataset(url: str, **entry: Any) -> DataSet:
    """A sql data set as station.yaml would give it (validated by the real parser)."""
    problems: list[str] = []
    found = parse_datasets(
        {"omop": {"kind": "sql", "connection": "pht_omop", **entry}},
        problem=lambda path, text: problems.append(f"{'.'.join(path)}: {text}"),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "station.yaml:1",
        lookups=DatabaseUrls({"pht_omop": url}),
    )
    assert not problems, problems
    return found["omop"]


def test_table_list_round_trips_every_value_to_parquet_and_csv(omop: str, tmp_path: Path) -> None:
    ds = sql_dataset(omop, tables=["person", "public.measurement"], formats=["parquet", "csv"],
                     identifier_columns=["person_id"])  # fmt: skip
    done = extract(ds, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "measurement.csv", "measurement.parquet", "person.csv", "person.parquet", "schema.json",
    ]  # fmt: skip
    people = pq.read_table(tmp_path / "person.parquet")
    assert [tuple(r.values()) for r in people.to_pylist()] == PEOPLE
    assert str(people.schema.field("registered").type) == "timestamp[us, tz=UTC]"
    assert str(people.schema.field("weight").type) == "decimal128(5, 1)"
    with (tmp_path / "person.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["person_id", "gender", "year_of_birth", "registered", "weight", "height",
                       "active", "note", "born"]  # fmt: skip
    assert rows[1][7] == 'has "quotes", commas\nand a newline' and len(rows) == 4
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert schema == done.schema()
    person = schema["tables"]["person"]
    assert person["rows"] == 3 and person["files"] == ["person.parquet", "person.csv"]
    assert person["columns"][0] == {"name": "person_id", "type": "int64", "identifier": True}
    assert {"name": "born", "type": "date32[day]"} in person["columns"]
    m = pq.read_table(tmp_path / "measurement.parquet").to_pylist()
    assert [r["value_as_number"] for r in m] == [5.5, 6.25, 7.0]  # unbounded numeric: float64


def test_psycopg3_connections_extract_the_same(
    omop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no psycopg2 twin can be opened, psycopg 3's own COPY gives the same files."""
    import importlib

    module = importlib.import_module("pht_airflow.station.data.extract")

    ds = sql_dataset(omop, tables=["person", "measurement"], formats=["parquet", "csv"])
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    extract(ds, fast)
    monkeypatch.setattr(module, "_fast_driver", lambda conn: conn)
    extract(ds, slow)
    for name in ("person.parquet", "person.csv", "measurement.csv", "schema.json"):
        assert (fast / name).read_bytes() == (slow / name).read_bytes(), name
    assert pq.read_table(slow / "measurement.parquet").equals(
        pq.read_table(fast / "measurement.parquet")
    )


def test_named_query_becomes_a_table(omop: str, tmp_path: Path) -> None:
    ds = sql_dataset(omop, queries={"cohort": (
        "SELECT p.person_id, count(m.measurement_id) AS n, avg(m.value_as_number) AS mean "
        "FROM person p LEFT JOIN measurement m USING (person_id) "
        "GROUP BY p.person_id ORDER BY p.person_id;")})  # fmt: skip
    extract(ds, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.parquet", "schema.json"]
    rows = pq.read_table(tmp_path / "cohort.parquet").to_pylist()
    assert [(r["person_id"], r["n"], r["mean"]) for r in rows] == [
        (1, 2, 5.875), (2, 0, None), (3, 1, 7.0),
    ]  # fmt: skip


def test_empty_result_still_has_its_columns(omop: str, tmp_path: Path) -> None:
    ds = sql_dataset(omop, queries={"none": "SELECT * FROM person WHERE false"},
                     formats=["parquet", "csv"])  # fmt: skip
    done = extract(ds, tmp_path)
    table = pq.read_table(tmp_path / "none.parquet")
    assert table.num_rows == 0 and table.column_names[0] == "person_id"
    assert done.tables[0].rows == 0
    assert (tmp_path / "none.csv").read_text().startswith("person_id,gender,")


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("SELECT purge() AS n", "cannot execute DELETE in a read-only transaction"),
        ("SELECT nextval('measurement_measurement_id_seq') AS n",
         "cannot execute nextval() in a read-only transaction"),
    ],
)  # fmt: skip
def test_a_write_through_the_query_is_refused(
    omop: str, tmp_path: Path, query: str, refusal: str
) -> None:
    import psycopg

    ds = sql_dataset(omop, queries={"x": query})
    with pytest.raises(DataSetError, match=re.escape(refusal)):
        extract(ds, tmp_path)
    with psycopg.connect(omop) as conn:
        assert conn.execute("SELECT count(*) FROM person").fetchone() == (3,)


def test_a_failing_query_is_named_and_leaves_nothing(omop: str, tmp_path: Path) -> None:
    ds = sql_dataset(omop, queries={"ok": "SELECT 1 AS one", "bad": "SELECT * FROM no_such"})
    work = tmp_path / "hop"
    work.mkdir()
    with pytest.raises(DataSetError) as info, data_view(ds, work):
        pytest.fail("the view must not open")
    assert "data set 'omop', table 'bad': the database refused the query" in str(info.value)
    assert 'relation "no_such" does not exist' in str(info.value)
    assert list(work.iterdir()) == []


def test_a_query_failing_midway_names_the_database_error(omop: str, tmp_path: Path) -> None:
    """The COPY fails after streaming rows: the database's error, not a truncated table."""
    query = "SELECT g, 1 / (g - 60000) AS r FROM generate_series(1, 100000) AS g"
    ds = sql_dataset(omop, queries={"late": query}, formats=["parquet", "csv"])
    with pytest.raises(DataSetError, match="table 'late': the database refused the query: "
                       "division by zero"), data_view(ds, tmp_path):  # fmt: skip
        pytest.fail("the view must not open")
    assert list(tmp_path.iterdir()) == []


def test_a_value_arrow_cannot_hold_cancels_the_copy(omop: str, tmp_path: Path) -> None:
    """numeric(9,1) 'NaN' has no decimal form: the parse error is named, the COPY cancelled
    (the session's connection is closed cleanly, so the next extraction works)."""
    query = (
        "SELECT CASE WHEN g = 5 THEN 'NaN'::numeric(9,1) ELSE g::numeric(9,1) END AS v "
        "FROM generate_series(1, 200000) AS g"
    )
    ds = sql_dataset(omop, queries={"nan": query})
    with pytest.raises(DataSetError, match=r"table 'nan': a value does not fit its column's type"):
        extract(ds, tmp_path)
    again = tmp_path / "again"
    again.mkdir()
    assert extract(sql_dataset(omop, tables=["person"]), again).tables[0].rows == 3


def test_errors_never_quote_a_value(omop: str, tmp_path: Path) -> None:
    """A conversion error names the column's trouble, not the value (the message goes to the
    audit log and to the central service); a missing table is still named."""
    ds = sql_dataset(omop, queries={"x": "SELECT note::int AS n FROM person WHERE note <> ''"})
    with pytest.raises(DataSetError) as info:
        extract(ds, tmp_path)
    message = str(info.value)
    assert "invalid input syntax for type integer: '…'" in message
    assert "quotes" not in message and "commas" not in message
    ds = sql_dataset(omop, queries={"nan": "SELECT 'NaN'::numeric(9,1) AS v"})
    second = tmp_path / "second"
    second.mkdir()
    with pytest.raises(DataSetError) as info:
        extract(ds, second)
    assert "NaN" not in str(info.value) and "'…'" in str(info.value)


def test_a_refused_connection_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    from pht_airflow.dev.localregistry import free_port

    ds = sql_dataset(f"postgresql://pht@127.0.0.1:{free_port()}/x", tables=["person"])
    work = tmp_path / "hop"
    work.mkdir()
    refused = "cannot connect to the database of Connection 'pht_omop'"
    with pytest.raises(DataSetError, match=refused), data_view(ds, work):
        pytest.fail("the view must not open")
    assert list(work.iterdir()) == []


def test_the_view_is_read_only_and_wiped_after_success_and_failure(
    omop: str, tmp_path: Path
) -> None:
    ds = sql_dataset(omop, tables=["person"])
    with data_view(ds, tmp_path) as view:
        assert view.path == tmp_path / "data"
        assert oct(view.path.stat().st_mode & 0o777) == "0o555"
        assert oct((view.path / "person.parquet").stat().st_mode & 0o777) == "0o444"
        assert view.tables == ("person",) and view.files == 2
    assert not (tmp_path / "data").exists()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), data_view(ds, tmp_path):
        assert (tmp_path / "data" / "person.parquet").exists()
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_the_digest_names_the_data_the_train_saw(omop: str, tmp_path: Path) -> None:
    import psycopg

    ds = sql_dataset(omop, tables=["person", "measurement"])
    with data_view(ds, tmp_path) as first:
        again = data_digest(first.path)
    with data_view(ds, tmp_path) as second:
        pass
    assert first.digest == second.digest == again[0]
    assert first.digest.startswith("sha256:") and len(first.digest) == 71
    assert first.record() == {"dataset": "omop", "kind": "sql", "digest": first.digest,
                              "files": 3, "bytes": first.bytes,
                              "tables": ["person", "measurement"]}  # fmt: skip
    with psycopg.connect(omop, autocommit=True) as conn:
        conn.execute("UPDATE measurement SET value_as_number = 6.26 WHERE value_as_number = 6.25")
    with data_view(ds, tmp_path) as changed:
        assert changed.digest != first.digest


def test_describe_gives_the_shape_never_the_values(omop: str) -> None:
    ds = sql_dataset(omop, tables=["person", "measurement"], identifier_columns=["person_id"])
    shape = describe(ds, threshold=2)
    assert shape["rows_rounded_to"] == 2
    assert shape["tables"]["person"]["rows"] == 2  # 3 rounded down to a multiple of 2
    assert shape["tables"]["measurement"]["rows"] == 2
    assert shape["tables"]["person"]["columns"][0] == {
        "name": "person_id", "type": "int64", "identifier": True,
    }  # fmt: skip
    assert describe(ds, threshold=10)["tables"]["person"]["rows"] == 0
    text = json.dumps(shape)
    for value in ("mmol/L", "quotes", "1950", "61.5"):
        assert value not in text


# Peak RSS is VmHWM of this process's own memory map (ru_maxrss would carry the forking
# parent's peak across exec).
MEMORY_SCRIPT = """
import sys
from pathlib import Path

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from pht_airflow.station.data import extract, parse_datasets
from pht_airflow.station.secrets import DatabaseUrls
import pyarrow.csv, pyarrow.parquet, psycopg  # counted in the baseline
baseline = peak()
ds = parse_datasets({"big": {"kind": "sql", "connection": "db", "tables": ["big"],
                             "formats": ["parquet"]}},
                    problem=lambda p, t: sys.exit(t), resolve_path=lambda v, p: Path(v),
                    where=lambda p: "-", lookups=DatabaseUrls({"db": sys.argv[1]}))["big"]
done = extract(ds, Path(sys.argv[2]), memory_budget=8 * 1024 * 1024)
print(baseline, peak(), done.tables[0].rows)
"""

#: The bound on the extraction's own memory (peak RSS above the interpreter with pyarrow and
#: psycopg loaded), with an 8 MiB row-group budget.
EXTRACTION_BOUND = 128 * 1024 * 1024


def test_a_table_larger_than_the_memory_bound_streams(postgres_url: str, tmp_path: Path) -> None:
    import psycopg

    rows = 1_400_000
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 8) AS payload, "
            "g * 0.5 AS half, now() AS at FROM generate_series(1, %s) AS g",
            (rows,),
        )
        size = conn.execute("SELECT pg_total_relation_size('big')").fetchone()[0]
    assert size > 3 * EXTRACTION_BOUND
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, postgres_url, str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    baseline, peak, extracted = (int(x) for x in proc.stdout.split())
    assert extracted == rows
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_rows == rows
    used = peak - baseline
    print(f"table {size / 2**20:.0f} MiB, extraction peak +{used / 2**20:.0f} MiB "
          f"(RSS {peak / 2**20:.0f} MiB)")  # fmt: skip
    assert used < EXTRACTION_BOUND, f"the extraction used {used / 2**20:.0f} MiB"


def test_a_sql_data_set_outside_airflow_needs_its_database(tmp_path: Path) -> None:
    problems: list[str] = []
    ds = parse_datasets(
        {"omop": {"kind": "sql", "connection": "pht_omop", "tables": ["person"]}},
        problem=lambda path, text: problems.append(text),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "station.yaml:7",
    )["omop"]
    with pytest.raises(ConfigError, match=r"station\.yaml:7: data set 'omop': .*Postgres provider"):
        extract(ds, tmp_path)


# --- the station's self-test reads sql data sets without reading rows -------------------------


def _station_with(tmp_path: Path, parties: Any, url: str, entry: dict[str, Any]) -> Any:
    import yaml
    from support.stationkit import make_station

    from pht_airflow.station.config import load_config

    station = make_station(tmp_path / "s", parties["station-a"], "127.0.0.1:5000",
                           creators=[parties["alice"].public.pem], approvers=[])  # fmt: skip
    data = yaml.safe_load(station.config_path.read_text())
    data["trust"]["required_approvals"] = 0
    data["datasets"]["omop"] = {"kind": "sql", "connection": "pht_omop", **entry}
    station.config_path.write_text(yaml.safe_dump(data))
    return load_config(station.config_path, DatabaseUrls({"pht_omop": url}))


@pytest.mark.docker
def test_selftest_checks_a_sql_data_set_read_only(
    omop: str, tmp_path: Path, parties: Any, docker_client: Any
) -> None:
    from pht_airflow.errors import SelfTestError
    from pht_airflow.station.selftest import check_datasets

    config = _station_with(tmp_path, parties, omop, {"tables": ["person", "measurement"]})
    message = check_datasets(config, docker_client)
    assert "cohort (1 files)" in message and "omop (sql, 2 table(s), read-only)" in message
    config = _station_with(tmp_path / "2", parties, omop, {"queries": {"x": "SELECT * FROM gone"}})
    with pytest.raises(SelfTestError) as info:
        check_datasets(config, docker_client)
    assert str(info.value).startswith(
        "datasets: data set 'omop', table 'x': the database refused the query"
    )
