"""Registry admin through Harbor's REST API v2.0: projects, robots, webhooks, copies.

:class:`HarborAdmin` speaks the API through :class:`~.harbor_api.HarborAPI` (Basic auth, no
cookies, request ids, errors, paging). Beyond those conventions it relies on this:

- Artifact copy (``POST …/artifacts?from=<project>/<repo>@<digest>``) is done by Harbor
  inside its storage (blob mounts), copies the source artifact's tags with it and, since
  Harbor 2.5, its accessories (cosign signatures; since 2.8 also artifacts whose
  ``subject`` is it). An accessory's own accessories (a result's signature) are not copied
  and an artifact that already exists in the destination gets none of its source's
  accessories, so signatures and results are still copied one by one here. Older Harbor
  answers 409 for an artifact that already exists; that counts as done.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from ...attestation import attestation_tag
from ...errors import ConfigError, ConflictError, NotFoundError, RegistryAuthError, RegistryError
from ...oci.reference import check_digest, check_repository
from ...protocol import TRAIN_TAG
from ...signing import signature_tag
from ...text import safe_text
from .admin import (
    PAYLOAD_FORMATS,
    CopyReport,
    Ensured,
    PayloadFormat,
    RobotAccount,
    _result_tags,
    _tag_order,
)
from .harbor_api import HarborAPI, _q, _repo_path

log = logging.getLogger(__name__)

HARBOR_PUSH_EVENT = "PUSH_ARTIFACT"

# Harbor's rule for project names (and what we accept for robot and webhook names).
_HARBOR_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or len(name) > 255 or not _HARBOR_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{kind} name {name!r} must be lowercase letters and digits, separated by single "
            "'.', '_' or '-' (at most 255 characters)"
        )
    return name


def _check_payload_format(payload_format: str) -> None:
    if payload_format not in PAYLOAD_FORMATS:
        raise ConfigError(
            f"webhook payload format {payload_format!r} must be one of {', '.join(PAYLOAD_FORMATS)}"
        )


def _check_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"webhook endpoint {url!r} must be an http(s)://host[:port]/path URL")


@dataclass
class _Artifact:
    """One artifact in a Harbor repository, as far as a copy needs it."""

    digest: str
    tags: set[str] = field(default_factory=set)
    subject: str | None = None  # known only for accessories


def _split_repository(repository: str) -> tuple[str, str]:
    check_repository(repository)
    project, _, name = repository.partition("/")
    if not name:
        raise ConfigError(
            f"repository {repository!r} has no project part: Harbor repositories are "
            "<project>/<name>"
        )
    return project, name


class HarborAdmin(HarborAPI):
    """Registry admin through Harbor's REST API v2.0 (the connection is :class:`HarborAPI`).

    :param base_url: ``https://harbor.example.org`` (a trailing ``/api/v2.0`` is fine); a
        bare host means https, or http for a loopback host.
    :param username: a Harbor user (or system robot) allowed to create projects, robots
        and webhook policies, and to copy artifacts between the projects.
    :param password: its password or secret; sent as Basic auth, never logged.
    :param verify_tls: check the server certificate (a CA bundle path also works).
    :param insecure: allow plain http to a host that is not loopback.
    :param timeout: seconds to wait for Harbor on connect and on each read.
    """

    def __repr__(self) -> str:
        return f"HarborAdmin({self.api!r}, username={self.username!r})"

    def __enter__(self) -> HarborAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- projects -------------------------------------------------------------------

    def ensure_project(self, name: str) -> Ensured:
        """Create the private project ``name`` unless it exists; make an existing one private.

        Returns ``created``, ``updated`` (it was public) or ``already there``.
        """
        _check_name("project", name)
        what = f"checking project {name}"
        resp = self._request(
            "HEAD", "/projects", what=what, params={"project_name": name}, allow=(404,)
        )
        if resp.status_code == 404:
            created = self._request(
                "POST",
                "/projects",
                what=f"creating project {name}",
                ok=(201,),
                allow=(409,),
                body={"project_name": name, "metadata": {"public": "false"}},
            )
            if created.status_code == 201:
                log.info("created private Harbor project %s", name)
                return "created"
            log.info("Harbor project %s was created meanwhile", name)
        project = self._project(name, what)
        metadata = project.get("metadata")
        if isinstance(metadata, dict) and str(metadata.get("public", "false")).lower() == "true":
            self._request(
                "PUT",
                f"/projects/{_q(name)}",
                what=f"making project {name} private",
                by_name=True,
                body={"metadata": {"public": "false"}},
            )
            log.warning("Harbor project %s was public; it is private now", name)
            return "updated"
        return "already there"

    def _project(self, name: str, what: str) -> dict[str, Any]:
        """The project ``name`` (getProject)."""
        project = self._json(
            self._request("GET", f"/projects/{_q(name)}", what=what, by_name=True), what
        )
        if not isinstance(project, dict):
            raise RegistryError(f"Harbor {self.host}: {what}: the project is not a JSON object")
        return project

    # --- robots ---------------------------------------------------------------------

    def create_robot(self, project: str, name: str) -> RobotAccount:
        """A project robot with pull and push on ``project`` only, never expiring.

        Harbor shows the secret once, here; a robot of that name that already exists is a
        :class:`ConflictError` (delete it or refresh its secret in Harbor).
        """
        _check_name("project", project)
        _check_name("robot", name)
        body = {
            "name": name,
            "description": f"pht-airflow: pull and push in {project}",
            "duration": -1,
            "level": "project",
            "disable": False,
            "permissions": [
                {
                    "kind": "project",
                    "namespace": project,
                    "access": [
                        {"resource": "repository", "action": "pull"},
                        {"resource": "repository", "action": "push"},
                    ],
                }
            ],
        }
        what = f"creating robot account {name} for project {project}"
        try:
            resp = self._request("POST", "/robots", what=what, ok=(201,), body=body)
        except ConflictError as exc:
            raise ConflictError(
                f"{exc} — Harbor shows a robot's secret only when it is created: delete the "
                "existing robot or refresh its secret in Harbor",
                status=409,
                url=exc.url,
            ) from None
        data = self._json(resp, what)
        secret = data.get("secret") if isinstance(data, dict) else None
        full_name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(secret, str) or not secret or not isinstance(full_name, str):
            raise RegistryError(f"Harbor {self.host}: {what}: the answer has no name or secret")
        self._secrets.add(secret)
        robot_id = data.get("id")
        log.info(
            "created Harbor robot %s (pull and push in project %s only)",
            safe_text(full_name),
            project,
        )
        return RobotAccount(
            name=full_name, secret=secret, id=robot_id if isinstance(robot_id, int) else None
        )

    def find_robot(self, project: str, name: str) -> RobotAccount | None:
        """The project robot ``name`` of ``project`` (ListRobot with
        ``q=Level=project,ProjectID=<id>``), its secret empty; None if there is none or the
        project is gone."""
        _check_name("project", project)
        _check_name("robot", name)
        what = f"looking up robot account {name} of project {project}"
        try:
            project_id = self._project(project, what).get("project_id")
        except NotFoundError:
            return None
        if not isinstance(project_id, int):
            raise RegistryError(f"Harbor {self.host}: {what}: the project has no id")
        # <prefix><project>+<name>: the prefix (robot$ by default) is a Harbor setting, and
        # a robot name has no '+', so the ending names this robot of this project.
        suffix = f"{project}+{name}"
        for robot in self._pages(
            "/robots", what=what, params={"q": f"Level=project,ProjectID={project_id}"}
        ):
            full, robot_id = robot.get("name"), robot.get("id")
            if isinstance(full, str) and full.endswith(suffix):
                return RobotAccount(
                    name=full, secret="", id=robot_id if isinstance(robot_id, int) else None
                )
        return None

    def robot_secret_works(self, project: str, robot_name: str, secret: str) -> bool:
        """True if Harbor accepts ``secret`` for ``robot_name`` (one ``HEAD /projects`` as the
        robot: 200 or 404 mean signed in, 401 means not). The secret is never logged."""
        _check_name("project", project)
        self._secrets.add(secret)
        as_robot = HarborAPI(
            self.api, robot_name, secret, verify_tls=self.verify_tls, insecure=True,
            timeout=self.timeout, deadline=self.deadline,
        )  # fmt: skip
        try:
            as_robot._request(
                "HEAD", "/projects", what=f"signing in as robot {safe_text(robot_name)}",
                params={"project_name": project}, allow=(404,),
            )  # fmt: skip
        except RegistryAuthError as exc:
            if exc.status == 401:
                return False
            raise
        finally:
            as_robot.close()
        return True

    def delete_robot(self, project: str, name: str) -> str | None:
        """Delete the robot ``name`` of ``project`` (DeleteRobot); its full name, or None if
        there was none. Its credentials stop working at once."""
        robot = self.find_robot(project, name)
        if robot is None:
            return None
        if robot.id is None:
            raise RegistryError(f"Harbor {self.host}: robot {safe_text(robot.name)} has no id")
        resp = self._request(
            "DELETE",
            f"/robots/{robot.id}",
            what=f"deleting robot account {robot.name}",
            allow=(404,),  # deleted meanwhile
        )
        log.info("deleted Harbor robot %s (project %s)", safe_text(robot.name), project)
        return robot.name if resp.status_code == 200 else None

    # --- webhooks -------------------------------------------------------------------

    def ensure_webhook(
        self,
        project: str,
        endpoint_url: str,
        auth_header: str,
        payload_format: PayloadFormat = "Default",
        *,
        name: str = "pht-airflow",
        event_types: Iterable[str] = (HARBOR_PUSH_EVENT,),
    ) -> Ensured:
        """Create or update the webhook policy ``name`` of ``project``; no-op if it matches.
        Returns ``created``, ``updated`` or ``already there``.

        ``auth_header`` is sent by Harbor as the ``Authorization`` header of each delivery
        (a shared secret: it is never logged).
        """
        _check_name("project", project)
        _check_name("webhook policy", name)
        _check_endpoint(endpoint_url)
        _check_payload_format(payload_format)
        if auth_header:
            self._secrets.add(auth_header)
        desired: dict[str, Any] = {
            "name": name,
            "description": "pht-airflow: tell the central service about pushes",
            "enabled": True,
            "event_types": list(event_types),
            "targets": [
                {
                    "type": "http",
                    "address": endpoint_url,
                    "auth_header": auth_header,
                    "skip_cert_verify": False,
                    "payload_format": payload_format,
                }
            ],
        }
        path = f"/projects/{_q(project)}/webhook/policies"
        what = f"listing the webhook policies of project {project}"
        for _attempt in (1, 2):
            existing = [
                p for p in self._pages(path, what=what, by_name=True) if p.get("name") == name
            ]
            if not existing:
                resp = self._request(
                    "POST",
                    path,
                    what=f"creating webhook policy {name} in project {project}",
                    ok=(201,),
                    allow=(409,),
                    by_name=True,
                    body=desired,
                )
                if resp.status_code == 409:
                    continue  # created meanwhile: compare and update it
                log.info("created webhook %s in project %s -> %s (%s payload)", name, project,
                         endpoint_url, payload_format)  # fmt: skip
                return "created"
            policy = existing[0]
            if _same_policy(policy, desired):
                log.debug("webhook %s in project %s is up to date", name, project)
                return "already there"
            policy_id = policy.get("id")
            if not isinstance(policy_id, int):
                raise RegistryError(f"Harbor {self.host}: webhook policy {name} has no id")
            self._request(
                "PUT",
                f"{path}/{policy_id}",
                what=f"updating webhook policy {name} in project {project}",
                by_name=True,
                body=desired,
            )
            log.info("updated webhook %s in project %s -> %s (%s payload)", name, project,
                     endpoint_url, payload_format)  # fmt: skip
            return "updated"
        raise ConflictError(
            f"Harbor {self.host}: webhook policy {name} in project {project} keeps "
            "conflicting; check the project's webhooks"
        )

    # --- copies ---------------------------------------------------------------------

    def _artifact(self, project: str, name: str, reference: str) -> dict[str, Any] | None:
        """One artifact with its tags and accessories, or None if it is not there."""
        resp = self._request(
            "GET",
            f"{_repo_path(project, name)}/artifacts/{quote(reference, safe=':')}",
            what=f"reading artifact {project}/{name}@{reference}",
            params={"with_tag": "true", "with_accessory": "true"},
            by_name=True,
            allow=(404,),
        )
        if resp.status_code == 404:
            return None
        data = self._json(resp, f"reading artifact {project}/{name}@{reference}")
        return data if isinstance(data, dict) else None

    def _inventory(self, project: str, name: str, train: dict[str, Any]) -> dict[str, _Artifact]:
        """Every artifact of the repository that a copy may need: the listed ones and,
        recursively, their accessories (which Harbor lists nested, not at the top)."""
        found: dict[str, _Artifact] = {}

        def add(art: dict[str, Any], subject: str | None = None) -> None:
            digest = art.get("digest")
            if not isinstance(digest, str):
                return
            entry = found.setdefault(digest, _Artifact(digest))
            entry.tags.update(
                t["name"]
                for t in art.get("tags") or []
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            )
            if subject and not entry.subject:
                entry.subject = subject
            for acc in art.get("accessories") or []:
                if not isinstance(acc, dict) or not isinstance(acc.get("digest"), str):
                    continue
                sub = acc.get("subject_artifact_digest")
                sub = sub if isinstance(sub, str) else digest
                if acc["digest"] in found:
                    found[acc["digest"]].subject = found[acc["digest"]].subject or sub
                    continue
                full = self._artifact(project, name, acc["digest"])
                if full is not None:
                    add(full, sub)

        add(train)
        what = f"listing the artifacts of {project}/{name}"
        params = {"with_tag": "true", "with_accessory": "true"}
        for art in self._pages(
            f"{_repo_path(project, name)}/artifacts", what=what, params=params, by_name=True
        ):
            add(art)
        return found

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> CopyReport:
        """Copy the train, its ``.sig``, its ``result-<k>`` artifacts and theirs with
        Harbor's artifact copy; tag the train ``train`` in the destination."""
        src_project, src_name = _split_repository(src_repository)
        dst_project, dst_name = _split_repository(dst_repository)
        check_digest(train_digest)
        if src_repository == dst_repository:
            raise ConfigError(f"cannot copy {src_repository} onto itself")
        train = self._artifact(src_project, src_name, train_digest)
        if train is None:
            raise NotFoundError(
                f"Harbor {self.host}: train {train_digest} is not in {src_repository}, "
                f"nothing to copy to {dst_repository}",
                status=404,
            )
        inventory = self._inventory(src_project, src_name, train)
        plan: list[tuple[str, str]] = [(train_digest, TRAIN_TAG)]
        plan.extend(self._signature_plan(inventory, train_digest))
        results = [
            a
            for a in inventory.values()
            if a.digest != train_digest
            and a.subject in (train_digest, None)  # None: Harbor did not record a subject
            and _result_tags(a.tags)
        ]
        for art in sorted(results, key=lambda a: _tag_order(_result_tags(a.tags)[0])):
            plan.extend((art.digest, tag) for tag in _result_tags(art.tags))
            plan.extend(self._signature_plan(inventory, art.digest))
        plan.append(plan.pop(0))  # the train's tag last, as in PlainRegistryAdmin.copy_train
        report = CopyReport(src_repository, dst_repository, train_digest)
        for digest, tag in plan:
            self._copy_artifact(src_repository, dst_project, dst_name, digest, tag, report)
        log.info("copied train %s", report)
        return report

    @staticmethod
    def _signature_plan(inventory: dict[str, _Artifact], digest: str) -> list[tuple[str, str]]:
        # The signatures and the run attestations (cosign's .sig and .att) travel together.
        tags = (signature_tag(digest), attestation_tag(digest))
        return [(a.digest, t) for t in tags for a in inventory.values() if t in a.tags]

    def _copy_artifact(
        self,
        src_repository: str,
        dst_project: str,
        dst_name: str,
        digest: str,
        tag: str,
        report: CopyReport,
    ) -> None:
        dst_repository = f"{dst_project}/{dst_name}"
        report.tags.append(tag)
        existing = self._artifact(dst_project, dst_name, digest)
        if existing is None:
            resp = self._request(
                "POST",
                f"{_repo_path(dst_project, dst_name)}/artifacts",
                what=f"copying {src_repository}@{digest} to {dst_repository}",
                params={"from": f"{src_repository}@{digest}"},
                ok=(201,),
                allow=(409,),  # Harbor before 2.5: the artifact exists already
                by_name=True,
            )
            if resp.status_code == 201:
                report.manifests += 1
            else:
                report.manifests_present += 1
            present: set[str] = set()
        else:
            report.manifests_present += 1
            present = {
                t["name"]
                for t in existing.get("tags") or []
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            }
        if tag not in present:
            self._tag(dst_project, dst_name, digest, tag)

    def _tag(self, project: str, name: str, digest: str, tag: str) -> None:
        resp = self._request(
            "POST",
            f"{_repo_path(project, name)}/artifacts/{quote(digest, safe=':')}/tags",
            what=f"tagging {project}/{name}@{digest} as {tag}",
            ok=(201,),
            allow=(409,),
            by_name=True,
            body={"name": tag},
        )
        if resp.status_code == 201:
            return
        art = self._artifact(project, name, digest)
        tags = {t.get("name") for t in (art or {}).get("tags") or [] if isinstance(t, dict)}
        if tag not in tags:
            raise ConflictError(
                f"Harbor {self.host}: {project}/{name}:{tag} already points at another "
                f"artifact than {digest}; refusing to move it (delete that tag first if "
                "that is intended)",
                status=409,
            )

    # --- deletes and listing ----------------------------------------------------------

    def delete_repository(self, repository: str) -> None:
        project, name = _split_repository(repository)
        self._request(
            "DELETE", _repo_path(project, name), what=f"deleting repository {repository}",
            by_name=True,
        )  # fmt: skip
        log.info("deleted Harbor repository %s", repository)

    def delete_manifest(self, repository: str, digest: str) -> None:
        project, name = _split_repository(repository)
        check_digest(digest)
        self._request(
            "DELETE",
            f"{_repo_path(project, name)}/artifacts/{quote(digest, safe=':')}",
            what=f"deleting artifact {repository}@{digest}",
            by_name=True,
        )

    def list_repositories(self, project: str) -> list[str]:
        """Repository names (``project/name``) in ``project``."""
        _check_name("project", project)
        names = []
        for repo in self._pages(
            f"/projects/{_q(project)}/repositories",
            what=f"listing the repositories of project {project}",
            by_name=True,
        ):
            if isinstance(repo.get("name"), str):
                names.append(repo["name"])
        return names


def _same_policy(policy: dict[str, Any], desired: dict[str, Any]) -> bool:
    if policy.get("enabled") is not True:
        return False
    if sorted(policy.get("event_types") or []) != sorted(desired["event_types"]):
        return False
    targets = policy.get("targets") or []
    if len(targets) != 1 or not isinstance(targets[0], dict):
        return False
    have, want = targets[0], desired["targets"][0]
    for key, value in want.items():
        got = have.get(key)
        if key == "payload_format" and not got:
            got = "Default"  # Harbor before 2.8 has no payload formats: Default is implied
        if got != value:
            return False
    return True
