"""Stations behind a firewall, on a real Airflow hosting three stations, a real central
service and real registries: trains found by polling, one run per hop whichever path sees
it, and a retried hop that runs once.

- Registry ``closed`` notifies the central service only: nothing can reach the stations'
  Airflow (their config says ``intake: poll``, so their receivers are off as well). A
  sequential train across the three stations reaches done through ``pht_poll_inbox``.
- Registry ``open`` also notifies each station's webhook receiver, and the stations say
  ``intake: both``: the webhook and the poller both see every hop, each hop runs once.
- A hop the station refuses (station-b wants two approvals) fails the train; the operator
  fixes the station and runs ``pht train retry ID --hop 1``: the central service tags
  ``retry-1-1``, the station runs the hop once more (one run for the retry tag, whichever
  path saw it) and the train reaches done.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import test_airflow_plugin
import uvicorn
import yaml
from click.testing import CliRunner
from support.stationkit import Station, build_train, make_station, make_train_spec, sign_train

from pht_airflow.airflow.polling import POLL_INBOX, state_variable
from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.central_client import CentralClient
from pht_airflow.cli import main as cli_main
from pht_airflow.dev.localairflow import LocalAirflow, start_airflow
from pht_airflow.dev.localregistry import Endpoint, LocalRegistry, free_port, start_registry
from pht_airflow.errors import ServiceError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.audit import AuditLog
from pht_airflow.web.central_app import create_app

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

STATIONS = ("station-a", "station-b", "station-c")
TOKEN = "polling-test-token"
CENTRAL_SECRET = "polling-central-secret"
STATION_SECRET = "polling-station-secret"
POLL_INTERVAL = "3s"
TRAIN_TIMEOUT = 600.0  # three hops on a loaded 2-core machine

dag_in_db = test_airflow_plugin.dag_in_db  # the fixture: pht_run_train in the metadata DB


class Dispatcher:
    """The central service of the running test behind one uvicorn server (503 between)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        app = self.app
        if app is None:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)


@dataclass
class World:
    airflow: LocalAirflow
    stations: dict[str, Station]
    closed: LocalRegistry
    open: LocalRegistry
    dispatcher: Dispatcher
    central_url: str


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, parties: Any, docker_client: Any,
    postgres_server: str,
) -> Iterator[World]:  # fmt: skip
    root = tmp_path_factory.mktemp("polling")
    # Three stations polling every few seconds write a DAG run each time: Airflow's metadata
    # lives in PostgreSQL here (SQLite's single writer made the API server answer "database
    # is locked" under that load).
    import psycopg

    database = f"airflow_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    metadata = f"{postgres_server}/{database}".replace("postgresql://", "postgresql+psycopg://", 1)
    dispatcher = Dispatcher()
    central_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(dispatcher, host="127.0.0.1", port=central_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="central-uvicorn", daemon=True)
    thread.start()
    central_url = f"http://127.0.0.1:{central_port}"
    airflow_port = free_port()
    central = Endpoint.manifest_pushes(
        "central", central_url + "/webhooks/registry-events",
        {"Authorization": [f"Bearer {CENTRAL_SECRET}"]},
    )  # fmt: skip
    to_stations = [
        Endpoint.manifest_pushes(
            name,
            f"http://127.0.0.1:{airflow_port}/pht/{name}/registry-events",
            {"Authorization": [f"Bearer {STATION_SECRET}"]},
        )  # fmt: skip
        for name in STATIONS
    ]
    closed = start_registry(root / "closed-registry", endpoints=[central])
    opened = start_registry(root / "open-registry", endpoints=[central, *to_stations])
    hosted = root / "stations"
    hosted.mkdir()
    stations = {}
    for name in STATIONS:
        stations[name] = make_station(
            root / name,
            parties[name],
            closed.host,
            creators=[parties["alice"].public.pem],
            approvers=[parties["reviewer"].public.pem, parties["station-c"].public.pem],
            overrides={
                "webhook": {"secret": {"env": "PHT_WEBHOOK_SECRET"}},
                "central": {"url": central_url},
                "intake": "poll",
                "poll_interval": POLL_INTERVAL,
            },
        )
        (hosted / f"{name}.yaml").symlink_to(stations[name].config_path)
    env = {
        "PHT_STATION_CONFIG_DIR": str(hosted),
        "PHT_WEBHOOK_SECRET": STATION_SECRET,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
    }
    airflow = None
    try:
        airflow = start_airflow(root / "airflow-home", env=env, port=airflow_port, log_dir=root)
        for name in STATIONS:
            airflow.wait_for_dag(f"pht_run_train__{name}")
            airflow.wait_for_dag(f"{POLL_INBOX}__{name}")
        yield World(airflow, stations, closed, opened, dispatcher, central_url)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        if airflow is not None:
            airflow.stop()
        closed.stop()
        opened.stop()
        server.should_exit = True
        thread.join(10)


@pytest.fixture()
def central(tmp_path: Path, world: World, parties: Any) -> Iterator[Any]:
    """A fresh central service for one registry (set by the test through ``use``)."""
    made: list[RegistryClient] = []

    def use(registry: LocalRegistry) -> Router:
        sessions = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'central.db'}"))
        client = RegistryClient(registry.host)
        made.append(client)
        router = Router(sessions, client, PlainRegistryAdmin(client))
        for name in STATIONS:
            router.add_station(name, parties[name].public.pem, parties[name].age.recipient,
                               project=name)  # fmt: skip
        world.dispatcher.app = create_app(
            router, api_token=lambda: TOKEN, webhook_secret=lambda: CENTRAL_SECRET,
            reconcile_seconds=0,
        )  # fmt: skip
        return router

    try:
        yield use
    finally:
        world.dispatcher.app = None
        for c in made:
            c.close()


def _configure(world: World, registry: LocalRegistry, intake: str, **trust: Any) -> None:
    """Point every station at ``registry`` with ``intake`` (read when each task runs)."""
    for station in world.stations.values():
        config = yaml.safe_load(station.config_path.read_text())
        config["registry"]["host"] = registry.host
        config["intake"] = intake
        config["trust"]["required_approvals"] = trust.get(station.id, 1)
        station.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _submit(world: World, registry: LocalRegistry, parties: Any, docker_client: Any) -> Any:
    spec = make_train_spec(parties, list(STATIONS))
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    with RegistryClient(registry.host) as client:
        digest = build_train(docker_client, ref, spec)
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    CentralClient(world.central_url, token=TOKEN).submit(str(ref), parties["alice"].public.pem)
    return spec, digest


def _wait_status(world: World, train_id: str, status: str) -> dict[str, Any]:
    client = CentralClient(world.central_url, token=TOKEN)

    def reached() -> dict[str, Any] | None:
        info = client.train(train_id)
        if info["status"] not in ("routing", status):
            pytest.fail(f"train {train_id} is {info['status']}: {info['reason']}\n"
                        f"{world.airflow.diagnostics(dag_id='pht_*')}", pytrace=False)  # fmt: skip
        return info if info["status"] == status else None

    try:
        return world.airflow.wait(f"train {train_id} to be {status}", reached, TRAIN_TIMEOUT)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


def _runs(world: World, station: str, train_id: str) -> list[dict[str, Any]]:
    """The station's pht_run_train runs for the train (each conf names its repository)."""
    return [
        r
        for r in world.airflow.runs(f"pht_run_train__{station}")
        if f"/{station}/{train_id}" in str((r.get("conf") or {}).get("train"))
    ]


def _hops(world: World, station: str, digest: str) -> list[dict[str, Any]]:
    return [
        r
        for r in AuditLog(world.stations[station].audit_path).entries()
        if r.get("event") == "hop" and r.get("train_digest") == digest
    ]


def _wait_known(world: World, station: str, repository: str) -> None:
    """Wait until the station's poller has recorded ``repository`` as seen."""

    def known() -> bool | None:
        with world.airflow.client() as http:
            resp = http.get(f"/api/v2/variables/{state_variable(station)}")
        if resp.status_code != 200:
            return None
        return True if repository in json.loads(resp.json()["value"]) else None

    world.airflow.wait(f"{station}'s poller to know {repository}", known, TRAIN_TIMEOUT)


def _wait_runs_finished(world: World, station: str, train_id: str, count: int) -> None:
    def finished() -> bool | None:
        runs = _runs(world, station, train_id)
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return True if len(done) >= count and len(done) == len(runs) else None

    world.airflow.wait(f"{station}'s runs of {train_id}", finished, TRAIN_TIMEOUT)


def test_polling_alone_carries_a_train_across_three_stations(
    world: World, central: Any, parties: Any, docker_client: Any
) -> None:
    _configure(world, world.closed, "poll")
    central(world.closed)
    spec, digest = _submit(world, world.closed, parties, docker_client)
    info = _wait_status(world, spec.id, "done")
    assert [h["state"] for h in info["hops"]] == ["done"] * 3
    for name in STATIONS:
        # The central service routes on the pushed result; the run records it just after.
        _wait_runs_finished(world, name, spec.id, 1)
        runs = _runs(world, name, spec.id)
        assert len(runs) == 1, runs
        assert runs[0]["state"] == "success"
        assert runs[0]["triggered_by"] == "operator"  # the poller's TriggerDagRunOperator
        assert [r["outcome"] for r in _hops(world, name, digest)] == ["success"]


def test_webhook_and_polling_together_run_each_hop_once(
    world: World, central: Any, parties: Any, docker_client: Any
) -> None:
    _configure(world, world.open, "both")
    central(world.open)
    spec, digest = _submit(world, world.open, parties, docker_client)
    _wait_status(world, spec.id, "done")
    for name in STATIONS:
        _wait_runs_finished(world, name, spec.id, 1)
        runs = _runs(world, name, spec.id)
        assert [r["dag_run_id"] for r in runs] == ["pht__" + digest.replace(":", "_")], runs
        assert [r["outcome"] for r in _hops(world, name, digest)] == ["success"]
        # Both paths saw the hop: the poller knows the train too (its run was there or made).
        _wait_known(world, name, f"{name}/{spec.id}")
        assert len(_runs(world, name, spec.id)) == 1
    # At least one hop was started by the webhook receiver (the poller's runs say operator).
    starters = {r["triggered_by"] for n in STATIONS for r in _runs(world, n, spec.id)}
    assert "rest_api" in starters, starters


def test_a_retried_hop_after_a_station_side_rejection_runs_once(
    world: World, central: Any, parties: Any, docker_client: Any
) -> None:
    _configure(world, world.open, "both", **{"station-b": 2})  # station-b refuses the train
    central(world.open)
    spec, digest = _submit(world, world.open, parties, docker_client)
    failed = _wait_status(world, spec.id, "failed")
    assert "station-b" in failed["reason"] and "approval" in failed["reason"], failed["reason"]
    _wait_runs_finished(world, "station-b", spec.id, 1)

    _configure(world, world.open, "both")  # the operator fixes station-b
    result = CliRunner().invoke(
        cli_main,
        ["train", "retry", spec.id, "--central", world.central_url, "--hop", "1"],
        env={"PHT_CENTRAL_TOKEN": TOKEN, "COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "retry-1-1" in result.output, result.output
    _wait_status(world, spec.id, "done")

    _wait_runs_finished(world, "station-b", spec.id, 2)
    base = "pht__" + digest.replace(":", "_")
    assert sorted(r["dag_run_id"] for r in _runs(world, "station-b", spec.id)) == [
        base,
        base + "__retry-1-1",
    ]
    assert [r["outcome"] for r in _hops(world, "station-b", digest)] == ["failure", "success"]
    for name in ("station-a", "station-c"):
        _wait_runs_finished(world, name, spec.id, 1)
        assert len(_runs(world, name, spec.id)) == 1
        assert [r["outcome"] for r in _hops(world, name, digest)] == ["success"]


# --- the Harbor path: a robot lists its project through Harbor's API ------------------------


def test_polling_lists_a_harbor_project_through_its_api(
    tmp_path: Path, harbor: Any, admin: Any, registry: Any, parties: Any, build_and_push: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from pht_airflow.airflow.polling import _repositories
    from pht_airflow.station.inbox import scan

    _, url = harbor
    project = "station-h" + os.urandom(3).hex()
    admin.ensure_project(project)
    robot = admin.create_robot(project, "station")
    pushed = {build_and_push(f"{project}/t{n}", "train") for n in range(2)}
    build_and_push(f"{project}x/t9", "train")  # another project: not listed
    monkeypatch.setenv("PHT_TEST_ROBOT_SECRET", robot.secret)
    station = make_station(
        tmp_path / "station-h",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={
            "registry": {
                "project": project,
                "harbor_url": url,
                "username": robot.name,
                "password": {"env": "PHT_TEST_ROBOT_SECRET"},
            },
            "intake": "poll",
        },
    )
    config = station.config()
    assert config.registry.harbor_url == url.rstrip("/")
    with RegistryClient(registry.host) as client:
        listing = _repositories(config, client)
        assert sorted(listing()) == [f"{project}/t0", f"{project}/t1"]
        arrivals, _ = scan(client, listing, {})
    assert {(f"{registry.host}/{a.repository}", a.digest) for a in arrivals} == {
        (f"{ref.registry}/{ref.repository}", ref.digest) for ref in pushed
    }


# --- the DAG file and the config fields -----------------------------------------------------


def test_only_polling_stations_get_a_poll_dag(
    airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.timetables.trigger import DeltaTriggerTimetable
    from conftest import REPO

    folder = tmp_path / "stations"
    folder.mkdir()
    for name, extra in (("s-hook", ""), ("s-poll", "intake: poll\npoll_interval: 90s\n"),
                        ("s-both", "intake: both\n")):  # fmt: skip
        (folder / f"{name}.yaml").write_text(f"station: {{id: {name}}}\n{extra}")
    monkeypatch.setenv("PHT_STATION_CONFIG_DIR", str(folder))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    polling = {d for d in bag.dag_ids if d.startswith(POLL_INBOX)}
    assert polling == {f"{POLL_INBOX}__s-poll", f"{POLL_INBOX}__s-both"}
    dag = bag.get_dag(f"{POLL_INBOX}__s-poll")
    assert {t.task_id for t in dag.tasks} == {"scan", "trigger", "remember"}
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.timetable == DeltaTriggerTimetable(timedelta(seconds=90))
    trigger = dag.get_task("trigger")
    assert trigger.partial_kwargs["trigger_dag_id"] == "pht_run_train__s-poll"
    assert trigger.partial_kwargs["skip_when_already_exists"] is True


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"intake": "sometimes"}, "intake: must be one of webhook, poll, both"),
        ({"intake": ["poll"]}, "intake: must be one of webhook, poll, both"),
        ({"poll_interval": "0.5s"}, "poll_interval: must be at least 1s"),
        ({"poll_interval": "fast"}, "poll_interval: 'fast' is not a duration"),
        ({"registry": {"harbor_url": "ftp://x"}}, "registry.harbor_url: must be a URL"),
    ],
)
def test_intake_fields_are_checked(
    tmp_path: Path, parties: Any, fields: dict[str, Any], message: str
) -> None:
    from pht_airflow.errors import ConfigError

    station = make_station(
        tmp_path / "s", parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[], required_approvals=0,
        overrides=fields,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(message)):
        station.config()


# --- the webhook receiver and retry tags ----------------------------------------------------


def test_the_webhook_receiver_starts_one_run_per_retry_tag_and_is_off_for_poll(
    tmp_path: Path, parties: Any, dag_in_db: str
) -> None:
    import hashlib

    import httpx
    from airflow.models.dagrun import DagRun
    from test_airflow_plugin import DIST, _train_push
    from test_web_webhook_app import Served

    from pht_airflow.airflow.plugin import build_app

    (tmp_path / "webhook.secret").write_text(STATION_SECRET)
    station = make_station(
        tmp_path / "station-a", parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"webhook": {"secret": {"file": str(tmp_path / "webhook.secret")}}},
    )  # fmt: skip
    digest = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    body = json.loads(_train_push(digest))
    repository = body["events"][0]["target"]["repository"]
    headers = {"Authorization": STATION_SECRET, "Content-Type": DIST}

    def push(tag: str) -> bytes:
        body["events"][0]["id"] = str(uuid.uuid4())
        body["events"][0]["target"]["tag"] = tag
        return json.dumps(body).encode()

    served = Served(build_app(station.config_path)).start()
    try:
        url = f"http://127.0.0.1:{served.port}/registry-events"
        with httpx.Client(trust_env=False, timeout=60) as http:
            answers = [http.post(url, content=push(t), headers=headers) for t in
                       ("retry-0-1", "retry-0-1", "result-0", "retry-0-x")]  # fmt: skip
            assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
            results = [[x["result"] for x in a.json()["accepted"]] for a in answers]
            run_id = "pht__" + digest.replace(":", "_") + "__retry-0-1"
            assert results == [[run_id], [None], [None], [None]]
            (run,) = DagRun.find(dag_id=dag_in_db, run_id=run_id)
            assert run.conf["train"] == f"127.0.0.1:5000/{repository}:retry-0-1@{digest}"

            config = yaml.safe_load(station.config_path.read_text())
            config["intake"] = "poll"
            station.config_path.write_text(yaml.safe_dump(config))
            off = http.post(url, content=push("train"), headers=headers)
            assert off.status_code == 503, off.text
            assert not DagRun.find(dag_id=dag_in_db, run_id="pht__" + digest.replace(":", "_"))
    finally:
        served.stop()
