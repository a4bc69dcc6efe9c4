"""The station's webhook receiver, mounted in the Airflow API server as a plugin.

``POST /pht/registry-events`` takes Harbor (default or CloudEvents) and distribution
notifications, checks the shared secret (``webhook.secret`` in the station config), keeps
only pushes of a train (tag ``train``, or a ``retry-<k>-<n>`` the central service tags when
a hop is retried) in this station's own project, and creates one ``pht_run_train`` run per
train digest (and one per retry tag). The run id is derived from the digest, so a
duplicated delivery finds the run already there and starts nothing; concurrent duplicates
that race to insert it are answered the same way (the run id is unique in the database).
The polling DAG (:mod:`.polling`) uses the same run ids, so the two paths never both run a
train. A station whose config says ``intake: poll`` has its receiver off (503). So is a station
whose config does not load, or whose ``pht_run_train`` DAG is paused or not parsed yet: the
receiver answers 503 with the reason (and logs it, the config's problems in full) instead of
creating a run that would wait forever, and the registry delivers the push again later.

A deployment hosting several stations (``$PHT_STATION_CONFIG_DIR``, see
:mod:`pht_airflow.airflow.dags`) gets one receiver per station at
``POST /pht/<station>/registry-events``, each with that station's secret, project and DAG.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from ..errors import ConfigError
from ..station.config import StationConfig, hosted_station_configs, load_config
from ..station.inbox import Arrival, is_intake_tag
from ..station.inbox import run_id_for as run_id_for  # the run id, for callers of this module
from ..text import safe_text
from ..web.webhook_app import create_app
from ..webhooks import PushEvent
from . import runnotes
from .dashboard import DASHBOARD_VIEW, dashboard_app
from .lookups import AIRFLOW_LOOKUPS
from .names import RUN_TRAIN, dag_id_for

log = logging.getLogger(__name__)

DAG_ID = RUN_TRAIN


def _config(path: Path | None = None) -> StationConfig:
    return load_config(path, AIRFLOW_LOOKUPS)


def _secret(path: Path | None = None) -> str:
    config = _config(path)
    if config.intake == "poll":
        log.info("station %s polls (intake: poll); its webhook receiver is off", config.station_id)
        return ""  # the app answers 503
    if config.webhook_secret is None:
        return ""  # the app answers 503: the receiver is not configured
    try:
        return config.webhook_secret.read_text()
    except Exception:  # noqa: BLE001 - a missing secret means "not configured", logged
        log.error("the webhook secret (%s) cannot be read", config.webhook_secret.describe())
        return ""


def station_unavailable(config_path: Path | None = None, dag_id: str = DAG_ID) -> str | None:
    """Why this station's receiver cannot take pushes now, or None: the config does not load
    (its problems go to the log, not to the caller), or the DAG is paused or not in the
    database yet. Asked by the receiver on every delivery (503 with the reason)."""
    from airflow.models.dag import DagModel

    try:
        _config(config_path)
    except ConfigError as exc:
        log.error(
            "the station config %s does not load: %s",
            config_path or "($PHT_STATION_CONFIG)",
            safe_text(exc, limit=4000),
        )
        return (
            "the station config does not load; the Airflow API server's log names the problems "
            "(run `pht station check` on the station)"
        )
    model = DagModel.get_dagmodel(dag_id)
    if model is None:
        return (
            f"the DAG {dag_id} is not in Airflow yet (the DAG processor has not parsed it); "
            "deliver again later"
        )
    if model.is_paused:
        return (
            f"the DAG {dag_id} is paused, so a run would never start: unpause it (the toggle "
            f"in the UI, or `airflow dags unpause {dag_id}`), then deliver again"
        )
    return None


def _projects(path: Path | None = None) -> list[str]:
    return [_config(path).registry.project]


def trigger_for_push(
    event: PushEvent, *, dag_id: str = DAG_ID, config_path: Path | None = None
) -> str | None:
    """Create the DAG run for a train push; None if it is not a train or already exists."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import IntegrityError

    if event.tag is None or not is_intake_tag(event.tag):
        return None
    config = _config(config_path)
    arrival = Arrival(event.repository, event.tag, event.digest)
    run_id = arrival.run_id
    if DagRun.find(dag_id=dag_id, run_id=run_id):
        log.info("run %s of %s already exists; duplicate delivery ignored", run_id, dag_id)
        return None
    # The registry host comes from our own config, never from the (sender-controlled) body.
    reference = arrival.reference(config.registry.host)
    try:
        trigger_dag(
            dag_id,
            run_id=run_id,
            conf={"train": reference, "rerun": False},
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name="pht-registry-webhook",
            note=f"registry push of {event.repository}:{event.tag}",
        )
    except DagRunAlreadyExists:
        return None
    except IntegrityError:
        # A concurrent delivery of the same push created the run between our look and our
        # insert (the run id is unique): that is a duplicate, answered 2xx like the others.
        if DagRun.find(dag_id=dag_id, run_id=run_id):
            log.info("run %s of %s was created by a concurrent delivery", run_id, dag_id)
            return None
        raise
    log.info("created run %s of %s for %s", run_id, dag_id, reference)
    return run_id


def build_app(config_path: Path | None = None, dag_id: str = DAG_ID) -> Any:
    """The FastAPI receiver for one station (``config_path`` None: $PHT_STATION_CONFIG)."""
    return create_app(
        secret_provider=partial(_secret, config_path),
        on_push=partial(trigger_for_push, dag_id=dag_id, config_path=config_path),
        projects=partial(_projects, config_path),
        unavailable=partial(station_unavailable, config_path, dag_id),
    )


def receiver_apps() -> list[dict[str, Any]]:
    """The receivers to mount: ``/pht`` for one station, ``/pht/<station>`` for each hosted one."""
    hosted = hosted_station_configs()
    if not hosted:
        return [{"app": build_app(), "url_prefix": "/pht", "name": "PHT registry webhook"}]
    return [
        {
            "app": build_app(path, dag_id_for(name)),
            "url_prefix": f"/pht/{name}",
            "name": f"PHT registry webhook ({name})",
        }
        for name, path in hosted.items()
    ]


class PhtStationPlugin(AirflowPlugin):
    """Registers the webhook receiver(s) and the station dashboard (``/pht-dashboard``, with
    a "PHT station" entry in Airflow's navigation) with the Airflow API server, and the
    listener that writes each hop run's note (:mod:`.runnotes`: the train's name and how the
    hop ended) in the scheduler."""

    name = "pht_station"
    fastapi_apps = [*receiver_apps(), dashboard_app()]
    external_views = [DASHBOARD_VIEW]
    listeners = [runnotes]
