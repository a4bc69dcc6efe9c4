"""The webhook receiver served by a real uvicorn on 127.0.0.1, spoken to over HTTP by httpx.

The last test wires a real ``docker-registry`` to it: the registry announces blob uploads,
the manifest push, HEAD and GET pulls and a cosign-style tag push, and exactly one
:class:`PushEvent` must reach the callback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pht_airflow.dev.localregistry import Endpoint, free_port, start_registry
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, RegistryClient
from pht_airflow.web.webhook_app import create_app
from pht_airflow.webhooks import MAX_BODY_BYTES, PushEvent

HARBOR = Path(__file__).resolve().parent / "vectors" / "harbor"
SECRET = "whsec-9f2b7c4e1a6d3f8b0c5e2a7d4f1b8c6e"
PATH = "/registry-events"
DIST = "application/vnd.docker.distribution.events.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# --- a real server -----------------------------------------------------------------------


class Served:
    """An ASGI app under ``uvicorn.Server`` in a thread, on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="webhook-app", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Recorder:
    """The ``on_push`` callback: records every call and deduplicates like a real receiver."""

    def __init__(self) -> None:
        self.events: list[PushEvent] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.fail = False

    def __call__(self, event: PushEvent) -> str | None:
        with self.lock:
            if self.fail:
                raise RuntimeError("database unavailable")
            self.events.append(event)
            if event.event_id in self.seen:
                return None
            self.seen.add(event.event_id)
            return f"run-{len(self.seen)}"

    @property
    def event_ids(self) -> list[str]:
        with self.lock:
            return [e.event_id for e in self.events]


def _serve(
    recorder: Recorder,
    *,
    secret: Callable[[], str] = lambda: SECRET,
    projects: Callable[[], Collection[str]] | None = None,
) -> Served:
    return Served(create_app(secret_provider=secret, on_push=recorder, projects=projects)).start()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[Served]:
    served = _serve(recorder, projects=lambda: {"station-a"})
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def _harbor_body() -> bytes:
    return (HARBOR / "push_artifact_default.json").read_bytes()


def _auth(value: str = SECRET) -> dict[str, str]:
    return {"Authorization": value, "Content-Type": "application/json"}


def _dist_push(repository: str, tag: str, digest: str) -> dict[str, Any]:
    return {
        "id": "62b41850-4294-428a-b477-a0eb1d20e59c",
        "timestamp": "2026-11-22T21:26:16.726988667Z",
        "action": "push",
        "target": {
            "mediaType": OCI_MANIFEST,
            "size": 409,
            "digest": digest,
            "length": 409,
            "repository": repository,
            "url": f"http://127.0.0.1:5000/v2/{repository}/manifests/{digest}",
            "tag": tag,
        },
        "request": {"method": "PUT", "host": "127.0.0.1:5000", "useragent": "test"},
        "actor": {},
        "source": {"addr": "vm:5000", "instanceID": "x"},
    }


# --- authorization -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        _auth("wrong"),
        _auth(f"Bearer {SECRET[:-1]}"),
        _auth(f"Basic {SECRET}"),
    ],
    ids=["missing", "wrong", "wrong-bearer", "basic"],
)
def test_unauthorized(
    server: Served, http: httpx.Client, recorder: Recorder, headers: dict[str, str]
) -> None:
    resp = http.post(server.url, content=_harbor_body(), headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"error": "missing or wrong Authorization header"}
    assert "www-authenticate" not in resp.headers
    assert recorder.events == []


def test_empty_secret_refuses_everything(http: httpx.Client, recorder: Recorder) -> None:
    served = _serve(recorder, secret=lambda: "")
    try:
        for value in ("", "Bearer", SECRET):
            resp = http.post(served.url, content=_harbor_body(), headers=_auth(value))
            assert resp.status_code == 503
            assert "secret is not configured" in resp.json()["error"]
    finally:
        served.stop()
    assert recorder.events == []


def test_secret_is_asked_per_request(http: httpx.Client, recorder: Recorder) -> None:
    current = {"secret": "old-secret"}
    served = _serve(recorder, secret=lambda: current["secret"])
    try:
        assert http.post(served.url, content=_harbor_body(), headers=_auth("old-secret")).is_success
        current["secret"] = "new-secret"
        resp = http.post(served.url, content=_harbor_body(), headers=_auth("old-secret"))
        assert resp.status_code == 401
        assert http.post(served.url, content=_harbor_body(), headers=_auth("new-secret")).is_success
    finally:
        served.stop()


def test_an_unavailable_station_answers_503_with_the_reason_and_logs_it(
    http: httpx.Client, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    state: dict[str, str | None] = {"why": "the DAG pht_run_train is paused: unpause it"}
    served = Served(
        create_app(
            secret_provider=lambda: SECRET,
            on_push=recorder,
            unavailable=lambda: state["why"],
        )
    ).start()
    try:
        for value in (SECRET, "wrong"):  # asked before the secret: the reason is the answer
            resp = http.post(served.url, content=_harbor_body(), headers=_auth(value))
            assert resp.status_code == 503
            assert resp.json() == {"error": "the DAG pht_run_train is paused: unpause it"}
        assert recorder.events == []
        logged = [r for r in caplog.records if "503" in r.getMessage()]
        assert logged and logged[0].levelno == logging.ERROR
        assert "the DAG pht_run_train is paused" in logged[0].getMessage()
        state["why"] = None  # fixed: the next delivery goes through
        assert http.post(served.url, content=_harbor_body(), headers=_auth()).status_code == 200
        assert len(recorder.events) == 1
    finally:
        served.stop()


def test_a_failing_readiness_check_or_secret_is_503_not_500(
    http: httpx.Client, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str | None:
        raise RuntimeError("database is locked")

    def unreadable() -> str:
        raise ValueError(f"config broken near {SECRET}")

    for kwargs in ({"unavailable": broken}, {"secret_provider": unreadable}):
        app = create_app(**{"secret_provider": lambda: SECRET, "on_push": recorder, **kwargs})
        served = Served(app).start()
        try:
            resp = http.post(served.url, content=_harbor_body(), headers=_auth())
        finally:
            served.stop()
        assert resp.status_code == 503, resp.text
        assert "see the receiver's log" in resp.json()["error"]
        assert SECRET not in resp.text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError: database is locked" in logged
    assert "the webhook secret cannot be read (ValueError)" in logged
    assert SECRET not in logged
    assert recorder.events == []


# --- size limit --------------------------------------------------------------------------


def test_too_large_with_content_length(server: Served, http: httpx.Client) -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    resp = http.post(server.url, content=body, headers=_auth())
    assert resp.status_code == 413
    assert resp.json() == {"error": f"body is larger than {MAX_BODY_BYTES} bytes"}


def test_declared_length_is_refused_before_reading(server: Served) -> None:
    # Only the headers are sent: the answer must come without waiting for the body.
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {SECRET}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * MAX_BODY_BYTES}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413 ")


def test_too_large_chunked(server: Served, http: httpx.Client, recorder: Recorder) -> None:
    chunk = b" " * 65536
    count = MAX_BODY_BYTES // len(chunk) + 2

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    resp = http.post(server.url, content=body(), headers=_auth())
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413
    assert "larger than" in resp.json()["error"]
    assert recorder.events == []


@pytest.fixture(scope="module")
def receiver_process() -> Iterator[Any]:
    """The receiver under uvicorn in a child process, so its memory can be measured alone."""
    from test_web_central_app import ServerProcess

    server = ServerProcess("webhook")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("authorized", "status", "error"),
    [(True, 413, f"body is larger than {MAX_BODY_BYTES} bytes"),
     (False, 401, "missing or wrong Authorization header")],
    ids=["413", "401-unread"],
)  # fmt: skip
def test_a_300_mb_chunked_body_is_cut_off_with_bounded_memory(
    receiver_process: Any, authorized: bool, status: int, error: str
) -> None:
    from test_web_central_app import RSS_GROWTH_LIMIT, SENT_LIMIT, MiB, post_hostile
    from test_web_central_app import SECRET as PROCESS_SECRET

    url = f"{receiver_process.url}{PATH}"
    with httpx.Client(trust_env=False, timeout=30) as http:  # warm up: one ordinary request
        warm = http.post(url, content=b"{}", headers=_auth(PROCESS_SECRET))
        assert warm.status_code == 422, warm.text
    before = receiver_process.rss()
    headers = _auth(PROCESS_SECRET) if authorized else {"Content-Type": "application/json"}
    response, offer = post_hostile(url, headers)
    assert response.status_code == status, response.text
    assert response.json() == {"error": error}
    assert response.headers.get("connection") == "close"
    grown = receiver_process.peak_rss() - before
    assert offer.sent < SENT_LIMIT, f"the receiver read {offer.sent} bytes of the body"
    assert grown < RSS_GROWTH_LIMIT, f"the receiver's peak RSS grew by {grown / MiB:.1f} MiB"


def test_chunked_within_limit_is_accepted(server: Served, http: httpx.Client) -> None:
    data = _harbor_body()

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), 100):
            yield data[i : i + 100]

    resp = http.post(server.url, content=body(), headers=_auth())
    assert resp.status_code == 200
    assert len(resp.json()["accepted"]) == 1


# --- parsing -----------------------------------------------------------------------------


def test_malformed_json(server: Served, http: httpx.Client) -> None:
    resp = http.post(server.url, content=b'{"type": "PUSH_ARTIFACT",', headers=_auth())
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("body is not valid JSON (line 1: ")


def test_invalid_field_names_the_field(server: Served, http: httpx.Client) -> None:
    doc = json.loads(_harbor_body())
    doc["event_data"]["resources"][0]["digest"] = "sha256:XYZ"
    resp = http.post(server.url, content=json.dumps(doc).encode(), headers=_auth())
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("event_data.resources[0].digest: ")


def test_unsupported_content_type(server: Served, http: httpx.Client) -> None:
    headers = {"Authorization": SECRET, "Content-Type": "application/x-www-form-urlencoded"}
    resp = http.post(server.url, content=b"a=b", headers=headers)
    assert resp.status_code == 415


def test_other_methods_and_paths(server: Served, http: httpx.Client) -> None:
    assert http.get(server.url, headers=_auth()).status_code == 405
    other = server.url.replace(PATH, "/elsewhere")
    assert http.post(other, content=_harbor_body(), headers=_auth()).status_code == 404
    docs = server.url.replace(PATH, "/docs")
    assert http.get(docs).status_code == 404


# --- accepted pushes ---------------------------------------------------------------------


def test_harbor_push_is_accepted(server: Served, http: httpx.Client, recorder: Recorder) -> None:
    resp = http.post(server.url, content=_harbor_body(), headers=_auth())
    assert resp.status_code == 200
    [event] = recorder.events
    assert event.source == "harbor"
    assert event.tag == "result-0"
    assert resp.json() == {
        "accepted": [
            {
                "event_id": event.event_id,
                "repository": event.repository,
                "digest": event.digest,
                "tag": "result-0",
                "result": "run-1",
            }
        ],
        "ignored": 0,
    }


def test_bearer_form_and_cloudevents(
    server: Served, http: httpx.Client, recorder: Recorder
) -> None:
    body = (HARBOR / "push_artifact_cloudevents.json").read_bytes()
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/cloudevents+json"}
    resp = http.post(server.url, content=body, headers=headers)
    assert resp.status_code == 200
    assert [e.source for e in recorder.events] == ["harbor-cloudevents"]


def test_duplicates_reach_the_callback(
    server: Served, http: httpx.Client, recorder: Recorder
) -> None:
    first = http.post(server.url, content=_harbor_body(), headers=_auth())
    second = http.post(server.url, content=_harbor_body(), headers=_auth())
    assert first.status_code == second.status_code == 200
    assert first.json()["accepted"][0]["result"] == "run-1"
    assert second.json()["accepted"][0]["result"] is None  # the callback saw it before
    [event_id] = set(recorder.event_ids)
    assert recorder.event_ids == [event_id, event_id]


def test_other_projects_are_ignored(server: Served, http: httpx.Client, recorder: Recorder) -> None:
    digest = "sha256:" + "ab" * 32
    body = json.dumps(
        {
            "events": [
                _dist_push("station-b/train1", "train", digest),
                _dist_push("station-a/train1", "train", digest),
                _dist_push("pht-incoming/train1", "train", digest),
            ]
        }
    ).encode()
    resp = http.post(
        server.url, content=body, headers={"Authorization": SECRET, "Content-Type": DIST}
    )
    assert resp.status_code == 200
    assert [a["repository"] for a in resp.json()["accepted"]] == ["station-a/train1"]
    assert resp.json()["ignored"] == 2
    assert recorder.event_ids == [f"station-a/train1:train@{digest}"]


def test_dropped_events_are_neither_accepted_nor_ignored(
    server: Served, http: httpx.Client, recorder: Recorder
) -> None:
    doc = json.loads(_harbor_body())
    doc["type"] = "PULL_ARTIFACT"
    resp = http.post(server.url, content=json.dumps(doc).encode(), headers=_auth())
    assert resp.json() == {"accepted": [], "ignored": 0}
    assert recorder.events == []


def test_callback_failure_is_500_and_logs_no_secret_or_body(
    server: Served, http: httpx.Client, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder.fail = True
    resp = http.post(server.url, content=_harbor_body(), headers=_auth())
    assert resp.status_code == 500
    assert "deliver again later" in resp.json()["error"]
    http.post(server.url, content=_harbor_body(), headers=_auth("wrong-" + SECRET))
    bad = _harbor_body().replace(b"result-0", b"-bad-tag-with-marker")
    http.post(server.url, content=bad, headers=_auth())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "handling push" in logged and "RuntimeError" in logged
    assert "refused a registry notification" in logged
    assert SECRET not in logged
    assert "marker" not in logged  # nothing from a rejected body
    assert "robot$station-a" not in logged  # nor from an accepted one


# --- end to end with the real registry ---------------------------------------------------


def _counting(app: Any, arrivals: list[float]) -> Any:
    """Wrap an ASGI app to note when each HTTP request (registry envelope) arrives."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            arrivals.append(time.monotonic())
        await app(scope, receive, send)

    return wrapped


@pytest.mark.registry
def test_real_registry_push_reaches_the_callback_once(tmp_path: Path) -> None:
    if shutil.which("docker-registry") is None:
        message = "docker-registry is not available: run scripts/bootstrap.sh first"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    recorder = Recorder()
    arrivals: list[float] = []
    app = create_app(secret_provider=lambda: SECRET, on_push=recorder, projects=lambda: {"trains"})
    served = Served(_counting(app, arrivals)).start()
    endpoint = Endpoint("pht", served.url, headers={"Authorization": [SECRET]})
    registry = start_registry(tmp_path / "registry", endpoints=[endpoint])
    repository = "trains/t" + os.urandom(6).hex()
    try:
        with RegistryClient(registry.host) as client:
            config = client.upload_bytes(repository, b'{"architecture":"amd64"}', OCI_CONFIG)
            layer = client.upload_bytes(repository, os.urandom(256), OCI_LAYER)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.to_dict(),
                "layers": [layer.to_dict()],
            }
            raw = json.dumps(manifest).encode()
            digest = client.put_manifest(repository, "train", raw, OCI_MANIFEST)
            assert client.resolve(repository, "train") == digest  # HEAD: a "pull" event
            client.get_manifest(repository, "train")  # GET: another "pull"
            # The same manifest under cosign's signature tag: a push that must be dropped.
            client.put_manifest(repository, f"sha256-{digest[7:]}.sig", raw, OCI_MANIFEST)

        # 2 blob pushes, the manifest push, 2 pulls, the .sig push: 6 envelopes.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(arrivals) < 6 or not recorder.events):
            time.sleep(0.05)
        time.sleep(0.5)  # anything late would show up now
        assert len(arrivals) >= 6, f"the registry sent {len(arrivals)} envelopes"
        assert recorder.events == [
            PushEvent(
                registry=registry.host,
                repository=repository,
                digest=digest,
                tag="train",
                media_type=OCI_MANIFEST,
                source="distribution",
            )
        ]
    finally:
        registry.stop()
        served.stop()
