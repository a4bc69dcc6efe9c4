"""Fault tests on the real parts (issue 14's Must show, issue 12's seal-kill test).

One Airflow deployment (:mod:`pht_airflow.dev.localairflow`, as the end-to-end tests use)
hosts station-a; its registry is a real ``docker-registry`` of this module's own (so it can
be stopped and its storage read) behind :class:`~support.faults.GateProxy`, a byte relay that
can hold the one request a test is waiting for. Trains are built on the Python base image,
pushed, signed, and removed from the engine, so the hop really pulls them.

Every test asserts, after the run ends: the run's final state and the audit record's outcome
and reason; exactly as many result manifests in the registry's storage as the hop should
have made (tagged or not); no file left under the station's folders; no sandbox container
and no pulled train image left; ``pht audit verify`` passes.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from support.airflowstack import parked_in_scheduler
from support.faults import (
    GateProxy,
    SandboxStarts,
    fill,
    holders_of,
    leftover_files,
    marked,
    marker_of,
    pid_of_peer,
    result_manifests,
    tmpfs,
)
from support.secretscan import Secrets, assert_scan_finds, party_secrets, scan_deployment
from support.stationkit import (
    ANALYSIS,
    PASSPHRASE,
    Station,
    build_train,
    make_station,
    make_train_spec,
    sign_train,
)

from pht_airflow.dev.localairflow import LocalAirflow, session_pids, start_airflow
from pht_airflow.dev.localregistry import LocalRegistry, start_registry
from pht_airflow.errors import ServiceError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.spec import TrainSpec
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.faults, pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
RUN_TIMEOUT = 300.0
PHT = Path(sys.executable).parent / "pht"

# A train that waits for a file the test puts in the station's data folder (a live, read-only
# bind mount), so a test can kill its task while the container runs.
WAITING = (
    "import pathlib, time\nwhile not pathlib.Path('/pht/data/go').exists():\n    time.sleep(0.2)\n"
) + ANALYSIS

# Writes 200 MiB, ignoring every write error, then exits 0.
FLOOD = r"""
import pathlib
chunk = b"x" * (1 << 20)
with open("/pht/output/big.bin", "wb", buffering=0) as out:
    for _ in range(200):
        try:
            out.write(chunk)
        except OSError:
            pass
"""

# A small valid output, then a log it appends to slowly until the disk is full; the write
# error is ignored and the train exits 0, as if its output were complete.
IGNORES_ENOSPC = (
    ANALYSIS
    + r"""
import time
with open("/pht/output/progress.log", "ab", buffering=0) as out:
    while True:
        try:
            out.write(b"." * 4096)
        except OSError:
            break
        time.sleep(0.05)
"""
)


@dataclass
class Stack:
    airflow: LocalAirflow
    station: Station
    registry: LocalRegistry
    proxy: GateProxy
    env: dict[str, str]
    log_dir: Path
    #: Markers the trains wrote into their output tables (for the secret scan).
    markers: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return self.airflow.client()


def _start_registry(root: Path, port: int | None = None) -> LocalRegistry:
    return start_registry(root, port=port)


@pytest.fixture()
def starts(docker_client: Any) -> Iterator[SandboxStarts]:
    with SandboxStarts(docker_client) as watcher:
        yield watcher


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, parties: Any) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("faults")
    registry = _start_registry(root / "registry")
    proxy = GateProxy(registry.port)
    station = make_station(
        root / "station-a",
        parties["station-a"],
        proxy.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )
    env = {"PHT_STATION_CONFIG": str(station.config_path)}
    try:
        airflow = start_airflow(root / "airflow-home", env=env, log_dir=root)
    except ServiceError as exc:
        proxy.close()
        registry.stop()
        pytest.fail(str(exc), pytrace=False)
    stack = Stack(airflow, station, registry, proxy, env, root)
    try:
        airflow.wait_for_dag(DAG_ID)
        yield stack
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        stack.airflow.stop()
        proxy.close()
        stack.registry.stop()


@dataclass
class Train:
    ref: Reference
    spec: TrainSpec
    digest: str

    @property
    def sandbox_prefix(self) -> str:
        return f"pht-station-a-{self.spec.id[:8]}-"


def _train(stack: Stack, docker_client: Any, parties: Any, script: str = ANALYSIS) -> Train:
    """Build, push and sign a one-hop train for station-a; drop the local image so the hop
    pulls it from the registry like a station that never saw it. A train that writes the
    analysis' table also writes a marker into it (for the secret scan)."""
    if script in (ANALYSIS, WAITING):
        seed = secrets.token_hex(16)
        stack.markers.append(marker_of(seed))
        script = marked(seed, script)
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(stack.proxy.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec, script=script)
    with RegistryClient(stack.proxy.host) as client:
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    docker_client.images.remove(str(ref))
    return Train(ref, spec, digest)


def _run_url(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def _trigger(stack: Stack, train: Train) -> str:
    with stack.client() as http:
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={"logical_date": None, "conf": {"train": str(train.ref), "rerun": False}},
        )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["dag_run_id"])


def _tasks(stack: Stack, run_id: str) -> dict[str, dict[str, Any]]:
    with stack.client() as http:
        resp = http.get(f"{_run_url(run_id)}/taskInstances")
    resp.raise_for_status()
    return {t["task_id"]: t for t in resp.json()["task_instances"]}


def _wait(stack: Stack, what: str, probe: Any, timeout: float = RUN_TIMEOUT) -> Any:
    try:
        return stack.airflow.wait(what, probe, timeout)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


def _finish(stack: Stack, run_id: str) -> str:
    def finished() -> str | None:
        with stack.client() as http:
            state = http.get(_run_url(run_id)).json()["state"]
        return str(state) if state in ("success", "failed") else None

    return str(_wait(stack, f"run {run_id} to finish", finished))


def _record(stack: Stack, run_id: str) -> dict[str, Any]:
    records = [r for r in AuditLog(stack.station.audit_path).entries() if r.get("run_id") == run_id]
    assert len(records) == 1, records
    return records[0]


def _task_pid(stack: Stack, train: Train, exclude: set[int]) -> int:
    """The hop task process running ``train``'s container (it holds its locked work folder)."""
    import docker

    work = stack.station.config().work_dir

    def running() -> int | None:
        engine = docker.from_env(timeout=60)
        try:
            up = engine.containers.list(filters={"label": "org.pht.sandbox", "status": "running"})
        finally:
            engine.close()
        if not any(c.name.startswith(train.sandbox_prefix) for c in up):
            return None
        ours = holders_of(work) & session_pids(stack.airflow.pids)
        ours -= exclude
        return min(ours) if len(ours) == 1 else None

    return int(_wait(stack, "the train's container to run", running))


def _assert_nothing_left(
    stack: Stack, docker_client: Any, train: Train, results: int, keep: tuple[str, ...] = ()
) -> None:
    stored = result_manifests(stack.registry.storage, train.ref.repository)
    assert len(stored) == results, stored
    assert leftover_files(stack.station.root, keep) == []
    containers = docker_client.containers.list(all=True, filters={"label": "org.pht.sandbox"})
    assert [c.name for c in containers if c.name.startswith(train.sandbox_prefix)] == []
    repo = f"{train.ref.registry}/{train.ref.repository}"
    images = [
        name
        for image in docker_client.api.images()
        for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
        if name.startswith(repo)
    ]
    assert images == []
    verified = subprocess.run(
        [str(PHT), "audit", "verify", str(stack.station.audit_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _cleanups_since(stack: Stack, seq: int) -> list[dict[str, Any]]:
    return [
        r
        for r in AuditLog(stack.station.audit_path).entries()
        if r.get("event") == "cleanup" and int(r.get("seq") or 0) > seq
    ]


def _last_seq(stack: Stack) -> int:
    entries = list(AuditLog(stack.station.audit_path).entries())
    return int(entries[-1].get("seq") or 0) if entries else 0


# --- 1. the seal task killed after its push started (issue 12) ------------------------------


@pytest.mark.parametrize(
    ("where", "mode"),
    [
        ("blobs/uploads/", "request"),  # its first blob upload, not yet at the registry
        # The result's manifest stored, the answer not yet read: the retry finishes that
        # manifest from seal's journal (before the journal, it pushed a second result).
        ("manifests/", "response"),
    ],
)
def test_seal_killed_mid_push_retries_to_exactly_one_result(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts, where: str, mode: str
) -> None:
    train = _train(stack, docker_client, parties)
    verb = "POST" if where.startswith("blobs") else "PUT"
    stack.proxy.arm(f"{verb} /v2/{train.ref.repository}/{where}".encode(), mode)
    run_id = _trigger(stack, train)
    _wait(stack, "the seal task's push", lambda: True if stack.proxy.held.is_set() else None)
    assert stack.proxy.held_peer is not None
    os.kill(pid_of_peer(stack.proxy.held_peer), signal.SIGKILL)
    stack.proxy.release()

    state = _finish(stack, run_id)
    tasks = _tasks(stack, run_id)
    assert state == "success", {t: i["state"] for t, i in tasks.items()}
    assert tasks["seal"]["try_number"] >= 2
    assert tasks["run"]["try_number"] == 1
    assert starts.count(train.sandbox_prefix, 1) == 1  # ran once
    record = _record(stack, run_id)
    assert record["outcome"] == "success", record
    assert record["result_digest"] in result_manifests(stack.registry.storage, train.ref.repository)
    _assert_nothing_left(stack, docker_client, train, results=1)


# --- 2. the run task SIGKILLed while its container runs -------------------------------------


@pytest.fixture()
def go(stack: Stack) -> Iterator[Path]:
    path = stack.station.root / "data" / "cohort" / "go"
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


def test_run_killed_with_a_retry_left_runs_again_and_sweeps_the_killed_attempt(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts, go: Path
) -> None:
    train = _train(stack, docker_client, parties, WAITING)
    seq = _last_seq(stack)
    run_id = _trigger(stack, train)
    killed = _task_pid(stack, train, set())
    work = stack.station.config().work_dir
    folders = sorted(p.name for p in work.glob("hop-*"))
    os.kill(killed, signal.SIGKILL)
    go.write_text("")

    state = _finish(stack, run_id)
    tasks = _tasks(stack, run_id)
    assert state == "success", {t: i["state"] for t, i in tasks.items()}
    assert tasks["run"]["try_number"] == 2
    assert starts.count(train.sandbox_prefix, 2) == 2
    record = _record(stack, run_id)
    assert record["outcome"] == "success", record
    swept = [f for c in _cleanups_since(stack, seq) for f in c["removed"]["folders"]]
    assert set(folders) <= set(swept), (folders, swept)
    go.unlink()
    _assert_nothing_left(stack, docker_client, train, results=1)


def test_run_killed_without_a_retry_left_is_audited_as_killed_and_leaves_nothing(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts, go: Path
) -> None:
    train = _train(stack, docker_client, parties, WAITING)
    run_id = _trigger(stack, train)
    first = _task_pid(stack, train, set())
    os.kill(first, signal.SIGKILL)
    second = _task_pid(stack, train, {first})  # the retry, killed too: no retry left
    os.kill(second, signal.SIGKILL)

    state = _finish(stack, run_id)
    tasks = _tasks(stack, run_id)
    assert state == "failed", {t: i["state"] for t, i in tasks.items()}
    assert tasks["run"]["state"] == "failed"
    assert tasks["seal"]["state"] == "upstream_failed"
    assert starts.count(train.sandbox_prefix, 2) == 2
    record = _record(stack, run_id)
    assert record["outcome"] == "failure"
    assert record["failure"]["error"] == "TaskEnded", record["failure"]
    assert "the run task ended without reporting" in record["failure"]["message"]
    _assert_nothing_left(stack, docker_client, train, results=0)


# --- 3. the registry down for 90 s at push time ---------------------------------------------

OUTAGE_SECONDS = 90.0


def test_registry_down_for_90_seconds_at_push_time(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    train = _train(stack, docker_client, parties)
    stack.proxy.arm(f"POST /v2/{train.ref.repository}/blobs/uploads/".encode())
    run_id = _trigger(stack, train)
    _wait(stack, "the seal task's push", lambda: True if stack.proxy.held.is_set() else None)
    port, root = stack.registry.port, stack.registry.root
    stack.registry.stop()
    down = time.monotonic()
    stack.proxy.release()  # the push's connection ends; every new one is refused
    time.sleep(OUTAGE_SECONDS)  # the outage under test, not a wait for another party
    assert time.monotonic() - down >= OUTAGE_SECONDS
    stack.registry = _start_registry(root, port)

    state = _finish(stack, run_id)
    tasks = _tasks(stack, run_id)
    assert state == "success", {t: i["state"] for t, i in tasks.items()}
    assert tasks["seal"]["try_number"] >= 3  # it failed during the outage, more than once
    assert tasks["run"]["try_number"] == 1
    assert starts.count(train.sandbox_prefix, 1) == 1
    record = _record(stack, run_id)
    assert record["outcome"] == "success", record
    _assert_nothing_left(stack, docker_client, train, results=1)


# --- 4. the work folder on a small tmpfs ----------------------------------------------------


@contextmanager
def _work_on_tmpfs(stack: Stack, size: str) -> Iterator[Path]:
    """station-a's work_dir on a fresh tmpfs of ``size`` for one test (the config is read
    when each task runs)."""
    path = stack.station.config_path
    original = path.read_text()
    mount = stack.station.root / "work-tmpfs"
    with tmpfs(mount, size):
        config = yaml.safe_load(original)
        config["work_dir"] = str(mount)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            yield mount
        finally:
            path.write_text(original)
    mount.rmdir()


def _failed_run(stack: Stack, run_id: str, task: str = "run") -> dict[str, Any]:
    state = _finish(stack, run_id)
    tasks = _tasks(stack, run_id)
    assert state == "failed", {t: i["state"] for t, i in tasks.items()}
    assert tasks[task]["state"] == "failed"
    assert tasks["seal"]["state"] == "upstream_failed"
    record = _record(stack, run_id)
    assert record["outcome"] == "failure"
    return dict(record["failure"])


def test_train_writing_past_a_small_work_disk_fails_and_seals_nothing(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    train = _train(stack, docker_client, parties, FLOOD)
    with _work_on_tmpfs(stack, "96m"):
        run_id = _trigger(stack, train)
        failure = _failed_run(stack, run_id)
        assert starts.count(train.sandbox_prefix, 1) == 1
        assert failure["error"] == "OutputTooLargeError" or "disk filled" in failure["message"]
        assert "output limit" in failure["message"] or "disk filled" in failure["message"]
        _assert_nothing_left(stack, docker_client, train, results=0)


def test_train_ignoring_enospc_fails_with_disk_filled_and_seals_nothing(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    train = _train(stack, docker_client, parties, IGNORES_ENOSPC)
    with _work_on_tmpfs(stack, "96m") as work:
        run_id = _trigger(stack, train)
        _task_pid(stack, train, set())  # its container runs: now the disk fills
        filler = fill(work)
        failure = _failed_run(stack, run_id)
        filler.unlink()
        assert failure["error"] == "PolicyError", failure
        assert "the station's disk filled while the train ran" in failure["message"]
        assert starts.count(train.sandbox_prefix, 1) == 1
        _assert_nothing_left(stack, docker_client, train, results=0)


def test_full_work_disk_fails_before_the_train_runs(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    train = _train(stack, docker_client, parties)
    with _work_on_tmpfs(stack, "96m") as work:
        filler = fill(work)
        run_id = _trigger(stack, train)
        failure = _failed_run(stack, run_id, "verify")  # the hop's first step on the station
        filler.unlink()
        assert failure["error"] == "PolicyError", failure
        assert "bytes free, less than the output cap plus a working margin" in failure["message"]
        assert starts.count(train.sandbox_prefix, 0) == 0
        _assert_nothing_left(stack, docker_client, train, results=0)


# --- 5. Airflow restarted while runs wait for a person's approval ---------------------------


@contextmanager
def _approval_required(stack: Stack) -> Iterator[None]:
    path = stack.station.config_path
    original = path.read_text()
    config = yaml.safe_load(original)
    config["policy"]["require_approval"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def _waiting_for_person(stack: Stack, run_id: str, *, parking: bool = True) -> None:
    def waiting() -> bool | None:
        state = _tasks(stack, run_id)["approve"]["state"]
        return True if state in ("awaiting_input", "deferred") else None

    _wait(stack, f"run {run_id} to wait for approval", waiting)
    if not parking:
        return  # parked before a restart: the new scheduler's log starts afresh
    # The scheduler has taken the parked task's worker exit (see test_airflow_e2e).
    parked = parked_in_scheduler(stack.airflow, run_id, "approve")
    _wait(stack, "the scheduler to see approve parked", parked, 60)


def test_airflow_restarted_while_runs_await_approval_then_approved_and_rejected(
    stack: Stack, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    approved, rejected = (_train(stack, docker_client, parties) for _ in range(2))
    with _approval_required(stack):
        run_a, run_r = _trigger(stack, approved), _trigger(stack, rejected)
        _waiting_for_person(stack, run_a)
        _waiting_for_person(stack, run_r)

        port = int(stack.airflow.url.rsplit(":", 1)[1])
        stack.airflow.stop()
        assert not session_pids(stack.airflow.pids)
        try:
            stack.airflow = start_airflow(
                stack.airflow.home, env=stack.env, port=port, log_dir=stack.log_dir
            )
            stack.airflow.wait_for_dag(DAG_ID)
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)
        for run_id in (run_a, run_r):
            _waiting_for_person(stack, run_id, parking=False)  # still waiting after it

        with stack.client() as http:
            for run_id, option, reason in (
                (run_a, "Approve", "fine by me"),
                (run_r, "Reject", "not this quarter"),
            ):
                resp = http.patch(
                    f"{_run_url(run_id)}/taskInstances/approve/-1/hitlDetails",
                    json={"chosen_options": [option], "params_input": {"reason": reason}},
                )
                assert resp.status_code == 200, resp.text
        state_a, state_r = _finish(stack, run_a), _finish(stack, run_r)
    assert state_r in ("success", "failed")  # it ended; the audit record says how

    assert state_a == "success", _tasks(stack, run_a)
    record = _record(stack, run_a)
    assert record["outcome"] == "success" and record["approved_by"] == "admin", record
    assert starts.count(approved.sandbox_prefix, 1) == 1
    _assert_nothing_left(stack, docker_client, approved, results=1)

    tasks = _tasks(stack, run_r)
    assert tasks["run"]["state"] == "skipped", {t: i["state"] for t, i in tasks.items()}
    record = _record(stack, run_r)
    assert record["outcome"] == "rejected", record
    assert record["decision"] == {"by": "admin", "reason": "not this quarter"}, record
    assert starts.count(rejected.sandbox_prefix) == 0
    _assert_nothing_left(stack, docker_client, rejected, results=0)


# --- 6. the secret scan, after the fault tests (keep this test last) ------------------------


def test_no_secret_in_any_log_database_registry_storage_or_image(
    stack: Stack, parties: Any, docker_client: Any
) -> None:
    """Scans what this module's deployment wrote (support.secretscan): the Airflow logs and
    database, registry storage, station-a's folder and images left on the engine, for the
    parties' private keys, the key passphrase, Airflow's admin password and the markers the
    trains wrote into their results (the registry here has no credentials; the station no
    webhook secret)."""
    assert stack.markers, "no train ran in this module: run the whole module"
    started = time.monotonic()
    needles = Secrets()
    for name in ("alice", "reviewer"):
        party_secrets(needles, name, parties[name])
    party_secrets(
        needles, "station-a", parties["station-a"], stack.station.root / "keys" / "station.key"
    )
    needles.add("the station key passphrase", PASSPHRASE)
    needles.add("Airflow's admin password", stack.airflow.password)
    for i, marker in enumerate(stack.markers):
        needles.add(f"train {i}'s result marker", marker)
    assert_scan_finds(needles, "train 0's result marker")
    findings, images = scan_deployment(
        needles,
        airflow_home=stack.airflow.home,
        log_dir=stack.log_dir,
        stations=[stack.station.root],
        registry_storage=stack.registry.storage,
        docker_client=docker_client,
        registry_host=stack.proxy.host,
    )
    print(f"\nscanned for {len(needles.needles)} secrets ({len(stack.markers)} markers) in "
          f"{time.monotonic() - started:.0f} s; {images} images left to scan")  # fmt: skip
    assert findings == [], "secrets found:\n" + "\n".join(findings)
