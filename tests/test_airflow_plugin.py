"""The station's webhook receiver (the Airflow plugin's app) against Airflow's real database.

The receiver is served by a real uvicorn on 127.0.0.1, as the Airflow API server mounts it,
and creates ``pht_run_train`` runs in the migrated test metadata database.
"""

from __future__ import annotations

import hashlib
import json
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

from pht_airflow.airflow.plugin import DAG_ID, build_app, run_id_for

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
    return DAG_ID


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
