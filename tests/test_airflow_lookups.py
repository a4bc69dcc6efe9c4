"""The Airflow edge hands the station library Airflow's own Variables and Connections.

Real Airflow: Variables and Connections come from Airflow's environment-variable secrets
backend (``AIRFLOW_VAR_*``, ``AIRFLOW_CONN_*``), the same path a Vault backend plugs into.
"""

from __future__ import annotations

import pytest

pytest.importorskip("airflow")

from pht_airflow.airflow.lookups import AIRFLOW_LOOKUPS  # noqa: E402

pytestmark = pytest.mark.airflow


def test_variable_is_read_from_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PHT_LOOKUP_TEST", "from-airflow")
    assert AIRFLOW_LOOKUPS.variable("PHT_LOOKUP_TEST") == "from-airflow"


def test_connection_login_and_password_are_read_from_airflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_PHT_LOOKUP_REGISTRY",
        '{"conn_type": "generic", "login": "robot$station-a", "password": "robot-secret"}',
    )
    assert AIRFLOW_LOOKUPS.connection("pht_lookup_registry") == ("robot$station-a", "robot-secret")


def test_missing_connection_is_none() -> None:
    assert AIRFLOW_LOOKUPS.connection("pht_lookup_no_such_connection") is None
