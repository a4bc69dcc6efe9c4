"""Routing: webhook events per second at the central service, and routing latency per hop.

Run:  .venv/bin/python benchmarks/bench_route.py [--trains 100] [--events 3000] [--clients 4]
      [--markdown]

Everything on 127.0.0.1, in three processes besides the registry:

- this process: the central service, the real FastAPI app (``pht_airflow.web.central_app``: router,
  SQLite database, ``PlainRegistryAdmin`` copies by mount) served by uvicorn, behind a thin
  ASGI wrapper that timestamps every registry delivery and can hold deliveries back;
- a station process: the station's webhook receiver (``pht_airflow.web.webhook_app``, what the
  station plugin mounts) and one worker per station (station-a, -b, -c). When the registry
  announces ``train`` in a station's project, the worker reads the spec and seals a tiny
  result with ``sealing.seal`` (tar, age to the next recipient, push ``result-<k>``,
  station signature): the hop without a container, so 100 trains x 3 hops take minutes;
- a load process (only for the throughput runs): ``http.client`` keep-alive connections
  POSTing recorded registry envelopes as fast as the server answers.

``docker-registry`` notifies both receivers (``notifications: endpoints:``), one envelope per
event, in order per endpoint. Trains are synthetic: a 1 MiB layer shared by all (mounted into
each train's repository), a config holding the spec label, the creator's signature.

Latency of a hop: from the arrival at the central service of the registry's notification
that a station pushed ``result-<k>`` to the end of the copy into the next station's project
(or the outbox, after the last hop); measured for ``--trains`` trains of 3 hops submitted
one at a time, then for as many submitted at once. Baseline: the bare
``PlainRegistryAdmin.copy_train`` calls of the same copies into fresh repositories.

Throughput: envelopes per second answered, with ``--clients`` concurrent connections, for
(a) a no-op FastAPI endpoint and (b) the webhook receiver with a no-op callback (the
baselines), and for the central service with noise (pulls, blob pushes, mounts, signature
and train tags: everything the registry sends besides results), with result announcements
it has already routed (duplicates), and with fresh results (each one verified and copied to
the outbox: one-station trains whose announcements were held back while the station pushed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import multiprocessing
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from pht_airflow.central.db import make_engine, make_sessionmaker  # noqa: E402
from pht_airflow.central.registry import CopyReport, PlainRegistryAdmin  # noqa: E402
from pht_airflow.central.router import Router  # noqa: E402
from pht_airflow.dev.localregistry import Endpoint, free_port, start_registry  # noqa: E402
from pht_airflow.keys import AgeIdentity, SigningKey, signing_key_from_pem  # noqa: E402
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, Reference, RegistryClient  # noqa: E402
from pht_airflow.protocol import TRAIN_LABEL  # noqa: E402
from pht_airflow.researcher.train import StationInfo, make_spec  # noqa: E402
from pht_airflow.signing import sign, signature_tag  # noqa: E402
from pht_airflow.spec import TrainSpec, read_spec  # noqa: E402
from pht_airflow.web.central_app import create_app  # noqa: E402
from pht_airflow.web.webhook_app import create_app as create_webhook_app  # noqa: E402
from pht_airflow.webhooks import CT_DISTRIBUTION, PushEvent  # noqa: E402

BENCH_DIR = ROOT / ".pht" / "bench"
STATIONS = ("station-a", "station-b", "station-c")
CENTRAL_SECRET = "bench-central-webhook-secret"
STATION_SECRET = "bench-station-webhook-secret"
TOKEN = "bench-api-token"
WEBHOOK_PATH = "/webhooks/registry-events"
STATION_PATH = "/registry-events"
REPLAY_HEADER = "x-bench-replay"
LAYER = "application/vnd.oci.image.layer.v1.tar"
KEY_PASSPHRASE = b"bench keys live for one run"
RESULT_PUSH = re.compile(r"^result-(\d+)$")
MiB = 1024 * 1024


# --- servers -------------------------------------------------------------------------


def serve(app: Any, port: int) -> Callable[[], None]:
    """Serve ``app`` with uvicorn on 127.0.0.1:``port`` in a thread; return a stopper."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return stop


def _registry_time(stamp: str) -> float:
    """The registry's RFC 3339 event timestamp (nanoseconds) as a POSIX time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    moment = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    return moment.timestamp() + float(f"0.{frac or '0'}")


@dataclass
class Arrival:
    """A station's result announcement as the central service received it."""

    perf: float  # time.perf_counter() at arrival
    lag: float  # arrival (wall clock) minus the registry's event timestamp


@dataclass
class Ingress:
    """ASGI wrapper in front of the central app: timestamps and keeps what the registry
    delivers (``envelopes``), holds back what ``hold`` matches (``held``, answered 200:
    delivered, to the registry). Requests with the replay header (the load process) go
    straight to the app."""

    app: Any
    hold: Callable[[dict[str, Any]], bool] | None = None
    envelopes: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    held: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    arrivals: dict[tuple[str, int], Arrival] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH:
            await self.app(scope, receive, send)
            return
        if any(k == REPLAY_HEADER.encode() for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        now_perf, now_wall = time.perf_counter(), time.time()
        envelope = json.loads(body)
        with self.lock:
            held = self.hold is not None and self.hold(envelope)
            (self.held if held else self.envelopes).append((body, envelope))
            for event in envelope.get("events", []):
                key = _station_result(event)
                if key is not None and key not in self.arrivals:
                    lag = now_wall - _registry_time(event["timestamp"])
                    self.arrivals[key] = Arrival(now_perf, lag)
        if held:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"accepted":[],"ignored":0}'})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)


def _station_result(event: dict[str, Any]) -> tuple[str, int] | None:
    """(train id, hop) if ``event`` announces a station's push of its own ``result-<k>``."""
    target = event.get("target", {})
    if event.get("action") != "push" or "/manifests/" not in target.get("url", ""):
        return None
    m = RESULT_PUSH.match(target.get("tag") or "")
    project, _, train_id = target.get("repository", "").partition("/")
    if m is None or not train_id:
        return None
    hop = int(m.group(1))
    return (train_id, hop) if hop < len(STATIONS) and STATIONS[hop] == project else None


def _is_result_push(envelope: dict[str, Any]) -> bool:
    return any(
        e.get("action") == "push"
        and "/manifests/" in e.get("target", {}).get("url", "")
        and RESULT_PUSH.match(e.get("target", {}).get("tag") or "")
        for e in envelope.get("events", [])
    )


class TimedCopier:
    """The real plain-registry admin; notes when each copy into a repository completed."""

    def __init__(self, inner: PlainRegistryAdmin) -> None:
        self.inner = inner
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.copies: Counter[str] = Counter()
        self.reports: list[CopyReport] = []

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> Any:
        started = time.perf_counter()
        report = self.inner.copy_train(src_repository, dst_repository, train_digest)
        self.started.setdefault(dst_repository, started)
        self.done.setdefault(dst_repository, time.perf_counter())
        self.copies[dst_repository] += 1
        self.reports.append(report)
        return report


def noop_app() -> FastAPI:
    """Baseline (a): answers the webhook POST like the receiver does, doing nothing."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(WEBHOOK_PATH)
    async def events(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"accepted": [], "ignored": 0})

    return app


# --- the station process ---------------------------------------------------------------


def stations_main(
    registry_host: str, port: int, keys: dict[str, bytes], root: Path, ready: Any, errors: Any
) -> None:
    """Station receiver + one sealing worker per station (runs in its own process)."""
    from pht_airflow.results import seal

    work: dict[str, queue.Queue[tuple[str, str]]] = {name: queue.Queue() for name in STATIONS}
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def on_push(event: PushEvent) -> str | None:
        if event.tag != "train":
            return None
        station, _, train_id = event.repository.partition("/")
        with lock:
            if (station, train_id) in seen:
                return None
            seen.add((station, train_id))
        # By digest, as the station plugin does: distribution announces a manifest push
        # before it links the tag, so the tag may not resolve yet.
        work[station].put((train_id, event.digest))
        return "queued"

    def worker(station: str, key: SigningKey, out: Path) -> None:
        with RegistryClient(registry_host) as client:
            while True:
                train_id, digest = work[station].get()
                try:
                    repo = f"{station}/{train_id}"
                    manifest = client.get_manifest(repo, digest)
                    pinned = Reference(registry_host, repo, digest=manifest.digest)
                    spec, _ = read_spec(client, pinned)
                    hop = [e.station for e in spec.route].index(station)
                    previous = client.resolve(repo, f"result-{hop - 1}") if hop else None
                    seal(client, pinned, manifest, spec, hop=hop, output_dir=out, key=key,
                         previous=previous)  # fmt: skip
                except Exception:  # noqa: BLE001 - report to the parent, keep serving
                    errors.put(f"{station} {train_id}: {traceback.format_exc()}")

    for name in STATIONS:
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"station": name, "rows": 42}) + "\n")
        key = signing_key_from_pem(keys[name], KEY_PASSPHRASE, f"{name} key")
        threading.Thread(target=worker, args=(name, key, out), daemon=True).start()
    app = create_webhook_app(
        secret_provider=lambda: STATION_SECRET,
        on_push=on_push,
        projects=lambda: STATIONS,
        path=STATION_PATH,
    )
    serve(app, port)
    ready.set()
    while True:
        time.sleep(3600)


# --- the load process ------------------------------------------------------------------


def load_main(
    port: int, path: str, bodies: Sequence[bytes], total: int, clients: int
) -> dict[str, Any]:
    """POST ``total`` bodies over ``clients`` keep-alive connections; time each answer."""
    headers = {
        "Content-Type": CT_DISTRIBUTION,
        "Authorization": f"Bearer {CENTRAL_SECRET}",
        REPLAY_HEADER: "1",
    }
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[Counter[int]] = [Counter() for _ in range(clients)]
    verdicts: list[Counter[str]] = [Counter() for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start.wait()
        for j in range(shares[i]):
            body = bodies[(i + j * clients) % len(bodies)]
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            latencies[i].append(time.perf_counter() - t0)
            statuses[i][resp.status] += 1
            if resp.status == 200:
                for accepted in json.loads(answer).get("accepted", []):
                    verdicts[i][str(accepted.get("result"))] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    status: Counter[int] = Counter()
    verdict: Counter[str] = Counter()
    for s in statuses:
        status.update(s)
    for v in verdicts:
        verdict.update(v)
    return {
        "seconds": seconds,
        "latencies": [x for lat in latencies for x in lat],
        "statuses": dict(status),
        "verdicts": dict(verdict),
    }


# --- trains ------------------------------------------------------------------------------


@dataclass
class Keys:
    creator: SigningKey
    creator_age: AgeIdentity
    stations: dict[str, SigningKey]
    recipients: dict[str, str]


def make_keys() -> Keys:
    ages = {name: AgeIdentity.generate() for name in STATIONS}
    return Keys(
        creator=SigningKey.generate(),
        creator_age=AgeIdentity.generate(),
        stations={name: SigningKey.generate() for name in STATIONS},
        recipients={name: ages[name].recipient for name in STATIONS},
    )


def push_trains(
    client: RegistryClient, keys: Keys, route: Sequence[str], count: int, layer: Descriptor
) -> list[tuple[TrainSpec, str]]:
    """``count`` synthetic trains in pht-incoming, signed by the creator."""
    trains = []
    for _ in range(count):
        spec = make_spec(
            name="bench-route",
            creator_id="alice",
            creator_key_id=keys.creator.key_id,
            creator_recipient=keys.creator_age.recipient,
            route=[StationInfo(s, keys.stations[s].public.pem, keys.recipients[s]) for s in route],
            mode="sequential",
            dataset="cohort",
        )
        repo = f"pht-incoming/{spec.id}"
        if not client.mount_blob(repo, layer.digest, "pht-incoming/base"):
            raise RuntimeError("the registry refused to mount the shared train layer")
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {TRAIN_LABEL: spec.to_canonical_json()}},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
        config_desc = client.upload_bytes(repo, _canonical(config), OCI_CONFIG)
        raw = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_desc.to_dict(),
                "layers": [layer.to_dict()],
            }
        )
        digest = client.put_manifest(repo, "train", raw, OCI_MANIFEST)
        sign(client, Reference(client.registry, repo, digest=digest), keys.creator,
             role="creator", signer="alice")  # fmt: skip
        trains.append((spec, digest))
    return trains


def _canonical(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


# --- measurements ------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Phase:
    label: str
    latencies: list[float] = field(default_factory=list)
    copies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    seconds: float = 0.0
    hops: int = 0


class Central:
    """The central service of the benchmark and the clocks around it."""

    def __init__(self, router: Router, copier: TimedCopier, ingress: Ingress, url: str) -> None:
        self.router = router
        self.copier = copier
        self.ingress = ingress
        self.url = url
        self.http = requests.Session()
        self.http.trust_env = False

    def submit(self, reference: str, creator_pem: str) -> None:
        resp = self.http.post(
            f"{self.url}/trains",
            json={"reference": reference, "creator_key": creator_pem},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"submit {reference} failed ({resp.status_code}): {resp.text}")

    def status(self, train_id: str) -> str:
        return str(self.router.train(train_id)["status"])

    def wait_done(self, ids: Sequence[str], timeout: float, errors: Any) -> None:
        pending = list(ids)
        deadline = time.monotonic() + timeout
        while pending:
            while not errors.empty():
                print("station error:", errors.get(), file=sys.stderr)
            status = self.status(pending[0])
            if status == "done":
                pending.pop(0)
                continue
            if status != "routing":
                raise RuntimeError(f"train {pending[0]}: {self.router.train(pending[0])}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} train(s) not done after {timeout:.0f} s: "
                                   f"{self.router.train(pending[0])['hops']}")  # fmt: skip
            time.sleep(0.01)


def hop_destination(train_id: str, hop: int) -> str:
    return (
        f"{STATIONS[hop + 1]}/{train_id}" if hop + 1 < len(STATIONS) else f"pht-outbox/{train_id}"
    )


def collect(phase: Phase, central: Central, ids: Sequence[str]) -> None:
    for train_id in ids:
        for hop in range(len(STATIONS)):
            arrival = central.ingress.arrivals[(train_id, hop)]
            dst = hop_destination(train_id, hop)
            done = central.copier.done[dst]
            phase.latencies.append(done - arrival.perf)
            phase.copies.append(done - central.copier.started[dst])
            phase.lags.append(arrival.lag)
            phase.hops += 1


def run_route_phase(
    label: str,
    central: Central,
    trains: Sequence[tuple[TrainSpec, str]],
    registry_host: str,
    creator_pem: str,
    errors: Any,
    *,
    at_once: bool,
) -> Phase:
    phase = Phase(label)
    ids = [spec.id for spec, _ in trains]
    start = time.perf_counter()
    for spec, _ in trains:
        central.submit(f"{registry_host}/pht-incoming/{spec.id}:train", creator_pem)
        if not at_once:
            central.wait_done([spec.id], 120, errors)
    central.wait_done(ids, 600, errors)
    phase.seconds = time.perf_counter() - start
    collect(phase, central, ids)
    return phase


def baseline_copies(
    admin: PlainRegistryAdmin, trains: Sequence[tuple[TrainSpec, str]]
) -> list[float]:
    """The same copies the router made per hop, as bare ``copy_train`` calls into fresh
    repositories (the source holds what it held when the router copied from it)."""
    times = []
    for spec, digest in trains:
        for hop, station in enumerate(STATIONS):
            dst = f"bench-copy-{hop}/{spec.id}"
            t0 = time.perf_counter()
            admin.copy_train(f"{station}/{spec.id}", dst, digest)
            times.append(time.perf_counter() - t0)
    return times


@dataclass
class Throughput:
    label: str
    events: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    verdicts: dict[str, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def blast(
    ctx: Any, label: str, port: int, path: str, bodies: Sequence[bytes], total: int, clients: int
) -> Throughput:
    with ctx.Pool(1) as pool:
        out = pool.apply(load_main, (port, path, list(bodies), total, clients))
    result = Throughput(
        label, total, out["seconds"], out["latencies"], out["statuses"], out["verdicts"]
    )
    print(f"# {label}: router verdicts {result.verdicts}", file=sys.stderr)
    if set(result.statuses) != {200}:
        raise RuntimeError(f"{label}: answers {result.statuses}")
    return result


def _machine() -> str:
    cores = os.cpu_count()
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GB"
    try:
        version = subprocess.run(["docker-registry", "--version"], capture_output=True,
                                 text=True, check=False).stdout.split()  # fmt: skip
        registry = version[2] if len(version) > 2 else "?"
    except OSError:
        registry = "?"
    libs = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("fastapi", "uvicorn", "sqlalchemy")
    )
    return (
        f"{cores} cores, {mem} RAM, Python {platform.python_version()}, {libs}, "
        f"docker-registry {registry}"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in rows:
            print("; ".join(f"{h}: {v}" for h, v in zip(head, row, strict=True)))
    print()


# --- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trains", type=int, default=100, help="trains per latency run")
    parser.add_argument("--events", type=int, default=3000, help="POSTs per throughput run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--manifest-pushes-only",
        action="store_true",
        help="configure the registry to announce only manifest pushes and deletes (no pulls, "
        "blob events or mounts), as make demo does",
    )
    args = parser.parse_args()

    # SIGTERM ends the run through the finally below (registry, station process, files).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = multiprocessing.get_context("spawn")
    work = BENCH_DIR / f"route-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    keys = make_keys()
    central_port, station_port, noop_port, receiver_port = (free_port() for _ in range(4))
    endpoint = Endpoint.manifest_pushes if args.manifest_pushes_only else Endpoint
    endpoints = [
        endpoint("central", f"http://127.0.0.1:{central_port}{WEBHOOK_PATH}",
                 {"Authorization": [f"Bearer {CENTRAL_SECRET}"]}),
        endpoint("stations", f"http://127.0.0.1:{station_port}{STATION_PATH}",
                 {"Authorization": [f"Bearer {STATION_SECRET}"]}),
    ]  # fmt: skip
    registry = start_registry(work / "registry", endpoints=endpoints)
    stoppers: list[Callable[[], None]] = []
    ready, errors = ctx.Event(), ctx.Queue()
    pems = {n: k.private_pem(KEY_PASSPHRASE) for n, k in keys.stations.items()}
    stations = ctx.Process(
        target=stations_main,
        args=(registry.host, station_port, pems, work / "stations", ready, errors),
        name="pht-bench-stations",
        daemon=True,
    )
    stations.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the station process did not start")
        client = RegistryClient(registry.host)
        admin = PlainRegistryAdmin(client)
        copier = TimedCopier(PlainRegistryAdmin(RegistryClient(registry.host)))
        router = Router(
            make_sessionmaker(make_engine(f"sqlite:///{work / 'central.db'}")),
            RegistryClient(registry.host),
            copier,
        )
        for name in STATIONS:
            router.add_station(name, keys.stations[name].public.pem, keys.recipients[name],
                               project=name)  # fmt: skip
        app = create_app(router, api_token=lambda: TOKEN,
                         webhook_secret=lambda: CENTRAL_SECRET, reconcile_seconds=0)  # fmt: skip
        ingress = Ingress(app)
        stoppers.append(serve(ingress, central_port))
        stoppers.append(serve(noop_app(), noop_port))
        receiver = create_webhook_app(secret_provider=lambda: CENTRAL_SECRET,
                                      on_push=lambda event: None, path=WEBHOOK_PATH)  # fmt: skip
        stoppers.append(serve(receiver, receiver_port))
        central = Central(router, copier, ingress, f"http://127.0.0.1:{central_port}")

        layer = client.upload_bytes("pht-incoming/base", os.urandom(MiB), LAYER)
        n = args.trains
        print(f"# pushing {3 * n} synthetic trains", file=sys.stderr)
        one_by_one = push_trains(client, keys, STATIONS, n, layer)
        all_at_once = push_trains(client, keys, STATIONS, n, layer)
        single = push_trains(client, keys, STATIONS[:1], n, layer)
        creator_pem = keys.creator.public.pem

        print(f"# routing {n} trains one at a time", file=sys.stderr)
        seq = run_route_phase(f"{n} trains one at a time", central, one_by_one,
                              registry.host, creator_pem, errors, at_once=False)  # fmt: skip
        print(f"# routing {n} trains at once", file=sys.stderr)
        par = run_route_phase(f"{n} trains submitted at once", central, all_at_once,
                              registry.host, creator_pem, errors, at_once=True)  # fmt: skip
        print("# bare copies", file=sys.stderr)
        copies = baseline_copies(admin, [*one_by_one, *all_at_once])
        extra = {dst: c for dst, c in copier.copies.items() if c > 1}
        if extra:
            raise RuntimeError(f"repositories copied more than once: {extra}")

        # Fresh results: one-station trains whose result announcements are held back.
        print(f"# {n} fresh results, announcements held", file=sys.stderr)
        single_ids = {spec.id for spec, _ in single}

        def held_back(envelope: dict[str, Any]) -> bool:
            found = [_station_result(e) for e in envelope.get("events", [])]
            return any(k is not None and k[0] in single_ids for k in found)

        ingress.hold = held_back
        for spec, _ in single:
            central.submit(f"{registry.host}/pht-incoming/{spec.id}:train", creator_pem)
        deadline = time.monotonic() + 300
        while len(ingress.held) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ingress.held)} of {n} results were announced")
            time.sleep(0.05)
        for spec, _ in single:  # every result is signed before its announcement is posted
            repo = f"station-a/{spec.id}"
            result = client.resolve(repo, "result-0")
            while signature_tag(result) not in client.list_tags(repo):
                time.sleep(0.05)
        ingress.hold = None
        fresh_bodies = [body for body, _ in ingress.held]

        with ingress.lock:
            recorded = list(ingress.envelopes)
        noise = [b for b, env in recorded if not _is_result_push(env)]
        duplicates = [b for b, env in recorded if _is_result_push(env)]
        delivered = len(recorded) + len(ingress.held)
        envelopes_per_hop = delivered / max(1, seq.hops + par.hops + n)

        print("# throughput", file=sys.stderr)
        total, clients = args.events, args.clients
        runs = [
            blast(ctx, "(a) baseline: no-op FastAPI endpoint, same POSTs", noop_port,
                  WEBHOOK_PATH, noise, total, clients),
            blast(ctx, "(b) baseline: webhook receiver, no-op callback", receiver_port,
                  WEBHOOK_PATH, noise, total, clients),
            blast(ctx, "central: noise (pulls, blob pushes, mounts, .sig and train tags)",
                  central_port, WEBHOOK_PATH, noise, total, clients),
            blast(ctx, "central: duplicate result announcements (already routed)",
                  central_port, WEBHOOK_PATH, duplicates, total, clients),
            blast(ctx, "central: fresh results (verify + copy to the outbox)", central_port,
                  WEBHOOK_PATH, fresh_bodies, len(fresh_bodies), clients),
        ]  # fmt: skip
        central.wait_done(sorted(single_ids), 60, errors)
        reconciled = sum(
            "(reconcile)" in e["message"]
            for spec, _ in [*one_by_one, *all_at_once]
            for e in router.train(spec.id)["events"]
        )
        streamed = sum(r.blobs_streamed for r in copier.reports)
    finally:
        for stop in reversed(stoppers):
            stop()
        if stations.is_alive():
            stations.terminate()
            stations.join(10)
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"# routing benchmark, {dt.date.today()}, {_machine()}; load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        file=sys.stderr,
    )
    print(
        f"# {delivered} envelopes from the registry to the central service, "
        f"{envelopes_per_hop:.1f} per hop; {len(noise)} noise, {len(duplicates)} result "
        f"announcements; hops routed by reconciliation: {reconciled}; blobs streamed by "
        f"copies: {streamed}; the registry announces "
        + ("manifest pushes and deletes only" if args.manifest_pushes_only else "every event"),
        file=sys.stderr,
    )
    head: tuple[str, ...] = ("envelopes POSTed", "count", "envelopes/s", "median ms", "p99 ms")
    rows: list[tuple[str, ...]] = [
        (r.label, str(r.events), f"{r.rate:.0f}", _ms(statistics.median(r.latencies)),
         _ms(percentile(r.latencies, 99)))
        for r in runs
    ]  # fmt: skip
    _table(head, rows, args.markdown)

    head = ("routing latency per hop", "hops", "median ms", "p99 ms", "max ms",
            "of which the copy, median ms", "push → arrival median / p99 ms",
            "hops/s")  # fmt: skip
    rows = []
    for phase in (seq, par):
        rows.append(
            (
                phase.label,
                str(phase.hops),
                _ms(statistics.median(phase.latencies)),
                _ms(percentile(phase.latencies, 99)),
                _ms(max(phase.latencies)),
                _ms(statistics.median(phase.copies)),
                f"{_ms(statistics.median(phase.lags))} / {_ms(percentile(phase.lags, 99))}",
                f"{phase.hops / phase.seconds:.1f}",
            )
        )
    rows.append(
        (
            "baseline: bare `copy_train`, the same copies",
            str(len(copies)),
            _ms(statistics.median(copies)),
            _ms(percentile(copies, 99)),
            _ms(max(copies)),
            _ms(statistics.median(copies)),
            "",
            f"{len(copies) / sum(copies):.1f}",
        )
    )
    _table(head, rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
