"""A person approves a train in the Airflow UI, in a real browser (issue 11, Must show).

Debian's chromium, driven by Playwright, against :mod:`pht_airflow.dev.localairflow` on
127.0.0.1 with one station whose policy asks a person to approve every run. Station staff
sign in, trigger ``pht_run_train`` from the DAG's trigger form with the train's reference,
find the approval card (the train's name, its creator and approver by name, data set) in the
run's Required Action, and approve it; the hop runs, and the station dashboard lists the
train as approved by that user. The pending decision is also listed by the REST call the
README gives hospital IT.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from conftest import _missing
from playwright.sync_api import expect
from support.browser import chromium_path, launch, new_page, screenshot, sign_in
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.dev.localairflow import LocalAirflow, start_airflow
from pht_airflow.errors import ServiceError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.browser, pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
RUN_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        _missing("Debian's chromium")
    assert executable is not None
    with launch(executable) as b:
        yield b


def _waiting_for_approval(airflow: LocalAirflow) -> str:
    """The run whose ``approve`` step is parked waiting for a person, once the scheduler
    has taken the parked task's exit (an answer before that fails the task; see
    test_airflow_e2e)."""

    def parked_run() -> str | None:
        for run in airflow.runs(DAG_ID):
            states = airflow.task_states(DAG_ID, run["dag_run_id"])
            if states.get("approve") in ("awaiting_input", "deferred"):
                return str(run["dag_run_id"])
        return None

    run_id = airflow.wait("a run to wait for approval", parked_run, RUN_TIMEOUT)
    scheduler_log = next(c.log for c in airflow.components if c.name == "scheduler")
    finished = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approve, run_id={run_id},"
    airflow.wait(
        "the scheduler to see the approval step parked",
        lambda: True if finished in scheduler_log.read_text(errors="replace") else None,
        60,
    )
    return run_id


def test_trigger_from_the_form_and_approve_the_card(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Any,
    parties: Any,
    docker_client: Any,
    browser: Any,
) -> None:
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
    spec = make_train_spec(parties, ["station-a"], name="age-histogram")
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    with RegistryClient(registry.host) as client:
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    try:
        airflow = start_airflow(
            root / "airflow-home",
            env={"PHT_STATION_CONFIG": str(station.config_path)},
            log_dir=root,
        )
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    page = new_page(browser)
    try:
        airflow.wait_for_dag(DAG_ID)
        url = airflow.url
        sign_in(page, url, "admin", airflow.password)

        # Trigger from the DAG's form, with the train's reference.
        page.goto(f"{url}/dags/{DAG_ID}")
        page.locator("[data-testid=trigger-dag-button]").click()
        page.locator("input[name=element_train]").fill(str(ref))
        screenshot(page, "trigger-form")
        page.locator("[data-testid=trigger-dag-submit]").click()
        run_id = _waiting_for_approval(airflow)
        assert airflow.task_states(DAG_ID, run_id).get("run") in (None, "none", "scheduled")

        # Hospital IT's REST call lists the decision waiting for a person.
        with airflow.client() as http:
            pending = http.get(
                "/api/v2/dags/~/dagRuns/~/hitlDetails", params={"response_received": "false"}
            ).json()["hitl_details"]
        assert [
            (p["task_instance"]["dag_run_id"], p["task_instance"]["task_id"]) for p in pending
        ] == [(run_id, "approve")]

        # The approval card says what is being decided.
        page.goto(
            f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/approve/required_actions"
        )
        approve = page.locator("[data-testid=hitl-option-Approve]")
        approve.wait_for()
        card = page.get_by_text("Run train age-histogram at this station?")
        card.wait_for()
        body = page.inner_text("body")
        for expected in ("age-histogram", spec.id, digest, "alice", "reviewer", "cohort"):
            assert expected in body, expected
        page.locator("input[name=element_reason]").fill("reviewed the analysis script")
        expect(approve).to_be_enabled()
        screenshot(page, "approval-card")
        approve.click()

        def finished() -> str | None:
            (run,) = [r for r in airflow.runs(DAG_ID) if r["dag_run_id"] == run_id]
            return str(run["state"]) if run["state"] in ("success", "failed") else None

        assert airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT) == "success", (
            airflow.diagnostics(dag_id=DAG_ID)
        )
        records = [r for r in AuditLog(station.audit_path).entries() if r.get("run_id") == run_id]
        assert [(r["outcome"], r["approved_by"]) for r in records] == [("success", "admin")]

        # The dashboard lists the train, approved by the person who pressed Approve.
        page.goto(f"{url}/pht-dashboard/")
        row = page.locator(f'tr.train[data-train-id="{spec.id}"]')
        row.wait_for()
        assert "approved by admin" in row.inner_text()
        assert row.locator("td.outcome").inner_text().startswith("success")
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        page.context.close()
        airflow.stop()
