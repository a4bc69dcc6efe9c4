"""The central service's REST API served by a real uvicorn in its own process.

Hostile request bodies: a chunked body of 300 MB sent from a generator (no
``Content-Length``) is cut off with 413 after the limit, and one to a token-protected route
without the token is refused with 401 before any of it is read. The server's memory is
measured in its process: its peak RSS (``VmHWM``) may grow by at most
:data:`RSS_GROWTH_LIMIT` over its RSS before the requests (psutil), and the client may get
no further than a few MiB into the body before the answer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pht_airflow.dev.localregistry import free_port
from pht_airflow.web.central_app import MAX_BODY_BYTES

TOKEN = "central-app-test-token"
SECRET = "central-app-webhook-secret"
MiB = 1024 * 1024
HOSTILE_BYTES = 300 * 1000 * 1000  # the body the client offers
RSS_GROWTH_LIMIT = 48 * MiB  # the server's peak RSS over its RSS before the requests
SENT_LIMIT = 32 * MiB  # how far into the body the client may get before the answer

SERVER = """
import sys

import uvicorn

kind, port, secret, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if kind == "central":
    from pht_airflow.central.db import make_engine, make_sessionmaker
    from pht_airflow.central.registry import PlainRegistryAdmin
    from pht_airflow.central.router import Router
    from pht_airflow.oci import RegistryClient
    from pht_airflow.web.central_app import create_app

    db_url, registry = sys.argv[5], sys.argv[6]
    client = RegistryClient(registry)
    router = Router(make_sessionmaker(make_engine(db_url)), client, PlainRegistryAdmin(client))
    app = create_app(router, api_token=lambda: token, webhook_secret=lambda: secret,
                     reconcile_seconds=0)
else:
    from pht_airflow.web.webhook_app import create_app

    app = create_app(secret_provider=lambda: secret, on_push=lambda event: None)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def _answer(port: int, head: bytes) -> str:
    """Send only ``head`` (no body) and read the answer until the server closes."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode("latin-1")


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


class ServerProcess:
    """An app under uvicorn in a child process on a free 127.0.0.1 port."""

    def __init__(self, kind: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, kind, str(self.port), SECRET, TOKEN, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.process = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the {kind} server did not start: {self.stderr()}"
                    ) from None
                time.sleep(0.05)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def peak_rss(self) -> int:
        return _peak_rss(self.proc.pid)

    def stderr(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


class Offer:
    """A chunked request body of ``total`` bytes from a generator; counts what was taken."""

    def __init__(self, total: int = HOSTILE_BYTES, chunk: int = 256 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        block = b"{" + b" " * (self.chunk - 1)
        while self.sent < self.total:
            self.sent += len(block)
            yield block
            block = b" " * self.chunk


def post_hostile(url: str, headers: dict[str, str]) -> tuple[httpx.Response, Offer]:
    """POST a 300 MB chunked body; the answer and how much of the body the client sent."""
    offer = Offer()
    with httpx.Client(trust_env=False, timeout=60) as http:
        response = http.post(url, content=iter(offer), headers=headers)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    return response, offer


@pytest.fixture(scope="module")
def central(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("central-app") / "central.db"
    server = ServerProcess("central", f"sqlite:///{db}", registry.host)
    try:
        yield server
    finally:
        server.stop()


def _warm(server: ServerProcess) -> None:
    """One ordinary request of each kind, so what the refusals measure is theirs alone."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert http.get(f"{server.url}/stations").status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post(f"{server.url}/stations", json={}, headers=auth).status_code == 422
        assert http.post(f"{server.url}/stations", json={}).status_code == 401
        hook = http.post(f"{server.url}/webhooks/registry-events", content=b"{}",
                         headers={"Authorization": SECRET})  # fmt: skip
        assert hook.status_code == 422


JSON = {"Content-Type": "application/json"}
BEARER = {**JSON, "Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("path", "headers", "status", "detail"),
    [
        ("/stations", BEARER, 413, f"request body is larger than {MAX_BODY_BYTES} bytes"),
        ("/trains/x/failures", JSON, 413, f"request body is larger than {MAX_BODY_BYTES} bytes"),
        ("/stations", JSON, 401, "a valid API token is required"),
        ("/trains", {**JSON, "Authorization": "Bearer wrong"}, 401, "a valid API token"),
        ("/webhooks/registry-events", {**JSON, "Authorization": SECRET}, 413, "larger than"),
        ("/webhooks/registry-events", JSON, 401, "missing or wrong Authorization header"),
    ],
    ids=["token-413", "open-413", "no-token-401", "wrong-token-401", "webhook-413",
         "webhook-no-secret-401"],
)  # fmt: skip
def test_a_300_mb_chunked_body_is_cut_off_with_bounded_memory(
    central: ServerProcess, path: str, headers: dict[str, str], status: int, detail: str
) -> None:
    _warm(central)
    before = central.rss()
    response, offer = post_hostile(central.url + path, headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert detail in str(body.get("detail", body.get("error")))
    assert response.headers.get("connection") == "close"
    grown = central.peak_rss() - before
    assert offer.sent < SENT_LIMIT, f"the server read {offer.sent} bytes of the body"
    assert grown < RSS_GROWTH_LIMIT, f"the server's peak RSS grew by {grown / MiB:.1f} MiB"
    assert central.proc.poll() is None
    with httpx.Client(trust_env=False, timeout=30) as http:
        assert http.get(f"{central.url}/stations").status_code == 200  # still serving


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    central: ServerProcess,
) -> None:
    # Only the headers are sent: the answer must come without waiting for the body.
    for path, auth in (("/stations", f"Bearer {TOKEN}"), ("/trains/x/failures", "")):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {300 * MiB}\r\n\r\n"
        ).encode()
        answer = _answer(central.port, head)
        assert answer.startswith("HTTP/1.1 413 "), answer
        assert "request body is larger than" in answer


def test_the_token_is_checked_before_the_body_is_read(central: ServerProcess) -> None:
    # Headers only, no body at all: without the token the answer is 401 at once (a server
    # that read the body first would wait for it).
    head = (
        b"POST /stations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer = _answer(central.port, head)
    assert answer.startswith("HTTP/1.1 401 "), answer
    assert "a valid API token is required" in answer


def test_a_body_within_the_limit_still_works_chunked(central: ServerProcess, parties: Any) -> None:
    import json

    body = json.dumps(
        {
            "id": "station-z",
            "key": parties["station-a"].public.pem,
            "recipient": parties["station-a"].age.recipient,
        }  # fmt: skip
    ).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 50):
            yield body[i : i + 50]

    with httpx.Client(trust_env=False, timeout=30) as http:
        response = http.post(f"{central.url}/stations", content=chunks(), headers=BEARER)
    assert response.status_code == 200, response.text
    assert response.json()["project"] == "station-station-z"


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://airflow.example.org/x", "must be an http(s) URL"),
     ("http://[::1/x", "must be an http(s) URL"),
     ("https://a.example.org/\x1b[2J", "must be an http(s) URL"),
     ("https://a.example.org/" + "x" * 500, "longer than 500 characters")],
    ids=["scheme", "bad-host", "control-characters", "too-long"],
)  # fmt: skip
def test_a_station_webhook_url_is_validated(
    central: ServerProcess, parties: Any, url: str, message: str
) -> None:
    body = {"id": "station-w", "key": parties["station-a"].public.pem,
            "recipient": parties["station-a"].age.recipient, "webhook_url": url}  # fmt: skip
    with httpx.Client(trust_env=False, timeout=30) as http:
        response = http.post(f"{central.url}/stations", json=body, headers=BEARER)
        assert response.status_code == 400, response.text
        assert message in response.json()["detail"]
        assert http.get(f"{central.url}/stations/station-w").status_code == 404


# --- the OpenAPI schema, fuzzed ----------------------------------------------------------

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def api_schema(
    request: pytest.FixtureRequest, registry: Any, tmp_path: Path, parties: Any
) -> Iterator[Any]:
    """The app over a real database (a SQLite file; PostgreSQL) with two stations and a
    creator key registered, and the session's registry; in-process (ASGI)."""
    from pht_airflow.central.db import make_engine, make_sessionmaker
    from pht_airflow.central.registry import PlainRegistryAdmin
    from pht_airflow.central.router import Router
    from pht_airflow.oci import RegistryClient
    from pht_airflow.web.central_app import create_app

    db_url = (
        f"sqlite:///{tmp_path / 'central.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    client = RegistryClient(registry.host)
    engine = make_engine(db_url)
    router = Router(make_sessionmaker(engine), client, PlainRegistryAdmin(client))
    for name in ("station-a", "station-b"):
        router.add_station(name, parties[name].public.pem, parties[name].age.recipient)
    router.add_trusted_key("alice", parties["alice"].public.pem, "creator")
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: SECRET,
                     reconcile_seconds=0)  # fmt: skip
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    client.close()
    engine.dispose()


def test_the_api_answers_every_request_as_its_schema_says(api_schema: Any) -> None:
    """Every operation, fuzzed (valid and invalid input), with the token: no 5xx, every
    answer's status code, content type, headers and body as the schema documents them.
    (Operation by operation with ``as_strategy``: schemathesis's pytest plugin fails on
    this pytest.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 11
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def fuzz(case: Any) -> None:
            # A schema-valid body may still be refused (400/422): a key must be a P-256 PEM, a
            # recipient a valid age recipient, which no JSON schema can say.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        fuzz()
