"""pht_run_train on a real, running Airflow: API server, scheduler and DAG processor.

``airflow standalone`` is not used: the log servers its scheduler and triggerer start bind
every interface with a hard-coded host. This module starts the components standalone would
start, each bound to 127.0.0.1, with a private ``AIRFLOW_HOME`` and SQLite database:

* ``airflow api-server --apps all --host 127.0.0.1 --port <free>`` (REST API v2, the
  execution API the tasks talk to, and the station plugin's webhook receiver at ``/pht``);
* ``airflow scheduler --skip-serve-logs`` with the LocalExecutor (the one executor Airflow 3
  ships; it runs tasks in parallel worker processes, also on SQLite);
* ``airflow dag-processor``.

No triggerer: the station policy asks for no approval, so nothing defers. The tests trigger
one train through the REST API and one through a Harbor webhook (twice: one run per digest),
check the results in the registry and the station's audit log, and check that no process
started here listens on anything but the loopback address.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from conftest import REPO, VECTORS
from stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.localregistry import free_port
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

DAG_ID = "pht_run_train"
AIRFLOW = Path(sys.executable).parent / "airflow"
START_TIMEOUT = 180.0  # API server up and the DAG parsed, on a 2-core machine
RUN_TIMEOUT = 240.0  # one run, verify to record
POLL = 1.0
RUN_ID_RE = re.compile(r"pht__sha256_[0-9a-f]{64}")
LOOPBACK = {"127.0.0.1", "[::1]", "::1"}

T = TypeVar("T")


# --- the running components -----------------------------------------------------------------


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class AirflowStack:
    home: Path
    url: str
    station: Station
    secret: str
    password: str
    components: list[Component] = field(default_factory=list)
    token: str = ""

    @property
    def pids(self) -> set[int]:
        return {c.process.pid for c in self.components}

    def diagnostics(self, lines: int = 40) -> str:
        """The tail of every component's log and of the task logs, for failure messages."""
        parts = []
        for c in self.components:
            state = "running" if c.process.poll() is None else f"exited {c.process.returncode}"
            parts.append(f"--- {c.name} ({state}), {c.log}:\n{_tail(c.log, lines)}")
        for log in sorted((self.home / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))[-6:]:
            parts.append(f"--- task log {log.relative_to(self.home)}:\n{_tail(log, lines)}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        dead = [c.name for c in self.components if c.process.poll() is not None]
        if dead:
            pytest.fail(f"Airflow component(s) {dead} exited:\n{self.diagnostics()}")

    def client(self) -> httpx.Client:
        # trust_env=False: no proxy settings can send this anywhere but 127.0.0.1.
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})"


def _wait(stack: AirflowStack, what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` until it returns something other than None; fail with the logs."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        stack.check_alive()
        try:
            value = probe()
        except (httpx.TransportError, OSError) as exc:  # not listening yet
            value, last_error = None, f"{type(exc).__name__}: {exc}"
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:.0f}s waiting for {what} {last_error}\n"
                f"{stack.diagnostics()}"
            )
        time.sleep(POLL)


def _session_id(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[3])


def _our_pids(started: set[int]) -> set[int]:
    """Every live process in the sessions started here (tasks make their own groups)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_id(int(entry.name)) in started:
            found.add(int(entry.name))
    return found


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
    sockets = _listening(_our_pids(stack.pids))
    wide = [s for s in sockets if _host(s[1]) not in LOOPBACK]
    assert not wide, "listening beyond 127.0.0.1:\n" + "\n".join(" ".join(s) for s in sockets)
    return sockets


def _stop(components: list[Component]) -> None:
    """SIGTERM each process group, wait, then SIGKILL what is left (by group and by pid)."""
    started = {c.process.pid for c in components}
    for c in components:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for c in components:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
    while _our_pids(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    for c in components:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.process.pid, signal.SIGKILL)
    for pid in _our_pids(started):  # task processes run in groups of their own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for c in components:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.process.wait(timeout=10)


def _environment(home: Path, port: int, station: Station, secret: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW") and k.lower() not in {"http_proxy", "https_proxy"}
    }
    url = f"http://127.0.0.1:{port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__API__BASE_URL": f"{url}/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PHT_STATION_CONFIG": str(station.config_path),
            "PHT_WEBHOOK_SECRET": secret,
        }
    )
    return env


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
    home = root / "airflow-home"
    home.mkdir()
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    (home / "passwords.json").chmod(0o600)
    port = free_port()
    secret = secrets.token_urlsafe(24)
    env = _environment(home, port, station, secret)
    stack = AirflowStack(home, f"http://127.0.0.1:{port}", station, secret, password)

    migrate = subprocess.run(
        [str(AIRFLOW), "db", "migrate"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrate.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}")

    commands = {
        "api-server": [
            "api-server", "--apps", "all", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
    }  # fmt: skip
    try:
        for name, args in commands.items():
            log = root / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(AIRFLOW), *args],
                    env=env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            stack.components.append(Component(name, process, log))

        with stack.client() as http:

            def health() -> bool | None:
                return True if http.get("/api/v2/monitor/health").status_code == 200 else None

            _wait(stack, "the API server", health, START_TIMEOUT)
            resp = http.post("/auth/token", json={"username": "admin", "password": password})
            assert resp.status_code in (200, 201), f"{resp.text}\n{stack.diagnostics()}"
            stack.token = resp.json()["access_token"]

        with stack.client() as http:

            def dag_parsed() -> dict[str, Any] | None:
                resp = http.get(f"/api/v2/dags/{DAG_ID}")
                if resp.status_code == 200:
                    return dict(resp.json())
                errors = http.get("/api/v2/importErrors").json().get("import_errors", [])
                if errors:
                    pytest.fail(f"the DAG folder has import errors: {errors}")
                return None

            dag = _wait(stack, f"the DAG {DAG_ID} to be parsed", dag_parsed, START_TIMEOUT)
            if dag["is_paused"]:
                resp = http.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
                assert resp.status_code == 200, f"{resp.text}\n{stack.diagnostics()}"
                assert resp.json()["is_paused"] is False
        yield stack
    finally:
        _stop(stack.components)


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

    run = _wait(stack, f"run {run_id} to finish", finished, RUN_TIMEOUT)
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


def test_nothing_listens_beyond_loopback(stack: AirflowStack) -> None:
    sockets = _assert_loopback_only(stack)
    listing = "\n".join(" ".join(s) for s in sockets)
    print(f"listening sockets of the Airflow components:\n{listing}")
    port = stack.url.rsplit(":", 1)[1]
    assert ("tcp", f"127.0.0.1:{port}") in {(p, a) for p, a, _ in sockets}, listing
