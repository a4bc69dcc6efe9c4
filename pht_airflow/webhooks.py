"""Registry webhooks: turn a notification body into the manifest pushes it announces.

One parser for the station plugin and the central service. It reads three shapes:

* Harbor's default payload (``Content-Type: application/json``)::

      {"type": "PUSH_ARTIFACT", "occur_at": …, "operator": …,
       "event_data": {"resources": [{"digest", "tag", "resource_url"}],
                      "repository": {"name", "namespace", "repo_full_name", "repo_type"}}}

* Harbor's CloudEvents payload (``application/cloudevents+json``): ``specversion`` ``1.0``,
  ``type`` ``harbor.artifact.pushed``, ``data`` shaped like ``event_data`` above.
* CNCF distribution notification envelopes
  (``application/vnd.docker.distribution.events.v1+json``): ``{"events": [{"action",
  "target": {"mediaType", "digest", "repository", "url", "tag"}, "request": {"method",
  "host"}}]}``, one envelope per event from ``docker-registry`` 2.8.

Only pushes of manifests survive: pulls (also the ``pull`` events a HEAD request makes),
deletes, mounts, blob pushes, every other Harbor event type and cosign's signature,
attestation and SBOM tags (``sha256-<hex>.sig``/``.att``/``.sbom``) give no event. What is
left is checked strictly (a ``sha256:`` digest, a valid repository path and tag); anything
malformed raises :class:`WebhookError` naming the field, with the HTTP status to answer.

A push may be announced twice, late, or by both Harbor and a plain registry: the receiver
deduplicates on :attr:`PushEvent.event_id`, which is the same for every source.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import strictjson
from .errors import InvalidReferenceError, WebhookError
from .oci.media import MANIFEST_TYPES
from .oci.reference import check_registry, check_repository, check_tag
from .protocol import COSIGN_TAG

MAX_BODY_BYTES = 1024 * 1024
"""Largest webhook body accepted (1 MiB); the web app enforces it before parsing."""

HARBOR_PUSH = "PUSH_ARTIFACT"
CLOUDEVENT_PUSH = "harbor.artifact.pushed"

CT_JSON = "application/json"
CT_CLOUDEVENTS = "application/cloudevents+json"
CT_DISTRIBUTION = "application/vnd.docker.distribution.events.v1+json"
CONTENT_TYPES: tuple[str, ...] = (CT_JSON, CT_CLOUDEVENTS, CT_DISTRIBUTION)

SOURCE_HARBOR = "harbor"
SOURCE_CLOUDEVENTS = "harbor-cloudevents"
SOURCE_DISTRIBUTION = "distribution"

_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
# cosign's tag scheme for signatures, attestations and SBOMs attached to sha256:<hex>.
_SHOW_MAX = 80


@dataclass(frozen=True)
class PushEvent:
    """A manifest was pushed: where, under which digest and (optionally) which tag.

    ``event_id`` is derived, never given: ``<repository>[:<tag>]@<digest>``, the same for
    every source, so a receiver can drop a push it has already handled.
    """

    registry: str | None
    repository: str
    digest: str
    tag: str | None
    media_type: str | None
    source: str
    event_id: str = field(init=False)

    def __post_init__(self) -> None:
        tag = f":{self.tag}" if self.tag else ""
        object.__setattr__(self, "event_id", f"{self.repository}{tag}@{self.digest}")

    @property
    def project(self) -> str:
        """The repository's first path component (a Harbor project: ``station-a``)."""
        return self.repository.split("/", 1)[0]


# --- helpers -----------------------------------------------------------------------------


def _show(value: object) -> str:
    """A short, quoted rendering of a (bad) value for an error message."""
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _fail(where: str | None, message: str, status: int = 422) -> WebhookError:
    return WebhookError(message, status=status, where=where)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (missing or null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {_type_name(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {_type_name(value)}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {_type_name(value)}")
    return value


def _optional_string(value: object, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _digest(value: object, where: str) -> str:
    text = _string(value, where)
    if not _SHA256_RE.fullmatch(text):
        raise _fail(where, f"{_show(text)} is not a digest of the form sha256:<64 lowercase hex>")
    return text


def _reference_problem(exc: InvalidReferenceError) -> str:
    return str(exc).removeprefix("invalid image reference: ")


def _repository(value: object, where: str) -> str:
    text = _string(value, where)
    try:
        return check_repository(text)
    except InvalidReferenceError as exc:
        raise _fail(where, f"not a valid repository path: {_reference_problem(exc)}") from None


def _tag(value: object, where: str) -> str | None:
    text = _optional_string(value, where)
    if not text:
        return None
    try:
        return check_tag(text)
    except InvalidReferenceError as exc:
        raise _fail(where, f"not a valid tag: {_reference_problem(exc)}") from None


def _host(text: str | None) -> str | None:
    """``text`` if it is a valid ``host[:port]``, else None (the registry is informational)."""
    if not text:
        return None
    try:
        return check_registry(text)
    except InvalidReferenceError:
        return None


def is_cosign_tag(tag: str | None) -> bool:
    """True for cosign's ``sha256-<hex>.sig`` (and ``.att``, ``.sbom``) tags."""
    return tag is not None and COSIGN_TAG.fullmatch(tag) is not None


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media or None


def _load(body: bytes) -> object:
    try:
        return strictjson.loads(body)
    except strictjson.StrictJSONError as exc:
        raise _fail(None, f"body is {exc}", 400) from None


# --- Harbor ------------------------------------------------------------------------------


def _harbor_registry(resource_url: str | None, repository: str) -> str | None:
    """The host in Harbor's ``resource_url`` (``host/<repository>:<tag>``, no scheme)."""
    if not resource_url:
        return None
    rest = resource_url.split("://", 1)[1] if "://" in resource_url else resource_url
    host, slash, path = rest.partition("/")
    if not slash or not path.startswith(repository):
        return None
    after = path[len(repository) :]
    if after and after[0] not in ":@":
        return None
    return _host(host)


def _harbor_data(data: object, where: str, source: str) -> list[PushEvent]:
    data = _object(data, where)
    repo = _object(data.get("repository"), f"{where}.repository")
    namespace = _optional_string(repo.get("namespace"), f"{where}.repository.namespace")
    full_name = repo.get("repo_full_name")
    if full_name is None and namespace is not None and "name" in repo:
        full_name = f"{namespace}/{_string(repo.get('name'), f'{where}.repository.name')}"
    repository = _repository(full_name, f"{where}.repository.repo_full_name")
    if namespace is not None and namespace != repository.split("/", 1)[0]:
        raise _fail(
            f"{where}.repository.namespace",
            f"{_show(namespace)} is not the first component of repo_full_name {_show(repository)}",
        )
    events = []
    for i, item in enumerate(_list(data.get("resources"), f"{where}.resources")):
        at = f"{where}.resources[{i}]"
        resource = _object(item, at)
        digest = _digest(resource.get("digest"), f"{at}.digest")
        tag_value = resource.get("tag")
        # Harbor puts the digest in ``tag`` when the artifact has no tag.
        tag = None if tag_value == digest else _tag(tag_value, f"{at}.tag")
        url = _optional_string(resource.get("resource_url"), f"{at}.resource_url")
        if is_cosign_tag(tag):
            continue
        events.append(
            PushEvent(
                registry=_harbor_registry(url, repository),
                repository=repository,
                digest=digest,
                tag=tag,
                media_type=None,
                source=source,
            )
        )
    return events


def _parse_harbor(doc: dict[str, Any]) -> list[PushEvent]:
    kind = _string(doc.get("type"), "type")
    if kind != HARBOR_PUSH:
        return []
    return _harbor_data(doc.get("event_data"), "event_data", SOURCE_HARBOR)


def _parse_cloudevent(doc: dict[str, Any]) -> list[PushEvent]:
    version = _string(doc.get("specversion"), "specversion")
    if version != "1.0":
        raise _fail("specversion", f"{_show(version)} is not a supported CloudEvents version (1.0)")
    kind = _string(doc.get("type"), "type")
    if kind != CLOUDEVENT_PUSH:
        return []
    data_type = _optional_string(doc.get("datacontenttype"), "datacontenttype")
    if data_type is not None and _media_type(data_type) != CT_JSON:
        raise _fail("datacontenttype", f"{_show(data_type)} is not {CT_JSON}")
    return _harbor_data(doc.get("data"), "data", SOURCE_CLOUDEVENTS)


# --- CNCF distribution -------------------------------------------------------------------


def _split_url(url: str | None) -> tuple[str | None, str | None]:
    """``(host[:port], kind)`` of ``http://host/v2/<name>/<kind>/<reference>``; kind is
    ``blobs`` or ``manifests`` (a repository may itself hold a component named ``blobs``)."""
    if not url:
        return None, None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None, None
    segments = parts.path.rstrip("/").split("/")
    return parts.netloc or None, segments[-2] if len(segments) >= 2 else None


def _parse_distribution(doc: dict[str, Any]) -> list[PushEvent]:
    events = []
    for i, item in enumerate(_list(doc.get("events"), "events")):
        where = f"events[{i}]"
        event = _object(item, where)
        action = _string(event.get("action"), f"{where}.action")
        target = _object(event.get("target"), f"{where}.target")
        request = event.get("request")
        if request is not None:
            request = _object(request, f"{where}.request")
        if action != "push":
            continue  # pull (also from HEAD), delete, mount
        method = _optional_string((request or {}).get("method"), f"{where}.request.method")
        if method is not None and method.upper() in ("GET", "HEAD"):
            continue
        declared = _optional_string(target.get("mediaType"), f"{where}.target.mediaType")
        media_type = _media_type(declared)
        url = _optional_string(target.get("url"), f"{where}.target.url")
        url_host, url_kind = _split_url(url)
        if media_type not in MANIFEST_TYPES or url_kind == "blobs":
            continue  # a blob (config or layer; uploads are application/octet-stream)
        digest = _digest(target.get("digest"), f"{where}.target.digest")
        repository = _repository(target.get("repository"), f"{where}.target.repository")
        tag = _tag(target.get("tag"), f"{where}.target.tag")
        if is_cosign_tag(tag):
            continue
        host = _optional_string((request or {}).get("host"), f"{where}.request.host")
        registry = _host(url_host) or _host(host)
        events.append(
            PushEvent(
                registry=registry,
                repository=repository,
                digest=digest,
                tag=tag,
                media_type=media_type,
                source=SOURCE_DISTRIBUTION,
            )
        )
    return events


# --- entry points ------------------------------------------------------------------------


def parse_events(body: bytes, content_type: str | None) -> list[PushEvent]:
    """The manifest pushes in a webhook body; ``[]`` if it announces none.

    ``content_type`` is the request's ``Content-Type`` (parameters are ignored); ``None``
    or ``application/json`` lets the body's shape decide. Raises :class:`WebhookError`
    (``status`` 400, 413, 415 or 422) naming what is wrong and where.
    """
    if len(body) > MAX_BODY_BYTES:
        raise _fail(None, f"body is larger than {MAX_BODY_BYTES} bytes", 413)
    media = _media_type(content_type)
    if media is not None and media not in CONTENT_TYPES:
        raise _fail(
            None,
            f"unsupported content type {_show(media)}; expected one of {', '.join(CONTENT_TYPES)}",
            415,
        )
    doc = _load(body)
    if not isinstance(doc, dict):
        raise _fail(None, f"the body must be a JSON object, got {_type_name(doc)}")
    if media == CT_DISTRIBUTION or (media in (None, CT_JSON) and "events" in doc):
        if "events" not in doc:
            raise _fail("events", f"missing: a {CT_DISTRIBUTION} envelope holds an events list")
        return _parse_distribution(doc)
    if media == CT_CLOUDEVENTS or "specversion" in doc:
        return _parse_cloudevent(doc)
    if "type" in doc or "event_data" in doc:
        return _parse_harbor(doc)
    raise _fail(
        None,
        "not a registry notification: expected a Harbor payload {type, event_data}, "
        "a CloudEvent {specversion, type, data} or a distribution envelope {events}",
    )


def check_authorization(header_value: str | None, secret: str) -> bool:
    """True if the ``Authorization`` header carries ``secret``, in constant time.

    Harbor sends the policy's ``auth_header`` verbatim, so the raw value is accepted, and so
    is ``Bearer <secret>``. An empty ``secret`` accepts nothing. Never log the header.
    """
    if not secret or header_value is None:
        return False
    expected = secret.encode("utf-8")
    given = header_value.encode("utf-8", "surrogateescape")
    scheme, _, credentials = given.partition(b" ")
    bearer = credentials.strip() if scheme.lower() == b"bearer" else b""
    raw_ok = hmac.compare_digest(given, expected)
    bearer_ok = hmac.compare_digest(bearer, expected)
    return raw_ok or bearer_ok


def filter_project(events: Iterable[PushEvent], projects: Collection[str]) -> list[PushEvent]:
    """The events whose repository's first component (Harbor project) is in ``projects``."""
    return [e for e in events if e.project in projects]
