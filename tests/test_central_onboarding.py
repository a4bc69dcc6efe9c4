"""Onboarding a station on the registry: project, robot (secret in a 0600 file), webhook.

Harbor runs as :mod:`support.harbor_standin` (its REST API v2.0, backed by the session's real
``docker-registry``); the plain registry is that ``docker-registry`` itself.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from click.testing import CliRunner
from support.harbor_standin import ADMIN_PASSWORD, HarborStandIn
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.onboarding import ProvisionReport, provision_station, revoke_station
from pht_airflow.central.registry import HarborAdmin, PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import LocalRegistry, free_port
from pht_airflow.errors import ConfigError, ConflictError, RegistryAuthError, RegistryError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.station.hop import run_hop
from pht_airflow.web.central_app import create_app

pytestmark = pytest.mark.registry

HOOK = "https://airflow.station-a.example.org/pht/a/registry-events"


@pytest.fixture()
def hook_secret() -> str:
    return "hook-" + uuid.uuid4().hex  # made at test time: no secret-looking literal


def station() -> tuple[str, str]:
    """A fresh station id and its project (the backing registry is shared)."""
    sid = uuid.uuid4().hex[:12]
    return sid, f"station-{sid}"


def assert_no_secret(report: ProvisionReport, *secrets: str) -> None:
    for text in (str(report), repr(report), json.dumps(report.to_dict())):
        for secret in secrets:
            assert secret not in text


def test_harbor_provisioning_creates_project_robot_and_webhook_and_keeps_the_secret_in_0600(
    harbor: tuple[HarborStandIn, str],
    admin: HarborAdmin,
    hook_secret: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    standin, url = harbor
    caplog.set_level(logging.DEBUG)
    sid, project = station()
    secret_file = tmp_path / "robots" / f"{sid}.secret"

    report = provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )

    assert [(s.name, s.status) for s in report.steps] == [
        ("project", "created"),
        ("robot", "created"),
        ("webhook", "created"),
    ]
    assert standin.projects[project].metadata["public"] == "false"
    robot = standin.robots[f"robot${project}+{sid}"]
    assert report.robot == robot.name and robot.project == project
    assert [p["namespace"] for p in robot.body["permissions"]] == [project]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_text() == robot.secret + "\n"
    assert report.secret_file == secret_file
    [policy] = standin.policies[project]
    assert policy["targets"][0]["address"] == HOOK
    assert policy["targets"][0]["auth_header"] == hook_secret
    assert_no_secret(report, robot.secret, hook_secret, ADMIN_PASSWORD)
    assert robot.secret not in caplog.text and hook_secret not in caplog.text

    # The robot really is limited to its project.
    with HarborAdmin(url, robot.name, secret_file.read_text().strip()) as as_robot:
        assert as_robot.list_repositories(project) == []


def test_secret_file_is_0600_whatever_the_umask(
    admin: HarborAdmin, hook_secret: str, tmp_path: Path
) -> None:
    sid, project = station()
    old = os.umask(0o277)  # would leave the file read-only (0400) without the explicit chmod
    try:
        provision_station(
            admin, sid, project, HOOK, secret_file=tmp_path / "s", webhook_secret=hook_secret
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o600


def test_running_again_says_already_there_and_keeps_the_robot_and_its_secret_file(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, hook_secret: str, tmp_path: Path
) -> None:
    standin, _ = harbor
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )
    written, mtime = secret_file.read_bytes(), secret_file.stat().st_mtime_ns
    robots, start = dict(standin.robots), len(standin.requests)

    again = provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )

    assert [(s.name, s.status) for s in again.steps] == [
        ("project", "already there"),
        ("robot", "already there"),
        ("webhook", "already there"),
    ]
    assert str(secret_file) in again.step("robot").detail
    assert f"robot${project}+{sid}" in again.step("robot").detail
    assert again.robot is None and again.secret_file == secret_file
    assert secret_file.read_bytes() == written and secret_file.stat().st_mtime_ns == mtime
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert standin.robots == robots and len(standin.policies[project]) == 1
    # Nothing was created or changed: project, robot and webhook policy were only looked at
    # (the robot through ListRobot with Harbor's project query).
    assert {r.method for r in standin.requests[start:]} <= {"HEAD", "GET"}
    [listed] = [r for r in standin.requests[start:] if r.path == "/api/v2.0/robots"]
    project_id = standin.projects[project].id
    assert listed.params["q"] == f"Level=project,ProjectID={project_id}"
    assert_no_secret(again, written.decode().strip(), hook_secret)

    # What changed is put right and said: a project made public, a rotated webhook secret.
    standin.projects[project].metadata["public"] = "true"
    rotated = provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret + "-2"
    )
    assert [(s.name, s.status) for s in rotated.steps] == [
        ("project", "updated"),
        ("robot", "already there"),
        ("webhook", "updated"),
    ]
    assert standin.projects[project].metadata["public"] == "false"
    assert standin.policies[project][0]["targets"][0]["auth_header"] == hook_secret + "-2"
    assert secret_file.read_bytes() == written and standin.robots == robots


def test_a_secret_file_that_is_not_the_robots_current_secret_is_refused(
    harbor: tuple[HarborStandIn, str],
    admin: HarborAdmin,
    hook_secret: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "already there" is checked: the robot signs in with the file's secret (one HEAD as the
    robot); a secret refreshed elsewhere is refused, the file left alone."""
    standin, _ = harbor
    caplog.set_level(logging.DEBUG)
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )
    robot = standin.robots[f"robot${project}+{sid}"]
    start = len(standin.requests)
    provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )
    as_robot = [
        r for r in standin.requests[start:]
        if base64.b64decode(r.headers["authorization"][6:]).decode().startswith(robot.name + ":")
    ]  # fmt: skip
    assert [(r.method, r.path, r.status) for r in as_robot] == [("HEAD", "/api/v2.0/projects", 200)]

    robot.secret = "refreshed-" + uuid.uuid4().hex  # Harbor's "refresh secret", elsewhere
    old = secret_file.read_bytes()
    with pytest.raises(ConflictError) as refused:
        provision_station(
            admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
        )
    message = str(refused.value)
    assert "does not hold the current secret" in message and str(secret_file) in message
    assert robot.secret not in message and old.decode().strip() not in message
    assert secret_file.read_bytes() == old
    for secret in (robot.secret, old.decode().strip(), hook_secret):
        assert secret not in caplog.text


def test_removing_revokes_the_robot_and_a_stale_secret_file_is_refused(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, hook_secret: str, tmp_path: Path
) -> None:
    standin, url = harbor
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )
    robot = standin.robots[f"robot${project}+{sid}"]
    with HarborAdmin(url, robot.name, secret_file.read_text().strip()) as as_robot:
        assert as_robot.list_repositories(project) == []  # the credentials work
    start = len(standin.requests)

    report = revoke_station(admin, sid, project)

    assert [(s.name, s.status) for s in report.steps] == [("robot", "deleted")]
    assert report.robot == robot.name and robot.name in report.step("robot").detail
    assert robot.name not in standin.robots
    assert [(r.method, r.path, r.status) for r in standin.requests[start:]][-1] == (
        "DELETE", f"/api/v2.0/robots/{robot.id}", 200
    )  # fmt: skip
    revoked_secret = secret_file.read_text().strip()
    with (
        HarborAdmin(url, robot.name, revoked_secret) as as_robot,
        pytest.raises(RegistryAuthError) as refused,
    ):
        as_robot.list_repositories(project)
    assert refused.value.status == 401 and robot.secret not in str(refused.value)
    assert_no_secret(report, robot.secret, hook_secret)

    again = revoke_station(admin, sid, project)  # safe to run again
    assert [(s.name, s.status) for s in again.steps] == [("robot", "not there")]

    # Provisioning again with the revoked robot's secret file: refused, the file untouched.
    written = secret_file.read_bytes()
    with pytest.raises(ConflictError) as stale:
        provision_station(
            admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
        )
    message = str(stale.value)
    assert "has no robot" in message and str(secret_file) in message
    assert "Move" in message and robot.secret not in message
    assert secret_file.read_bytes() == written and f"robot${project}+{sid}" not in standin.robots


def test_rerun_after_a_failed_webhook_finishes_the_job_without_leaking_secrets(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, hook_secret: str, tmp_path: Path
) -> None:
    standin, _ = harbor
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    # A Harbor that quotes the header back in its error must not get it into our message.
    standin.inject(
        503, "SERVICE_UNAVAILABLE", f"cannot store auth {hook_secret}", method="POST",
        path_contains="webhook/policies",
    )  # fmt: skip
    with pytest.raises(RegistryError) as failed:
        provision_station(
            admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
        )
    robot_secret = standin.robots[f"robot${project}+{sid}"].secret
    assert failed.value.retryable and "webhook" in str(failed.value)
    assert hook_secret not in str(failed.value) and robot_secret not in str(failed.value)
    assert secret_file.read_text() == robot_secret + "\n"  # the robot's secret is kept

    report = provision_station(
        admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
    )
    assert [(s.name, s.status) for s in report.steps] == [
        ("project", "already there"),
        ("robot", "already there"),
        ("webhook", "created"),
    ]
    assert len(standin.policies[project]) == 1
    assert_no_secret(report, robot_secret, hook_secret)


def test_a_robot_without_its_secret_file_is_refused_with_what_to_do(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, hook_secret: str, tmp_path: Path
) -> None:
    standin, _ = harbor
    sid, project = station()
    provision_station(
        admin, sid, project, HOOK, secret_file=tmp_path / "first", webhook_secret=hook_secret
    )
    robot_secret = standin.robots[f"robot${project}+{sid}"].secret
    lost = tmp_path / "elsewhere" / "robot.secret"

    with pytest.raises(ConflictError) as refused:
        provision_station(admin, sid, project, HOOK, secret_file=lost, webhook_secret=hook_secret)

    message = str(refused.value)
    assert "already exists" in message and str(lost) in message
    assert "delete the robot or refresh its secret" in message
    assert robot_secret not in message and hook_secret not in message
    assert not lost.exists()  # no empty file left to look like a kept secret


@pytest.mark.parametrize("kind", ["empty", "link", "folder"])
def test_a_secret_file_that_cannot_be_an_earlier_runs_is_refused_before_harbor_is_asked(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, tmp_path: Path, kind: str
) -> None:
    standin, _ = harbor
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    if kind == "empty":
        secret_file.touch(mode=0o600)
    elif kind == "link":
        (tmp_path / "target").write_text("not a secret\n")
        secret_file.symlink_to(tmp_path / "target")
    else:
        secret_file.mkdir()

    with pytest.raises(ConfigError) as refused:
        provision_station(admin, sid, project, HOOK, secret_file=secret_file)

    assert str(secret_file) in str(refused.value)
    assert ("run again" in str(refused.value)) and standin.requests == []
    if kind == "link":
        assert (tmp_path / "target").read_text() == "not a secret\n"


def test_an_invalid_station_id_is_refused(admin: HarborAdmin, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="station id"):
        provision_station(admin, "Station_A", "station-a", HOOK, secret_file=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_plain_registry_reports_what_it_cannot_do(
    registry: LocalRegistry, hook_secret: str, tmp_path: Path
) -> None:
    sid, project = station()
    secret_file = tmp_path / "robot.secret"
    with RegistryClient(registry.host) as client:
        admin = PlainRegistryAdmin(client)
        report = provision_station(
            admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
        )
        again = provision_station(
            admin, sid, project, HOOK, secret_file=secret_file, webhook_secret=hook_secret
        )

    for r in (report, again):
        assert [(s.name, s.status) for s in r.steps] == [
            ("project", "not needed"),
            ("robot", "not supported"),
            ("webhook", "not supported"),
        ]
        assert "no accounts" in r.step("robot").detail
        webhook = r.step("webhook").detail
        assert "notifications" in webhook and HOOK in webhook and f"{project!r}/" in webhook
        assert r.robot is None and r.secret_file is None
        assert_no_secret(r, hook_secret)
    assert not secret_file.exists()  # no robot, so no secret and no empty file

    with RegistryClient(registry.host) as client:
        revoked = revoke_station(PlainRegistryAdmin(client), sid, project)
    [step] = revoked.steps
    assert (step.name, step.status) == ("robot", "not supported")
    assert "nothing was revoked" in step.detail and "htpasswd" in step.detail
    assert f"{project!r}/*" in step.detail


# --- onboarding and removal through the CLI and the central service's REST API --------------

TOKEN = "onboarding-test-token"  # noqa: S105 - the test central service's API token


@pytest.fixture()
def central(
    tmp_path: Path, registry: LocalRegistry, parties: Any
) -> Iterator[tuple[Router, str, Path]]:
    """A central service (SQLite file) copying on the plain registry, served on 127.0.0.1;
    station-a is registered. Yields the router, its URL and the database file."""
    db = tmp_path / "central.db"
    client = RegistryClient(registry.host)
    router = Router(make_sessionmaker(make_engine(f"sqlite:///{db}")), client,
                    PlainRegistryAdmin(client))  # fmt: skip
    router.add_station("station-a", parties["station-a"].public.pem,
                       parties["station-a"].age.recipient, project="station-a")  # fmt: skip
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: "unused",
                     reconcile_seconds=0)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the central service did not start"
        thread.join(0.02)
    try:
        yield router, f"http://127.0.0.1:{port}", db
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()


def _signed_train(docker_client: Any, registry: LocalRegistry, parties: Any,
                  route: list[str], mode: str = "sequential") -> tuple[Reference, Any]:  # fmt: skip
    spec = make_train_spec(parties, route, mode=mode)
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    with RegistryClient(registry.host) as client:
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return ref, spec


@pytest.mark.docker
def test_onboard_then_remove_a_station_through_the_cli_and_the_rest_api(
    central: tuple[Router, str, Path],
    harbor: tuple[HarborStandIn, str],
    registry: LocalRegistry,
    docker_client: Any,
    parties: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """station-c is onboarded in one command (a second run says "already there" for each
    item and leaves the secret file alone), then removed: its robot's credentials stop
    working, a train in flight at it and one whose next hop is it fail saying why, a new train
    naming it is refused over the REST API with 422 naming it. The robot's secret is in no
    CLI output, no log line and not in the central database."""
    router, url, db = central
    standin, harbor_url = harbor
    caplog.set_level(logging.DEBUG)
    hook_secret = "hook-" + uuid.uuid4().hex
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    monkeypatch.setenv("PHT_REGISTRY_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("PHT_WEBHOOK_SECRET", hook_secret)
    keys = tmp_path / "keys-c"
    keys.mkdir()
    (keys / "c.pub").write_text(parties["station-c"].public.pem)
    (keys / "c.age.pub").write_text(parties["station-c"].age.recipient + "\n")
    secret_file = tmp_path / "robots" / "station-c.secret"
    add = ["central", "stations", "add", "--central", url, "--id", "station-c",
           "--key", str(keys / "c.pub"), "--recipient-file", str(keys / "c.age.pub"),
           "--provision", "--harbor-url", harbor_url, "--username", "admin",
           "--webhook-url", HOOK, "--robot-secret-file", str(secret_file)]  # fmt: skip
    outputs = []

    def cli(args: list[str], code: int = 0, stdin: str | None = None) -> str:
        result = CliRunner().invoke(main, args, input=stdin)
        assert result.exit_code == code, result.output
        outputs.append(result.output)
        return result.output

    first = cli(add)
    for item in ("project", "robot", "webhook"):
        assert f"{item}: created" in first
    written, mtime = secret_file.read_bytes(), secret_file.stat().st_mtime_ns
    second = cli(add)
    for item in ("project", "robot", "webhook"):
        assert f"{item}: already there" in second
    assert secret_file.read_bytes() == written and secret_file.stat().st_mtime_ns == mtime
    robot = standin.robots["robot$station-station-c+station-c"]
    assert written.decode() == robot.secret + "\n"
    with HarborAdmin(harbor_url, robot.name, robot.secret) as as_robot:
        assert as_robot.list_repositories("station-station-c") == []

    # Two trains before the removal: one in flight at station-c, one whose next hop is it.
    at_c, spec_at_c = _signed_train(docker_client, registry, parties, ["station-c", "station-a"])
    to_c, spec_to_c = _signed_train(docker_client, registry, parties, ["station-a", "station-c"])
    creator = parties["alice"].public.pem
    assert [h["state"] for h in router.submit(str(at_c), creator)["hops"]] == ["sent", "pending"]
    assert [h["state"] for h in router.submit(str(to_c), creator)["hops"]] == ["sent", "pending"]

    # remove asks first; "no" changes nothing.
    remove = ["central", "stations", "remove", "station-c", "--central", url,
              "--harbor-url", harbor_url, "--username", "admin"]  # fmt: skip
    declined = cli(remove, code=1, stdin="n\n")
    assert "Remove station station-c" in declined and "not removed" in declined
    assert robot.name in standin.robots and router.station("station-c")["removed"] is None

    removed = cli([*remove, "--yes"])
    assert "station station-c: removed from the directory" in removed
    assert f"robot: deleted: robot {robot.name} was deleted" in removed
    assert robot.name not in standin.robots
    with (
        HarborAdmin(harbor_url, robot.name, robot.secret) as as_robot,
        pytest.raises(RegistryAuthError) as refused,
    ):
        as_robot.list_repositories("station-station-c")
    assert refused.value.status == 401
    entry = requests.get(f"{url}/stations/station-c", timeout=10).json()
    assert entry["removed"] and entry["project"] == "station-station-c"  # the entry stays
    assert "robot: not there" in cli([*remove, "--yes"])  # safe to run again

    # In flight at station-c: failed at once, saying why.
    info = router.train(spec_at_c.id)
    assert info["status"] == "failed"
    assert [h["state"] for h in info["hops"]] == ["failed", "pending"]
    assert info["reason"].startswith("hop 0 (station-c): the station was removed from the "
                                     "directory at ")  # fmt: skip
    assert info["reason"].endswith("and takes no new trains")

    # Next hop is station-c: station-a delivers, and the train fails instead of going on.
    reviewer = parties["reviewer"].public.pem
    station_a = make_station(tmp_path / "station-a", parties["station-a"], registry.host,
                             creators=[creator], approvers=[reviewer])  # fmt: skip
    record = run_hop(station_a.config(), f"{registry.host}/station-a/{spec_to_c.id}:train",
                     docker_client=docker_client)  # fmt: skip
    assert record["outcome"] == "success", record
    with RegistryClient(registry.host) as client:
        router.reconcile()
        assert "train" not in client.list_tags(f"station-station-c/{spec_to_c.id}")
    info = router.train(spec_to_c.id)
    assert info["status"] == "failed", (info["reason"], info["events"])
    assert [h["state"] for h in info["hops"]] == ["done", "failed"]
    assert info["reason"].startswith("hop 1 (station-c): the station was removed")

    # A new train naming station-c: refused over the REST API, naming it.
    new, _ = _signed_train(docker_client, registry, parties, ["station-a", "station-c"])
    answer = requests.post(f"{url}/trains", json={"reference": str(new), "creator_key": creator},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (
        "route station(s) removed from the directory, taking no new trains: station-c; "
        "rebuild the train without them"
    )
    assert requests.delete(f"{url}/stations/station-c", timeout=10).status_code == 401
    nobody = requests.delete(f"{url}/stations/station-x", timeout=10,
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert nobody.status_code == 404 and "station-x" in nobody.json()["detail"]

    # The secrets are nowhere but in the secret file (and Harbor).
    stored = db.read_bytes() + b"".join(
        p.read_bytes()
        for p in tmp_path.glob("central.db-*")  # a WAL or journal, if any
    )
    for secret in (robot.secret, hook_secret, ADMIN_PASSWORD):
        assert secret.encode() not in stored
        assert secret not in caplog.text
        for output in outputs:
            assert secret not in output


@pytest.mark.docker
def test_removal_refusals_and_a_parallel_train_going_on_without_the_station(
    central: tuple[Router, str, Path],
    harbor: tuple[HarborStandIn, str],
    registry: LocalRegistry,
    docker_client: Any,
    parties: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router, url, _ = central
    standin, harbor_url = harbor
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    monkeypatch.setenv("PHT_REGISTRY_PASSWORD", ADMIN_PASSWORD)
    c = parties["station-c"]
    router.add_station("station-c", c.public.pem, c.age.recipient, project="station-c")

    def remove(*args: str) -> Any:
        return CliRunner().invoke(main, ["central", "stations", "remove", "--central", url,
                                         "--yes", *args])  # fmt: skip

    no_registry = remove("station-c")
    assert no_registry.exit_code == 1
    assert "remove needs --harbor-url (Harbor: its robot is deleted) or --registry HOST" in (
        no_registry.output
    )
    unknown = remove("station-x", "--harbor-url", harbor_url, "--username", "admin")
    assert unknown.exit_code == 1 and "404" in unknown.output and "station-x" in unknown.output
    assert router.station("station-c")["removed"] is None
    assert not [r for r in standin.requests if r.method == "DELETE"]  # nothing revoked

    ref, spec = _signed_train(
        docker_client, registry, parties, ["station-a", "station-c"], mode="parallel"
    )
    info = router.submit(str(ref), parties["alice"].public.pem)
    assert [h["state"] for h in info["hops"]] == ["sent", "sent"]

    plain = remove("station-c", "--registry", registry.host)  # no robot API there
    assert plain.exit_code == 0, plain.output
    assert "robot: not supported" in plain.output and "htpasswd" in plain.output

    info = router.train(spec.id)
    assert info["status"] == "routing"  # station-a's hop goes on
    assert [h["state"] for h in info["hops"]] == ["sent", "failed"]
    assert info["reason"].startswith("hop 1 (station-c): the station was removed")
    assert [e["kind"] for e in info["events"]][-1] == "hop-failed"
