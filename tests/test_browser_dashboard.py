"""The station dashboard in a real browser, on the project's real Airflow (issue 11 item 7).

Debian's chromium, driven by Playwright (:mod:`support.browser`), against
:mod:`pht_airflow.dev.localairflow` on 127.0.0.1 with one station: a train runs through
``pht_run_train`` (REST API v2), then a person signs in through Airflow's login page and
opens the dashboard, on its own and inside the Airflow UI (the plugin's "PHT station"
navigation entry); the train is listed with its creator's name and outcome. Anonymous
requests to the dashboard's API and pages are refused (401), a forged token too (403):
FastAPI apps mounted by a plugin are not behind Airflow's authentication on their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from support.airflowstack import airflow_stack
from support.browser import new_page, screenshot, sign_in
from support.stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.dev.localairflow import LocalAirflow
from pht_airflow.oci import Reference, RegistryClient

pytestmark = [pytest.mark.browser, pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
SELFTEST = "pht_station_selftest"
DASHBOARD = "/pht-dashboard"
RUN_TIMEOUT = 240.0


@dataclass
class Deployment:
    airflow: LocalAirflow
    station: Station
    train_id: str
    train_digest: str
    run_id: str
    selftest: dict[str, Any]  # the self-test run's state and its tasks' states (REST API)


def _run_selftest(airflow: LocalAirflow) -> dict[str, Any]:
    """Trigger pht_station_selftest through the REST API and wait for it to finish."""
    airflow.wait_for_dag(SELFTEST)
    with airflow.client() as http:
        resp = http.post(f"/api/v2/dags/{SELFTEST}/dagRuns", json={"logical_date": None})
        assert resp.status_code == 200, resp.text
        run_id = str(resp.json()["dag_run_id"])
        url = f"/api/v2/dags/{SELFTEST}/dagRuns/{quote(run_id, safe='')}"

        def finished() -> str | None:
            state = http.get(url).json()["state"]
            return str(state) if state in ("success", "failed") else None

        state = airflow.wait(f"self-test run {run_id} to finish", finished, RUN_TIMEOUT)
    return {"state": state, "checks": airflow.task_states(SELFTEST, run_id)}


def _run_train(airflow: LocalAirflow, ref: Reference) -> str:
    with airflow.client() as http:
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"train": str(ref), "rerun": False}},
        )
        assert resp.status_code == 200, resp.text
        run_id = str(resp.json()["dag_run_id"])

        def finished() -> str | None:
            state = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}").json()
            return state["state"] if state["state"] in ("success", "failed") else None

        state = airflow.wait(f"run {run_id} to finish", finished, RUN_TIMEOUT)
    assert state == "success", airflow.diagnostics(dag_id=DAG_ID)
    return run_id


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any, docker_client: Any
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("browser-dashboard")
    trust = root / "trust"
    trust.mkdir()
    for name in ("alice", "reviewer"):  # key files: the dashboard names keys after them
        (trust / f"{name}.pub").write_text(parties[name].public.pem)
    station = make_station(
        root / "station-a",
        parties["station-a"],
        registry.host,
        creators=[str(trust / "alice.pub")],
        approvers=[str(trust / "reviewer.pub")],
        overrides={"webhook": {"secret": {"env": "PHT_WEBHOOK_SECRET"}}},
    )
    with airflow_stack(root, station) as stack:
        airflow = stack.airflow
        spec = make_train_spec(parties, ["station-a"], name="age-histogram")
        ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
        digest = build_train(docker_client, ref, spec)
        with RegistryClient(registry.host) as client:
            sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
        run_id = _run_train(airflow, ref)
        selftest = _run_selftest(airflow)
        yield Deployment(airflow, station, spec.id, digest, run_id, selftest)


def test_anonymous_requests_are_refused(deployment: Deployment, browser: Any) -> None:
    url = deployment.airflow.url
    with httpx.Client(base_url=url, trust_env=False, timeout=60) as anonymous:
        for path in (
            "/api/stations",
            "/api/stations/station-a/overview",
            "/",
            "/stations/station-a",
        ):
            resp = anonymous.get(DASHBOARD + path)
            assert resp.status_code == 401, (path, resp.text)
            assert "station-a" not in resp.text and deployment.train_id not in resp.text
        forged = anonymous.get(
            f"{DASHBOARD}/api/stations/station-a/overview",
            headers={"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.e30.c2ln"},
        )
        assert forged.status_code == 403, forged.text
        assert deployment.train_id not in forged.text
    with deployment.airflow.client() as signed_in:
        resp = signed_in.get(f"{DASHBOARD}/api/stations/station-a/overview")
        assert resp.status_code == 200, resp.text
        found = resp.json()
        assert [t["train_id"] for t in found["trains"]] == [deployment.train_id]
        # The last self-test, as Airflow's REST API reports that run.
        assert found["self_test"]["state"] == deployment.selftest["state"]
        assert found["self_test"]["checks"] == deployment.selftest["checks"]
        assert set(found["self_test"]["checks"]) >= {"engine", "registry", "keys", "datasets"}

    page = new_page(browser)  # a fresh context: no cookie
    try:
        response = page.goto(f"{url}{DASHBOARD}/")
        assert response is not None and response.status == 401
        assert page.get_by_role("link", name="Sign in to Airflow").is_visible()
        assert page.locator("#trains").count() == 0
        screenshot(page, "dashboard-anonymous")
    finally:
        page.context.close()


def test_signed_in_user_sees_the_trains(deployment: Deployment, browser: Any) -> None:
    url = deployment.airflow.url
    page = new_page(browser)
    try:
        sign_in(page, url, "admin", deployment.airflow.password)
        response = page.goto(f"{url}{DASHBOARD}/")
        assert response is not None and response.status == 200
        row = page.locator(f'tr.train[data-train-id="{deployment.train_id}"]')
        row.wait_for()
        assert page.locator("#user").inner_text() == "admin"
        assert page.locator("#station").inner_text() == "station-a"
        text = row.inner_text()
        assert "age-histogram" in text or deployment.train_id in text
        assert row.locator(".digest").get_attribute("title") == deployment.train_digest
        assert "alice" in text  # the creator, named from the trust store's key file
        assert row.locator("td.outcome").inner_text().startswith("success")
        assert "hash chain intact" in page.locator("#audit").inner_text()
        trust = page.locator("#trust").inner_text()
        assert "alice" in trust and "reviewer" in trust
        assert "cohort" in page.locator("#datasets").inner_text()
        assert page.locator("#selftest").inner_text().startswith(deployment.selftest["state"])
        screenshot(page, "dashboard", full_page=True)
    finally:
        page.context.close()


def test_dashboard_in_the_airflow_navigation(deployment: Deployment, browser: Any) -> None:
    url = deployment.airflow.url
    page = new_page(browser)
    try:
        sign_in(page, url, "admin", deployment.airflow.password)
        page.goto(f"{url}/")
        page.get_by_role("link", name="PHT station").first.click()
        page.wait_for_url(lambda u: "/plugin/pht-station" in u)
        frame = page.frame_locator("iframe").first
        frame.locator(f'tr.train[data-train-id="{deployment.train_id}"]').wait_for()
        assert frame.locator("#station").inner_text() == "station-a"
        screenshot(page, "dashboard-in-airflow")
    finally:
        page.context.close()
