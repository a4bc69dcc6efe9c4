"""The station dashboard inside Airflow: its app, who may see it, and where its data comes from.

:func:`dashboard_app` builds :mod:`pht_airflow.web.dashboard_app` for this deployment (one
station, or every hosted station) and :data:`DASHBOARD_VIEW` is the Airflow 3 external view
that puts "PHT station" in Airflow's navigation, showing the app inside the Airflow UI.

FastAPI apps that a plugin mounts are not behind Airflow's authentication:
:func:`authenticate` applies it, with Airflow's own check
(:func:`airflow.api_fastapi.core_api.security.get_user`): a bearer token in the
``Authorization`` header, else the ``_token`` cookie the UI's sign-in sets, each verified by
the deployment's auth manager. No token: 401; an invalid one: 403; expired: 401.

The last self-test is read from the newest ``pht_station_selftest`` run (its state and each
check task's state); a pending release's review from
``pht_airflow.station.release.review(config, run_key)`` once that exists.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from fastapi import Request

from ..errors import PhtError
from ..station.config import hosted_station_configs, load_config
from ..station.overview import overview
from ..web.dashboard_app import create_app
from .lookups import AIRFLOW_LOOKUPS
from .names import SELFTEST, dag_id_for

log = logging.getLogger(__name__)

URL_PREFIX = "/pht-dashboard"
DASHBOARD_VIEW: dict[str, Any] = {
    "name": "PHT station",
    "href": f"{URL_PREFIX}/",
    "destination": "nav",
    "url_route": "pht-station",
}
"""The Airflow 3 external view: a navigation entry that shows the dashboard in the UI."""


async def authenticate(request: Request) -> str:
    """The signed-in Airflow user's name, or ``HTTPException`` 401/403 (Airflow's check)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    user = await get_user(request, None, credentials)
    return str(user.get_name())


def _stations() -> dict[str, Path | None]:
    """Station id -> config path (None: ``$PHT_STATION_CONFIG``)."""
    hosted = hosted_station_configs()
    if hosted:
        return dict(hosted)
    try:
        return {load_config(None, AIRFLOW_LOOKUPS).station_id: None}
    except PhtError as exc:
        log.error("dashboard: the station config cannot be read: %s", exc)
        return {}


def last_self_test(station: str | None) -> dict[str, Any] | None:
    """The newest ``pht_station_selftest`` run of ``station``: state, when, each check's state."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_id = dag_id_for(station, SELFTEST)
    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
        ).first()
        if run is None:
            return None
        tis = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
        when = run.end_date or run.start_date or run.run_after
        return {
            "state": str(run.state) if run.state else None,
            "when": when.isoformat(timespec="seconds") if when else None,
            "run_id": run.run_id,
            "checks": {t.task_id: str(t.state) if t.state else "not run" for t in tis},
        }


def _station_overview(station: str) -> dict[str, Any]:
    stations = _stations()
    path = stations.get(station)
    config = load_config(path, AIRFLOW_LOOKUPS)
    try:
        self_test = last_self_test(station if path is not None else None)
    except Exception as exc:  # noqa: BLE001 - the page still shows the rest
        log.error("dashboard: the last self-test cannot be read: %s", type(exc).__name__)
        self_test = None
    return overview(config, self_test=self_test)


def _review(station: str, run_key: str) -> dict[str, Any] | None:
    try:
        release = importlib.import_module("pht_airflow.station.release")
    except ImportError:
        return None
    review = getattr(release, "review", None)
    if review is None:
        return None
    config = load_config(_stations().get(station), AIRFLOW_LOOKUPS)
    found = review(config, run_key)
    return dict(found) if found is not None else None


def dashboard_app() -> dict[str, Any]:
    """The plugin's ``fastapi_apps`` entry for the dashboard."""
    app = create_app(
        authenticate=authenticate,
        stations=lambda: list(_stations()),
        overview=_station_overview,
        review=_review,
        root_path=URL_PREFIX,
    )
    return {"app": app, "url_prefix": URL_PREFIX, "name": "PHT station dashboard"}
