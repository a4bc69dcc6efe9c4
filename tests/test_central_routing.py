"""Routing on the real registry, driven by the registry's own notifications.

PROTOCOL.md, "Routing through a registry". A dedicated ``docker-registry`` for this module
POSTs its notification envelopes (``notifications: endpoints:`` in its config) to the
central service's FastAPI app, served by uvicorn on 127.0.0.1. Nothing calls the router
directly: every routing decision follows a real delivery, a replay of one, or ``POST
/reconcile``. Stations are the real hop (``run_hop``, real engine, real sandbox), started
when the train shows up under the ``train`` tag in the station's project, as the station's
own webhook would start it.

Between the registry and the app sits a recorder (:class:`Recorder`, a plain ASGI wrapper):
it keeps every envelope the registry delivered and what the app answered, and can hold
envelopes back (answer 200 without passing them on) to lose or reorder events on purpose.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from support.stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.attestation import attestation_tag
from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import CopyReport, PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.dev.localregistry import Endpoint, LocalRegistry, free_port, start_registry
from pht_airflow.errors import NotFoundError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Reference, RegistryClient
from pht_airflow.results import fetch_results
from pht_airflow.signing import sign, signature_tag, verify
from pht_airflow.spec import TrainSpec
from pht_airflow.station.audit import AuditLog
from pht_airflow.station.hop import run_hop
from pht_airflow.web.central_app import create_app

pytestmark = [pytest.mark.registry, pytest.mark.docker]

TOKEN = "routing-test-token"
SECRET = "routing-webhook-secret"
WEBHOOK_PATH = "/webhooks/registry-events"
REPLAY_HEADER = "x-test-replay"  # replays by the test pass the recorder untouched
STATIONS = ("station-a", "station-b", "station-c")
ROWS = {"station-a": 3, "station-b": 4, "station-c": 5}
WAIT = 60.0


# --- the recorder between the registry and the app ------------------------------------


@dataclass
class Delivery:
    """One envelope as the registry delivered it, and what the app answered."""

    body: bytes
    content_type: str
    authorization: str
    envelope: dict[str, Any]
    held: bool
    status: int | None = None
    answer: bytes = b""
    #: Set once the whole answer (status and body) is recorded: a delivery is appended to
    #: the recorder when it arrives, so until then its status and answer are still coming.
    finished: bool = False

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.envelope.get("events", []))

    def results(self) -> list[str | None]:
        """The router's verdict on each push in the envelope (None: duplicate or noise)."""
        if not self.answer:
            return []
        return [a["result"] for a in json.loads(self.answer).get("accepted", [])]


class Recorder:
    """An ASGI wrapper that records every registry delivery before the central app sees it.

    ``app`` is the central service of the running test; between tests it is None and
    deliveries (late events of the previous test) are answered 200 and dropped, so the
    registry does not stall retrying them. ``hold`` decides per envelope whether to keep it
    from the app: a held envelope is answered 200 as if handled, which to the registry is a
    delivered event and to the router a lost one. Replays sent by the test (header
    ``x-test-replay``) and every other route go straight to the app.
    """

    def __init__(self) -> None:
        self.app: Any = None
        self.hold: Callable[[dict[str, Any]], bool] | None = None
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.deliveries = []
            self.hold = None

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        app = self.app
        if scope["path"] != WEBHOOK_PATH or REPLAY_HEADER in headers:
            if app is None:
                await _answer(send, 503, b'{"error": "no central service right now"}')
                return
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        delivery = Delivery(
            body=body,
            content_type=headers.get("content-type", ""),
            authorization=headers.get("authorization", ""),
            envelope=json.loads(body),
            held=False,
        )
        hold = self.hold
        delivery.held = app is None or (hold is not None and hold(delivery.envelope))
        with self._lock:
            self.deliveries.append(delivery)
        if delivery.held:
            delivery.status = 200
            await _answer(send, 200, b'{"accepted": [], "ignored": 0}')
            delivery.finished = True
            return

        sent_body = False

        async def replay_body() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                delivery.status = message["status"]
            elif message["type"] == "http.response.body":
                delivery.answer += message.get("body", b"")
                if not message.get("more_body"):
                    delivery.finished = True  # status and answer are complete
            await send(message)

        await app(scope, replay_body, capture)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- module fixtures: recorder served by uvicorn, a registry that notifies it ------------


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(rec, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="central-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start the central app", pytrace=False)
        time.sleep(0.05)
    yield rec, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def route_registry(
    tmp_path_factory: pytest.TempPathFactory, recorder: tuple[Recorder, str]
) -> Iterator[LocalRegistry]:
    """A registry of its own whose notifications go to the central app, with the secret."""
    _, url = recorder
    endpoint = Endpoint(
        name="central",
        url=url + WEBHOOK_PATH,
        headers={"Authorization": [f"Bearer {SECRET}"]},
    )
    reg = start_registry(tmp_path_factory.mktemp("route-registry"), endpoints=[endpoint])
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture()
def client(route_registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(route_registry.host) as c:
        yield c


class RecordingCopier:
    """The real plain-registry admin, keeping the report of every copy the router asks for."""

    def __init__(self, inner: PlainRegistryAdmin) -> None:
        self.inner = inner
        self.reports: list[CopyReport] = []

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> Any:
        report = self.inner.copy_train(src_repository, dst_repository, train_digest)
        self.reports.append(report)
        return report


@dataclass
class Central:
    """The central service of one test, as a researcher and an operator reach it."""

    url: str
    router: Router
    copier: RecordingCopier
    recorder: Recorder
    http: requests.Session = field(default_factory=requests.Session)

    def post(self, path: str, body: Any = None) -> requests.Response:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        return self.http.post(self.url + path, json=body, headers=auth, timeout=60)

    def train(self, train_id: str) -> dict[str, Any]:
        resp = self.http.get(f"{self.url}/trains/{train_id}", timeout=30)
        resp.raise_for_status()
        return dict(resp.json())

    def replay(self, delivery: Delivery) -> list[str | None]:
        """Deliver a recorded envelope again, byte for byte, with the registry's headers."""
        resp = self.http.post(
            self.url + WEBHOOK_PATH,
            data=delivery.body,
            headers={
                "Content-Type": delivery.content_type,
                "Authorization": delivery.authorization,
                REPLAY_HEADER: "1",
            },
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        return [a["result"] for a in resp.json()["accepted"]]


@pytest.fixture()
def central(
    tmp_path: Path, recorder: tuple[Recorder, str], route_registry: LocalRegistry, parties: Any
) -> Iterator[Central]:
    """A fresh central service (own database, own registry client) behind the module's
    recorder and server."""
    rec, url = recorder
    sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'central.db'}"))
    registry_client = RegistryClient(route_registry.host)
    copier = RecordingCopier(PlainRegistryAdmin(registry_client))
    router = Router(sessions, registry_client, copier)
    for name in STATIONS:
        router.add_station(name, parties[name].public.pem, parties[name].age.recipient,
                           project=name)  # fmt: skip
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: SECRET,
                     reconcile_seconds=0)  # fmt: skip
    rec.reset()
    rec.app = app
    c = Central(url, router, copier, rec)
    c.http.trust_env = False
    try:
        yield c
    finally:
        rec.app = None
        c.http.close()
        registry_client.close()


@pytest.fixture()
def stations(tmp_path: Path, parties: Any, route_registry: LocalRegistry) -> dict[str, Station]:
    return {
        name: make_station(
            tmp_path / name,
            parties[name],
            route_registry.host,
            creators=[parties["alice"].public.pem],
            approvers=[parties["reviewer"].public.pem],
            rows=ROWS[name],
        )
        for name in STATIONS
    }


# --- helpers --------------------------------------------------------------------------


def _wait(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(0.05)


def _tags(client: RegistryClient, repository: str) -> set[str]:
    try:
        return set(client.list_tags(repository))
    except NotFoundError:
        return set()


def _push_train(
    docker_client: Any, client: RegistryClient, registry: LocalRegistry, parties: Any,
    mode: str = "sequential",
) -> tuple[TrainSpec, Reference]:  # fmt: skip
    """Build a train for the three stations, push it to pht-incoming, sign and approve it."""
    spec = make_train_spec(parties, list(STATIONS), mode=mode)
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return spec, ref.with_digest(digest)


def _submit(central: Central, ref: Reference, parties: Any) -> dict[str, Any]:
    """What the researcher does: POST /trains with the creator's public key."""
    tagged = Reference(ref.registry, ref.repository, tag="train")
    body = {"reference": str(tagged), "creator_key": parties["alice"].public.pem}
    resp = central.post("/trains", body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _run_station(
    central: Central, station: Station, client: RegistryClient, registry: LocalRegistry,
    train_id: str, docker_client: Any,
) -> dict[str, Any]:  # fmt: skip
    """The station's side: when the train is tagged in its project, run the real hop."""
    repo = f"{station.id}/{train_id}"

    def arrived() -> bool:
        if "train" in _tags(client, repo):
            return True
        info = central.train(train_id)
        if info["status"] != "routing":
            pytest.fail(f"train {train_id} is {info['status']}: {info['reason']}", pytrace=False)
        return False

    _wait(f"the train in {repo}", arrived)
    return run_hop(station.config(), f"{registry.host}/{repo}:train", docker_client=docker_client)


def _wait_status(central: Central, train_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        info = central.train(train_id)
        if info["status"] not in ("routing", status):
            pytest.fail(f"train {train_id} is {info['status']}: {info['reason']}", pytrace=False)
        return info if info["status"] == status else None

    return dict(_wait(f"train {train_id} to be {status}", reached))


def _kinds(info: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in info["events"]]


def _sent_hops(info: dict[str, Any]) -> list[int]:
    return sorted(int(e["message"].split()[1]) for e in info["events"] if e["kind"] == "sent")


def _check_outbox(
    client: RegistryClient, registry: LocalRegistry, spec: TrainSpec, digest: str, parties: Any
) -> list[str]:
    """The outbox holds the train, its signature, every result and each one's signature,
    all valid; returns the result digests in hop order."""
    repo = f"pht-outbox/{spec.id}"
    tags = _tags(client, repo)
    assert client.resolve(repo, "train") == digest
    assert signature_tag(digest) in tags
    verify(client, Reference(registry.host, repo, digest=digest), [parties["alice"].public])
    results = []
    for hop, name in enumerate(STATIONS):
        result = client.resolve(repo, f"result-{hop}")
        assert signature_tag(result) in tags
        signers = verify(client, Reference(registry.host, repo, digest=result),
                         [parties[name].public])  # fmt: skip
        assert [s.role for s in signers] == ["station"]
        results.append(result)
    return results


def _registry_events(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    return [e for d in deliveries for e in d.events]


def _is_blob(event: dict[str, Any]) -> bool:
    return "/blobs/" in event["target"].get("url", "")


def _manifest_pushes(deliveries: list[Delivery], repository: str) -> Counter[str | None]:
    """How often the registry announced a manifest push to ``repository``, per tag."""
    return Counter(
        e["target"].get("tag")
        for e in _registry_events(deliveries)
        if e["action"] == "push" and not _is_blob(e) and e["target"]["repository"] == repository
    )


def _is_push_of(repository: str, tag: str) -> Callable[[dict[str, Any]], bool]:
    """Matches an envelope announcing a manifest push of ``repository:tag``."""

    def match(envelope: dict[str, Any]) -> bool:
        return any(
            e["action"] == "push"
            and not _is_blob(e)
            and e["target"]["repository"] == repository
            and e["target"].get("tag") == tag
            for e in envelope.get("events", [])
        )

    return match


def _announced(recorder: Recorder, repository: str, tag: str) -> Callable[[], bool]:
    """True once the registry has delivered the push of ``repository:tag`` and the app's
    answer to that delivery is recorded (not merely once the delivery arrived)."""
    match = _is_push_of(repository, tag)
    return lambda: any(d.finished and match(d.envelope) for d in recorder.snapshot())


def _flush(recorder: Recorder, client: RegistryClient) -> list[Delivery]:
    """Every delivery up to now: the registry notifies one endpoint in order, so once a
    sentinel push made now has arrived, everything before it has too."""
    repo = f"flush/{uuid.uuid4().hex[:12]}"
    config = client.upload_bytes(repo, b"{}", OCI_CONFIG)
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_dict(), "layers": []}
    ).encode()
    client.put_manifest(repo, "sentinel", raw, OCI_MANIFEST)
    _wait("the registry's notifications to arrive", _announced(recorder, repo, "sentinel"))
    return recorder.snapshot()


# --- the rules ------------------------------------------------------------------------


def test_sequential_route_across_three_stations_reaches_done(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any, tmp_path: Path,
) -> None:  # fmt: skip
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    digest = str(ref.digest)
    _submit(central, ref, parties)
    for name in STATIONS:
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    info = _wait_status(central, spec.id, "done")
    assert [h["state"] for h in info["hops"]] == ["done", "done", "done"]
    assert _sent_hops(info) == [0, 1, 2]
    assert _kinds(info).count("result") == 3 and _kinds(info)[-1] == "done"
    assert all("(webhook)" in e["message"] for e in info["events"] if e["kind"] == "result")
    # The app accepted every delivery, with the secret the registry sends from its config.
    history = _flush(central.recorder, client)
    assert {d.authorization for d in history} == {f"Bearer {SECRET}"}
    assert {d.status for d in history} == {200}
    # Stations tag a result only after signing it: each result's signature is announced
    # before its result-<k> tag, so no announcement found a result unsigned.
    pushes = [(e["target"]["repository"], e["target"].get("tag"))
              for e in _registry_events(history)
              if e["action"] == "push" and not _is_blob(e)]  # fmt: skip
    for hop, (name, row) in enumerate(zip(STATIONS, info["hops"], strict=True)):
        repo, result = f"{name}/{spec.id}", row["result_digest"]
        assert pushes.index((repo, signature_tag(result))) < pushes.index((repo, f"result-{hop}"))
    verdicts = [v for d in history for v in d.results()]
    assert verdicts.count("sent hop 1") == verdicts.count("sent hop 2") == 1
    assert "waiting for the station's signature" not in verdicts

    results = _check_outbox(client, route_registry, spec, digest, parties)
    assert results == [h["result_digest"] for h in info["hops"]]
    outbox = Reference(route_registry.host, f"pht-outbox/{spec.id}", digest=digest)
    opened = fetch_results(client, outbox, spec, parties["alice"].age, tmp_path / "results")
    assert [r.hop for r, _ in opened] == [2]  # a sequential route: only the last is alice's
    state = json.loads((tmp_path / "results" / "2-station-c" / "state.json").read_text())
    assert state["rows"] == sum(ROWS.values())
    assert [h["station"] for h in state["hops"]] == list(STATIONS)


def test_parallel_route_across_three_stations_collects_every_result(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any, tmp_path: Path,
) -> None:  # fmt: skip
    spec, ref = _push_train(docker_client, client, route_registry, parties, mode="parallel")
    info = _submit(central, ref, parties)
    assert [h["state"] for h in info["hops"]] == ["sent", "sent", "sent"]
    # The stations finish in the reverse of the route's order.
    for name in reversed(STATIONS):
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    info = _wait_status(central, spec.id, "done")
    assert [h["state"] for h in info["hops"]] == ["done", "done", "done"]
    assert _sent_hops(info) == [0, 1, 2]
    assert _kinds(info).count("outbox") == 3  # one copy from each station's project
    verdicts = [v for d in _flush(central.recorder, client) for v in d.results()]
    assert [v for v in verdicts if v not in (None, "waiting for the station's signature")] == [
        "collected", "collected", "done"
    ]  # fmt: skip

    _check_outbox(client, route_registry, spec, str(ref.digest), parties)
    outbox = Reference(route_registry.host, f"pht-outbox/{spec.id}", digest=ref.digest)
    opened = fetch_results(client, outbox, spec, parties["alice"].age, tmp_path / "results")
    assert [r.hop for r, _ in opened] == [0, 1, 2]  # every parallel result is alice's
    for hop, name in enumerate(STATIONS):
        state = json.loads((tmp_path / "results" / f"{hop}-{name}" / "state.json").read_text())
        assert state["rows"] == ROWS[name]


def test_duplicated_and_reordered_events_route_once(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    """Everything the registry sends is held back, then replayed after each hop: the whole
    history so far, newest first, then oldest first. Every envelope arrives at least twice,
    results of earlier hops arrive late, pulls, blob pushes, mounts and signatures in
    between; each hop must still be routed exactly once."""
    central.recorder.hold = lambda envelope: True
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    _submit(central, ref, parties)
    expected = ["sent hop 1", "sent hop 2", "done"]
    for hop, name in enumerate(STATIONS):
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
        announced = _announced(central.recorder, f"{name}/{spec.id}", f"result-{hop}")
        _wait(f"the registry to announce result-{hop}", announced)
        history = central.recorder.snapshot()
        verdicts = [v for d in [*reversed(history), *history] for v in central.replay(d)]
        assert [v for v in verdicts if v is not None] == [expected[hop]]
        assert central.train(spec.id)["hops"][hop]["state"] == "done"

    history = _flush(central.recorder, client)
    assert not [v for d in [*reversed(history), *history] for v in central.replay(d) if v]
    info = central.train(spec.id)
    assert info["status"] == "done"
    assert _sent_hops(info) == [0, 1, 2]
    assert Counter(_kinds(info)) == {"submitted": 1, "sent": 3, "result": 3, "outbox": 1,
                                     "done": 1}  # fmt: skip
    assert [r.destination for r in central.copier.reports] == [
        f"{p}/{spec.id}" for p in (*STATIONS, "pht-outbox")
    ]
    # The registry saw each manifest pushed once to each project: no copy was made twice.
    history = _flush(central.recorder, client)
    for project in (*STATIONS, "pht-outbox"):
        pushes = _manifest_pushes(history, f"{project}/{spec.id}")
        assert pushes and set(pushes.values()) == {1}, (project, pushes)


def test_dropped_event_is_recovered_by_reconciliation(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    lost = _is_push_of(f"station-b/{spec.id}", "result-1")
    central.recorder.hold = lost  # the registry delivers it; the central never hears of it
    _submit(central, ref, parties)
    for name in STATIONS[:2]:
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    history = _flush(central.recorder, client)
    assert [d.held for d in history if lost(d.envelope)] == [True]
    info = central.train(spec.id)
    assert [h["state"] for h in info["hops"]] == ["done", "sent", "pending"]
    assert "train" not in _tags(client, f"station-c/{spec.id}")

    assert central.post("/reconcile").json() == {"actions": 1}
    assert central.post("/reconcile").json() == {"actions": 0}  # nothing left to do
    _run_station(central, stations["station-c"], client, route_registry, spec.id, docker_client)
    info = _wait_status(central, spec.id, "done")
    via = [e["message"].rsplit("(", 1)[1] for e in info["events"] if e["kind"] == "result"]
    assert via == ["webhook)", "reconcile)", "webhook)"]
    assert _sent_hops(info) == [0, 1, 2]
    _check_outbox(client, route_registry, spec, str(ref.digest), parties)


def test_copies_upload_no_layer_bytes(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    """Registry storage grows by exactly what the stations pushed (results, configs,
    signatures, their manifests); every byte the central service moved was a mount.

    Storage alone cannot tell a mount from a re-upload (distribution keeps one file per
    digest), so the registry's own events say which it was: a re-uploaded blob is a
    ``push`` announced in the destination, a mounted one a ``mount``.
    """
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    train = client.get_manifest(ref.repository, str(ref.digest))
    train_blobs = {d.digest for d in [train.config, *train.layers] if d is not None}
    train_bytes = sum(d.size for d in [train.config, *train.layers] if d is not None)
    before = route_registry.storage_bytes()
    _submit(central, ref, parties)
    for name in STATIONS:
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    _wait_status(central, spec.id, "done")
    growth = route_registry.storage_bytes() - before

    # What the stations pushed, read back from the outbox: per hop the result manifest, its
    # config and layer, its signature manifest with config and payload layer, its
    # attestation manifest with config and envelope layer.
    outbox = f"pht-outbox/{spec.id}"
    pushed: dict[str, int] = {}
    station_blobs: dict[str, set[str]] = {}
    for hop, name in enumerate(STATIONS):
        result = client.get_manifest(outbox, f"result-{hop}")
        signature = client.get_manifest(outbox, signature_tag(result.digest))
        attestation = client.get_manifest(outbox, attestation_tag(result.digest))
        blobs = set()
        for manifest in (result, signature, attestation):
            pushed[manifest.digest] = len(manifest.raw)
            for d in [manifest.config, *manifest.layers]:
                assert d is not None
                pushed[d.digest] = d.size
                blobs.add(d.digest)
        station_blobs[name] = blobs
    print(f"\ntrain {train_bytes} bytes; storage grew {growth} bytes; stations pushed "
          f"{sum(pushed.values())} bytes in {len(pushed)} blobs and manifests")  # fmt: skip
    assert growth == sum(pushed.values())

    history = _flush(central.recorder, client)
    events = _registry_events(history)
    for project in (*STATIONS, "pht-outbox"):
        repo = f"{project}/{spec.id}"
        uploaded = {
            e["target"]["digest"]
            for e in events
            if _is_blob(e) and e["action"] == "push" and e["target"]["repository"] == repo
        }
        mounted = {e["target"]["digest"] for e in events
                   if e["action"] == "mount" and e["target"]["repository"] == repo}  # fmt: skip
        assert uploaded == station_blobs.get(project, set()), project
        assert train_blobs <= mounted, project
    for report in central.copier.reports:
        assert report.blobs_streamed == 0 and report.bytes_streamed == 0, str(report)
        assert report.blobs_mounted > 0, str(report)


def test_result_announced_before_its_signature_waits_instead_of_failing(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    """Regression: a station pushes ``result-<k>`` and signs it afterwards, and the registry
    announces the push at once, so the router used to find no signature and fail the
    train ("has no signatures"). The moment is recreated for certain: the announcement is
    held, the signature removed, and the announcement delivered."""
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    repo = f"station-a/{spec.id}"
    announced = _is_push_of(repo, "result-0")
    central.recorder.hold = announced
    _submit(central, ref, parties)
    record = _run_station(central, stations["station-a"], client, route_registry, spec.id,
                          docker_client)  # fmt: skip
    result = record["result_digest"]
    client.delete_manifest(repo, client.resolve(repo, signature_tag(result)))
    (delivery,) = [d for d in _flush(central.recorder, client) if announced(d.envelope)]

    assert central.replay(delivery) == ["waiting for the station's signature"]
    info = central.train(spec.id)
    assert info["status"] == "routing" and info["hops"][0]["state"] == "sent"
    assert central.post("/reconcile").json() == {"actions": 0}  # still unsigned: still waiting

    sign(client, Reference(route_registry.host, repo, digest=result), parties["station-a"].key,
         role="station", signer="station-a")  # fmt: skip
    # The announcement was not recorded as handled, so delivering it again routes the hop.
    assert central.replay(delivery) == ["sent hop 1"]
    assert central.replay(delivery) == [None]
    assert "train" in _tags(client, f"station-b/{spec.id}")
    assert central.train(spec.id)["hops"][0]["result_digest"] == result


def _verdicts(recorder: Recorder, repository: str, tag: str) -> list[str | None]:
    """The router's answers to the registry's deliveries of a push of ``repository:tag``."""
    match = _is_push_of(repository, tag)
    verdicts: list[str | None] = []
    for delivery in recorder.snapshot():
        if match(delivery.envelope) and not delivery.held:
            verdicts.extend(delivery.results())
    return verdicts


def test_a_push_to_incoming_by_a_registered_creator_submits_the_train(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    """No `pht train submit`: the registry's notification of the push is the submission. The
    creator's key comes from the central service's creator directory, never from the train."""
    for name, role in (("alice", "creator"), ("reviewer", "approver")):
        resp = central.post("/keys", {"name": name, "role": role, "key": parties[name].public.pem})
        assert resp.status_code == 200, resp.text
        assert resp.json()["key_id"] == parties[name].key.key_id
    central.router.signature_wait = 0.2
    spec = make_train_spec(parties, list(STATIONS))
    repo = f"pht-incoming/{spec.id}"
    ref = Reference(route_registry.host, repo, tag="train")
    digest = build_train(docker_client, ref, spec)  # pushed, not signed yet
    _wait("the central service's answer to the push",
          lambda: _verdicts(central.recorder, repo, "train"))  # fmt: skip
    assert _verdicts(central.recorder, repo, "train") == [
        "waiting for its creator's signature and approvals (0 of 1)"
    ]
    waiting = central.http.get(f"{central.url}/incoming", timeout=30).json()["waiting"]
    assert [(w["repository"], w["digest"]) for w in waiting] == [(repo, digest)]
    not_yet = central.http.get(f"{central.url}/trains/{spec.id}", timeout=30)
    assert not_yet.status_code == 404 and "is waiting for its creator's signature" in not_yet.text

    # Signed by its creator, it still waits for the reviewer (a station would refuse it).
    sign_train(client, ref.with_digest(digest), parties, "alice")
    assert central.post("/reconcile").json()["actions"] == 0
    (row,) = central.http.get(f"{central.url}/incoming", timeout=30).json()["waiting"]
    assert row["waiting_for"] == "approvals (0 of 1)"
    # A signature by an unregistered key does not count.
    sign(client, ref.with_digest(digest), parties["mallory"].key, role="approver")
    assert central.post("/reconcile").json()["actions"] == 0
    sign_train(client, ref.with_digest(digest), parties, "reviewer")
    assert central.post("/reconcile").json()["actions"] == 1
    assert central.http.get(f"{central.url}/incoming", timeout=30).json()["waiting"] == []
    info = central.train(spec.id)
    assert info["status"] == "routing" and _sent_hops(info) == [0]
    assert "verified creator signature" in info["events"][0]["message"]
    for name in STATIONS:
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    info = _wait_status(central, spec.id, "done")
    assert [h["state"] for h in info["hops"]] == ["done", "done", "done"]


def test_a_push_to_incoming_by_an_unregistered_creator_is_refused(
    central: Central, docker_client: Any, client: RegistryClient,
    route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    central.post("/keys", {"name": "alice", "role": "creator", "key": parties["alice"].public.pem})
    spec = make_train_spec(parties, list(STATIONS), creator_id="mallory",
                           creator_key_id=parties["mallory"].key.key_id,
                           creator_recipient=parties["mallory"].age.recipient)  # fmt: skip
    repo = f"pht-incoming/{spec.id}"
    ref = Reference(route_registry.host, repo, tag="train")
    digest = build_train(docker_client, ref, spec)
    sign(client, ref.with_digest(digest), parties["mallory"].key, role="creator")
    _wait("the central service's answer to the push",
          lambda: _verdicts(central.recorder, repo, "train"))  # fmt: skip
    assert _verdicts(central.recorder, repo, "train") == ["refused"]
    answer = central.http.get(f"{central.url}/trains/{spec.id}", timeout=30)
    assert answer.status_code == 404
    assert f"the creator key {parties['mallory'].key.key_id} is not registered" in answer.text
    (refusal,) = central.http.get(f"{central.url}/incoming", timeout=30).json()["refused"]
    assert refusal["message"].startswith(f"{repo}@{digest}: the creator key")
    # Nothing was copied to any station.
    assert all(not _tags(client, f"{name}/{spec.id}") for name in STATIONS)
    # Registering a key needs the API token.
    body = {"name": "m", "role": "creator", "key": parties["mallory"].public.pem}
    assert central.http.post(f"{central.url}/keys", json=body).status_code == 401


def test_a_station_operators_mistaken_trigger_leaves_the_train_routing(
    central: Central, stations: dict[str, Station], docker_client: Any,
    client: RegistryClient, route_registry: LocalRegistry, parties: Any,
) -> None:  # fmt: skip
    """station-a's operator triggers the train with a reference in another project (and
    then once more while it is already done there): both are the station's mistakes, audited
    at the station and never reported, so the researcher's train routes on to done."""
    import yaml

    from pht_airflow.errors import AlreadyDoneError, PolicyError

    for station in stations.values():  # every station reports to this central service
        data = yaml.safe_load(station.config_path.read_text())
        data["central"] = {"url": central.url}
        station.config_path.write_text(yaml.safe_dump(data))
    spec, ref = _push_train(docker_client, client, route_registry, parties)
    _submit(central, ref, parties)
    a = stations["station-a"]
    _wait("the train in station-a", lambda: "train" in _tags(client, f"station-a/{spec.id}"))
    wrong = f"{route_registry.host}/station-b/{spec.id}:train"
    with pytest.raises(PolicyError, match="not in this station's project 'station-a'"):
        run_hop(a.config(), wrong, docker_client=docker_client)
    record = AuditLog(a.audit_path).last()
    assert record is not None and record["failure"]["station_fault"] is True
    info = central.train(spec.id)
    assert info["status"] == "routing", info
    assert "hop-failed" not in _kinds(info) and "failed" not in _kinds(info)

    _run_station(central, a, client, route_registry, spec.id, docker_client)
    with pytest.raises(AlreadyDoneError):
        run_hop(a.config(), f"{route_registry.host}/station-a/{spec.id}:train",
                docker_client=docker_client)  # fmt: skip
    for name in STATIONS[1:]:
        _run_station(central, stations[name], client, route_registry, spec.id, docker_client)
    info = _wait_status(central, spec.id, "done")
    assert [h["state"] for h in info["hops"]] == ["done", "done", "done"]
    assert "hop-failed" not in _kinds(info) and "failed" not in _kinds(info)
