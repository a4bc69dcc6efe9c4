"""A real, running Airflow for a station (pht_airflow.dev.localairflow) and the REST calls the
tests make against it: trigger a hop, wait for it, answer a person's step (approve/release).

Every component is bound to 127.0.0.1 with a private ``AIRFLOW_HOME`` and SQLite database.
Waiting polls with a deadline (``LocalAirflow.wait``); nothing sleeps a fixed time.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from pht_airflow.dev.localairflow import LocalAirflow, session_pids, start_airflow
from pht_airflow.errors import ServiceError
from pht_airflow.oci import Reference
from pht_airflow.station.audit import AuditLog
from support.stationkit import Station

DAG_ID = "pht_run_train"
RUN_TIMEOUT = 240.0  # one run, verify to record
LOOPBACK = {"127.0.0.1", "[::1]", "::1"}
#: The hop's tasks in order.
TASKS = (
    "preflight",
    "verify",
    "approve",
    "run",
    "check_output",
    "release",
    "seal",
    "record",
)


@dataclass
class AirflowStack:
    airflow: LocalAirflow
    station: Station
    secret: str

    @property
    def url(self) -> str:
        return self.airflow.url

    @property
    def home(self) -> Path:
        return self.airflow.home

    def client(self) -> httpx.Client:
        return self.airflow.client()

    def diagnostics(self) -> str:
        return self.airflow.diagnostics(dag_id=DAG_ID)


@contextmanager
def airflow_stack(
    root: Path, station: Station, env: Mapping[str, str] | None = None
) -> Iterator[AirflowStack]:
    """Airflow for ``station`` (its config in ``PHT_STATION_CONFIG``; the webhook secret in
    ``PHT_WEBHOOK_SECRET``), with ``pht_run_train`` parsed and unpaused; stopped on leaving."""
    secret = secrets.token_urlsafe(24)
    full = {
        "PHT_STATION_CONFIG": str(station.config_path),
        "PHT_WEBHOOK_SECRET": secret,
        **(env or {}),
    }
    try:
        airflow = start_airflow(root / "airflow-home", env=full, log_dir=root)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        airflow.wait_for_dag(DAG_ID)
        yield AirflowStack(airflow, station, secret)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        airflow.stop()


def listening(pids: set[int]) -> list[tuple[str, str, str]]:
    """``(protocol, local address, process)`` of every listening socket the pids hold."""
    out = subprocess.run(
        ["ss", "-H", "-l", "-t", "-u", "-n", "-p"], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 7:
            continue
        owners = {int(p) for p in re.findall(r"pid=(\d+)", " ".join(cols[6:]))}
        if owners & pids:
            found.append((cols[0], cols[4], " ".join(cols[6:])))
    return found


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].split("%", 1)[0]


def assert_loopback_only(stack: AirflowStack) -> list[tuple[str, str, str]]:
    """Fail if any process started here (or a child, a task) listens beyond loopback."""
    sockets = listening(session_pids(stack.airflow.pids))
    wide = [s for s in sockets if _host(s[1]) not in LOOPBACK]
    assert not wide, "listening beyond 127.0.0.1:\n" + "\n".join(" ".join(s) for s in sockets)
    return sockets


def run_url(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def trigger(http: httpx.Client, ref: Reference | str) -> str:
    """Trigger ``pht_run_train`` for a train through REST API v2; its run id."""
    resp = http.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"train": str(ref), "rerun": False}},
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["dag_run_id"])


def task_states(http: httpx.Client, run_id: str) -> dict[str, str]:
    tis = http.get(f"{run_url(run_id)}/taskInstances").json()["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def wait_for_end(stack: AirflowStack, http: httpx.Client, run_id: str) -> dict[str, Any]:
    """The run once it ended (success or failed); the loopback check runs while it waits."""

    def finished() -> dict[str, Any] | None:
        assert_loopback_only(stack)  # also while the tasks run
        resp = http.get(run_url(run_id))
        assert resp.status_code == 200, resp.text
        run = dict(resp.json())
        return run if run["state"] in ("success", "failed") else None

    try:
        return stack.airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT)
    except ServiceError as exc:
        pytest.fail(f"{exc}\n{stack.diagnostics()}", pytrace=False)


def wait_for_success(stack: AirflowStack, http: httpx.Client, run_id: str) -> dict[str, Any]:
    run = wait_for_end(stack, http, run_id)
    if run["state"] != "success":
        states = task_states(http, run_id)
        pytest.fail(f"run {run_id} ended {run['state']}: {states}\n{stack.diagnostics()}")
    return run


def parked_in_scheduler(
    airflow: LocalAirflow, run_id: str, task_id: str, try_number: int = 1
) -> Callable[[], bool | None]:
    """A probe for :meth:`LocalAirflow.wait`: true once the scheduler has taken the worker's
    exit of try ``try_number`` of the person's step ``task_id``, parked for an answer.

    Answer only after that: an answer that lands before it makes the scheduler fail the task
    ("executor reports success" for a task that is no longer running); a person never answers
    within that second. It matches that try's parking line (``state=awaiting_input``), not any
    "Finished" line: a try that was answered writes a second one (``state=success``)."""
    scheduler_log = next(c.log for c in airflow.components if c.name == "scheduler")
    parked_line = re.compile(
        rf"TaskInstance Finished: dag_id={DAG_ID}, task_id={re.escape(task_id)}, "
        rf"run_id={re.escape(run_id)},.*, state=(awaiting_input|deferred),.*"
        rf", try_number={try_number},"
    )

    def parked() -> bool | None:
        return True if parked_line.search(scheduler_log.read_text(errors="replace")) else None

    return parked


def wait_for_person(
    stack: AirflowStack, http: httpx.Client, run_id: str, task_id: str, try_number: int = 1
) -> None:
    """Wait until the person's step ``task_id`` (approve, release) waits for an answer, in its
    try ``try_number`` (2 after the run was cleared once)."""

    def waiting() -> bool | None:
        # Airflow 3.3 parks a human-in-the-loop task as "awaiting_input" (older: "deferred").
        state = task_states(http, run_id).get(task_id)
        if state in ("failed", "upstream_failed", "skipped"):
            pytest.fail(f"{task_id} of {run_id} is {state}: {task_states(http, run_id)}")
        return True if state in ("awaiting_input", "deferred") else None

    parked = parked_in_scheduler(stack.airflow, run_id, task_id, try_number)
    try:
        stack.airflow.wait(f"run {run_id} to wait at {task_id}", waiting, RUN_TIMEOUT)
        stack.airflow.wait(f"the scheduler to see {task_id} parked", parked, 60)
    except ServiceError as exc:
        pytest.fail(f"{exc}\n{stack.diagnostics()}", pytrace=False)


def answer(
    http: httpx.Client, run_id: str, task_id: str, option: str, reason: str | None = None
) -> dict[str, Any]:
    """Answer a person's step through the HITL REST endpoint (what the UI's buttons call)."""
    body: dict[str, Any] = {"chosen_options": [option]}
    if reason is not None:
        body["params_input"] = {"reason": reason}
    resp = http.patch(f"{run_url(run_id)}/taskInstances/{task_id}/-1/hitlDetails", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def audit_record(station: Station, run_id: str) -> dict[str, Any]:
    """The one audit record of an Airflow run."""
    records = [r for r in AuditLog(station.audit_path).entries() if r.get("run_id") == run_id]
    assert len(records) == 1, records
    return records[0]
