"""pht_run_train on a real, running Airflow: API server, scheduler, DAG processor, triggerer.

The deployment is started by :mod:`pht_airflow.dev.localairflow` (the same code the demo uses):
every component bound to 127.0.0.1, a private ``AIRFLOW_HOME`` and SQLite database, the
LocalExecutor. The tests trigger one train through the REST API and one through a Harbor
webhook (twice: one run per digest), check the results in the registry and the station's
audit log, and check that no process started here listens on anything but the loopback
address. With ``policy.require_approval`` switched on (the config is read when each task runs),
a run waits at ``approve`` until a person answers through the REST API (what the UI's
Approve and Reject buttons call): approved, it runs and the audit log names the approver;
rejected (with a reason), nothing runs and the rejection is audited as an outcome with who
and why, not a failure.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import yaml
from conftest import VECTORS
from support.airflowstack import (
    DAG_ID,
    TASKS,
    AirflowStack,
    airflow_stack,
    answer,
    assert_loopback_only,
    audit_record,
    task_states,
    trigger,
    wait_for_end,
    wait_for_person,
    wait_for_success,
)
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.oci import Reference, RegistryClient

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

RUN_ID_RE = re.compile(r"pht__sha256_[0-9a-f]{64}")


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
    with airflow_stack(root, station) as stack:
        yield stack


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
    "preflight": "success",
    "verify": "success",
    "approve": "skipped",
    "run": "success",
    "check_output": "success",  # the train declares its counts: they pass
    "release": "skipped",
    "seal": "success",
    "record": "success",
}


# --- the scenario ---------------------------------------------------------------------------


def test_rest_api_run(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    with stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_success(stack, http, run_id)
        assert task_states(http, run_id) == EXPECTED_STATES

    assert "result-0" in client.list_tags(ref.repository)
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["train_digest"] == digest
    assert record["disclosure"]["verdict"] == "pass"


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

        run = wait_for_success(stack, http, run_id)
        assert run["conf"]["train"] == f"{registry.host}/{ref.repository}@{digest}"
        assert task_states(http, run_id) == EXPECTED_STATES

    assert "result-0" in client.list_tags(ref.repository)
    record = audit_record(stack.station, run_id)
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


def test_run_waits_for_a_persons_approval(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    with _approval_required(stack), stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_person(stack, http, run_id, "approve")
        states = task_states(http, run_id)
        assert states["verify"] == "success" and states["approve"] != "skipped", states
        assert states["run"] in (None, "none", "scheduled"), states
        assert "result-0" not in client.list_tags(ref.repository)  # nothing ran yet

        answered = answer(http, run_id, "approve", "Approve")
        assert answered["responded_by"]["name"] == "admin"
        wait_for_success(stack, http, run_id)
        states = task_states(http, run_id)
    assert states == {
        **EXPECTED_STATES, "approve": "success"
    }  # fmt: skip

    assert "result-0" in client.list_tags(ref.repository)
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["approved_by"] == "admin"
    assert record["train_digest"] == digest


def test_rejected_run_runs_nothing_and_is_audited(
    stack: AirflowStack, docker_client: Any, client: RegistryClient, registry: Any, parties: Any
) -> None:
    ref, digest = _train(docker_client, client, registry, parties)
    tags_before = sorted(client.list_tags(ref.repository))
    reason = "not this cohort\x1b[2J"
    with _approval_required(stack), stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_person(stack, http, run_id, "approve")
        answer(http, run_id, "approve", "Reject", reason)
        run = wait_for_end(stack, http, run_id)
        states = task_states(http, run_id)
    # A rejection is an outcome, not a crash: the run ends green, the hop's tasks skipped.
    assert run["state"] == "success", f"{states}\n{stack.diagnostics()}"
    assert states["approve"] == "success"  # the person answered; the answer was "Reject"
    for task in ("run", "check_output", "release", "seal"):
        assert states[task] == "skipped", states
    assert states["record"] == "success"
    assert set(states) == set(TASKS)
    assert sorted(client.list_tags(ref.repository)) == tags_before
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "rejected"
    assert record["train_digest"] == digest
    assert record["decision"] == {"by": "admin", "reason": "not this cohort\\x1b[2J"}
    assert record["approved_by"] is None
    assert record.get("failure") is None


def test_nothing_listens_beyond_loopback(stack: AirflowStack) -> None:
    sockets = assert_loopback_only(stack)
    listing = "\n".join(" ".join(s) for s in sockets)
    print(f"listening sockets of the Airflow components:\n{listing}")
    port = stack.url.rsplit(":", 1)[1]
    assert ("tcp", f"127.0.0.1:{port}") in {(p, a) for p, a, _ in sockets}, listing
