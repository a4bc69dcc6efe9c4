"""A stand-in for Harbor's REST API, for tests (Harbor itself cannot run here).

Follows goharbor/harbor ``api/v2.0/swagger.yaml`` (``swagger: '2.0'``, ``info.version:
'2.0'``, ``basePath: /api/v2.0``; checked against the file at goharbor/harbor commit
c50c7ddd6e, main after v2.9, and its handlers in ``src/server/v2.0/handler``), and only these
paths, with the status codes, bodies and
headers that file documents (``Errors`` = ``{"errors": [{"code", "message"}]}``; every
response carries ``X-Request-Id``; ``201`` carries ``Location``; lists are paged with
``page``/``page_size`` and answer ``X-Total-Count`` and ``Link``):

- ``HEAD /projects?project_name=`` (headProject: 200/404), ``POST /projects``
  (createProject: 201 + Location, 409 when it exists);
- ``GET``/``PUT /projects/{project_name_or_id}`` (getProject, updateProject);
- ``POST /robots`` (CreateRobot: 201 + Location ``/api/v2.0/robots/{id}``, ``RobotCreated``
  body; 409 for a name in use, which Harbor answers though the swagger does not list it:
  ``robot account <project id>:<name> already exists`` from ``src/pkg/robot/dao``);
  ``GET /robots`` (ListRobot: a project's robots with ``q=Level=project,ProjectID=<id>``,
  400 without the ProjectID, ``Robot`` bodies without the secret, paged);
  ``GET``/``DELETE /robots/{robot_id}`` (GetRobotByID, DeleteRobot: 200, 404); a deleted
  robot's credentials are refused at once (401);
- ``GET``/``POST /projects/{project_name_or_id}/webhook/policies`` and ``GET``/``PUT
  …/webhook/policies/{webhook_policy_id}`` (ListWebhookPoliciesOfProject,
  CreateWebhookPolicyOfProject, GetWebhookPolicyOfProject, UpdateWebhookPolicyOfProject;
  targets take ``payload_format`` ``Default``/``CloudEvents`` (``PayloadFormatType``,
  Harbor 2.8+); a second policy of the same name is 409, as Harbor's
  ``notification policy named <name> already exists``);
- ``GET /projects/{project_name}/repositories`` (listRepositories), ``DELETE
  …/repositories/{repository_name}`` (deleteRepository);
- ``GET``/``POST …/repositories/{repository_name}/artifacts`` (listArtifacts, CopyArtifact
  with ``from=project/repo@digest`` or ``:tag``), ``GET``/``DELETE …/artifacts/{reference}``
  (getArtifact, deleteArtifact), ``POST …/artifacts/{reference}/tags`` (createTag: 201, 409).

Behaviour taken from Harbor's source rather than the swagger:

- Every response sets a ``sid`` session cookie (Harbor's beego session). A request that
  sends a cookie back is a "session" request, which Harbor's CSRF middleware
  (``src/server/middleware/csrf``, gorilla/csrf) refuses with 403 ``FORBIDDEN: CSRF token
  invalid``. Real Harbor enforces that on unsafe methods only; this stand-in refuses *any*
  request carrying a ``Cookie`` header, which is stricter.
- Basic auth is required on every request (401 ``UNAUTHORIZED`` otherwise). Robot accounts
  created through ``POST /robots`` can log in as ``robot$<project>+<name>``; they may read
  and copy into their own project only (403 ``FORBIDDEN`` elsewhere).
- ``X-Is-Resource-Name``: on ``{project_name_or_id}`` paths a value of digits is read as a
  project *id* unless the header is ``true``.
- ``{repository_name}`` with a ``/`` must arrive URL-encoded twice (``a%252Fb``), as the
  swagger says; here a single encoding does not match the route (404).
- CopyArtifact mirrors ``copyDeeply`` in ``src/controller/artifact/controller.go``: index
  children first, then (for a new artifact) its accessories — cosign signatures
  (``sha256-<hex>.sig``) and artifacts whose ``subject`` it is
  (``src/server/middleware/subject``) — but not an accessory's own accessories; the
  source's tags come along; an artifact that already exists in the destination only gets
  the tags (newer Harbor) or a 409 (``conflict_on_existing_copy``, older Harbor).
  The copy itself happens on the real backing distribution registry, by cross-repository
  blob mounts and a manifest PUT with the exact bytes, so copied artifacts are real.
- Accessories are not listed at the top of ``listArtifacts``; they appear nested under
  their subject with ``with_accessory=true`` (Harbor's UI behaviour since 2.5; the API's
  exact filter was not confirmed against a running Harbor).

Everything is recorded in :attr:`HarborStandIn.requests` (raw path, query, headers, body,
status) for assertions. :meth:`HarborStandIn.inject` makes the next matching request fail
with a given status.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import requests
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from pht_airflow.dev.localregistry import free_port
from pht_airflow.errors import NotFoundError
from pht_airflow.oci import RegistryClient
from pht_airflow.oci.media import DOCKER_CONFIG, INDEX_TYPES, OCI_CONFIG, Manifest

API = "/api/v2.0"
#: The stand-in's admin password in the tests (made up; no real Harbor has it).
ADMIN_PASSWORD = "Harbor12345-admin-pw"  # noqa: S105
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_CONFIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
EVENT_TYPES = {
    "DELETE_ARTIFACT",
    "PULL_ARTIFACT",
    "PUSH_ARTIFACT",
    "QUOTA_EXCEED",
    "QUOTA_WARNING",
    "REPLICATION",
    "SCANNING_FAILED",
    "SCANNING_COMPLETED",
    "SCANNING_STOPPED",
    "TAG_RETENTION",
}
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_SIG_TAG_RE = re.compile(r"sha256-([0-9a-f]{64})\.sig")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HarborError(Exception):
    """An error answered in Harbor's format."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message}]}


@dataclass
class Recorded:
    """One request as it arrived (``raw_path`` is still percent-encoded)."""

    method: str
    raw_path: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    @property
    def params(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.query, keep_blank_values=True).items()}

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Principal:
    name: str
    admin: bool
    project: str | None = None  # a robot's project


@dataclass
class Project:
    id: int
    name: str
    metadata: dict[str, str]
    created: str = field(default_factory=_now)


@dataclass
class Robot:
    id: int
    name: str
    secret: str
    project: str
    body: dict[str, Any]
    created: str = field(default_factory=_now)


@dataclass
class _Art:
    digest: str
    manifest: Manifest
    tags: list[str] = field(default_factory=list)
    subject: str | None = None
    acc_type: str | None = None
    children: list[str] = field(default_factory=list)
    is_child: bool = False


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    method: str | None
    path_contains: str | None


class HarborStandIn:
    """The stand-in's state and its ASGI app (``.app``), backed by a real registry."""

    def __init__(
        self,
        backing_host: str,
        users: dict[str, str] | None = None,
        *,
        conflict_on_existing_copy: bool = False,
    ) -> None:
        self.backing_host = backing_host
        self.users = dict(users or {"admin": "Harbor12345"})
        self.conflict_on_existing_copy = conflict_on_existing_copy
        self.requests: list[Recorded] = []
        self.projects: dict[str, Project] = {}
        self.robots: dict[str, Robot] = {}
        self.policies: dict[str, list[dict[str, Any]]] = {}
        self.head_misses = 0  # answer this many HEAD /projects with 404 (a creation race)
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self._art_ids: dict[tuple[str, str], int] = {}
        self._known: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.app = _Gate(self, self._build())

    # --- test helpers ------------------------------------------------------------------

    def inject(
        self,
        status: int,
        code: str,
        message: str,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next matching request with this error instead of serving it."""
        self._faults.append(_Fault(status, code, message, method, path_contains))

    def take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if (fault.method is None or fault.method == method) and (
                fault.path_contains is None or fault.path_contains in path
            ):
                self._faults.remove(fault)
                return fault
        return None

    def authenticate(self, header: str | None) -> Principal | None:
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return Principal(user, admin=True)
        robot = self.robots.get(user)
        if robot is not None and secrets.compare_digest(robot.secret, password):
            return Principal(user, admin=False, project=robot.project)
        return None

    def oci(self) -> RegistryClient:
        return RegistryClient(self.backing_host)

    # --- the backing registry as Harbor's database sees it ------------------------------

    def _art_id(self, repo: str, digest: str) -> int:
        return self._art_ids.setdefault((repo, digest), next(self._ids))

    def scan(self, repo: str) -> dict[str, _Art]:
        """Every artifact of ``repo``: tagged ones and those copied in by digest."""
        arts: dict[str, _Art] = {}
        with self.oci() as oci:
            for tag in oci.list_tags(repo):
                try:
                    digest = oci.resolve(repo, tag)
                except NotFoundError:
                    continue
                if digest not in arts:
                    arts[digest] = _Art(digest, oci.get_manifest(repo, digest))
                arts[digest].tags.append(tag)
            for digest in sorted(self._known.get(repo, set())):
                if digest in arts:
                    continue
                try:
                    arts[digest] = _Art(digest, oci.get_manifest(repo, digest))
                except NotFoundError:
                    self._known[repo].discard(digest)
        for art in arts.values():
            m = art.manifest
            for tag in art.tags:
                sig = _SIG_TAG_RE.fullmatch(tag)
                if sig and any(d.media_type == SIMPLESIGNING for d in m.layers):
                    art.subject, art.acc_type = "sha256:" + sig.group(1), "signature.cosign"
            if art.subject is None and m.subject is not None:
                art.subject = m.subject.digest
                cosign = (m.artifact_type or (m.config.media_type if m.config else "")) == (
                    COSIGN_CONFIG
                )
                art.acc_type = "signature.cosign" if cosign else "subject.accessory"
            if m.media_type in INDEX_TYPES:
                art.children = [c.digest for c in m.manifests]
        for art in arts.values():
            for child in art.children:
                if child in arts and not arts[child].tags:
                    arts[child].is_child = True
        return arts

    def artifact_json(
        self,
        project: Project,
        repo: str,
        art: _Art,
        arts: dict[str, _Art],
        *,
        with_tag: bool,
        with_accessory: bool,
    ) -> dict[str, Any]:
        m = art.manifest
        config_type = m.config.media_type if m.config else None
        art_id = self._art_id(repo, art.digest)
        size = len(m.raw) + sum(d.size for d in [m.config, *m.layers] if d is not None)
        body: dict[str, Any] = {
            "id": art_id,
            "type": "IMAGE" if config_type in (OCI_CONFIG, DOCKER_CONFIG) else "UNKNOWN",
            "media_type": config_type or m.media_type,
            "manifest_media_type": m.media_type,
            "artifact_type": m.artifact_type or config_type or m.media_type,
            "project_id": project.id,
            "repository_id": self._art_id(repo, ""),
            "repository_name": repo,
            "digest": art.digest,
            "size": size,
            "icon": "",
            "push_time": _now(),
            "pull_time": "0001-01-01T00:00:00.000Z",
            "extra_attrs": {},
            "annotations": m.annotations or None,
            "references": [
                {
                    "parent_id": art_id,
                    "child_id": self._art_id(repo, child),
                    "child_digest": child,
                }
                for child in art.children
            ]
            or None,
            "labels": None,
            "addition_links": {},
        }
        if with_tag:
            body["tags"] = [
                {
                    "id": self._art_id(repo, "tag:" + tag),
                    "repository_id": self._art_id(repo, ""),
                    "artifact_id": art_id,
                    "name": tag,
                    "push_time": _now(),
                    "pull_time": "0001-01-01T00:00:00.000Z",
                    "immutable": False,
                }
                for tag in sorted(art.tags)
            ] or None
        if with_accessory:
            body["accessories"] = [
                {
                    "id": self._art_id(repo, "acc:" + acc.digest),
                    "artifact_id": self._art_id(repo, acc.digest),
                    "subject_artifact_id": art_id,
                    "subject_artifact_digest": art.digest,
                    "subject_artifact_repo": repo,
                    "size": len(acc.manifest.raw),
                    "digest": acc.digest,
                    "type": acc.acc_type,
                    "icon": "",
                    "creation_time": _now(),
                }
                for acc in arts.values()
                if acc.subject == art.digest
            ] or None
        return body

    def copy_deeply(
        self, src: str, reference: str, dst: str, *, is_root: bool, is_acc: bool
    ) -> str:
        """Harbor's ``copyDeeply``, on the backing registry; returns the digest copied."""
        src_arts = self.scan(src)
        if reference.startswith("sha256:"):
            art = src_arts.get(reference)
        else:
            art = next((a for a in src_arts.values() if reference in a.tags), None)
        if art is None:
            raise HarborError(404, "NOT_FOUND", f"artifact {src}@{reference} not found")
        dst_arts = self.scan(dst)
        if art.digest in dst_arts:
            if not is_root:
                return art.digest
            if self.conflict_on_existing_copy:
                raise HarborError(
                    409, "CONFLICT", f"the artifact {dst}@{art.digest} already exists"
                )
        else:
            for child in art.children:
                self.copy_deeply(src, child, dst, is_root=False, is_acc=False)
            if not is_acc:
                for acc in [a for a in src_arts.values() if a.subject == art.digest]:
                    self.copy_deeply(src, acc.digest, dst, is_root=False, is_acc=True)
            self._copy_manifest(src, dst, art.manifest)
        with self.oci() as oci:
            for tag in art.tags:  # Ensure(): the source's tags come along
                oci.put_manifest(dst, tag, art.manifest.raw, art.manifest.media_type)
        self._known.setdefault(dst, set()).add(art.digest)
        return art.digest

    def _copy_manifest(self, src: str, dst: str, manifest: Manifest) -> None:
        with self.oci() as oci:
            for blob in [manifest.config, *manifest.layers]:
                if blob is None:
                    continue
                if not oci.mount_blob(dst, blob.digest, src):
                    oci.upload_blob(
                        dst, oci.open_blob(src, blob.digest), expected_digest=blob.digest
                    )
            oci.put_manifest(dst, manifest.digest, manifest.raw, manifest.media_type)

    def repositories(self, project: str) -> list[str]:
        names: list[str] = []
        url: str | None = f"http://{self.backing_host}/v2/_catalog?n=1000"
        with requests.Session() as session:
            session.trust_env = False
            while url:
                resp = session.get(url, timeout=30)
                resp.raise_for_status()
                names.extend(resp.json().get("repositories") or [])
                link = resp.links.get("next", {}).get("url")
                url = f"http://{self.backing_host}{link}" if link else None
        return [n for n in names if n.startswith(project + "/") and self.scan(n)]

    # --- the app ------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(title="Harbor stand-in", openapi_url=None, docs_url=None, redoc_url=None)
        state = self

        @app.exception_handler(HarborError)
        async def harbor_error(_: Request, exc: HarborError) -> Response:
            return JSONResponse(_errors(exc.code, exc.message), status_code=exc.status)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
            code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
            return JSONResponse(_errors(code, str(exc.detail)), status_code=exc.status_code)

        @app.exception_handler(RequestValidationError)
        async def invalid(_: Request, exc: RequestValidationError) -> Response:
            return JSONResponse(_errors("BAD_REQUEST", str(exc.errors())[:300]), status_code=400)

        def principal(request: Request) -> Principal:
            who = request.scope.get("state", {}).get("principal")
            assert isinstance(who, Principal)
            return who

        def admin(request: Request) -> Principal:
            who = principal(request)
            if not who.admin:
                raise HarborError(403, "FORBIDDEN", "forbidden")
            return who

        def may_use(request: Request, project: str) -> None:
            who = principal(request)
            if not who.admin and who.project != project:
                raise HarborError(403, "FORBIDDEN", "forbidden")

        async def body_of(request: Request) -> Any:
            try:
                return json.loads(await request.body() or b"null")
            except ValueError:
                raise HarborError(400, "BAD_REQUEST", "the request body is not JSON") from None

        def project_by_name(name: str) -> Project:
            project = state.projects.get(name)
            if project is None:
                raise HarborError(404, "NOT_FOUND", f"project {name} not found")
            return project

        def project_by_name_or_id(request: Request, value: str) -> Project:
            is_name = request.headers.get("x-is-resource-name", "false").lower() == "true"
            if not is_name and value.isdigit():
                for project in state.projects.values():
                    if project.id == int(value):
                        return project
                raise HarborError(404, "NOT_FOUND", f"project {value} not found")
            return project_by_name(value)

        def repo_of(project_name: str, repository_name: str) -> tuple[Project, str]:
            project = project_by_name(project_name)
            # The path was decoded once by the server: decode the second encoding here.
            return project, f"{project.name}/{unquote(repository_name)}"

        def page_of(
            request: Request, items: list[Any], base: str
        ) -> tuple[list[Any], dict[str, str]]:
            try:
                page = int(request.query_params.get("page", "1"))
                size = int(request.query_params.get("page_size", "10"))
            except ValueError:
                raise HarborError(400, "BAD_REQUEST", "invalid page or page_size") from None
            if page < 1 or not 0 < size <= 100:
                raise HarborError(400, "BAD_REQUEST", "page must be >= 1, page_size 1..100")
            start = (page - 1) * size
            headers = {"X-Total-Count": str(len(items))}
            if start + size < len(items):
                headers["Link"] = f'<{base}?page={page + 1}&page_size={size}>; rel="next"'
            return items[start : start + size], headers

        def project_json(project: Project) -> dict[str, Any]:
            return {
                "project_id": project.id,
                "owner_id": 1,
                "name": project.name,
                "creation_time": project.created,
                "update_time": project.created,
                "deleted": False,
                "owner_name": "admin",
                "repo_count": len(state.repositories(project.name)),
                "metadata": dict(project.metadata),
            }

        # --- projects ---

        @app.head(f"{API}/projects")
        async def head_project(request: Request) -> Response:
            name = request.query_params.get("project_name")
            if not name:
                raise HarborError(400, "BAD_REQUEST", "project_name is required")
            if state.head_misses > 0:
                state.head_misses -= 1
                return Response(status_code=404)
            return Response(status_code=200 if name in state.projects else 404)

        @app.post(f"{API}/projects")
        async def create_project(request: Request) -> Response:
            admin(request)
            body = await body_of(request)
            name = body.get("project_name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > 255:
                raise HarborError(400, "BAD_REQUEST", f"invalid project name {name!r}")
            if name in state.projects:
                raise HarborError(409, "CONFLICT", f"The project named {name} already exists")
            metadata = body.get("metadata") or {}
            metadata = {k: str(v) for k, v in metadata.items()}
            metadata.setdefault("public", "false")
            project = Project(next(state._ids), name, metadata)
            state.projects[name] = project
            location = (
                f"{API}/projects/{name}"
                if request.headers.get("x-resource-name-in-location", "").lower() == "true"
                else f"{API}/projects/{project.id}"
            )
            return Response(status_code=201, headers={"Location": location})

        @app.get(f"{API}/projects/{{project_name_or_id}}")
        async def get_project(request: Request, project_name_or_id: str) -> Response:
            project = project_by_name_or_id(request, project_name_or_id)
            may_use(request, project.name)
            return JSONResponse(project_json(project))

        @app.put(f"{API}/projects/{{project_name_or_id}}")
        async def update_project(request: Request, project_name_or_id: str) -> Response:
            admin(request)
            project = project_by_name_or_id(request, project_name_or_id)
            body = await body_of(request)
            if not isinstance(body, dict):
                raise HarborError(400, "BAD_REQUEST", "a ProjectReq object is required")
            project.metadata.update({k: str(v) for k, v in (body.get("metadata") or {}).items()})
            return Response(status_code=200)

        # --- robots ---

        @app.post(f"{API}/robots")
        async def create_robot(request: Request) -> Response:
            admin(request)
            body = await body_of(request)
            if not isinstance(body, dict):
                raise HarborError(400, "BAD_REQUEST", "a RobotCreate object is required")
            name, level = body.get("name"), body.get("level")
            perms = body.get("permissions")
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise HarborError(400, "BAD_REQUEST", f"invalid robot name {name!r}")
            if level != "project" or not isinstance(perms, list) or len(perms) != 1:
                raise HarborError(
                    400, "BAD_REQUEST", "a project robot needs level=project and one permission"
                )
            perm = perms[0]
            if not isinstance(perm, dict) or perm.get("kind") != "project":
                raise HarborError(400, "BAD_REQUEST", "permission kind must be project")
            access = perm.get("access")
            if not isinstance(access, list) or not access:
                raise HarborError(400, "BAD_REQUEST", "bad request empty access")
            for acc in access:
                if (
                    not isinstance(acc, dict)
                    or acc.get("resource") != "repository"
                    or (acc.get("action") not in ("pull", "push", "delete", "list", "read"))
                ):
                    raise HarborError(400, "BAD_REQUEST", f"bad request permission: {acc!r}")
            namespace = perm.get("namespace")
            project = project_by_name(str(namespace))
            duration = body.get("duration")
            if not isinstance(duration, int) or (duration != -1 and duration <= 0):
                raise HarborError(400, "BAD_REQUEST", "duration must be -1 or a positive number")
            full = f"robot${project.name}+{name}"
            if full in state.robots:
                raise HarborError(
                    409, "CONFLICT", f"robot account {project.id}:{name} already exists"
                )
            robot = Robot(next(state._ids), full, secrets.token_hex(16), project.name, body)
            state.robots[full] = robot
            return JSONResponse(
                {
                    "id": robot.id,
                    "name": full,
                    "secret": robot.secret,
                    "creation_time": _now(),
                    "expires_at": -1,
                },
                status_code=201,
                headers={"Location": f"{API}/robots/{robot.id}"},
            )

        def robot_json(robot: Robot) -> dict[str, Any]:
            body = robot.body
            return {
                "id": robot.id,
                "name": robot.name,
                "description": body.get("description", ""),
                "level": "project",
                "duration": body.get("duration"),
                "editable": True,
                "disable": bool(body.get("disable", False)),
                "expires_at": -1,
                "permissions": body.get("permissions"),
                "creator_type": "local",
                "creator_ref": 1,
                "creation_time": robot.created,
                "update_time": robot.created,
            }

        def parse_q(value: str) -> dict[str, str]:
            """Harbor's ``q``: ``k=v`` terms split by ``,`` (exact match only here)."""
            terms: dict[str, str] = {}
            for term in filter(None, value.split(",")):
                key, sep, val = term.partition("=")
                if not sep or not key or val.startswith("~"):
                    raise HarborError(400, "BAD_REQUEST", f"invalid query {term!r}")
                terms[key] = val.strip("'\"")
            return terms

        @app.get(f"{API}/robots")
        async def list_robots(request: Request) -> Response:
            admin(request)
            terms = parse_q(request.query_params.get("q", ""))
            if terms.get("Level", "system") != "project":
                items: list[dict[str, Any]] = []  # system robots: none made here
            else:
                pid = terms.get("ProjectID")
                if pid is None:
                    raise HarborError(
                        400, "BAD_REQUEST", "must with project ID when to query project robots"
                    )
                if not pid.isdigit() or int(pid) <= 0:
                    raise HarborError(400, "BAD_REQUEST", "ProjectID must be a positive integer")
                names = {p.name for p in state.projects.values() if p.id == int(pid)}
                items = [
                    robot_json(r)
                    for r in sorted(state.robots.values(), key=lambda r: r.id)
                    if r.project in names
                ]
            page, headers = page_of(request, items, request.url.path)
            return JSONResponse(page, headers=headers)

        def robot_by_id(robot_id: int) -> Robot:
            for robot in state.robots.values():
                if robot.id == robot_id:
                    return robot
            raise HarborError(404, "NOT_FOUND", f"robot {robot_id} not found")

        @app.get(f"{API}/robots/{{robot_id}}")
        async def get_robot(request: Request, robot_id: int) -> Response:
            admin(request)
            return JSONResponse(robot_json(robot_by_id(robot_id)))

        @app.delete(f"{API}/robots/{{robot_id}}")
        async def delete_robot(request: Request, robot_id: int) -> Response:
            admin(request)
            robot = robot_by_id(robot_id)
            del state.robots[robot.name]
            return Response(status_code=200)

        # --- webhook policies ---

        def check_policy(body: Any) -> dict[str, Any]:
            if not isinstance(body, dict):
                raise HarborError(400, "BAD_REQUEST", "a WebhookPolicy object is required")
            targets, events = body.get("targets"), body.get("event_types")
            if not isinstance(targets, list) or not targets:
                raise HarborError(400, "BAD_REQUEST", "targets are required")
            for target in targets:
                address = target.get("address") if isinstance(target, dict) else None
                if not isinstance(address, str) or urlsplit(address).scheme not in (
                    "http",
                    "https",
                ):
                    raise HarborError(400, "BAD_REQUEST", f"invalid target address {address!r}")
                if target.get("type") not in ("http", "slack"):
                    raise HarborError(400, "BAD_REQUEST", "target type must be http or slack")
                if target.get("payload_format", "") not in ("", "Default", "CloudEvents"):
                    raise HarborError(400, "BAD_REQUEST", "unsupported payload format")
            if not isinstance(events, list) or not events or not set(events) <= EVENT_TYPES:
                raise HarborError(400, "BAD_REQUEST", f"invalid event types {events!r}")
            if not isinstance(body.get("name"), str) or not body["name"]:
                raise HarborError(400, "BAD_REQUEST", "a policy name is required")
            return body

        @app.get(f"{API}/projects/{{project_name_or_id}}/webhook/policies")
        async def list_policies(request: Request, project_name_or_id: str) -> Response:
            admin(request)
            project = project_by_name_or_id(request, project_name_or_id)
            items = state.policies.get(project.name, [])
            page, headers = page_of(request, items, request.url.path)
            return JSONResponse(page, headers=headers)

        @app.post(f"{API}/projects/{{project_name_or_id}}/webhook/policies")
        async def create_policy(request: Request, project_name_or_id: str) -> Response:
            who = admin(request)
            project = project_by_name_or_id(request, project_name_or_id)
            body = check_policy(await body_of(request))
            policies = state.policies.setdefault(project.name, [])
            if any(p["name"] == body["name"] for p in policies):
                raise HarborError(409, "CONFLICT", f"policy {body['name']} already exists")
            now = _now()
            policy = {
                **{k: v for k, v in body.items() if k not in ("id", "project_id")},
                "id": next(state._ids),
                "project_id": project.id,
                "creator": who.name,
                "creation_time": now,
                "update_time": now,
                "enabled": bool(body.get("enabled", True)),
            }
            policies.append(policy)
            location = f"{API}/projects/{project_name_or_id}/webhook/policies/{policy['id']}"
            return Response(status_code=201, headers={"Location": location})

        def find_policy(project: Project, policy_id: int) -> dict[str, Any]:
            for policy in state.policies.get(project.name, []):
                if policy["id"] == policy_id:
                    return policy
            raise HarborError(404, "NOT_FOUND", f"webhook policy {policy_id} not found")

        @app.get(f"{API}/projects/{{project_name_or_id}}/webhook/policies/{{policy_id}}")
        async def get_policy(request: Request, project_name_or_id: str, policy_id: int) -> Response:
            admin(request)
            project = project_by_name_or_id(request, project_name_or_id)
            return JSONResponse(find_policy(project, policy_id))

        @app.put(f"{API}/projects/{{project_name_or_id}}/webhook/policies/{{policy_id}}")
        async def update_policy(
            request: Request, project_name_or_id: str, policy_id: int
        ) -> Response:
            admin(request)
            project = project_by_name_or_id(request, project_name_or_id)
            policy = find_policy(project, policy_id)
            body = check_policy(await body_of(request))
            for key in ("name", "description", "targets", "event_types", "enabled"):
                if key in body:
                    policy[key] = body[key]
            policy["update_time"] = _now()
            return Response(status_code=200)

        # --- repositories and artifacts ---

        @app.get(f"{API}/projects/{{project_name}}/repositories")
        async def list_repositories(request: Request, project_name: str) -> Response:
            project = project_by_name(project_name)
            may_use(request, project.name)
            items = [
                {
                    "id": state._art_id(name, ""),
                    "project_id": project.id,
                    "name": name,
                    "artifact_count": len(state.scan(name)),
                    "pull_count": 0,
                }
                for name in state.repositories(project.name)
            ]
            page, headers = page_of(request, items, request.url.path)
            return JSONResponse(page, headers=headers)

        @app.delete(f"{API}/projects/{{project_name}}/repositories/{{repository_name}}")
        async def delete_repository(
            request: Request, project_name: str, repository_name: str
        ) -> Response:
            admin(request)
            _, repo = repo_of(project_name, repository_name)
            arts = state.scan(repo)
            if not arts:
                raise HarborError(404, "NOT_FOUND", f"repository {repo} not found")
            with state.oci() as oci:
                for digest in arts:
                    with contextlib.suppress(NotFoundError):
                        oci.delete_manifest(repo, digest)
            state._known.pop(repo, None)
            return Response(status_code=200)

        @app.get(f"{API}/projects/{{project_name}}/repositories/{{repository_name}}/artifacts")
        async def list_artifacts(
            request: Request, project_name: str, repository_name: str
        ) -> Response:
            project, repo = repo_of(project_name, repository_name)
            may_use(request, project.name)
            q = request.query_params
            arts = state.scan(repo)
            if not arts and repo not in state._known:
                raise HarborError(404, "NOT_FOUND", f"repository {repo} not found")
            top = [a for a in arts.values() if a.subject is None and not a.is_child]
            items = [
                state.artifact_json(
                    project,
                    repo,
                    a,
                    arts,
                    with_tag=q.get("with_tag", "true") == "true",
                    with_accessory=q.get("with_accessory", "false") == "true",
                )
                for a in sorted(top, key=lambda a: a.digest)
            ]
            page, headers = page_of(request, items, request.url.path)
            return JSONResponse(page, headers=headers)

        @app.post(f"{API}/projects/{{project_name}}/repositories/{{repository_name}}/artifacts")
        async def copy_artifact(
            request: Request, project_name: str, repository_name: str
        ) -> Response:
            _, dst = repo_of(project_name, repository_name)
            source = request.query_params.get("from")
            if not source:
                raise HarborError(400, "BAD_REQUEST", "the 'from' parameter is required")
            m = re.fullmatch(r"([^@:]+)(?:@(sha256:[0-9a-f]{64})|:([\w][\w.-]*))", source)
            if m is None or "/" not in m.group(1):
                raise HarborError(400, "BAD_REQUEST", f"invalid 'from' {source!r}")
            src = m.group(1)
            src_project = project_by_name(src.split("/", 1)[0])
            may_use(request, src_project.name)
            may_use(request, project_name)
            with state._lock:
                digest = state.copy_deeply(
                    src, m.group(2) or m.group(3), dst, is_root=True, is_acc=False
                )
            location = (
                f"{API}/projects/{project_name}/repositories/"
                f"{quote(repository_name, safe='')}/artifacts/{digest}"
            )
            return Response(status_code=201, headers={"Location": location})

        art_path = f"{API}/projects/{{project_name}}/repositories/{{repository_name}}/artifacts"

        def find_art(arts: dict[str, _Art], repo: str, reference: str) -> _Art:
            if reference.startswith("sha256:"):
                art = arts.get(reference)
            else:
                art = next((a for a in arts.values() if reference in a.tags), None)
            if art is None:
                raise HarborError(404, "NOT_FOUND", f"artifact {repo}@{reference} not found")
            return art

        @app.get(f"{art_path}/{{reference}}")
        async def get_artifact(
            request: Request, project_name: str, repository_name: str, reference: str
        ) -> Response:
            project, repo = repo_of(project_name, repository_name)
            may_use(request, project.name)
            q = request.query_params
            arts = state.scan(repo)
            art = find_art(arts, repo, reference)
            return JSONResponse(
                state.artifact_json(
                    project,
                    repo,
                    art,
                    arts,
                    with_tag=q.get("with_tag", "true") == "true",
                    with_accessory=q.get("with_accessory", "false") == "true",
                )
            )

        @app.delete(f"{art_path}/{{reference}}")
        async def delete_artifact(
            request: Request, project_name: str, repository_name: str, reference: str
        ) -> Response:
            admin(request)
            _, repo = repo_of(project_name, repository_name)
            art = find_art(state.scan(repo), repo, reference)
            with state.oci() as oci:
                oci.delete_manifest(repo, art.digest)
            state._known.get(repo, set()).discard(art.digest)
            return Response(status_code=200)

        @app.post(f"{art_path}/{{reference}}/tags")
        async def create_tag(
            request: Request, project_name: str, repository_name: str, reference: str
        ) -> Response:
            project, repo = repo_of(project_name, repository_name)
            may_use(request, project.name)
            body = await body_of(request)
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not _TAG_RE.fullmatch(name):
                raise HarborError(400, "BAD_REQUEST", f"invalid tag name {name!r}")
            arts = state.scan(repo)
            art = find_art(arts, repo, reference)
            if any(name in a.tags for a in arts.values()):
                raise HarborError(
                    409, "CONFLICT", f"the tag {name} already exists under the repository {repo}"
                )
            with state.oci() as oci:
                oci.put_manifest(repo, name, art.manifest.raw, art.manifest.media_type)
            location = (
                f"{API}/projects/{project_name}/repositories/"
                f"{quote(repository_name, safe='')}/artifacts/{art.digest}/tags/{name}"
            )
            return Response(status_code=201, headers={"Location": location})

        return app


class _Gate:
    """ASGI wrapper: records the request, sets ``X-Request-Id`` and the ``sid`` cookie on
    every response, refuses cookies (CSRF) and missing or wrong Basic auth, injects faults."""

    def __init__(self, state: HarborStandIn, app: FastAPI) -> None:
        self.state, self.app = state, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            headers[name] = (
                headers[name] + "; " + value.decode("latin-1")
                if name in headers
                else value.decode("latin-1")
            )
        record = Recorded(
            method=scope["method"],
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
        )
        self.state.requests.append(record)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-request-id", request_id.encode()),
                    (b"set-cookie", f"sid={secrets.token_hex(16)}; Path=/; HttpOnly".encode()),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
                record.status = message["status"]
            await send(message)

        async def refuse(status: int, code: str, text: str) -> None:
            payload = json.dumps(_errors(code, text)).encode()
            await send_wrapped(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send_wrapped({"type": "http.response.body", "body": payload})

        if "cookie" in headers:
            await refuse(403, "FORBIDDEN", "CSRF token invalid")
            return
        who = self.state.authenticate(headers.get("authorization"))
        if who is None:
            await refuse(401, "UNAUTHORIZED", "unauthorized")
            return
        fault = self.state.take_fault(record.method, record.raw_path)
        if fault is not None:
            await refuse(fault.status, fault.code, fault.message)
            return
        scope = {**scope, "state": {**scope.get("state", {}), "principal": who}}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_wrapped)


@contextlib.contextmanager
def serve(standin: HarborStandIn) -> Iterator[str]:
    """Serve the stand-in with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(standin.app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="harbor-standin", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Harbor stand-in did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
