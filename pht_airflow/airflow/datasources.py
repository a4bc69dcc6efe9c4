"""Databases behind ``sql`` data sets, opened with the Airflow provider hook for them.

A ``sql`` data set names an Airflow Connection (conn type ``postgres``); the station library
asks its lookups for a DB-API connection (:meth:`pht_airflow.station.secrets.Lookups.database`)
and this edge answers with the Postgres provider's
``PostgresHook(postgres_conn_id=...).get_conn()``, so the Connection's host, login, password
and extras (sslmode, ...) are Airflow's, served by any secrets backend.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..station.data.model import DataSetError

#: Connection types a sql data set can use (the extractor speaks PostgreSQL).
SUPPORTED = ("postgres",)


def open_database(conn_id: str) -> Any:
    """A new DB-API connection for the Airflow Connection ``conn_id``, or ``None`` if unset."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - Airflow raises its own not-found types
        return None
    if conn.conn_type not in SUPPORTED:
        raise ConfigError(
            f"Airflow Connection {conn_id!r} has conn type {conn.conn_type!r}; a sql data set "
            f"needs one of {', '.join(SUPPORTED)}"
        )
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    try:
        return PostgresHook(postgres_conn_id=conn_id).get_conn()
    except Exception as exc:  # noqa: BLE001 - the driver's errors, never the password
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DataSetError(
            f"cannot connect to the database of Airflow Connection {conn_id!r}: {first}"
        ) from None
