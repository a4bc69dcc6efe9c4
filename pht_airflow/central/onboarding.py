"""Onboarding a station on the registry: its project, its robot account and its webhook.

:func:`provision_station` is the registry half of onboarding a station in one command (the
directory entry is the router's). It asks a :class:`~.registry.RegistryAdmin`, in order, for

1. the station's private project (``ensure_project``);
2. a robot account that can pull and push in that project and nowhere else
   (``create_robot``). The registry shows a robot's secret once, so it goes straight into a
   new file that only its owner can read (mode 0600): never into the report, a log or an
   exception message;
3. the webhook policy that posts every push in the project to the station's endpoint
   (``ensure_webhook``).

Running it again is safe, and each step says what it did: ``created``, ``updated`` (a public
project made private, a webhook policy pointed at the new endpoint or secret) or ``already
there``. The robot is never rotated silently: when the secret file already holds a secret and
the registry still has the robot and accepts that secret for it (one sign-in as the robot),
the robot and the file are both kept as they are ("already there"; the secret is not shown or
written again). A secret file whose robot is gone (revoked by :func:`revoke_station`, or
deleted by hand), one the registry no longer accepts, or a robot whose secret file is missing,
is refused with what to do: the registry shows a robot's secret only once, so a new secret means
a new robot (or Harbor's "refresh secret"), and that is the operator's decision.

:func:`revoke_station` is the registry half of ``pht central stations remove``: it deletes
the station's robot (its credentials stop working at once). The project and its trains stay
(they are the record of what ran). A plain distribution registry has no accounts and no
webhook API; those steps come back as "not supported", with what to put in (or take out of)
the registry's own config instead.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, ConflictError, NotSupportedError
from ..protocol import STATION_ID
from ..text import safe_text
from .registry import PayloadFormat, RegistryAdmin, RobotAccount

log = logging.getLogger(__name__)

#: ``created``: made by this run; ``updated``: there, changed to match; ``already there``:
#: left as it was; ``not needed``: nothing to make (a plain registry's project is a
#: repository prefix); ``deleted`` / ``not there``: what :func:`revoke_station` found;
#: ``not supported``: the registry cannot do it, ``detail`` says what to do instead.
StepStatus = Literal[
    "created", "updated", "already there", "not needed", "deleted", "not there", "not supported"
]

_SECRET_MODE = 0o600


@dataclass(frozen=True)
class ProvisionStep:
    """One step of :func:`provision_station`: ``name`` (``project``, ``robot`` or
    ``webhook``), its ``status``, and a line for people (never a secret)."""

    name: str
    status: StepStatus
    detail: str


@dataclass(frozen=True)
class ProvisionReport:
    """What :func:`provision_station` did, safe to print, log or return as JSON.

    ``robot`` is the robot's full name when this run created it (:func:`revoke_station`:
    deleted it); ``secret_file`` is where its secret is (``None`` when the registry has no
    robot accounts, and after a revocation). Holds no secret.
    """

    station_id: str
    project: str
    robot: str | None
    secret_file: Path | None
    steps: tuple[ProvisionStep, ...]

    def step(self, name: str) -> ProvisionStep:
        """The step called ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values."""
        return {
            "station": self.station_id,
            "project": self.project,
            "robot": self.robot,
            "secret_file": str(self.secret_file) if self.secret_file else None,
            "steps": [{"step": s.name, "status": s.status, "detail": s.detail} for s in self.steps],
        }

    def __str__(self) -> str:
        lines = [f"station {self.station_id}, project {self.project}:"]
        lines += [f"  {s.name}: {s.status}: {s.detail}" for s in self.steps]
        return "\n".join(lines)


def provision_station(
    admin: RegistryAdmin,
    station_id: str,
    project: str,
    webhook_url: str,
    *,
    secret_file: Path,
    webhook_secret: str | None = None,
    payload_format: PayloadFormat = "Default",
) -> ProvisionReport:
    """Give station ``station_id`` its project, robot and webhook on the registry.

    :param admin: the registry (:class:`~.registry.HarborAdmin` or
        :class:`~.registry.PlainRegistryAdmin`).
    :param station_id: the station's id; it names the robot (Harbor:
        ``robot$<project>+<station_id>``).
    :param project: the station's project (usually ``station-<id>``).
    :param webhook_url: where the registry posts each push in the project.
    :param secret_file: the file for the robot's secret, created with mode 0600 (missing
        folders are created). If it already holds something, no robot is created and the
        file is left as it is.
    :param webhook_secret: sent by the registry as each delivery's ``Authorization`` header;
        pht's receivers refuse deliveries without it.
    :param payload_format: Harbor's webhook payload, ``Default`` or ``CloudEvents``.

    Raises :class:`~pht_airflow.errors.ConfigError` for an invalid station id or a secret
    file that cannot be an earlier run's (empty, a link, a folder), before the registry is
    touched, and :class:`~pht_airflow.errors.ConflictError` for a robot that exists although
    ``secret_file`` does not. Registry errors pass through; they never contain the secrets.
    """
    if not STATION_ID.fullmatch(station_id or ""):
        raise ConfigError(
            f"station id {station_id!r} must be lowercase letters, digits and inner '-' "
            "(at most 63 characters)"
        )
    secret_file = Path(secret_file)
    earlier_secret = _holds_earlier_secret(secret_file)

    project_status = admin.ensure_project(project)
    project_detail = {
        "created": f"project {project} was created, private",
        "updated": f"project {project} was public and is private now",
        "already there": f"project {project} is there and private",
        "not needed": f"on a plain registry project {project} is only a repository prefix "
        "(access is the registry's own auth): nothing to create",
    }[project_status]
    project_step = ProvisionStep("project", project_status, project_detail)
    robot_step, robot_name = _robot_step(admin, project, station_id, secret_file, earlier_secret)
    webhook_step = _webhook_step(admin, project, webhook_url, webhook_secret, payload_format)

    where = None if robot_step.status == "not supported" else secret_file
    steps = (project_step, robot_step, webhook_step)
    report = ProvisionReport(station_id, project, robot_name, where, steps)
    log.info(
        "provisioned station %s: %s",
        station_id,
        ", ".join(f"{s.name} {s.status}" for s in report.steps),
    )
    return report


def _robot_step(
    admin: RegistryAdmin, project: str, name: str, secret_file: Path, earlier_secret: bool
) -> tuple[ProvisionStep, str | None]:
    """The robot step, and the robot's full name if this run created it."""
    if earlier_secret:
        try:
            robot = admin.find_robot(project, name)
        except NotSupportedError as exc:
            return ProvisionStep("robot", "not supported", str(exc)), None
        if robot is None:
            raise ConflictError(
                f"{secret_file} holds a secret, but the registry has no robot {name!r} in "
                f"project {project} (revoked by `pht central stations remove`, or deleted): "
                f"that secret no longer works. Move {secret_file} away and run again to "
                "create a new robot with a new secret"
            )
        if not admin.robot_secret_works(project, robot.name, _read_secret(secret_file)):
            raise ConflictError(
                f"{secret_file} does not hold the current secret of robot "
                f"{safe_text(robot.name)}: the registry refused it (was the secret refreshed "
                "elsewhere?). Write the robot's current secret there (mode 0600), or refresh "
                "it in the registry and write the new one there, and run again"
            )
        detail = (
            f"robot {safe_text(robot.name)} is there and its secret in {secret_file} works: both "
            "kept as they are (no second robot, the secret is not rotated or shown again)"
        )
        return ProvisionStep("robot", "already there", detail), None
    try:
        robot = _create_robot(admin, project, name, secret_file)
    except NotSupportedError as exc:
        return ProvisionStep("robot", "not supported", str(exc)), None
    detail = (
        f"robot {robot.name} can pull and push in {project} only; its secret is in "
        f"{secret_file} (mode 0600)"
    )
    return ProvisionStep("robot", "created", detail), robot.name


def _webhook_step(
    admin: RegistryAdmin,
    project: str,
    webhook_url: str,
    webhook_secret: str | None,
    payload_format: PayloadFormat,
) -> ProvisionStep:
    try:
        status = admin.ensure_webhook(project, webhook_url, webhook_secret or "", payload_format)
    except NotSupportedError as exc:
        header = "the webhook secret" if webhook_secret else "none"
        detail = (
            f"{exc} This station's endpoint: url {webhook_url}, Authorization header: {header}."
        )
        return ProvisionStep("webhook", "not supported", detail)
    if webhook_secret is None:
        log.warning(
            "the webhook of project %s sends no Authorization header: pht's receivers "
            "refuse its deliveries",
            project,
        )
    detail = f"pushes in {project} are posted to {webhook_url} ({payload_format} payload)"
    if status == "updated":
        detail += " (the policy pointed elsewhere or had another secret: updated)"
    return ProvisionStep("webhook", status, detail)


def revoke_station(admin: RegistryAdmin, station_id: str, project: str) -> ProvisionReport:
    """Revoke station ``station_id``'s robot in ``project``: the registry half of removing a
    station. The project, its trains and its webhook stay (they are the record of what ran,
    and the directory refuses new trains for the station).

    The report's one step, ``robot``, is ``deleted`` (its credentials no longer work),
    ``not there`` (nothing to revoke, e.g. a second run) or ``not supported`` (a plain
    registry: ``detail`` says what to remove from its auth config by hand). Registry errors
    pass through.
    """
    if not STATION_ID.fullmatch(station_id or ""):
        raise ConfigError(
            f"station id {station_id!r} must be lowercase letters, digits and inner '-' "
            "(at most 63 characters)"
        )
    try:
        deleted = admin.delete_robot(project, station_id)
    except NotSupportedError as exc:
        step = ProvisionStep("robot", "not supported", str(exc))
        deleted = None
    else:
        if deleted is None:
            step = ProvisionStep(
                "robot", "not there", f"no robot {station_id!r} in project {project}: nothing "
                "to revoke"
            )  # fmt: skip
        else:
            step = ProvisionStep(
                "robot", "deleted", f"robot {safe_text(deleted)} was deleted: its secret no "
                "longer works (delete the station's secret file too)"
            )  # fmt: skip
    report = ProvisionReport(station_id, project, deleted, None, (step,))
    log.info("revoked station %s on the registry: robot %s", station_id, step.status)
    return report


def _read_secret(path: Path) -> str:
    """The secret an earlier run wrote to ``path`` (a link is refused; at most 4 KiB read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(4096)
    return raw.decode("utf-8", "replace").strip()


def _holds_earlier_secret(path: Path) -> bool:
    """True if an earlier run left a secret at ``path``; False if nothing is there.

    Anything else at ``path`` is refused, before the registry is touched.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot look at secret file {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"secret file {path} exists but is not a regular file (a link or a folder): "
            "remove it or choose another path, then run again"
        )
    if st.st_size == 0:
        raise ConfigError(
            f"secret file {path} is empty: an earlier run stopped before it wrote the "
            "robot's secret, which the registry shows only once. Delete that robot (or "
            f"refresh its secret) in the registry, remove {path}, and run again"
        )
    return True


def _create_robot(admin: RegistryAdmin, project: str, name: str, path: Path) -> RobotAccount:
    """Create the robot and write its secret to ``path`` (a new file, mode 0600).

    The file is created first, so a robot is never made whose secret has nowhere to go; it
    is removed again if no robot comes of it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            _SECRET_MODE,
        )
    except FileExistsError:
        raise ConfigError(
            f"secret file {path} appeared while provisioning (another run?): check it, and "
            "run again"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create secret file {path} ({exc.strerror}); no robot was created"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        try:
            robot = admin.create_robot(project, name)
        except ConflictError as exc:
            path.unlink()
            raise ConflictError(
                f"{exc}. There is no {path} with its secret: if you have the secret, write it "
                "there (mode 0600); otherwise delete the robot or refresh its secret in the "
                "registry (and write the new one there). Then run again",
                status=exc.status,
                url=exc.url,
            ) from None
        except BaseException:
            path.unlink()
            raise
        try:
            os.fchmod(fd, _SECRET_MODE)  # exactly 0600, whatever the umask made of it
            f.write(robot.secret + "\n")
            f.flush()
            os.fsync(fd)
        except OSError as exc:
            raise ConfigError(
                f"robot {robot.name} was created, but its secret could not be written to "
                f"{path} ({exc.strerror}). Delete the robot (or refresh its secret) in the "
                f"registry, remove {path}, and run again"
            ) from None
    log.info("wrote the secret of robot %s to %s", safe_text(robot.name), path)
    return robot
