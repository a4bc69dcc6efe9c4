"""The station's webhook receiver, mounted in the Airflow API server as a plugin.

``POST /pht/registry-events`` takes Harbor (default or CloudEvents) and distribution
notifications, checks the shared secret (``webhook.secret`` in the station config), keeps
only pushes of a train (tag ``train``) in this station's own project, and creates one
``pht_run_train`` run per train digest. The run id is derived from the digest, so a
duplicated delivery finds the run already there and starts nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from ..station.config import StationConfig, load_config
from ..webhook_app import create_app
from ..webhooks import PushEvent

log = logging.getLogger(__name__)

DAG_ID = "pht_run_train"
TRAIN_TAG = "train"


def run_id_for(digest: str) -> str:
    """The DAG run id for a train digest: one run per digest, whatever the deliveries."""
    return "pht__" + digest.replace(":", "_")


def _config() -> StationConfig:
    return load_config()


def _secret() -> str:
    config = _config()
    if config.webhook_secret is None:
        return ""  # the app answers 503: the receiver is not configured
    try:
        return config.webhook_secret.read_text()
    except Exception:  # noqa: BLE001 - a missing secret means "not configured", logged
        log.error("the webhook secret (%s) cannot be read", config.webhook_secret.describe())
        return ""


def _projects() -> list[str]:
    return [_config().registry.project]


def trigger_for_push(event: PushEvent) -> str | None:
    """Create the DAG run for a train push; None if it is not a train or already exists."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunTriggeredByType

    if event.tag != TRAIN_TAG:
        return None
    config = _config()
    run_id = run_id_for(event.digest)
    if DagRun.find(dag_id=DAG_ID, run_id=run_id):
        log.info("run %s already exists; duplicate delivery ignored", run_id)
        return None
    # The registry host comes from our own config, never from the (sender-controlled) body.
    reference = f"{config.registry.host}/{event.repository}@{event.digest}"
    try:
        trigger_dag(
            DAG_ID,
            run_id=run_id,
            conf={"train": reference, "rerun": False},
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name="pht-registry-webhook",
            note=f"registry push of {event.repository}:{event.tag}",
        )
    except DagRunAlreadyExists:
        return None
    log.info("created run %s for %s", run_id, reference)
    return run_id


def build_app() -> Any:
    """The FastAPI app the plugin mounts at ``/pht``."""
    return create_app(secret_provider=_secret, on_push=trigger_for_push, projects=_projects)


class PhtStationPlugin(AirflowPlugin):
    """Registers the webhook receiver with the Airflow API server."""

    name = "pht_station"
    fastapi_apps = [{"app": build_app(), "url_prefix": "/pht", "name": "PHT registry webhook"}]
