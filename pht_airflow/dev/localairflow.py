"""Start and stop a local Airflow deployment: API server, scheduler, DAG processor, triggerer.

Used by the demo and the end-to-end tests. ``airflow standalone`` is not used: the log
servers its scheduler and triggerer start bind every interface with a hard-coded host. This
starts the components standalone would start, each bound to 127.0.0.1, with a private
``AIRFLOW_HOME`` and SQLite database:

* ``airflow api-server --apps all`` (REST API v2, the execution API the tasks talk to, and
  the station plugin's webhook receivers under ``/pht``);
* ``airflow scheduler --skip-serve-logs`` with the LocalExecutor (it runs tasks in parallel
  worker processes, also on SQLite);
* ``airflow dag-processor``;
* ``airflow triggerer --skip-serve-logs`` (the approval step defers to it while it waits for
  a person).

Every process is
started in a session of its own and stopped by process group, then by PID (task processes
make groups of their own).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from ..errors import ServiceError
from .localregistry import free_port

AIRFLOW = Path(sys.executable).parent / "airflow"
REPO = Path(__file__).resolve().parents[2]  # pht_airflow/dev/ -> the repository
T = TypeVar("T")


@dataclass
class Component:
    """One Airflow process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalAirflow:
    """A running local Airflow. Use :func:`start_airflow` to make one; :meth:`stop` ends it."""

    home: Path
    url: str
    password: str
    components: list[Component] = field(default_factory=list)
    token: str = ""

    @property
    def pids(self) -> set[int]:
        return {c.process.pid for c in self.components}

    def diagnostics(self, lines: int = 40, dag_id: str = "*") -> str:
        """The tail of every component's log and of the newest task logs."""
        parts = []
        for c in self.components:
            state = "running" if c.process.poll() is None else f"exited {c.process.returncode}"
            parts.append(f"--- {c.name} ({state}), {c.log}:\n{_tail(c.log, lines)}")
        logs = sorted((self.home / "logs").glob(f"dag_id={dag_id}/**/*.log"))
        for log in logs[-6:]:
            parts.append(f"--- task log {log.relative_to(self.home)}:\n{_tail(log, lines)}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Raise :class:`ServiceError` (with the logs) if a component has exited."""
        dead = [c.name for c in self.components if c.process.poll() is not None]
        if dead:
            raise ServiceError(f"Airflow component(s) {dead} exited:\n{self.diagnostics()}")

    def client(self) -> httpx.Client:
        """An HTTP client for the API server, with the API token once there is one."""
        # trust_env=False: no proxy setting can send this anywhere but 127.0.0.1.
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        """Poll ``probe`` until it returns something other than None; raise with the logs."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            self.check_alive()
            try:
                value = probe()
            except (httpx.TransportError, OSError) as exc:  # not listening yet
                value, last_error = None, f"({type(exc).__name__}: {exc})"
            if value is not None:
                return value
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"timed out after {timeout:.0f} s waiting for {what} {last_error}\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(1.0)

    def wait_for_dag(self, dag_id: str, timeout: float = 180, unpause: bool = True) -> None:
        """Wait until the DAG processor has parsed ``dag_id``; unpause it."""
        with self.client() as http:

            def parsed() -> dict[str, Any] | None:
                resp = http.get(f"/api/v2/dags/{dag_id}")
                if resp.status_code == 200:
                    return dict(resp.json())
                errors = http.get("/api/v2/importErrors").json().get("import_errors", [])
                if errors:
                    raise ServiceError(f"the DAG folder has import errors: {errors}")
                return None

            dag = self.wait(f"the DAG {dag_id} to be parsed", parsed, timeout)
            if unpause and dag["is_paused"]:
                resp = http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
                if resp.status_code != 200 or resp.json().get("is_paused") is not False:
                    raise ServiceError(f"could not unpause {dag_id}: {resp.text}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of ``dag_id`` (id, state, conf, …), newest last."""
        with self.client() as http:
            resp = http.get(
                f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "run_after"}
            )
            resp.raise_for_status()
            return list(resp.json()["dag_runs"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id -> state`` for one run."""
        with self.client() as http:
            resp = http.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
            resp.raise_for_status()
            return {t["task_id"]: t["state"] for t in resp.json()["task_instances"]}

    def stop(self) -> None:
        """SIGTERM each process group, wait, then SIGKILL what is left (by group and PID)."""
        started = self.pids
        for c in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for c in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        while session_pids(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        for c in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGKILL)
        for pid in session_pids(started):  # task processes run in groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for c in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.process.wait(timeout=10)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})"


def _session_id(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[3])


def session_pids(sessions: set[int]) -> set[int]:
    """Every live process in the given sessions (the components and the tasks they start)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_id(int(entry.name)) in sessions:
            found.add(int(entry.name))
    return found


def airflow_environment(home: Path, port: int, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for every component: private home, SQLite, LocalExecutor, loopback."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW") and k.lower() not in {"http_proxy", "https_proxy"}
    }
    env.pop("PHT_STATION_CONFIG", None)
    env.pop("PHT_STATION_CONFIG_DIR", None)
    url = f"http://127.0.0.1:{port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # LocalExecutor, but task lines (a train's output among them) go to the task
            # log only, not also to the scheduler's log (see pht_airflow.airflow.executor).
            "AIRFLOW__CORE__EXECUTOR": "pht_airflow.airflow.executor.TaskLogOnlyLocalExecutor",
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
            # A hop is ten short tasks in a row; an idle scheduler that looks again after
            # 0.2 s instead of 1 s starts each about a second sooner (BENCHMARKS.md, "Hop
            # overhead"). README "Deploying a station" recommends the same.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    env.update(extra)
    return env


def start_airflow(
    home: Path,
    *,
    env: Mapping[str, str],
    port: int | None = None,
    start_timeout: float = 180,
    log_dir: Path | None = None,
) -> LocalAirflow:
    """Migrate the database, start the four components, wait for the API, get a token.

    :param home: a private, empty-or-reused ``AIRFLOW_HOME``.
    :param env: extra environment for every component (``PHT_STATION_CONFIG`` or
        ``PHT_STATION_CONFIG_DIR``, secrets the configs reference, …).
    :param port: the API server's port on 127.0.0.1 (a free one by default).
    :param start_timeout: seconds to wait for the API server (2-core machines are slow).
    :param log_dir: where the components' logs go (``home`` by default).
    """
    if not AIRFLOW.exists():
        raise ServiceError(f"{AIRFLOW} is missing: install the station extra (make bootstrap)")
    home.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or home
    password = secrets.token_urlsafe(16)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    passwords.chmod(0o600)
    port = port or free_port()
    full_env = airflow_environment(home, port, env)
    airflow = LocalAirflow(home, f"http://127.0.0.1:{port}", password)

    migrate = subprocess.run(  # noqa: S603 - our own venv's airflow
        [str(AIRFLOW), "db", "migrate"],
        env=full_env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if migrate.returncode != 0:
        raise ServiceError(
            f"airflow db migrate failed:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}"
        )
    commands = {
        "api-server": [
            "api-server", "--apps", "all", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer", "--skip-serve-logs"],
    }  # fmt: skip
    try:
        for name, args in commands.items():
            log = log_dir / f"airflow-{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(  # noqa: S603 - our own venv's airflow
                    [str(AIRFLOW), *args],
                    env=full_env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            airflow.components.append(Component(name, process, log))
        with airflow.client() as http:

            def health() -> bool | None:
                return True if http.get("/api/v2/monitor/health").status_code == 200 else None

            airflow.wait("the Airflow API server", health, start_timeout)
            resp = http.post("/auth/token", json={"username": "admin", "password": password})
            if resp.status_code not in (200, 201):
                raise ServiceError(f"POST /auth/token failed ({resp.status_code}): {resp.text}")
            airflow.token = resp.json()["access_token"]
    except BaseException:
        airflow.stop()
        raise
    return airflow
