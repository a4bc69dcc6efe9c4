"""Onboarding a station on the registry: project, robot (secret in a 0600 file), webhook.

Harbor runs as :mod:`support.harbor_standin` (its REST API v2.0, backed by the session's real
``docker-registry``); the plain registry is that ``docker-registry`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from pathlib import Path

import pytest
from support.harbor_standin import ADMIN_PASSWORD, HarborStandIn

from pht_airflow.central.onboarding import ProvisionReport, provision_station, revoke_station
from pht_airflow.central.registry import HarborAdmin, PlainRegistryAdmin
from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import ConfigError, ConflictError, RegistryAuthError, RegistryError
from pht_airflow.oci import RegistryClient

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
