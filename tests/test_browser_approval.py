"""A person approves or rejects a train in the Airflow UI, in a real browser (issue 11, Must show).

Debian's chromium, driven by Playwright, against :mod:`pht_airflow.dev.localairflow` on
127.0.0.1 with one station whose policy asks a person to approve every run. Station staff
sign in, trigger ``pht_run_train`` from the DAG's trigger form with the train's reference,
find the approval card (the train's name, its creator and approver by name, data set) in the
run's Required Action, and answer it:

* Approve: the hop runs, and the audit log and the station dashboard name the approver. The
  pending decision is also listed by the REST call the README gives hospital IT.
* Reject with a reason: nothing runs, and the audit log and the dashboard say who rejected
  it and why.

A train whose creator this station does not trust fails verification: the failed ``verify``
task's log, opened in the UI, starts with the check and the reason in plain words, then the
digest, the key and what to do; the run list shows the run's note saying the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect
from support.airflowstack import airflow_stack, parked_in_scheduler
from support.browser import new_page, screenshot, sign_in
from support.stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.dev.localairflow import LocalAirflow
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.signing import sign
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.browser, pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
RUN_TIMEOUT = 240.0


@dataclass
class Deployment:
    airflow: LocalAirflow
    station: Station
    registry: Any
    parties: Any
    docker_client: Any

    def train(self) -> tuple[Reference, Any, str]:
        """A new train for this station, built, pushed and signed by alice and reviewer."""
        spec = make_train_spec(self.parties, ["station-a"], name="age-histogram")
        ref = Reference(self.registry.host, f"station-a/{spec.id}", tag="train")
        digest = build_train(self.docker_client, ref, spec)
        with RegistryClient(self.registry.host) as client:
            sign_train(client, ref.with_digest(digest), self.parties, "alice", "reviewer")
        return ref, spec, digest


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any, docker_client: Any
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("browser-approval")
    trust = root / "trust"
    trust.mkdir()
    for name in ("alice", "reviewer"):
        (trust / f"{name}.pub").write_text(parties[name].public.pem)
    station = make_station(
        root / "station-a",
        parties["station-a"],
        registry.host,
        creators=[str(trust / "alice.pub")],
        approvers=[str(trust / "reviewer.pub")],
        overrides={"policy": {"require_approval": True}},
    )
    with airflow_stack(root, station) as stack:
        yield Deployment(stack.airflow, station, registry, parties, docker_client)


@pytest.fixture()
def page(deployment: Deployment, browser: Any) -> Iterator[Any]:
    page = new_page(browser)
    try:
        sign_in(page, deployment.airflow.url, "admin", deployment.airflow.password)
        yield page
    finally:
        page.context.close()


def _trigger_from_the_form(page: Any, airflow: LocalAirflow, ref: Reference) -> str:
    """Trigger pht_run_train from the DAG's form; the new run's id once it waits for a person
    (and the scheduler has taken the parked task's exit: an answer before that fails the
    task, see test_airflow_e2e)."""
    before = {r["dag_run_id"] for r in airflow.runs(DAG_ID)}
    page.goto(f"{airflow.url}/dags/{DAG_ID}")
    page.locator("[data-testid=trigger-dag-button]").click()
    page.locator("input[name=element_train]").fill(str(ref))
    screenshot(page, "trigger-form")
    page.locator("[data-testid=trigger-dag-submit]").click()

    def parked_run() -> str | None:
        for run in airflow.runs(DAG_ID):
            if run["dag_run_id"] in before:
                continue
            states = airflow.task_states(DAG_ID, run["dag_run_id"])
            if states.get("approve") in ("awaiting_input", "deferred"):
                return str(run["dag_run_id"])
        return None

    run_id = airflow.wait("the new run to wait for approval", parked_run, RUN_TIMEOUT)
    airflow.wait(
        "the scheduler to see the approval step parked",
        parked_in_scheduler(airflow, run_id, "approve"),
        60,
    )
    return run_id


def _open_card(page: Any, airflow: LocalAirflow, run_id: str) -> str:
    """Open the run's Required Action; return the page's text once the card is shown."""
    page.goto(
        f"{airflow.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/approve/required_actions"
    )
    page.get_by_text("Run train age-histogram at this station?").wait_for()
    page.locator("[data-testid=hitl-option-Approve]").wait_for()
    return str(page.inner_text("body"))


def _run_state(airflow: LocalAirflow, run_id: str) -> str:
    def finished() -> str | None:
        (run,) = [r for r in airflow.runs(DAG_ID) if r["dag_run_id"] == run_id]
        return str(run["state"]) if run["state"] in ("success", "failed") else None

    return airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT)


def _record(station: Station, run_id: str) -> dict[str, Any]:
    (record,) = [r for r in AuditLog(station.audit_path).entries() if r.get("run_id") == run_id]
    return record


def _dashboard_row(page: Any, airflow: LocalAirflow, train_id: str) -> Any:
    page.goto(f"{airflow.url}/pht-dashboard/")
    row = page.locator(f'tr.train[data-train-id="{train_id}"]')
    row.wait_for()
    return row


def test_trigger_from_the_form_and_approve_the_card(deployment: Deployment, page: Any) -> None:
    airflow = deployment.airflow
    ref, spec, digest = deployment.train()
    run_id = _trigger_from_the_form(page, airflow, ref)
    assert airflow.task_states(DAG_ID, run_id).get("run") in (None, "none", "scheduled")

    # Hospital IT's REST call lists the decision waiting for a person.
    with airflow.client() as http:
        pending = http.get(
            "/api/v2/dags/~/dagRuns/~/hitlDetails", params={"response_received": "false"}
        ).json()["hitl_details"]
    waiting = [(p["task_instance"]["dag_run_id"], p["task_instance"]["task_id"]) for p in pending]
    assert waiting == [(run_id, "approve")]

    # The approval card says what is being decided.
    body = _open_card(page, airflow, run_id)
    for expected in ("age-histogram", spec.id, digest, "alice", "reviewer", "cohort"):
        assert expected in body, expected
    page.locator("input[name=element_reason]").fill("reviewed the analysis script")
    approve = page.locator("[data-testid=hitl-option-Approve]")
    expect(approve).to_be_enabled()
    screenshot(page, "approval-card")
    approve.click()

    assert _run_state(airflow, run_id) == "success", airflow.diagnostics(dag_id=DAG_ID)
    record = _record(deployment.station, run_id)
    assert (record["outcome"], record["approved_by"]) == ("success", "admin")

    row = _dashboard_row(page, airflow, spec.id)
    assert "approved by admin" in row.inner_text()
    assert row.locator("td.outcome").inner_text().startswith("success")


def test_reject_with_a_reason_runs_nothing_and_says_who_and_why(
    deployment: Deployment, page: Any
) -> None:
    airflow = deployment.airflow
    ref, spec, _ = deployment.train()
    run_id = _trigger_from_the_form(page, airflow, ref)
    _open_card(page, airflow, run_id)
    reason = "the analysis writes row-level data"
    page.locator("input[name=element_reason]").fill(reason)
    reject = page.locator("[data-testid=hitl-option-Reject]")
    expect(reject).to_be_enabled()
    reject.click()

    state = _run_state(airflow, run_id)
    states = airflow.task_states(DAG_ID, run_id)
    assert states["run"] == "skipped", states  # the train never ran
    record = _record(deployment.station, run_id)
    assert record["outcome"] == "rejected", json.dumps(record)
    assert record["decision"] == {"by": "admin", "reason": reason}

    row = _dashboard_row(page, airflow, spec.id)
    assert f"rejected by admin: {reason}" in row.inner_text()
    assert row.locator("td.outcome").inner_text().startswith("rejected")
    screenshot(page, "dashboard-rejected", full_page=True)
    print(f"a rejected run ends {state}; its tasks: {states}")


def _untrusted_train(deployment: Deployment) -> tuple[Reference, Any, str]:
    """A train created (and signed as creator) by mallory, whom this station does not trust,
    approved by reviewer: verification fails on the ``creator`` check."""
    mallory = deployment.parties["mallory"]
    spec = make_train_spec(
        deployment.parties,
        ["station-a"],
        name="age-histogram",
        creator_id="mallory",
        creator_key_id=mallory.key.key_id,
        creator_recipient=mallory.age.recipient,
    )
    ref = Reference(deployment.registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(deployment.docker_client, ref, spec)
    with RegistryClient(deployment.registry.host) as client:
        pinned = ref.with_digest(digest)
        sign(client, pinned, mallory.key, role="creator", signer="mallory")
        sign_train(client, pinned, deployment.parties, "reviewer")
    return ref, spec, digest


def _log_lines(page: Any, airflow: LocalAirflow, run_id: str, task_id: str) -> list[str]:
    """The task's log as the Airflow UI shows it (its first try), one entry per line shown."""
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{task_id}")
    lines = page.locator("[data-testid=virtualized-list] [data-testid^=virtualized-item-]")
    page.get_by_text("what to do:").first.wait_for()
    return [str(t) for t in lines.all_inner_texts()]


@dataclass
class Refused:
    """A run whose verify step refused the train (untrusted creator)."""

    run_id: str
    ref: Reference
    digest: str


@pytest.fixture(scope="module")
def refused(deployment: Deployment) -> Refused:
    """A train created by mallory, triggered through REST; its run once it failed."""
    airflow = deployment.airflow
    ref, _, digest = _untrusted_train(deployment)
    with airflow.client() as http:
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"train": str(ref), "rerun": False}},
        )
        assert resp.status_code == 200, resp.text
        run_id = str(resp.json()["dag_run_id"])
    assert _run_state(airflow, run_id) == "failed"
    assert airflow.task_states(DAG_ID, run_id)["verify"] == "failed"
    return Refused(run_id, ref, digest)


def test_a_verification_failures_log_starts_with_the_reason(
    deployment: Deployment, refused: Refused, page: Any
) -> None:
    """The failed verify task's log in the UI: its first error line is the check and the
    reason in plain words, then the train's digest, the key (named for what it is to this
    station), then what to do; the run's note says the same in one line."""
    airflow = deployment.airflow
    lines = _log_lines(page, airflow, refused.run_id, "verify")
    errors = [i for i, line in enumerate(lines) if "ERROR" in line]
    assert errors, "\n".join(lines)
    first = errors[0]
    shown = "\n".join(lines)
    mallory = deployment.parties["mallory"].key.key_id
    assert "creator: the creator's signature is not from a trusted creator" in lines[first], shown
    assert f"train digest: {refused.digest}" in lines[first + 1], shown
    assert f"key: {mallory} (not in this station's trust store)" in lines[first + 2], shown
    assert (
        "what to do: add the key to trust.trusted_creators if you trust this creator"
        in lines[first + 3]
    ), shown
    screenshot(page, "verification-failure-log")

    # The run's page shows its note: the train and the reason in one line (the station
    # plugin's listener writes it when the run ends; the REST run list has it too).
    page.goto(f"{airflow.url}/dags/{DAG_ID}/runs/{quote(refused.run_id, safe='')}")
    note = f"train {refused.ref}: failed in verify: creator: the creator's signature"
    page.get_by_text(note).first.wait_for()


def test_a_verification_failures_log_has_no_python_stack(
    deployment: Deployment, refused: Refused, page: Any
) -> None:
    lines = _log_lines(page, deployment.airflow, refused.run_id, "verify")
    shown = "\n".join(lines)
    assert "Task failed with exception" not in shown and "Traceback" not in shown, shown
