"""Fault tests of the central service on a real route (issue 14's Must show), and the secret
scan after them.

One Airflow deployment (:mod:`pht_airflow.dev.localairflow`, the demo's layout) hosts
station-a and station-b (``PHT_STATION_CONFIG_DIR``); the central service runs as its own
process (``pht central serve``, SQLite; :class:`~support.centralproc.CentralProcess`) so a
test can SIGKILL it and start it again on the same database. A real ``docker-registry`` of
this module notifies the central service (through :class:`~support.faults.GateProxy`, which
can hold the delivery a test waits for) and each station's webhook receiver in Airflow, as
in the demo; it asks every client for a password (htpasswd). A train is submitted to the
central service, which copies it to station-a; the registry's notification of the train
starts station-a's run; the notification of its ``result-0`` makes the central service send
hop 1 to station-b; and so on to the outbox.

Each fault test asserts, once the train is done: every hop ran once (sandbox starts) in one
Airflow run that succeeded, with its audit record; exactly one result per hop in registry
storage (every result manifest of the train's repositories, tagged or not); the central
service's timeline has each step once and says how each result reached it (``webhook`` or
``reconcile``); no file left under the stations' folders; no sandbox container and no train
image left; ``pht audit verify`` passes for each station.

The last test scans what the module's stack wrote for secrets (:mod:`support.secretscan`).
"""

from __future__ import annotations

import secrets as random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.centralproc import CentralProcess
from support.faults import (
    GateProxy,
    SandboxStarts,
    leftover_files,
    marked,
    marker_of,
    result_manifests,
)
from support.secretscan import (
    Secrets,
    assert_scan_finds,
    party_secrets,
    scan_deployment,
    scan_tree,
)
from support.stationkit import (
    ANALYSIS,
    PASSPHRASE,
    Station,
    build_train,
    make_station,
    make_train_spec,
    sign_train,
)

from pht_airflow.airflow.names import dag_id_for
from pht_airflow.dev.localairflow import LocalAirflow, start_airflow
from pht_airflow.dev.localregistry import Endpoint, LocalRegistry, free_port, start_registry
from pht_airflow.errors import NotFoundError, ServiceError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.results import fetch_results
from pht_airflow.spec import TrainSpec
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.faults, pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

STATIONS = ("station-a", "station-b")
ROUTE_TIMEOUT = 900.0  # two hops on a loaded 2-core machine, with a restart between
PHT = Path(sys.executable).parent / "pht"
WEBHOOK_PATH = "/webhooks/registry-events"


@dataclass
class Route:
    root: Path
    airflow: LocalAirflow
    central: CentralProcess
    registry: LocalRegistry
    endpoints: list[Endpoint]
    proxy: GateProxy
    stations: dict[str, Station]
    webhook_secrets: dict[str, str]
    registry_login: tuple[str, str]
    htpasswd: Path
    #: Markers the trains wrote into their output tables (for the secret scan).
    markers: list[str] = field(default_factory=list)

    def restart_registry(self) -> None:
        port = self.registry.port
        self.registry.stop()
        self.registry = start_registry(
            self.registry.root, port=port, endpoints=self.endpoints, htpasswd=self.htpasswd
        )

    def client(self) -> RegistryClient:
        user, password = self.registry_login
        return RegistryClient(self.registry.host, username=user, password=password)


@pytest.fixture(scope="module")
def route(tmp_path_factory: pytest.TempPathFactory, parties: Any) -> Iterator[Route]:
    root = tmp_path_factory.mktemp("faults-central")
    registry_port, airflow_port = free_port(), free_port()
    # The registry asks everyone for a password (one account for all here: a robot's
    # secret, as far as the scan is concerned). bcrypt's lowest cost: the registry checks
    # it on every request.
    user, password = "pht-robot", random.token_urlsafe(24)
    htpasswd = root / "registry-auth" / "htpasswd"
    htpasswd.parent.mkdir(mode=0o700)
    htpasswd.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
    central = CentralProcess(
        root / "central",
        registry_host=f"127.0.0.1:{registry_port}",
        token=random.token_urlsafe(24),
        webhook_secret=random.token_urlsafe(24),
        # Reconciliation passes run only when the service starts: no periodic pass races a
        # notification, so the timeline says which of the two routed each result.
        reconcile_seconds=3600,
        registry_username=user,
        registry_password=password,
    )
    proxy = GateProxy(central.port)  # the registry reaches the central service through it
    hooks = {s: random.token_urlsafe(24) for s in STATIONS}
    endpoints = [
        Endpoint.manifest_pushes(
            "central", f"http://{proxy.host}{WEBHOOK_PATH}",
            {"Authorization": [central.webhook_secret]},
            timeout="300s",  # a delivery whose answer the proxy holds waits for the test
        )
    ] + [
        Endpoint.manifest_pushes(
            s, f"http://127.0.0.1:{airflow_port}/pht/{s}/registry-events",
            {"Authorization": [hooks[s]]},
        )
        for s in STATIONS
    ]  # fmt: skip
    registry = start_registry(
        root / "registry", port=registry_port, endpoints=endpoints, htpasswd=htpasswd
    )
    configs = root / "stations"
    configs.mkdir()
    stations = {}
    for rows, name in enumerate(STATIONS, 3):
        station = make_station(
            root / name,
            parties[name],
            registry.host,
            creators=[parties["alice"].public.pem],
            approvers=[parties["reviewer"].public.pem],
            rows=rows,
            overrides={
                "registry": {"username": user, "password": {"file": "keys/registry-password"}},
                "webhook": {"secret": {"file": "keys/webhook-secret"}},
                "central": {"url": central.url},  # a failed hop is reported there
            },
        )
        secret = station.root / "keys" / "webhook-secret"
        secret.write_text(hooks[name] + "\n")
        secret.chmod(0o600)
        (station.root / "keys" / "registry-password").write_text(password + "\n")
        (station.root / "keys" / "registry-password").chmod(0o600)
        (configs / f"{name}.yaml").symlink_to(station.config_path)
        stations[name] = station
    airflow: LocalAirflow | None = None
    route: Route | None = None
    try:
        central.start()
        for name in STATIONS:
            resp = central.post("/stations", {
                "id": name, "key": parties[name].public.pem,
                "recipient": parties[name].age.recipient, "project": name,
            })  # fmt: skip
            assert resp.status_code == 200, resp.text
        airflow = start_airflow(
            root / "airflow-home",
            env={"PHT_STATION_CONFIG_DIR": str(configs)},
            port=airflow_port,
            log_dir=root,
        )
        for name in STATIONS:
            airflow.wait_for_dag(dag_id_for(name))
        route = Route(
            root, airflow, central, registry, endpoints, proxy, stations, hooks,
            (user, password), htpasswd,
        )  # fmt: skip
        yield route
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if airflow is not None:
            airflow.stop()
        central.stop()
        proxy.close()
        # A test may have restarted the registry: stop the process running now.
        (route.registry if route is not None else registry).stop()


@pytest.fixture()
def starts(docker_client: Any) -> Iterator[SandboxStarts]:
    with SandboxStarts(docker_client) as watcher:
        yield watcher


# --- helpers ------------------------------------------------------------------------------


def _wait(route: Route, what: str, probe: Any, timeout: float = ROUTE_TIMEOUT) -> Any:
    """Poll ``probe`` until it returns something; fail with the logs after ``timeout``."""
    try:
        return route.airflow.wait(what, probe, timeout)
    except ServiceError as exc:
        tail = route.central.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"{exc}\n--- central.log:\n{tail}", pytrace=False)


def _tags(route: Route, repository: str) -> set[str]:
    with route.client() as client:
        try:
            return set(client.list_tags(repository))
        except NotFoundError:
            return set()


def _submit(route: Route, docker_client: Any, parties: Any) -> TrainSpec:
    """Build a train for both stations with a marker, push it to pht-incoming, sign and
    approve it, drop the local image (the stations pull it), submit it."""
    seed = random.token_hex(16)
    route.markers.append(marker_of(seed))
    spec = make_train_spec(parties, list(STATIONS))
    ref = Reference(route.registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(
        docker_client, ref, spec, script=marked(seed, ANALYSIS), auth=route.registry_login
    )
    with route.client() as client:
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    docker_client.images.remove(str(ref))
    resp = route.central.post(
        "/trains", {"reference": str(ref), "creator_key": parties["alice"].public.pem}
    )
    assert resp.status_code == 200, resp.text
    return spec


def _runs(route: Route, station: str, train_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in route.airflow.runs(dag_id_for(station))
        if train_id in str((r.get("conf") or {}).get("train", ""))
    ]


def _run_ended(route: Route, station: str, train_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        runs = _runs(route, station, train_id)
        return runs[0] if runs and runs[0]["state"] in ("success", "failed") else None

    return dict(_wait(route, f"{station}'s run of train {train_id} to end", ended))


def _done(route: Route, train_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        info = route.central.train(train_id)
        if info["status"] not in ("routing", "done"):
            pytest.fail(f"train {train_id} is {info['status']}: {info['reason']}", pytrace=False)
        return info if info["status"] == "done" else None

    return dict(_wait(route, f"train {train_id} to be done", done))


def _failed_deliveries(route: Route) -> int:
    """How many times the registry's log says a delivery to the central service failed."""
    sink = f"httpSink{{http://{route.proxy.host}{WEBHOOK_PATH}}}"
    return sum(
        1
        for line in route.registry.log_path.read_text(errors="replace").splitlines()
        if "retryingsink: error writing events" in line and sink in line
    )


def _via(info: dict[str, Any]) -> list[str]:
    """How each result reached the central service: ``webhook`` or ``reconcile``."""
    return [
        e["message"].rsplit("(", 1)[1].rstrip(")") for e in info["events"] if e["kind"] == "result"
    ]


def _assert_route_clean(
    route: Route, docker_client: Any, parties: Any, spec: TrainSpec, info: dict[str, Any],
    starts: SandboxStarts,
) -> None:  # fmt: skip
    """Every hop ran once and succeeded; one result per hop; nothing left behind; the
    researcher opens the final result, and it holds the train's marker."""
    assert [h["state"] for h in info["hops"]] == ["done", "done"], info["hops"]
    kinds = Counter(e["kind"] for e in info["events"])
    assert kinds == {"submitted": 1, "sent": 2, "result": 2, "outbox": 1, "done": 1}, kinds
    results = set()
    for hop, name in enumerate(STATIONS):
        station = route.stations[name]
        _run_ended(route, name, spec.id)  # the train is done once result-1 is pushed: seal,
        runs = _runs(route, name, spec.id)  # then record follows
        assert [r["state"] for r in runs] == ["success"], runs
        records = [
            r for r in AuditLog(station.audit_path).entries()
            if r.get("run_id") == runs[0]["dag_run_id"]
        ]  # fmt: skip
        assert len(records) == 1, records
        assert records[0]["outcome"] == "success", records[0]
        assert records[0]["hop"] == hop
        assert info["hops"][hop]["result_digest"] == records[0]["result_digest"]
        results.add(records[0]["result_digest"])
        assert starts.count(f"pht-{name}-{spec.id[:8]}-", 1) == 1  # ran once
        own = result_manifests(route.registry.storage, f"{name}/{spec.id}")
        assert records[0]["result_digest"] in own
        assert leftover_files(station.root) == []
        verified = subprocess.run(
            [str(PHT), "audit", "verify", str(station.audit_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        containers = docker_client.containers.list(all=True, filters={"label": "org.pht.sandbox"})
        assert [c.name for c in containers if spec.id[:8] in c.name] == []
    # Exactly one result per hop, wherever the registry stores one (a copy has the same
    # digest): the stations' repositories and the outbox.
    stored = set()
    for project in (*STATIONS, "pht-outbox"):
        stored |= set(result_manifests(route.registry.storage, f"{project}/{spec.id}"))
    assert stored == results and len(results) == 2, (stored, results)
    assert {"result-0", "result-1"} <= _tags(route, f"pht-outbox/{spec.id}")
    images = [
        name
        for image in docker_client.api.images()
        for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
        if spec.id in name
    ]
    assert images == []
    outbox = Reference(route.registry.host, f"pht-outbox/{spec.id}", digest=info["digest"])
    with tempfile.TemporaryDirectory() as folder, route.client() as client:
        fetch_results(client, outbox, spec, parties["alice"].age, Path(folder) / "results")
        opened = [p.read_text() for p in Path(folder).rglob("state.json")]
    assert len(opened) == 1 and route.markers[-1] in opened[0], opened


# --- 0. the scanner itself (no deployment) -------------------------------------------------


def test_the_secret_scan_reads_gzip_layers_sqlite_tables_and_tars(tmp_path: Path) -> None:
    """Each place a secret can hide from a plain byte search is read: a gzip blob, a SQLite
    value compressed with zlib, a gzip layer inside a tar (``docker image save``); a find
    names the file and the secret, never the secret's value."""
    import gzip
    import io
    import sqlite3
    import tarfile
    import zlib

    needles = Secrets()
    needles.add("the token", "tok-" + random.token_hex(12))
    needles.add("the marker", random.token_hex(32))
    token, marker = needles.needles["the token"], needles.needles["the marker"]
    (tmp_path / "blob").write_bytes(gzip.compress(b"layer " + token))
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute("CREATE TABLE xcom (value BLOB)")
    db.execute("INSERT INTO xcom VALUES (?)", (zlib.compress(b"{" + marker + b"}"),))
    db.commit()
    db.close()
    layer = gzip.compress(b"etc/secret " + marker)
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        info = tarfile.TarInfo("abc/layer.tar.gz")
        info.size = len(layer)
        tar.addfile(info, io.BytesIO(layer))
    (tmp_path / "clean.log").write_text("nothing here\n")
    (tmp_path / "age.txt").write_text("AGE-SECRET-KEY-1" + "Q" * 58)

    findings = scan_tree([tmp_path], needles)
    assert findings == [
        f"{tmp_path / 'age.txt'}: an age secret key (AGE-SECRET-KEY-1…)",
        f"{tmp_path / 'blob'}: the token",
        f"{tmp_path / 'image.tar'}: the marker",
        f"{tmp_path / 'x.db'}: the marker (table xcom, decompressed)",
    ]
    assert not any(token.decode() in f or marker.decode() in f for f in findings)
    assert scan_tree([tmp_path], Secrets(needles.needles, generic=False))[0].endswith("the token")


# --- 1. the central service SIGKILLed between hops, started again on its database ----------


@pytest.mark.parametrize(
    "mode",
    [
        "request",  # killed before it saw hop 0's result: the registry delivers it again
        "response",  # killed once it had handled it (hop 1 sent), its answer not yet given
    ],
)
def test_central_killed_mid_route_and_restarted_reaches_done(
    route: Route, docker_client: Any, parties: Any, starts: SandboxStarts, mode: str
) -> None:
    route.proxy.arm(b'"result-0"', mode)  # the registry's delivery of hop 0's result
    spec = _submit(route, docker_client, parties)

    def announced() -> bool | None:
        if route.proxy.held.is_set():
            return True
        runs = _runs(route, "station-a", spec.id)
        if runs and runs[0]["state"] == "failed":
            pytest.fail(f"station-a's hop failed: {runs[0]}", pytrace=False)
        return None

    _wait(route, "the registry to announce result-0 to the central service", announced)
    route.central.kill()
    route.proxy.release()  # that delivery fails; the registry tries again until it is heard
    assert "result-0" in _tags(route, f"station-a/{spec.id}")
    # Killed before it saw the result, it had not sent hop 1; killed after, it had.
    sent = "train" in _tags(route, f"station-b/{spec.id}")
    assert sent is (mode == "response")
    route.central.start()

    info = _done(route, spec.id)
    # Killed before it heard of result-0, the service learns of it from the registry's next
    # delivery or from the reconciliation pass it makes at start, whichever comes first.
    first = {"webhook", "reconcile"} if mode == "request" else {"webhook"}
    via = _via(info)
    assert via[0] in first and via[1:] == ["webhook"], info["events"]
    _assert_route_clean(route, docker_client, parties, spec, info, starts)


# --- 2. notifications lost while the central service is down ------------------------------


def test_notifications_lost_while_central_is_down_are_recovered_by_reconciliation(
    route: Route, docker_client: Any, parties: Any, starts: SandboxStarts
) -> None:
    """The central service stops once hop 0 is sent; station-a runs and pushes result-0,
    which the registry cannot deliver; the registry restarts (its notification queue is in
    memory: the event is gone); the central service starts again and finds result-0 by the
    reconciliation pass it makes at start (then every ``--reconcile-seconds``), not by a
    notification."""
    spec = _submit(route, docker_client, parties)
    assert route.central.train(spec.id)["hops"][0]["state"] == "sent"
    route.central.stop()
    failed_before = _failed_deliveries(route)
    run = _run_ended(route, "station-a", spec.id)
    assert run["state"] == "success", run
    assert "result-0" in _tags(route, f"station-a/{spec.id}")
    # The registry has tried to tell the central service, and failed (it retries forever,
    # from memory).
    _wait(route, "the registry to fail a delivery to the central service",
          lambda: True if _failed_deliveries(route) > failed_before else None)  # fmt: skip
    route.restart_registry()  # the undelivered notification of result-0 is lost
    assert "train" not in _tags(route, f"station-b/{spec.id}")
    # The next periodic pass is an hour away: the pass the service makes when it starts is
    # what finds result-0.
    route.central.start()

    info = _done(route, spec.id)
    assert _via(info) == ["reconcile", "webhook"], info["events"]
    _assert_route_clean(route, docker_client, parties, spec, info, starts)


# --- 3. the secret scan, after the fault tests ---------------------------------------------


def _secrets(route: Route, parties: Any) -> Secrets:
    found = Secrets()
    for name in ("alice", "reviewer"):
        party_secrets(found, name, parties[name])
    for name, station in route.stations.items():
        party_secrets(found, name, parties[name], station.root / "keys" / "station.key")
        found.add(f"{name}'s webhook secret", route.webhook_secrets[name])
    found.add("the station key passphrase", PASSPHRASE)
    found.add("the central service's webhook secret", route.central.webhook_secret)
    found.add("the central service's API token", route.central.token)
    found.add("Airflow's admin password", route.airflow.password)
    found.add("the registry account's password", route.registry_login[1])
    for i, marker in enumerate(route.markers):
        found.add(f"train {i}'s result marker", marker)
    return found


def test_no_secret_in_any_log_database_registry_storage_or_image(
    route: Route, parties: Any, docker_client: Any
) -> None:
    """Runs last: scans what this module's deployment wrote (support.secretscan)."""
    assert route.markers, "no train ran in this module: run the whole module"
    started = time.monotonic()
    needles = _secrets(route, parties)
    assert_scan_finds(needles, "station-b's webhook secret")
    findings, images = scan_deployment(
        needles,
        airflow_home=route.airflow.home,
        log_dir=route.root,
        stations=[s.root for s in route.stations.values()],
        registry_storage=route.registry.storage,
        extra=[route.central.root],  # its database and log
        docker_client=docker_client,
        registry_host=route.registry.host,
    )
    print(f"\nscanned for {len(needles.needles)} secrets ({len(route.markers)} markers) in "
          f"{time.monotonic() - started:.0f} s; {images} images left to scan")  # fmt: skip
    assert findings == [], "secrets found:\n" + "\n".join(findings)
