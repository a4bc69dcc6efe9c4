"""Registry administration for the central service: one protocol, two implementations.

:class:`RegistryAdmin` is what the central service needs from a registry: private projects,
robot accounts limited to one project, push webhooks, and copying a train with everything
that belongs to it from one project to another (PROTOCOL.md, "Routing through a registry").

What :meth:`RegistryAdmin.copy_train` copies, from ``src`` to ``dst``:

- the train manifest, by digest, tagged ``train`` in the destination;
- its signature manifest (cosign's ``sha256-<hex>.sig`` tag), if there is one;
- every ``result-<k>`` artifact whose ``subject`` is the train, and each one's ``.sig``.

Digests never change: manifests are copied byte for byte, so every signature stays valid.
Copies are idempotent (what is already there with the same digest is left alone) and move
no layer bytes through the central service.

:class:`PlainRegistryAdmin` works on a CNCF distribution registry through
:class:`~pht_airflow.oci.RegistryClient`. A "project" is only a repository prefix there, a
plain registry has no accounts to give a robot, and its webhooks are its own config file's
``notifications`` section; those operations say so (:class:`NotSupportedError`). Copies use
cross-repository blob mounts, and fall back to a streamed copy (counted in the report) only
for blobs the registry refuses to mount.

:class:`HarborAdmin` speaks Harbor's REST API v2.0 (``/api/v2.0``, swagger
``api/v2.0/swagger.yaml`` in goharbor/harbor). Harbor-specific behaviour it relies on:

- Basic auth on every request and **no cookie jar**: Harbor answers each API call with a
  ``sid`` session cookie, and a request that carries that cookie back is treated as a
  browser session, whose unsafe methods then need a CSRF token (HTTP 403 "CSRF token
  invalid"). The session here refuses every cookie.
- ``X-Is-Resource-Name: true`` on project-scoped requests, so a project name that looks
  like a number is never read as a project id.
- Repository names inside a project that contain ``/`` are URL-encoded twice in the path
  (``a/b`` → ``a%252Fb``), as the swagger's ``repository_name`` parameter demands.
- Artifact copy (``POST …/artifacts?from=<project>/<repo>@<digest>``) is done by Harbor
  inside its storage (blob mounts), copies the source artifact's tags with it and, since
  Harbor 2.5, its accessories (cosign signatures; since 2.8 also artifacts whose
  ``subject`` is it). An accessory's own accessories (a result's signature) are not copied
  and an artifact that already exists in the destination gets none of its source's
  accessories, so signatures and results are still copied one by one here. Older Harbor
  answers 409 for an artifact that already exists; that counts as done.

Error messages name the operation, Harbor's ``errors[].message`` and its request id, never
the password or a robot secret.
"""

from __future__ import annotations

import http.cookiejar
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urljoin, urlsplit

import requests

from ...errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    RegistryAuthError,
    RegistryError,
)
from ...oci import RegistryClient
from ...oci.auth import is_loopback_host
from ...oci.media import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Manifest
from ...oci.reference import check_digest, check_repository
from ...protocol import RESULT_TAG_CLAIM, SIGNATURE_TAG, TRAIN_TAG
from ...signing import signature_tag

log = logging.getLogger(__name__)

"""The tag a train carries in every project it is copied to."""

PayloadFormat = Literal["Default", "CloudEvents"]
PAYLOAD_FORMATS: tuple[str, ...] = ("Default", "CloudEvents")

HARBOR_PUSH_EVENT = "PUSH_ARTIFACT"

# Harbor's rule for project names (and what we accept for robot and webhook names).
_HARBOR_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_FOREIGN_LAYER = "foreign"
_MAX_INDEX_DEPTH = 4
_PAGE_SIZE = 100
_MAX_PAGES = 1000


# --- shared shapes ---------------------------------------------------------------------


@dataclass(frozen=True)
class RobotAccount:
    """A robot account: its full name (Harbor: ``robot$<project>+<name>``) and its secret.

    The secret is shown once by Harbor; it is kept out of ``repr`` and ``str``.
    """

    name: str
    secret: str = field(repr=False)
    id: int | None = None


@dataclass
class CopyReport:
    """What one :meth:`RegistryAdmin.copy_train` did.

    ``manifests``: manifests written to the destination; ``manifests_present``: manifests
    that were already there under the right tag (skipped); ``blobs_mounted``: blobs linked
    across repositories without moving bytes; ``blobs_streamed`` / ``bytes_streamed``:
    blobs the registry refused to mount, copied through this process instead. ``tags``
    lists the destination tags the copy covers. For Harbor the blob counts stay 0: Harbor
    copies inside its own storage.
    """

    source: str
    destination: str
    train_digest: str
    manifests: int = 0
    manifests_present: int = 0
    blobs_mounted: int = 0
    blobs_streamed: int = 0
    bytes_streamed: int = 0
    tags: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.source} -> {self.destination} @ {self.train_digest}: "
            f"{self.manifests} manifest(s) copied, {self.manifests_present} already there, "
            f"{self.blobs_mounted} blob(s) mounted, {self.blobs_streamed} streamed "
            f"({self.bytes_streamed} bytes)"
        )


@runtime_checkable
class RegistryAdmin(Protocol):
    """What the central service needs from the registry that carries the trains."""

    def ensure_project(self, name: str) -> None:
        """Make sure a private project ``name`` exists (idempotent)."""
        ...

    def create_robot(self, project: str, name: str) -> RobotAccount:
        """A new robot account that can pull and push in ``project`` and nowhere else."""
        ...

    def ensure_webhook(
        self,
        project: str,
        endpoint_url: str,
        auth_header: str,
        payload_format: PayloadFormat = "Default",
    ) -> None:
        """Make the registry POST every artifact push in ``project`` to ``endpoint_url``,
        with ``Authorization: <auth_header>`` (idempotent: create or update)."""
        ...

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> CopyReport:
        """Copy a train, its signatures and its results with theirs (idempotent)."""
        ...

    def delete_repository(self, repository: str) -> None:
        """Delete a repository and everything tagged in it."""
        ...

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete one manifest (artifact) by digest."""
        ...

    def list_repositories(self, project: str) -> list[str]:
        """The repositories (``project/name``) in a project that hold something."""
        ...


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


def _result_tags(tags: Iterable[str]) -> list[str]:
    return sorted((t for t in tags if RESULT_TAG_CLAIM.match(t)), key=_tag_order)


def _tag_order(tag: str) -> tuple[int, str]:
    m = RESULT_TAG_CLAIM.match(tag)
    return (int(m.group(1)) if m else -1, tag)


# --- plain distribution registry --------------------------------------------------------


class PlainRegistryAdmin:
    """Registry admin for a CNCF distribution registry (``docker-registry``).

    Projects are repository prefixes; accounts and webhooks live in the registry's own
    config (``auth`` and ``notifications``). Copies mount blobs across repositories.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"PlainRegistryAdmin({self.client.registry!r})"

    # --- projects, accounts, webhooks -----------------------------------------------

    def ensure_project(self, name: str) -> None:
        """Nothing to create: on a plain registry a project is only a repository prefix."""
        check_repository(name)
        log.debug(
            "plain registry %s: project %s is a repository prefix", self.client.registry, name
        )

    def create_robot(self, project: str, name: str) -> RobotAccount:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: it has no "
            f"accounts, so there is no robot {name!r} for project {project!r} to create. Give "
            "each station credentials in the registry's own auth (htpasswd or a token "
            "service whose access rules limit it to its project)."
        )

    def ensure_webhook(
        self,
        project: str,
        endpoint_url: str,
        auth_header: str,
        payload_format: PayloadFormat = "Default",
    ) -> None:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: webhooks are "
            "not managed through its API. Add the endpoint to the `notifications: endpoints:` "
            "section of the registry's config file (url, headers: {Authorization: [...]}) and "
            f"filter on the repository prefix {project!r}/ in the receiver; the payload is "
            "always distribution's event envelope, never Harbor's "
            f"{payload_format!r} format."
        )

    # --- copies ---------------------------------------------------------------------

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> CopyReport:
        """Copy the train, its signatures, its results and theirs; mount, never re-upload.

        Raises :class:`NotFoundError` if ``train_digest`` is not in ``src_repository``, and
        :class:`ConflictError` if the destination already tags another manifest as
        ``train`` or as one of the results, or holds a ``.sig`` manifest with signatures
        the source's lacks (one that only gains signatures is replaced).
        """
        check_repository(src_repository)
        check_repository(dst_repository)
        check_digest(train_digest)
        if src_repository == dst_repository:
            raise ConfigError(f"cannot copy {src_repository} onto itself")
        client = self.client
        try:
            train = client.get_manifest(src_repository, train_digest)
        except NotFoundError as exc:
            raise NotFoundError(
                f"registry {client.registry}: train {train_digest} is not in "
                f"{src_repository}, nothing to copy to {dst_repository}",
                status=404,
                url=exc.url,
            ) from None
        report = CopyReport(src_repository, dst_repository, train_digest)
        plan: list[tuple[Manifest, str]] = [(train, TRAIN_TAG)]
        tags = set(client.list_tags(src_repository))
        plan.extend(self._signature(src_repository, train.digest, tags))
        for tag in _result_tags(tags):
            result = self._maybe_manifest(src_repository, tag)
            if result is None:
                continue
            if result.subject is None or result.subject.digest != train_digest:
                subject = result.subject.digest if result.subject else "none"
                log.debug("%s:%s is not a result of %s (subject %s)", src_repository, tag,
                          train_digest, subject)  # fmt: skip
                continue
            plan.append((result, tag))
            plan.extend(self._signature(src_repository, result.digest, tags))
        # The train's own tag goes last: a station starts its hop when ``train`` appears in
        # its project (the registry's webhook), so everything the hop verifies (signatures,
        # earlier results) must already be there by then.
        plan.append(plan.pop(0))
        seen: set[str] = set()
        for manifest, tag in plan:
            self._copy_tagged(src_repository, dst_repository, manifest, tag, report, seen)
        log.info("copied train %s", report)
        return report

    def _maybe_manifest(self, repository: str, reference: str) -> Manifest | None:
        try:
            return self.client.get_manifest(repository, reference)
        except NotFoundError:
            log.warning("%s:%s disappeared while copying; skipped", repository, reference)
            return None

    def _signature(
        self, repository: str, digest: str, tags: set[str]
    ) -> Iterator[tuple[Manifest, str]]:
        tag = signature_tag(digest)
        if tag in tags:
            manifest = self._maybe_manifest(repository, tag)
            if manifest is not None:
                yield manifest, tag

    def _copy_tagged(
        self,
        src: str,
        dst: str,
        manifest: Manifest,
        tag: str,
        report: CopyReport,
        seen: set[str],
    ) -> None:
        client = self.client
        try:
            current: str | None = client.resolve(dst, tag)
        except NotFoundError:
            current = None
        report.tags.append(tag)
        if current == manifest.digest:
            report.manifests_present += 1
            return
        if current is not None:
            self._check_retag(dst, tag, current, manifest)
        self._copy_content(src, dst, manifest, report, seen, depth=0)
        client.put_manifest(dst, tag, manifest.raw, manifest.media_type)
        report.manifests += 1

    def _check_retag(self, dst: str, tag: str, current: str, new: Manifest) -> None:
        """A tag in ``dst`` points elsewhere: only a signature manifest that keeps every
        signature already there may replace it."""
        if SIGNATURE_TAG.match(tag):
            old = self.client.get_manifest(dst, current)
            kept = {(d.digest, tuple(sorted((d.annotations or {}).items()))) for d in new.layers}
            if all(
                (d.digest, tuple(sorted((d.annotations or {}).items()))) in kept for d in old.layers
            ):
                log.info("%s:%s gains signatures (%s -> %s)", dst, tag, current, new.digest)
                return
            raise ConflictError(
                f"registry {self.client.registry}: {dst}:{tag} holds signatures that "
                f"{new.digest} lacks; refusing to drop them (merge or delete it first)"
            )
        raise ConflictError(
            f"registry {self.client.registry}: {dst}:{tag} already points at {current}, not "
            f"at {new.digest}; refusing to replace it (delete the destination tag first if "
            "that is intended)"
        )

    def _copy_content(
        self,
        src: str,
        dst: str,
        manifest: Manifest,
        report: CopyReport,
        seen: set[str],
        depth: int,
    ) -> None:
        """Make everything ``manifest`` refers to exist in ``dst`` (children, blobs)."""
        if manifest.media_type in INDEX_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                raise RegistryError(f"index {manifest.digest} nests deeper than {depth} levels")
            for child in manifest.manifests:
                if child.digest in seen or child.media_type not in MANIFEST_TYPES:
                    continue
                seen.add(child.digest)
                try:
                    if self.client.resolve(dst, child.digest) == child.digest:
                        report.manifests_present += 1
                        continue
                except NotFoundError:
                    pass
                child_manifest = self.client.get_manifest(src, child.digest)
                self._copy_content(src, dst, child_manifest, report, seen, depth + 1)
                self.client.put_manifest(
                    dst, child.digest, child_manifest.raw, child_manifest.media_type
                )
                report.manifests += 1
            return
        for blob in [manifest.config, *manifest.layers]:
            if blob is None or blob.digest in seen:
                continue
            seen.add(blob.digest)
            if _FOREIGN_LAYER in blob.media_type:
                continue  # non-distributable layer: the registry never held its bytes
            self._copy_blob(src, dst, blob, report)

    def _copy_blob(self, src: str, dst: str, blob: Descriptor, report: CopyReport) -> None:
        client = self.client
        if client.mount_blob(dst, blob.digest, src):
            report.blobs_mounted += 1
            return
        log.info(
            "registry %s declined to mount %s from %s into %s; streaming its %d bytes",
            client.registry, blob.digest, src, dst, blob.size,
        )  # fmt: skip
        copied = client.upload_blob(
            dst,
            client.open_blob(src, blob.digest),
            media_type=blob.media_type,
            expected_digest=blob.digest,
        )
        report.blobs_streamed += 1
        report.bytes_streamed += copied.size

    # --- deletes and listing ----------------------------------------------------------

    def delete_repository(self, repository: str) -> None:
        """Delete every tagged manifest of ``repository`` (distribution has no repository
        delete; untagged leftovers and blobs go at the registry's next garbage collection)."""
        check_repository(repository)
        tags = self.client.list_tags(repository)
        if not tags:
            raise NotFoundError(
                f"registry {self.client.registry}: repository {repository} holds no tagged "
                "manifest",
                status=404,
            )
        digests: dict[str, None] = {}
        for tag in tags:
            try:
                digests[self.client.resolve(repository, tag)] = None
            except NotFoundError:
                continue
        for digest in digests:
            try:
                self.client.delete_manifest(repository, digest)
            except NotFoundError:
                continue
        log.info("deleted %d manifest(s) from %s", len(digests), repository)

    def delete_manifest(self, repository: str, digest: str) -> None:
        self.client.delete_manifest(repository, digest)

    def list_repositories(self, project: str) -> list[str]:
        """Repositories under ``project/`` that still hold a tag (from ``/v2/_catalog``)."""
        check_repository(project)
        prefix = project + "/"
        return [
            name
            for name in self._catalog()
            if name.startswith(prefix) and self.client.list_tags(name)
        ]

    def _catalog(self) -> list[str]:
        client = self.client
        names: list[str] = []
        path: str | None = f"/v2/_catalog?n={_PAGE_SIZE * 10}"
        base = client.base_url
        for _page in range(_MAX_PAGES):
            if path is None:
                break
            # The client has no public catalog call; its request plumbing handles auth.
            resp = client._request(
                "GET",
                path,
                scopes=("registry:catalog:*",),
                what="listing the repository catalog",
            )
            with resp:
                try:
                    body = resp.json()
                except ValueError as exc:
                    raise RegistryError(
                        f"registry {client.registry} answered a catalog that is not JSON"
                    ) from exc
                link = resp.links.get("next", {}).get("url")
            page = body.get("repositories") if isinstance(body, dict) else None
            names.extend(n for n in page or [] if isinstance(n, str))
            path = None
            if link:
                target = urljoin(base + "/", link)
                if urlsplit(target).netloc != urlsplit(base).netloc:
                    raise RegistryError(f"registry {client.registry} paginates to another host")
                path = target
        return names


# --- Harbor ---------------------------------------------------------------------------


class _RefuseCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie: Harbor treats a returned ``sid`` as a browser session (CSRF)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


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


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _repo_path(project: str, name: str) -> str:
    # Harbor: a repository name with '/' is URL-encoded twice ("a/b" -> "a%252Fb").
    return f"/projects/{_q(project)}/repositories/{_q(_q(name))}"


def _harbor_detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for e in errors:
            if isinstance(e, dict):
                code, message = str(e.get("code") or "").strip(), str(e.get("message") or "")
                parts.append(f"{code}: {message}" if code else message)
        if parts:
            return "; ".join(parts)[:500]
    return resp.reason or f"HTTP {resp.status_code}"


class HarborAdmin:
    """Registry admin through Harbor's REST API v2.0.

    :param base_url: ``https://harbor.example.org`` (a trailing ``/api/v2.0`` is fine); a
        bare host means https, or http for a loopback host.
    :param username: a Harbor user (or system robot) allowed to create projects, robots
        and webhook policies, and to copy artifacts between the projects.
    :param password: its password or secret; sent as Basic auth, never logged.
    :param verify_tls: check the server certificate (a CA bundle path also works).
    :param insecure: allow plain http to a host that is not loopback.
    :param timeout: seconds to wait for Harbor on connect and on each read.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify_tls: bool | str = True,
        insecure: bool = False,
        timeout: float = 60.0,
    ) -> None:
        url = (base_url or "").strip().rstrip("/")
        if "://" not in url:
            url = ("http://" if is_loopback_host(url.split("/", 1)[0]) else "https://") + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"Harbor URL {base_url!r} must be https://host[:port]")
        if parts.scheme == "http" and not (insecure or is_loopback_host(parts.netloc)):
            raise ConfigError(
                f"refusing plain http to Harbor at {parts.netloc}: the API carries "
                "credentials; use https (or insecure=True on a trusted network)"
            )
        path = parts.path.rstrip("/")
        if path.endswith("/api/v2.0"):
            path = path[: -len("/api/v2.0")]
        self.host = parts.netloc
        self.api = f"{parts.scheme}://{parts.netloc}{path}/api/v2.0"
        self.username = username
        self.timeout = timeout
        self._secrets: set[str] = {password} if password else set()
        self._session = requests.Session()
        self._session.cookies.set_policy(_RefuseCookies())
        self._session.trust_env = False  # no proxies or ~/.netrc from the environment
        self._session.auth = requests.auth.HTTPBasicAuth(username, password)
        self._session.verify = verify_tls
        self._session.headers.update({"Accept": "application/json", "User-Agent": "pht-airflow"})

    def __repr__(self) -> str:
        return f"HarborAdmin({self.api!r}, username={self.username!r})"

    def __enter__(self) -> HarborAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # --- plumbing ---------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200,),
        allow: tuple[int, ...] = (),
        params: dict[str, Any] | None = None,
        body: Any = None,
        by_name: bool = False,
    ) -> requests.Response:
        """One API call; statuses in ``ok`` and ``allow`` return, others raise."""
        headers = {"X-Request-Id": uuid.uuid4().hex}
        if by_name:
            headers["X-Is-Resource-Name"] = "true"
        try:
            resp = self._session.request(
                method,
                self.api + path,
                params=params,
                json=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise RegistryError(
                f"cannot reach Harbor at {self.host} ({what}): {type(exc).__name__}",
                url=self.api + path,
            ) from None
        if resp.status_code in ok or resp.status_code in allow:
            return resp
        raise self._error(resp, what, headers["X-Request-Id"])

    def _error(self, resp: requests.Response, what: str, request_id: str) -> RegistryError:
        status = resp.status_code
        detail = _harbor_detail(resp)
        rid = resp.headers.get("X-Request-Id") or request_id
        where = f" [request id {rid}]"
        url = resp.url
        if status == 401:
            message = (
                f"Harbor {self.host} rejected the credentials of {self.username!r} while "
                f"{what} (HTTP 401: {detail}){where}"
            )
            return RegistryAuthError(self._redact(message), status=status, url=url)
        if status == 403:
            hint = (
                ": the request carried a session cookie, which API clients must not send"
                if "csrf" in detail.lower()
                else f": {self.username!r} lacks the permission"
            )
            message = f"Harbor {self.host} refused {what} (HTTP 403: {detail}){hint}{where}"
            return RegistryAuthError(self._redact(message), status=status, url=url)
        message = f"Harbor {self.host}: {what} failed (HTTP {status}: {detail}){where}"
        if status == 404:
            return NotFoundError(self._redact(message), status=status, url=url)
        if status == 409:
            return ConflictError(self._redact(message), status=status, url=url)
        if status == 412:
            message = (
                f"Harbor {self.host}: {what} failed: a precondition does not hold (HTTP 412: "
                f"{detail}; an immutable tag rule, or a project that is not empty){where}"
            )
        return RegistryError(self._redact(message), status=status, url=url)

    def _json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise RegistryError(
                f"Harbor {self.host}: {what}: the answer is not JSON", status=resp.status_code
            ) from None

    def _pages(
        self,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        by_name: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paged list endpoint (``page``/``page_size``)."""
        for page in range(1, _MAX_PAGES + 1):
            query = {**(params or {}), "page": page, "page_size": _PAGE_SIZE}
            resp = self._request("GET", path, what=what, params=query, by_name=by_name)
            items = self._json(resp, what)
            if not isinstance(items, list):
                raise RegistryError(f"Harbor {self.host}: {what}: expected a JSON list")
            yield from (i for i in items if isinstance(i, dict))
            total = resp.headers.get("X-Total-Count")
            if len(items) < _PAGE_SIZE or (
                total is not None and total.isdigit() and page * _PAGE_SIZE >= int(total)
            ):
                return
        raise RegistryError(f"Harbor {self.host}: {what}: more than {_MAX_PAGES} pages")

    # --- projects -------------------------------------------------------------------

    def ensure_project(self, name: str) -> None:
        """Create the private project ``name`` unless it exists; make an existing one private."""
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
                return
            log.info("Harbor project %s was created meanwhile", name)
        project = self._json(
            self._request("GET", f"/projects/{_q(name)}", what=what, by_name=True), what
        )
        metadata = project.get("metadata") if isinstance(project, dict) else None
        if isinstance(metadata, dict) and str(metadata.get("public", "false")).lower() == "true":
            self._request(
                "PUT",
                f"/projects/{_q(name)}",
                what=f"making project {name} private",
                by_name=True,
                body={"metadata": {"public": "false"}},
            )
            log.warning("Harbor project %s was public; it is private now", name)

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
        log.info("created Harbor robot %s (pull and push in project %s only)", full_name, project)
        return RobotAccount(
            name=full_name, secret=secret, id=robot_id if isinstance(robot_id, int) else None
        )

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
    ) -> None:
        """Create or update the webhook policy ``name`` of ``project``; no-op if it matches.

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
                return
            policy = existing[0]
            if _same_policy(policy, desired):
                log.debug("webhook %s in project %s is up to date", name, project)
                return
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
            return
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
        tag = signature_tag(digest)
        return [(a.digest, tag) for a in inventory.values() if tag in a.tags]

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
