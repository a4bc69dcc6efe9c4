"""Airflow's Variables and Connections, handed to the station library as plain lookups.

The station config may name a secret as an Airflow Variable (``{variable: NAME}``) and the
registry login and a ``sql`` data set's database as Airflow Connections; a secrets backend
such as HashiCorp Vault can serve them. The library reads them through
:class:`pht_airflow.station.secrets.Lookups`, so it never imports Airflow; this is the one
place that asks Airflow.
"""

from __future__ import annotations

from typing import Any


class AirflowLookups:
    """Reads Variables and Connections through Airflow's Task SDK (inside a task) or its
    metadata database (in the API server, where the webhook receiver runs)."""

    def variable(self, name: str) -> str | None:
        """The Variable's value, or ``None`` when Airflow has none by that name."""
        from airflow.sdk import Variable

        try:
            return str(Variable.get(name))
        except Exception:  # noqa: BLE001 - outside a task (the API server), ask the database
            return _stored_variable(name)

    def connection(self, conn_id: str) -> tuple[str | None, str | None] | None:
        """The Connection's (login, password), or ``None`` when Airflow has none by that id."""
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - Airflow raises its own not-found types
            return None
        return conn.login or None, conn.password or None

    def database(self, conn_id: str) -> Any:
        """A DB-API connection from the provider hook (:mod:`.datasources`), or ``None``."""
        from .datasources import open_database

        return open_database(conn_id)


def _stored_variable(name: str) -> str | None:
    from airflow.models import Variable as StoredVariable

    try:
        return str(StoredVariable.get(name))
    except Exception:  # noqa: BLE001 - Airflow raises several types for a missing one
        return None


AIRFLOW_LOOKUPS = AirflowLookups()
