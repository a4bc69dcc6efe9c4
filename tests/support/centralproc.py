"""The central service as its own process (``pht central serve``), for tests that kill it.

:class:`CentralProcess` starts ``python -m pht_airflow.cli central serve`` on 127.0.0.1 with a
SQLite database in a folder of its own and its log appended to ``central.log`` there, waits
until it answers, and can be SIGKILLed and started again on the same database and port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pht_airflow.dev.localregistry import free_port
from pht_airflow.errors import ServiceError


@dataclass
class CentralProcess:
    root: Path
    registry_host: str
    token: str
    webhook_secret: str
    reconcile_seconds: float = 10.0
    #: The registry account it copies with (its password goes in $PHT_REGISTRY_PASSWORD).
    registry_username: str | None = None
    registry_password: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.root / "central.db"

    @property
    def log(self) -> Path:
        return self.root / "central.log"

    def start(self, timeout: float = 120) -> None:
        """Start the service (the database is reused) and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHT_")}
        env.update(
            PHT_CENTRAL_TOKEN=self.token, PHT_WEBHOOK_SECRET=self.webhook_secret,
            PYTHONUNBUFFERED="1",
        )  # fmt: skip
        login = []
        if self.registry_username:
            login = ["--username", self.registry_username]
            env["PHT_REGISTRY_PASSWORD"] = self.registry_password or ""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own CLI
                [
                    sys.executable, "-m", "pht_airflow.cli", "central", "serve",
                    "--registry", self.registry_host, "--port", str(self.port),
                    "--db", f"sqlite:///{self.db}",
                    "--reconcile-seconds", str(self.reconcile_seconds), *login,
                ],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServiceError(f"the central service exited; see {self.log}")
            with contextlib.suppress(httpx.TransportError):
                if self.get("/stations").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServiceError(f"the central service did not answer; see {self.log}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the service and wait for it to be gone."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 15 s); nothing if it is not running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def get(self, path: str) -> httpx.Response:
        with httpx.Client(timeout=30, trust_env=False) as http:
            return http.get(self.url + path)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        with httpx.Client(timeout=60, trust_env=False) as http:
            return http.post(
                self.url + path, json=body, headers={"Authorization": f"Bearer {self.token}"}
            )

    def train(self, train_id: str) -> dict[str, Any]:
        resp = self.get(f"/trains/{train_id}")
        resp.raise_for_status()
        return dict(resp.json())
