"""pht_run_train on a real, running Airflow: API server, scheduler, DAG processor, triggerer.

The deployment is started by :mod:`pht_airflow.dev.localairflow` (the same code the demo uses):
every component bound to 127.0.0.1, a private ``AIRFLOW_HOME`` and SQLite database, the
LocalExecutor. The tests trigger one train through the REST API and one through a Harbor
webhook (twice: one run per digest), check the results in the registry and the station's
audit log, and check that no process started here listens on anything but the loopback
address. With ``policy.require_approval`` switched on (the config is read when each task runs),
a run waits at ``approve`` until a person answers through the REST API (what the UI's
Approve and Reject buttons call): approved, it runs and the audit log names the approver;
rejected, nothing runs and the rejection is audited.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from conftest import VECTORS
from support.stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.dev.localairflow import LocalAirflow, session_pids, start_airflow
from pht_airflow.errors import ServiceError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
RUN_TIMEOUT = 240.0  # one run, verify to record
RUN_ID_RE = re.compile(r"pht__sha256_[0-9a-f]{64}")
LOOPBACK = {"127.0.0.1", "[::1]", "::1"}


@dataclass
class AirflowStack:
    airflow: LocalAirflow
    station: Station
    secret: str

    @property
    def url(self) -> str:
        return self.airflow.url

    def client(self) -> httpx.Client:
        return self.airflow.client()

    def diagnostics(self) -> str:
        return self.airflow.diagnostics(dag_id=DAG_ID)


def _listening(pids: set[int]) -> list[tuple[str, str, str]]:
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


def _assert_loopback_only(stack: AirflowStack) -> list[tuple[str, str, str]]:
    """Fail if any process started here (or a child, a task) listens beyond loopback."""
    sockets = _listening(session_pids(stack.airflow.pids))
    wide = [s for s in sockets if _host(s[1]) not in LOOPBACK]
    assert not wide, "listening beyond 127.0.0.1:\n" + "\n".join(" ".join(s) for s in sockets)
    return sockets


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any, docker_client: Any
) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("airflow-e2e")
    station = make_station(
        root / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"webhook": {"secret": {"env": "PHT_WEBHOOK_SECRET"}}},
    )
    secret = secrets.token_urlsafe(24)
    env = {"PHT_STATION_CONFIG": str(station.config_path), "PHT_WEBHOOK_SECRET": secret}
    try:
        airflow = start_airflow(root / "airflow-home", env=env, log_dir=root)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        airflow.wait_for_dag(DAG_ID)
        yield AirflowStack(airflow, station, secret)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        airflow.stop()


# --- helpers for the scenario ---------------------------------------------------------------


@pytest.fixture()
def client(registry: Any) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


def _train(
    docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> tuple[Reference, str]:
    """Build, push and sign (alice, reviewer) a one-hop train into ``station-a``."""
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return ref, digest


def _run_url(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def _wait_for_run(stack: AirflowStack, http: httpx.Client, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        _assert_loopback_only(stack)  # also while the tasks run
        resp = http.get(_run_url(run_id))
        assert resp.status_code == 200, resp.text
        run = dict(resp.json())
        return run if run["state"] in ("success", "failed") else None

    try:
        run = stack.airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    if run["state"] != "success":
        tis = http.get(f"{_run_url(run_id)}/taskInstances").json()
        states = {t["task_id"]: t["state"] for t in tis.get("task_instances", [])}
        pytest.fail(f"run {run_id} ended {run['state']}: {states}\n{stack.diagnostics()}")
    return run


def _task_states(http: httpx.Client, run_id: str) -> dict[str, str]:
    tis = http.get(f"{_run_url(run_id)}/taskInstances").json()["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def _audit_record(station: Station, run_id: str) -> dict[str, Any]:
    records = [r for r in AuditLog(station.audit_path).entries() if r.get("run_id") == run_id]
    assert len(records) == 1, records
    return records[0]


def _harbor_push(registry_host: str, repository: str, digest: str, tag: str) -> bytes:
    """Harbor's default PUSH_ARTIFACT payload (the vector's shape) for one pushed tag."""
    doc = json.loads((VECTORS / "harbor" / "push_artifact_default.json").read_text())
    namespace, name = repository.split("/", 1)
    doc["occur_at"] = int(time.time())
    doc["event_data"]["resources"] = [
        {"digest": digest, "tag": tag, "resource_url": f"{registry_host}/{repository}:{tag}"}
    ]
    doc["event_data"]["repository"].update(
        {"name": name, "namespace": namespace, "repo_full_name": repository}
    )
    return json.dumps(doc).encode()


EXPECTED_STATES = {
    "verify": "success",
    "approval_gate": "skipped",
    "approve": "skipped",
    "execute": "success",
    "record": "success",
}


# --- the scenario ---------------------------------------------------------------------------


def test_rest_api_run(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    with stack.client() as http:
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"train": str(ref), "rerun": False}},
        )
        assert resp.status_code == 200, f"{resp.text}\n{stack.diagnostics()}"
        run_id = resp.json()["dag_run_id"]
        _wait_for_run(stack, http, run_id)
        assert _task_states(http, run_id) == EXPECTED_STATES

    assert "result-0" in client.list_tags(ref.repository)
    record = _audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["train_digest"] == digest


def test_webhook_run_once_per_digest(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    body = _harbor_push(registry.host, ref.repository, digest, "train")
    url = f"{stack.url}/pht/registry-events"
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60, trust_env=False) as hook, stack.client() as http:
        wrong = hook.post(url, content=body, headers={**headers, "Authorization": "not-it"})
        assert wrong.status_code == 401, wrong.text

        first = hook.post(url, content=body, headers={**headers, "Authorization": stack.secret})
        assert first.status_code == 200, f"{first.text}\n{stack.diagnostics()}"
        accepted = first.json()["accepted"]
        assert [(a["repository"], a["digest"], a["tag"]) for a in accepted] == [
            (ref.repository, digest, "train")
        ]
        run_id = accepted[0]["result"]
        assert run_id == "pht__" + digest.replace(":", "_")
        assert RUN_ID_RE.fullmatch(run_id)

        again = hook.post(url, content=body, headers={**headers, "Authorization": stack.secret})
        assert again.status_code == 200, again.text
        assert [a["result"] for a in again.json()["accepted"]] == [None]

        runs = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100}).json()
        assert [r["dag_run_id"] for r in runs["dag_runs"]].count(run_id) == 1

        run = _wait_for_run(stack, http, run_id)
        assert run["conf"]["train"] == f"{registry.host}/{ref.repository}@{digest}"
        assert _task_states(http, run_id) == EXPECTED_STATES

    assert "result-0" in client.list_tags(ref.repository)
    record = _audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["train_digest"] == digest


@contextmanager
def _approval_required(stack: AirflowStack) -> Iterator[None]:
    """Switch the station's policy to require a person's approval, for one test."""
    path = stack.station.config_path
    original = path.read_text()
    config = yaml.safe_load(original)
    config["policy"]["require_approval"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def _trigger_and_wait_for_approval(stack: AirflowStack, http: httpx.Client, ref: Reference) -> str:
    resp = http.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"train": str(ref), "rerun": False}},
    )
    assert resp.status_code == 200, resp.text
    run_id = str(resp.json()["dag_run_id"])

    def waiting() -> bool | None:
        # Airflow 3.3 parks a human-in-the-loop task as "awaiting_input" (older: "deferred").
        state = _task_states(http, run_id).get("approve")
        return True if state in ("awaiting_input", "deferred") else None

    # Answer only once the scheduler has taken the worker's exit of the parked task: an answer
    # that lands before it makes the scheduler fail the task ("executor reports success"
    # for a task that is no longer running); a person never answers within that second.
    scheduler_log = next(c.log for c in stack.airflow.components if c.name == "scheduler")
    finished = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approve, run_id={run_id},"

    def parked() -> bool | None:
        return True if finished in scheduler_log.read_text(errors="replace") else None

    try:
        stack.airflow.wait(f"run {run_id} to wait for approval", waiting, RUN_TIMEOUT)
        stack.airflow.wait("the scheduler to see the approval step parked", parked, 60)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    return run_id


def _answer(http: httpx.Client, run_id: str, option: str) -> dict[str, Any]:
    resp = http.patch(
        f"{_run_url(run_id)}/taskInstances/approve/-1/hitlDetails",
        json={"chosen_options": [option]},
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_run_waits_for_a_persons_approval(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    with _approval_required(stack), stack.client() as http:
        run_id = _trigger_and_wait_for_approval(stack, http, ref)
        states = _task_states(http, run_id)
        assert states["verify"] == "success" and states["approval_gate"] == "success"
        assert states["execute"] in (None, "none", "scheduled"), states
        assert "result-0" not in client.list_tags(ref.repository)  # nothing ran yet

        answer = _answer(http, run_id, "Approve")
        assert answer["responded_by"]["name"] == "admin"
        _wait_for_run(stack, http, run_id)
        assert set(_task_states(http, run_id).values()) == {"success"}

    assert "result-0" in client.list_tags(ref.repository)
    record = _audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["approved_by"] == "admin"
    assert record["train_digest"] == digest


def test_rejected_run_runs_nothing_and_is_audited(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    tags_before = sorted(client.list_tags(ref.repository))
    with _approval_required(stack), stack.client() as http:
        run_id = _trigger_and_wait_for_approval(stack, http, ref)
        _answer(http, run_id, "Reject")

        def finished() -> dict[str, Any] | None:
            run = http.get(_run_url(run_id)).json()
            return run if run["state"] in ("success", "failed") else None

        run = stack.airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT)
        states = _task_states(http, run_id)
    assert run["state"] == "failed", states
    assert states["approve"] == "success"  # the person answered; the answer was "Reject"
    assert states["execute"] == "skipped"
    assert states["record"] == "failed"  # it audited the hop that did not run
    assert sorted(client.list_tags(ref.repository)) == tags_before
    record = _audit_record(stack.station, run_id)
    assert record["outcome"] == "failure"
    assert record["train_digest"] == digest
    # Rejected: the one case the generic "did not run" text is for (no hop task started).
    assert record["failure"]["error"] == "NotRun", record["failure"]


def test_nothing_listens_beyond_loopback(stack: AirflowStack) -> None:
    sockets = _assert_loopback_only(stack)
    listing = "\n".join(" ".join(s) for s in sockets)
    print(f"listening sockets of the Airflow components:\n{listing}")
    port = stack.url.rsplit(":", 1)[1]
    assert ("tcp", f"127.0.0.1:{port}") in {(p, a) for p, a, _ in sockets}, listing
