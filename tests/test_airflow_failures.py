"""Failures through Airflow's own ``dag.test()`` name their real cause in the audit log (which
is what is reported to the central service): an ``OSError``, a task timeout; a killed
run task's ``on_kill`` removes the sandbox container and wipes the hop folder.

``dag.test()`` swallows task exceptions, so every test asserts on the tasks' states and on
the audit record.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import REPO
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.airflow.operators import STARTED_KEY, RunTrainOperator, _silent_end
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.audit import AuditLog
from pht_airflow.station.sandbox import LABEL

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

SLEEPER = "import time\ntime.sleep(600)\n"


@pytest.fixture()
def client(registry: Any) -> Any:
    with RegistryClient(registry.host) as c:
        yield c


def _station(tmp_path: Path, parties: Any, registry: Any, **overrides: Any) -> Any:
    return make_station(
        tmp_path / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides=overrides,
    )


def _train(docker_client: Any, client: Any, registry: Any, parties: Any, **kw: Any) -> Any:
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec, **kw)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return spec, ref


def _dag() -> Any:
    """A fresh copy of the dags folder's pht_run_train (``dag.test()`` runs only those)."""
    spec = importlib.util.spec_from_file_location(
        "pht_run_train_dag_failures", REPO / "dags" / "pht_run_train.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _run(
    station: Any, train: str, monkeypatch: pytest.MonkeyPatch, **execute: Any
) -> dict[str, Any]:
    monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
    dag = _dag()
    task = dag.get_task("run")
    task.retries = 0  # no 30 s wait for a retry inside dag.test()
    for key, value in execute.items():
        setattr(task, key, value)
    run = dag.test(run_conf={"train": train, "rerun": False})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed", states
    return states


def _plain_files(station: Any) -> list[str]:
    """Files left under the station's work folder, but the pre-flight cache (no data)."""
    return [
        str(p.relative_to(station.root))
        for p in (station.root / "work").rglob("*")
        if not p.name.startswith(".pht-preflight-") and not p.is_dir()
    ]


def _no_sandbox_left(docker_client: Any, spec: Any) -> None:
    left = docker_client.containers.list(
        all=True, filters={"label": [LABEL, f"org.pht.sandbox.train-id={spec.id}"]}
    )
    assert left == []


def test_os_error_in_run_is_audited_with_its_type_and_message(
    airflow_db: Path, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A full disk when the hop folder is made (injected: this machine's disk is not full)."""
    import errno

    from pht_airflow.station import hop

    station = _station(tmp_path, parties, registry)
    spec, ref = _train(docker_client, client, registry, parties)

    def full(*_: Any, **__: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hop, "open_work", full)
    states = _run(station, str(ref), monkeypatch)
    assert states["verify"] == "success"
    assert states["run"] == "failed"
    assert states["seal"] == "upstream_failed"
    assert states["record"] == "failed"
    record = AuditLog(station.audit_path).last()
    assert record is not None and record["outcome"] == "failure"
    failure = record["failure"]
    assert failure["error"] == "OSError"
    assert "No space left on device" in failure["message"]
    assert "(during run)" in failure["message"]
    assert "did not run" not in failure["message"]
    _no_sandbox_left(docker_client, spec)


def test_run_timeout_is_audited_and_leaves_no_container_or_folder(
    airflow_db: Path, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    station = _station(tmp_path, parties, registry, sandbox={"wall_time": "900s"})
    spec, ref = _train(docker_client, client, registry, parties, script=SLEEPER)

    states = _run(station, str(ref), monkeypatch, execution_timeout=timedelta(seconds=20))
    assert states["run"] == "failed"
    record = AuditLog(station.audit_path).last()
    assert record is not None and record["outcome"] == "failure"
    assert record["failure"]["error"] == "TaskTimeout"
    assert "the run task timed out after 0:00:20" in record["failure"]["message"]
    _no_sandbox_left(docker_client, spec)
    assert _plain_files(station) == []


def test_on_kill_removes_the_running_sandbox_and_wipes_the_hop_folder(
    docker_client: Any, tmp_path: Path
) -> None:
    name = f"pht-onkill-test-{tmp_path.name[-8:]}".replace("_", "-")
    container = docker_client.containers.run(
        "pht-local/python:3.11", ["sleep", "600"], name=name, labels={LABEL: "1"}, detach=True
    )
    other = docker_client.containers.create("pht-local/python:3.11", ["true"], name=f"{name}-other")
    try:
        work = tmp_path / "work" / "hop-x"
        (work / "output").mkdir(parents=True)
        (work / "output" / "plain.txt").write_text("plaintext\n")
        op = RunTrainOperator(task_id="run", reference="r")
        op._container, op._work = name, work
        op.on_kill()
        assert docker_client.containers.list(all=True, filters={"name": f"^{name}$"}) == []
        assert not work.exists()
        # A container without the sandbox label is never touched.
        op._container, op._work = f"{name}-other", None
        op.on_kill()
        other.reload()
    finally:
        for c in (container, other):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


class _XComs:
    """Only what ``_silent_end`` reads of a task instance: the XComs of this run."""

    def __init__(self, pushed: dict[tuple[str, str], Any]) -> None:
        self.pushed = pushed

    def xcom_pull(self, *, task_ids: str, key: str = "return_value") -> Any:
        return self.pushed.get((task_ids, key))


def test_a_task_that_started_and_left_nothing_is_named_not_did_not_run() -> None:
    steps = ["verify", "run", "check_output", "seal"]
    started = _XComs({
        ("verify", STARTED_KEY): "verify", ("verify", "return_value"): {"hop": 0},
        ("run", STARTED_KEY): "run",
    })  # fmt: skip
    failure = _silent_end(started, steps)
    assert failure is not None and failure["error"] == "TaskEnded"
    assert failure["message"].startswith("the run task ended without reporting (killed")
    killed_verify = _silent_end(_XComs({("verify", STARTED_KEY): "verify"}), steps)
    assert killed_verify is not None and "the verify task ended" in killed_verify["message"]
    # Rejected or skipped: nothing after verify started, so the hop did not run.
    done = _XComs({("verify", STARTED_KEY): "verify", ("verify", "return_value"): {"hop": 0}})
    assert _silent_end(done, steps) is None


def test_sigterm_of_a_running_run_task_is_audited_and_on_kill_cleans_up(
    airflow_db: Path, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SIGTERM is what Airflow's supervisor sends a task that is marked failed or stopped;
    ``dag.test()`` runs the task in this process, with the task runner's SIGTERM handler."""
    station = _station(tmp_path, parties, registry, sandbox={"wall_time": "900s"})
    spec, ref = _train(docker_client, client, registry, parties, script=SLEEPER)
    events = docker_client.events(
        decode=True,
        filters={"type": "container", "event": "start", "label": f"{LABEL}.train-id={spec.id}"},
    )

    def terminate_when_the_train_starts() -> None:
        for _ in events:
            os.kill(os.getpid(), signal.SIGTERM)
            return

    watcher = threading.Thread(target=terminate_when_the_train_starts, daemon=True)
    watcher.start()
    try:
        states = _run(station, str(ref), monkeypatch)
    finally:
        events.close()
        watcher.join()
    assert states["run"] == "failed"
    record = AuditLog(station.audit_path).last()
    assert record is not None and record["outcome"] == "failure"
    assert record["failure"]["error"] == "TaskKilled", record["failure"]
    assert "stopped by a termination signal" in record["failure"]["message"]
    _no_sandbox_left(docker_client, spec)
    assert _plain_files(station) == []
