"""The station's webhook receiver (the Airflow plugin's app) against Airflow's real database.

The receiver is served by a real uvicorn on 127.0.0.1, as the Airflow API server mounts it,
and creates ``pht_run_train`` runs in the migrated test metadata database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO
from support.stationkit import make_station
from test_web_webhook_app import Served

from pht_airflow.airflow.plugin import DAG_ID, build_app, run_id_for, station_unavailable

pytestmark = [pytest.mark.airflow]

SECRET = "station-webhook-secret-3c1d"
DIST = "application/vnd.docker.distribution.events.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def dag_in_db(airflow_db: Path) -> str:
    """``pht_run_train`` written to the metadata database, as the DAG processor would."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    bag = BundleDagBag(
        dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags", bundle_name="dags-folder"
    )
    assert DAG_ID in bag.dag_ids, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    # A fresh database creates it unpaused (is_paused_upon_creation=False); one migrated
    # before that may hold it paused, and a paused DAG's receiver answers 503.
    _set_paused(DAG_ID, False)
    return DAG_ID


def _set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=paused))


@pytest.fixture()
def receiver(tmp_path: Path, parties: Any, dag_in_db: str) -> Iterator[Served]:
    (tmp_path / "webhook.secret").write_text(SECRET)
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"webhook": {"secret": {"file": str(tmp_path / "webhook.secret")}}},
    )
    served = Served(build_app(station.config_path)).start()
    try:
        yield served
    finally:
        served.stop()


def _runs(run_id: str) -> list[Any]:
    from airflow.models.dagrun import DagRun

    return list(DagRun.find(dag_id=DAG_ID, run_id=run_id))


def _delete_runs(run_id: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id))


def _train_push(digest: str) -> bytes:
    repository = f"station-a/{uuid.uuid4()}"
    event = {
        "id": str(uuid.uuid4()),
        "timestamp": "2026-12-05T03:00:00Z",
        "action": "push",
        "target": {
            "mediaType": OCI_MANIFEST,
            "size": 409,
            "digest": digest,
            "length": 409,
            "repository": repository,
            "url": f"http://127.0.0.1:5000/v2/{repository}/manifests/{digest}",
            "tag": "train",
        },
        "request": {"method": "PUT", "host": "127.0.0.1:5000", "useragent": "test"},
    }
    return json.dumps({"events": [event]}).encode()


def test_concurrent_duplicate_deliveries_make_one_run_and_all_get_200(
    receiver: Served,
) -> None:
    digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    run_id = run_id_for(digest)
    body = _train_push(digest)
    url = f"http://127.0.0.1:{receiver.port}/registry-events"
    headers = {"Authorization": SECRET, "Content-Type": DIST}
    deliveries = 8
    barrier = threading.Barrier(deliveries)
    answers: list[httpx.Response | BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        with httpx.Client(trust_env=False, timeout=120) as http:
            barrier.wait()
            try:
                response: httpx.Response | BaseException = http.post(
                    url, content=body, headers=headers
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                response = exc
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=deliver) for _ in range(deliveries)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
        assert statuses == [200] * deliveries, [
            a.text if isinstance(a, httpx.Response) else a for a in answers
        ]
        results = [a.json()["accepted"][0]["result"] for a in answers if hasattr(a, "json")]
        assert sorted(results, key=lambda r: r is None) == [run_id] + [None] * (deliveries - 1)
        runs = _runs(run_id)
        assert len(runs) == 1
        assert runs[0].conf["train"].endswith("@" + digest)
    finally:
        _delete_runs(run_id)


# --- 503: a station that cannot take pushes now ------------------------------------------


@pytest.fixture()
def paused_dag(dag_in_db: str) -> Iterator[str]:
    """A DAG of its own in the metadata database, paused (``pht_run_train`` stays as it is
    for the tests running beside this one)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    dag_id = f"pht_test_paused_{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        session.add(DagModel(dag_id=dag_id, bundle_name="dags-folder", is_paused=True))
    try:
        yield dag_id
    finally:
        with create_session() as session:
            session.execute(delete(DagModel).where(DagModel.dag_id == dag_id))


def _station_app(tmp_path: Path, parties: Any, dag_id: str) -> tuple[Any, Served]:
    (tmp_path / "webhook.secret").write_text(SECRET)
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"webhook": {"secret": {"file": str(tmp_path / "webhook.secret")}}},
    )
    return station, Served(build_app(station.config_path, dag_id)).start()


def _deliver(served: Served, digest: str) -> httpx.Response:
    url = f"http://127.0.0.1:{served.port}/registry-events"
    headers = {"Authorization": SECRET, "Content-Type": DIST}
    with httpx.Client(trust_env=False, timeout=60) as http:
        return http.post(url, content=_train_push(digest), headers=headers)


def test_a_paused_dag_answers_503_with_the_reason_and_starts_nothing(
    tmp_path: Path, parties: Any, paused_dag: str, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.models.dagrun import DagRun

    caplog.set_level(logging.INFO)
    digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    _, served = _station_app(tmp_path, parties, paused_dag)
    try:
        answer = _deliver(served, digest)
    finally:
        served.stop()
    assert answer.status_code == 503, answer.text
    assert answer.json() == {
        "error": f"the DAG {paused_dag} is paused, so a run would never start: unpause it (the "
        f"toggle in the UI, or `airflow dags unpause {paused_dag}`), then deliver again"
    }
    assert not DagRun.find(dag_id=paused_dag)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"refusing registry notifications (503): the DAG {paused_dag} is paused" in logged


def test_a_dag_airflow_has_not_parsed_answers_503(
    tmp_path: Path, parties: Any, dag_in_db: str
) -> None:
    missing = f"pht_test_missing_{uuid.uuid4().hex[:8]}"
    _, served = _station_app(tmp_path, parties, missing)
    try:
        answer = _deliver(served, "sha256:" + "cd" * 32)
    finally:
        served.stop()
    assert answer.status_code == 503
    assert answer.json()["error"].startswith(f"the DAG {missing} is not in Airflow yet")


def test_a_broken_station_config_answers_503_and_logs_its_problems(
    tmp_path: Path, parties: Any, dag_in_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.models.dagrun import DagRun

    caplog.set_level(logging.INFO)
    digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    station, served = _station_app(tmp_path, parties, DAG_ID)
    text = station.config_path.read_text()
    station.config_path.write_text(text.replace("project: station-a", "project: Not/A Project"))
    try:
        answer = _deliver(served, digest)
    finally:
        served.stop()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == (
        "the station config does not load; the Airflow API server's log names the problems "
        "(run `pht station check` on the station)"
    )
    assert str(station.config_path) not in answer.text  # details stay in the log
    assert not DagRun.find(dag_id=DAG_ID, run_id=run_id_for(digest))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"the station config {station.config_path} does not load" in logged
    assert "registry.project" in logged
    assert SECRET not in logged


def test_station_unavailable_is_none_for_a_working_station(
    tmp_path: Path, parties: Any, dag_in_db: str
) -> None:
    station, served = _station_app(tmp_path, parties, DAG_ID)
    served.stop()
    assert station_unavailable(station.config_path, DAG_ID) is None
