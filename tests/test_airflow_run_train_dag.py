"""pht_run_train through Airflow's own ``dag.test()``: real scheduler logic, engine, registry.

``dag.test()`` swallows task exceptions, so every test asserts on the run's and the tasks'
states, and on what the hop left behind (registry tags, audit log).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from support.stationkit import (
    build_train,
    copy_repository,
    make_station,
    make_train_spec,
    sign_train,
)

from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.results import fetch_results
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]


@pytest.fixture(scope="module")
def dag(airflow_db: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "pht_run_train_dag", REPO / "dags" / "pht_run_train.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture()
def client(registry: Any) -> Any:
    with RegistryClient(registry.host) as c:
        yield c


def _station(tmp_path: Path, parties: Any, registry: Any, name: str, rows: int) -> Any:
    return make_station(
        tmp_path / name,
        parties[name],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        rows=rows,
    )


def _run(dag: Any, station: Any, train: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
    run = dag.test(run_conf={"train": train, "rerun": False})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_two_stations_hop_by_hop(
    dag: Any, docker_client: Any, client: Any, registry: Any, parties: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    a = _station(tmp_path, parties, registry, "station-a", 4)
    b = _station(tmp_path, parties, registry, "station-b", 6)
    spec = make_train_spec(parties, ["station-a", "station-b"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")

    run, states = _run(dag, a, str(ref), monkeypatch)
    assert run.state == "success", states
    assert states == {
        "preflight": "success",
        "verify": "success",
        "approve": "skipped",
        "run": "success",
        "check_output": "success",  # the train declares its counts: they pass
        "release": "skipped",
        "seal": "success",
        "record": "success",
    }
    assert "result-0" in client.list_tags(ref.repository)

    copy_repository(client, ref.repository, f"station-b/{spec.id}")
    run, states = _run(dag, b, f"{registry.host}/station-b/{spec.id}:train", monkeypatch)
    assert run.state == "success", states

    out = tmp_path / "results"
    pinned = Reference(registry.host, f"station-b/{spec.id}", digest=digest)
    fetch_results(client, pinned, spec, parties["alice"].age, out)
    state = json.loads((out / "1-station-b" / "state.json").read_text())
    assert state["rows"] == 10
    record = AuditLog(b.audit_path).last()
    assert record is not None and record["outcome"] == "success" and record["hop"] == 1


def test_verification_failure_is_recorded_and_nothing_runs(
    dag: Any, docker_client: Any, client: Any, registry: Any, parties: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    a = _station(tmp_path, parties, registry, "station-a", 3)
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice")  # no approval
    tags_before = sorted(client.list_tags(ref.repository))

    run, states = _run(dag, a, str(ref), monkeypatch)
    assert run.state == "failed"
    assert states["verify"] == "failed"
    assert states["run"] == "upstream_failed" and states["seal"] == "upstream_failed"
    assert states["record"] == "failed"  # it recorded the failure, then failed the run
    assert sorted(client.list_tags(ref.repository)) == tags_before
    record = AuditLog(a.audit_path).last()
    assert record is not None
    assert record["outcome"] == "failure"
    assert record["failed_check"] == "approvals"
    assert record["failure"]["error"] == "TooFewApprovalsError"  # its real cause, not NotRun
    assert record["train_digest"] == digest
