"""The dashboard's Airflow side (airflow.dashboard) against Airflow's real metadata database.

Which stations it shows (one config, or every hosted one), the overview it builds for each
(the last self-test: the newest run of that station's self-test DAG), and the app the plugin
mounts, which refuses a request without Airflow's token before reading anything. Signed-in
access through Airflow's real auth manager is tested on a running Airflow
(``test_browser_dashboard.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.dashboard import dashboard_station

from pht_airflow.airflow import dashboard
from pht_airflow.airflow.plugin import PhtStationPlugin
from pht_airflow.errors import ConfigError
from pht_airflow.station.config import CONFIG_DIR_ENV, CONFIG_ENV

pytestmark = [pytest.mark.airflow]


def _newest_run(dag_id: str) -> tuple[str, str] | None:
    """(run id, state) of the newest run of ``dag_id`` in the test database (other tests'
    self-tests run there too), found with Airflow's own DagRun.find."""
    from airflow.models.dagrun import DagRun

    runs = DagRun.find(dag_id=dag_id)
    if not runs:
        return None
    newest = max(runs, key=lambda r: r.run_after)
    return newest.run_id, str(newest.state)


def _shown(self_test: Any) -> tuple[str, str] | None:
    return (self_test["run_id"], self_test["state"]) if self_test else None


def test_one_station_from_its_config(
    airflow_db: Path, tmp_path: Path, parties: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    station = dashboard_station(tmp_path, parties)
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.setenv(CONFIG_ENV, str(station.config_path))
    assert dashboard._stations() == {"station-a": None}
    found = dashboard._station_overview("station-a")
    assert [t["train_id"] for t in found["trains"]] == ["train-3", "train-2", "train-1"]
    assert _shown(found["self_test"]) == _newest_run("pht_station_selftest")


def test_hosted_stations_each_with_their_config(
    airflow_db: Path, tmp_path: Path, parties: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    station = dashboard_station(tmp_path, parties)
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "station-a.yaml").symlink_to(station.config_path)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    assert dashboard._stations() == {"station-a": station.config_path.resolve()}
    found = dashboard._station_overview("station-a")
    assert found["station"] == "station-a"
    assert _shown(found["self_test"]) == _newest_run("pht_station_selftest__station-a")


def test_a_broken_config_lists_no_station_and_is_reported(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "station.yaml"
    broken.write_text("station: {id: Not_An_Id}\n")
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.setenv(CONFIG_ENV, str(broken))
    assert dashboard._stations() == {}
    with pytest.raises(ConfigError, match=r"station\.id: must be a station id"):
        dashboard._station_overview("station-a")


def test_the_plugin_mounts_the_dashboard_and_its_navigation_entry() -> None:
    apps = {a["url_prefix"]: a for a in PhtStationPlugin.fastapi_apps}
    assert dashboard.URL_PREFIX in apps
    assert PhtStationPlugin.external_views == [dashboard.DASHBOARD_VIEW]
    assert dashboard.DASHBOARD_VIEW["href"] == "/pht-dashboard/"
    assert dashboard.DASHBOARD_VIEW["destination"] == "nav"


def test_the_mounted_app_refuses_a_request_without_a_token(
    airflow_db: Path, tmp_path: Path, parties: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    station = dashboard_station(tmp_path, parties)
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.setenv(CONFIG_ENV, str(station.config_path))
    with TestClient(dashboard.dashboard_app()["app"]) as client:
        for route in ("/api/stations/station-a/overview", "/stations/station-a", "/"):
            resp = client.get(route)
            assert resp.status_code == 401, resp.text
            assert "train-1" not in resp.text
        wrong_scheme = client.get("/api/stations", headers={"Authorization": "Basic YWRtaW4="})
        assert wrong_scheme.status_code == 401
