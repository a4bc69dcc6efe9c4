"""A sql data set's database, opened through the Postgres provider's hook (the Airflow edge).

Real Airflow and real PostgreSQL: the Connection comes from Airflow's environment-variable
secrets backend (``AIRFLOW_CONN_*``), as a Vault backend would serve it.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest

pytest.importorskip("airflow")

from pht_airflow.airflow.lookups import AIRFLOW_LOOKUPS  # noqa: E402
from pht_airflow.errors import ConfigError  # noqa: E402
from pht_airflow.station.data import data_view, describe, parse_datasets  # noqa: E402

pytestmark = pytest.mark.airflow


def _connection(url: str, conn_type: str = "postgres") -> str:
    parts = urlsplit(url)
    return json.dumps({"conn_type": conn_type, "host": parts.hostname, "port": parts.port,
                       "login": parts.username, "schema": parts.path.lstrip("/")})  # fmt: skip


def test_a_sql_data_set_is_read_with_the_postgres_hook(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE person AS SELECT g AS person_id FROM generate_series(1, 25) g")
    monkeypatch.setenv("AIRFLOW_CONN_PHT_OMOP_TEST", _connection(postgres_url))
    ds = parse_datasets(
        {"omop": {"kind": "sql", "connection": "pht_omop_test", "tables": ["person"]}},
        problem=lambda path, text: pytest.fail(text),
        resolve_path=lambda value, path: Path(value),
        where=lambda path: "station.yaml:1",
        lookups=AIRFLOW_LOOKUPS,
    )["omop"]
    with data_view(ds, tmp_path) as view:
        assert pq.read_table(view.path / "person.parquet").num_rows == 25
    assert describe(ds, threshold=10)["tables"]["person"]["rows"] == 20


def test_an_unset_or_non_postgres_connection_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AIRFLOW_LOOKUPS.database("pht_no_such_connection") is None
    monkeypatch.setenv("AIRFLOW_CONN_PHT_HTTP_TEST", '{"conn_type": "http", "host": "x"}')
    with pytest.raises(ConfigError, match="has conn type 'http'; a sql data set needs one of"):
        AIRFLOW_LOOKUPS.database("pht_http_test")
