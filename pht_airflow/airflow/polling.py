"""``pht_poll_inbox``: a station finds its trains by asking the registry (nothing inbound).

A scheduled DAG, one per station whose config says ``intake: poll`` or ``both``, every
``poll_interval``, one run at a time, no catch-up:

``scan`` → ``trigger`` (mapped, one per new train) → ``remember``

- ``scan`` asks the registry (:func:`pht_airflow.station.inbox.scan`): the project's
  repositories, their tags, and a ``HEAD`` for each intake tag it has not seen before. What
  it has seen is the Airflow Variable ``pht_inbox__<station>`` (``repository -> {tag:
  digest}``), so an idle station costs one listing plus one tag list per repository;
- ``trigger`` is Airflow's own ``TriggerDagRunOperator``, mapped over the arrivals: it
  creates the ``pht_run_train`` run under the deterministic run id the webhook receiver
  uses, and an existing run (the webhook was first) is "already exists", skipped, not an
  error; so a train digest runs once whichever path sees it first;
- ``remember`` adds the arrivals to the Variable once each has its run (created now, or
  already there: the webhook was first); it runs only when nothing failed, so a failed
  trigger is tried again at the next poll.

``scan`` short-circuits: a poll that finds nothing new skips the rest, so an idle poll is one
task.

Why a scheduled DAG rather than a deferrable sensor or an asset watcher: each poll is a
short, visible run in the UI with its own log and state, it needs no triggerer-resident
state, and the registry's credentials stay in the worker (an asset watcher's trigger runs
in the triggerer and is built for message queues, not for listing a registry).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, TriggerRule, Variable, task

from ..station.config import hosted_station_configs, load_config, station_intake
from ..station.hop import registry_client
from ..station.inbox import Arrival, catalog_repositories, remember, scan
from .lookups import AIRFLOW_LOOKUPS
from .names import RUN_TRAIN, dag_id_for

POLL_INBOX = "pht_poll_inbox"
VARIABLE_PREFIX = "pht_inbox"


def state_variable(station: str) -> str:
    """The Airflow Variable holding what the station's poller has seen."""
    return f"{VARIABLE_PREFIX}__{station}"


def _known(station: str) -> dict[str, dict[str, str]]:
    raw = Variable.get(state_variable(station), default=None)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}  # a damaged state costs one HEAD per tag, nothing else
    if not isinstance(data, dict):
        return {}
    return {
        str(repo): {str(t): str(d) for t, d in tags.items()}
        for repo, tags in data.items()
        if isinstance(tags, dict)
    }


def _repositories(config: Any, client: Any) -> Any:
    """How to list the project's repositories: Harbor's API when configured, else the catalog."""
    project = config.registry.project
    if config.registry.harbor_url:

        def harbor() -> list[str]:
            from ..central.registry.harbor import HarborAdmin

            username, password = config.registry.credentials()
            admin = HarborAdmin(
                config.registry.harbor_url,
                username or "",
                password or "",
                insecure=config.registry.insecure,
            )
            try:
                prefix = project + "/"  # whatever Harbor answers, only this project's
                return [
                    r
                    for r in admin.list_repositories(project)
                    if r.startswith(prefix) and "/" not in r[len(prefix) :]
                ]
            finally:
                admin.close()

        return harbor
    return lambda: catalog_repositories(client, project)


def poll_inbox_dag(dag_id: str, config_path: str | None, run_dag_id: str) -> DAG:
    """The polling DAG for one station (``config_path`` None: ``$PHT_STATION_CONFIG``)."""
    _, interval = station_intake(config_path)

    with DAG(
        dag_id=dag_id,
        description=f"Ask the registry for new trains and start {run_dag_id} for each",
        schedule=interval,
        catchup=False,
        max_active_runs=1,
        tags=["pht"],
        doc_md=__doc__,
        default_args={"retries": 0, "execution_timeout": max(interval * 5, timedelta(minutes=2))},
    ) as dag:

        @task.short_circuit(task_id="scan")
        def scan_task(ti: Any = None) -> list[dict[str, Any]]:
            config = load_config(config_path, AIRFLOW_LOOKUPS)
            known = _known(config.station_id)
            with registry_client(config) as client:
                arrivals, seen = scan(client, _repositories(config, client), known)
            if seen != known:
                Variable.set(state_variable(config.station_id), json.dumps(seen, sort_keys=True))
            ti.xcom_push(key="seen", value=seen)
            ti.xcom_push(key="arrivals", value=[[a.repository, a.tag, a.digest] for a in arrivals])
            for a in arrivals:
                print(f"new: {a.repository}:{a.tag} {a.digest} -> run {a.run_id}")
            return [a.trigger(config.registry.host) for a in arrivals]

        @task(task_id="remember", trigger_rule=TriggerRule.NONE_FAILED)
        def remember_task(ti: Any = None) -> None:
            config = load_config(config_path, AIRFLOW_LOOKUPS)
            seen = ti.xcom_pull(task_ids="scan", key="seen") or {}
            rows = ti.xcom_pull(task_ids="scan", key="arrivals") or []
            arrivals = [Arrival(*row) for row in rows]
            merged = remember(seen, arrivals)
            Variable.set(state_variable(config.station_id), json.dumps(merged, sort_keys=True))

        found = scan_task()
        trigger = TriggerDagRunOperator.partial(
            task_id="trigger",
            trigger_dag_id=run_dag_id,
            skip_when_already_exists=True,
            wait_for_completion=False,
            reset_dag_run=False,
        ).expand_kwargs(found)
        trigger >> remember_task()
    return dag


def inbox_dags() -> dict[str, DAG]:
    """The polling DAGs: one per hosted station that polls, or the single station's one."""
    hosted = hosted_station_configs()
    if not hosted:
        intake, _ = station_intake(None)
        if intake == "webhook":
            return {}
        return {POLL_INBOX: poll_inbox_dag(POLL_INBOX, None, RUN_TRAIN)}
    dags = {}
    for name, path in hosted.items():
        intake, _ = station_intake(path)
        if intake != "webhook":
            dag_id = dag_id_for(name, POLL_INBOX)
            dags[dag_id] = poll_inbox_dag(dag_id, str(path), dag_id_for(name))
    return dags
