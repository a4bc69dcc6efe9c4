"""The webhook parser: Harbor (default and CloudEvents) and CNCF distribution envelopes.

The Harbor bodies are the shape references in ``tests/vectors/harbor``. The distribution
envelopes below follow what Debian's ``docker-registry`` 2.8.2 actually sent to a listener
on 127.0.0.1 (recorded for this module; ids, times and ports shortened): one event per
envelope, ``Content-Type: application/vnd.docker.distribution.events.v1+json``, blob
uploads as ``application/octet-stream`` under ``/blobs/``, a HEAD on a manifest as a
``pull`` with ``request.method`` ``HEAD``, deletes carrying only repository and digest or
tag, mounts with ``fromRepository``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.errors import PhtError, WebhookError
from pht_airflow.webhooks import (
    MAX_BODY_BYTES,
    PushEvent,
    check_authorization,
    filter_project,
    is_cosign_tag,
    parse_events,
)

HARBOR = Path(__file__).resolve().parent / "vectors" / "harbor"
DIST = "application/vnd.docker.distribution.events.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

HARBOR_DIGEST = "sha256:0d3a8c3e4a1f6b5c2e7d9f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789"
HARBOR_REPO = "station-a/3b1f2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"

MANIFEST = "sha256:be050fde5b76f0f44da143978fae5eb439a64e9c3b01d7fee5d92eee6c6f00f4"
CONFIG = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
LAYER = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
HOST = "127.0.0.1:50505"
SIG_TAG = "sha256-" + MANIFEST[7:] + ".sig"


def _request(method: str) -> dict[str, str]:
    return {
        "id": "3f1eea1d-23a5-4c16-a80e-92bffe4a6493",
        "addr": "127.0.0.1:54420",
        "host": HOST,
        "method": method,
        "useragent": "pht-airflow",
    }


_SOURCE = {"addr": "vm:50505", "instanceID": "e2a38ab1-b955-4518-9a43-7a961aded9b4"}


def manifest_event(
    action: str = "push",
    method: str = "PUT",
    *,
    repository: str = "station-a/train1",
    digest: str = MANIFEST,
    tag: str | None = "result-0",
) -> dict[str, Any]:
    """A manifest event as docker-registry 2.8.2 sends it (push by tag, or a pull)."""
    target: dict[str, Any] = {
        "mediaType": OCI_MANIFEST,
        "size": 409,
        "digest": digest,
        "length": 409,
        "repository": repository,
        "url": f"http://{HOST}/v2/{repository}/manifests/{digest}",
    }
    if tag is not None:
        target["tag"] = tag
    target["references"] = [
        {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": CONFIG},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 5, "digest": LAYER},
    ]
    return {
        "id": "62b41850-4294-428a-b477-a0eb1d20e59c",
        "timestamp": "2026-11-22T21:26:16.726988667Z",
        "action": action,
        "target": target,
        "request": _request(method),
        "actor": {},
        "source": _SOURCE,
    }


def blob_push_event(digest: str = LAYER) -> dict[str, Any]:
    return {
        "id": "0cd12a82-8e3a-4dc5-a752-fca445ee7729",
        "timestamp": "2026-11-22T21:26:16.686508603Z",
        "action": "push",
        "target": {
            "mediaType": "application/octet-stream",
            "size": 5,
            "digest": digest,
            "length": 5,
            "repository": "station-a/train1",
            "url": f"http://{HOST}/v2/station-a/train1/blobs/{digest}",
        },
        "request": _request("PUT"),
        "actor": {},
        "source": _SOURCE,
    }


def mount_event() -> dict[str, Any]:
    return {
        "id": "61c87dd5-85af-496e-a96b-a39fa55ffc28",
        "timestamp": "2026-11-22T21:26:18.260971949Z",
        "action": "mount",
        "target": {
            "mediaType": "application/octet-stream",
            "size": 5,
            "digest": LAYER,
            "length": 5,
            "repository": "station-b/train1",
            "fromRepository": "station-a/train1",
            "url": f"http://{HOST}/v2/station-b/train1/blobs/{LAYER}",
        },
        "request": _request("POST"),
        "actor": {},
        "source": _SOURCE,
    }


def delete_events() -> list[dict[str, Any]]:
    """Deleting a manifest by digest: one event for the digest, one per tag it had."""
    base = {"timestamp": "2026-11-22T21:26:18.27782804Z", "action": "delete"}
    return [
        {**base, "id": "e1", "target": {"digest": MANIFEST, "repository": "station-a/train1"}},
        {**base, "id": "e2", "target": {"repository": "station-a/train1", "tag": "result-0"}},
    ]


def envelope(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def harbor_default() -> dict[str, Any]:
    return json.loads((HARBOR / "push_artifact_default.json").read_text())


def harbor_cloudevent() -> dict[str, Any]:
    return json.loads((HARBOR / "push_artifact_cloudevents.json").read_text())


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- Harbor ------------------------------------------------------------------------------


def test_harbor_default_vector() -> None:
    body = (HARBOR / "push_artifact_default.json").read_bytes()
    [event] = parse_events(body, "application/json")
    assert event == PushEvent(
        registry="harbor.example.org",
        repository=HARBOR_REPO,
        digest=HARBOR_DIGEST,
        tag="result-0",
        media_type=None,
        source="harbor",
    )
    assert event.event_id == f"{HARBOR_REPO}:result-0@{HARBOR_DIGEST}"
    assert event.project == "station-a"


def test_harbor_cloudevents_vector() -> None:
    body = (HARBOR / "push_artifact_cloudevents.json").read_bytes()
    [event] = parse_events(body, "application/cloudevents+json")
    assert event.source == "harbor-cloudevents"
    assert (event.registry, event.repository, event.digest, event.tag) == (
        "harbor.example.org",
        HARBOR_REPO,
        HARBOR_DIGEST,
        "result-0",
    )
    assert event.media_type is None
    # The same push announced either way deduplicates to the same id.
    [default] = parse_events((HARBOR / "push_artifact_default.json").read_bytes(), None)
    assert event.event_id == default.event_id


def test_content_type_parameters_and_sniffing() -> None:
    body = (HARBOR / "push_artifact_cloudevents.json").read_bytes()
    assert parse_events(body, "application/cloudevents+json; charset=utf-8")
    assert parse_events(body, "application/json")
    assert parse_events(body, None)


def test_harbor_untagged_artifact_has_no_tag() -> None:
    doc = harbor_default()
    resource = doc["event_data"]["resources"][0]
    resource["tag"] = HARBOR_DIGEST  # Harbor puts the digest here when there is no tag
    resource["resource_url"] = f"harbor.example.org/{HARBOR_REPO}@{HARBOR_DIGEST}"
    [event] = parse_events(_body(doc), "application/json")
    assert event.tag is None
    assert event.registry == "harbor.example.org"
    assert event.event_id == f"{HARBOR_REPO}@{HARBOR_DIGEST}"


def test_harbor_registry_with_port_and_unknown() -> None:
    doc = harbor_default()
    resource = doc["event_data"]["resources"][0]
    resource["resource_url"] = f"harbor.example.org:8443/{HARBOR_REPO}:result-0"
    assert parse_events(_body(doc), None)[0].registry == "harbor.example.org:8443"
    resource["resource_url"] = f"harbor.example.org/other/{HARBOR_REPO}:result-0"
    assert parse_events(_body(doc), None)[0].registry is None
    del resource["resource_url"]
    assert parse_events(_body(doc), None)[0].registry is None


def test_harbor_several_resources_and_cosign_tags() -> None:
    doc = harbor_default()
    first = doc["event_data"]["resources"][0]
    sig = dict(first, tag="sha256-" + HARBOR_DIGEST[7:] + ".sig")
    other = dict(first, digest=MANIFEST, tag="result-1")
    doc["event_data"]["resources"] = [first, sig, other]
    events = parse_events(_body(doc), "application/json")
    assert [(e.digest, e.tag) for e in events] == [
        (HARBOR_DIGEST, "result-0"),
        (MANIFEST, "result-1"),
    ]


@pytest.mark.parametrize("suffix", ["sig", "att", "sbom"])
def test_harbor_cosign_artifacts_are_dropped(suffix: str) -> None:
    doc = harbor_default()
    doc["event_data"]["resources"][0]["tag"] = f"sha256-{HARBOR_DIGEST[7:]}.{suffix}"
    assert parse_events(_body(doc), "application/json") == []


@pytest.mark.parametrize(
    "kind",
    ["PULL_ARTIFACT", "DELETE_ARTIFACT", "SCANNING_COMPLETED", "QUOTA_EXCEED", "REPLICATION"],
)
def test_harbor_other_event_types_are_dropped(kind: str) -> None:
    doc = harbor_default()
    doc["type"] = kind
    assert parse_events(_body(doc), "application/json") == []


@pytest.mark.parametrize("kind", ["harbor.artifact.pulled", "harbor.artifact.deleted"])
def test_cloudevents_other_types_are_dropped(kind: str) -> None:
    doc = harbor_cloudevent()
    doc["type"] = kind
    assert parse_events(_body(doc), "application/cloudevents+json") == []


# --- CNCF distribution -------------------------------------------------------------------


def test_distribution_manifest_push() -> None:
    [event] = parse_events(envelope(manifest_event()), DIST)
    assert event == PushEvent(
        registry=HOST,
        repository="station-a/train1",
        digest=MANIFEST,
        tag="result-0",
        media_type=OCI_MANIFEST,
        source="distribution",
    )
    assert event.event_id == f"station-a/train1:result-0@{MANIFEST}"


def test_distribution_push_by_digest_has_no_tag() -> None:
    [event] = parse_events(envelope(manifest_event(tag=None)), DIST)
    assert event.tag is None
    assert event.event_id == f"station-a/train1@{MANIFEST}"


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ],
)
def test_distribution_other_manifest_types_count(media_type: str) -> None:
    event = manifest_event()
    event["target"]["mediaType"] = media_type
    [parsed] = parse_events(envelope(event), DIST)
    assert parsed.media_type == media_type


def test_distribution_blob_push_is_dropped() -> None:
    assert parse_events(envelope(blob_push_event(CONFIG), blob_push_event(LAYER)), DIST) == []
    # A layer media type, or a /blobs/ URL with a manifest-looking type, is still a blob.
    layer = blob_push_event()
    layer["target"]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    odd = blob_push_event()
    odd["target"]["mediaType"] = OCI_MANIFEST
    assert parse_events(envelope(layer, odd), DIST) == []


def test_distribution_pulls_are_dropped() -> None:
    body = envelope(manifest_event("pull", "GET"), manifest_event("pull", "HEAD"))
    assert parse_events(body, DIST) == []


def test_distribution_deletes_and_mounts_are_dropped() -> None:
    assert parse_events(envelope(*delete_events(), mount_event()), DIST) == []


def test_distribution_signature_push_is_dropped() -> None:
    for suffix in ("sig", "att", "sbom"):
        tag = f"sha256-{MANIFEST[7:]}.{suffix}"
        assert parse_events(envelope(manifest_event(tag=tag)), DIST) == []


def test_distribution_mixed_envelope_keeps_only_manifest_pushes() -> None:
    body = envelope(
        blob_push_event(CONFIG),
        blob_push_event(LAYER),
        manifest_event(),
        manifest_event("pull", "HEAD"),
        manifest_event(tag=SIG_TAG),
        mount_event(),
        *delete_events(),
        manifest_event(repository="station-b/train1", tag="result-1"),
    )
    events = parse_events(body, DIST)
    assert [(e.repository, e.tag) for e in events] == [
        ("station-a/train1", "result-0"),
        ("station-b/train1", "result-1"),
    ]


def test_distribution_registry_falls_back_to_request_host() -> None:
    event = manifest_event()
    del event["target"]["url"]
    [parsed] = parse_events(envelope(event), DIST)
    assert parsed.registry == HOST
    del event["request"]
    [parsed] = parse_events(envelope(event), DIST)
    assert parsed.registry is None


def test_empty_envelope() -> None:
    assert parse_events(b'{"events": []}', DIST) == []


def test_is_cosign_tag() -> None:
    assert is_cosign_tag(SIG_TAG)
    assert not is_cosign_tag("sha256-abc.sig")
    assert not is_cosign_tag("result-0")
    assert not is_cosign_tag(None)


# --- malformed input ---------------------------------------------------------------------


def _bad_digest_envelope() -> bytes:
    events = [blob_push_event(), manifest_event(), manifest_event(digest="sha256:abc")]
    return envelope(*events)


def _harbor_with(path: tuple[str | int, ...], value: object) -> bytes:
    doc = harbor_default()
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return _body(doc)


_DELETE = object()


def _cloudevent_with(key: str, value: object) -> bytes:
    doc = harbor_cloudevent()
    doc[key] = value
    return _body(doc)


def _event_with(field: str, value: object) -> bytes:
    event = manifest_event()
    event["target"][field] = value
    return envelope(event)


MALFORMED: list[tuple[str, bytes, str | None, int, str]] = [
    ("not json", b"{not json", DIST, 400, "body is not valid JSON"),
    ("empty body", b"", None, 400, "body is not valid JSON"),
    ("not utf-8", b'{"events": ["\xff"]}', DIST, 400, "body is not UTF-8"),
    ("duplicate key", b'{"events": [], "events": []}', DIST, 400, "the key 'events' appears twice"),
    ("NaN", b'{"events": [], "x": NaN}', DIST, 400, "NaN is not a JSON number"),
    ("deep nesting", b"[" * 200_000 + b"]" * 200_000, None, 400, "nested too deeply"),
    ("a list", b"[]", None, 422, "must be a JSON object, got a list"),
    ("unknown object", b'{"hello": 1}', None, 422, "not a registry notification"),
    ("events not a list", b'{"events": {}}', DIST, 422, "events: expected a list, got an object"),
    ("no events", _body(harbor_default()), DIST, 422, "events: missing"),
    ("event not object", b'{"events": [1]}', DIST, 422, "events[0]: expected an object"),
    (
        "no action",
        b'{"events": [{"target": {}}]}',
        DIST,
        422,
        "events[0].action: expected a string, got nothing",
    ),
    (
        "bad digest",
        _bad_digest_envelope(),
        DIST,
        422,
        "events[2].target.digest: 'sha256:abc' is not a digest of the form sha256:<64",
    ),
    (
        "sha512 digest",
        _event_with("digest", "sha512:" + "a" * 128),
        DIST,
        422,
        "events[0].target.digest:",
    ),
    (
        "uppercase repository",
        _event_with("repository", "Station-A/train1"),
        DIST,
        422,
        "events[0].target.repository: not a valid repository path: repository "
        "'Station-A/train1' must be lowercase",
    ),
    (
        "repository with ..",
        _event_with("repository", "station-a/../x"),
        DIST,
        422,
        "events[0].target.repository: not a valid repository path",
    ),
    (
        "missing repository",
        _event_with("repository", None),
        DIST,
        422,
        "events[0].target.repository: expected a string",
    ),
    ("bad tag", _event_with("tag", "-x"), DIST, 422, "events[0].target.tag: not a valid tag"),
    ("media type not a string", _event_with("mediaType", 7), DIST, 422, "target.mediaType"),
    (
        "harbor bad digest",
        _harbor_with(("event_data", "resources", 0, "digest"), "md5:00"),
        "application/json",
        422,
        "event_data.resources[0].digest: 'md5:00' is not a digest",
    ),
    (
        "harbor no repository",
        _harbor_with(("event_data", "repository"), _DELETE),
        "application/json",
        422,
        "event_data.repository: expected an object",
    ),
    (
        "harbor bad repository",
        _harbor_with(("event_data", "repository", "repo_full_name"), "station-a//x"),
        "application/json",
        422,
        "event_data.repository.repo_full_name: not a valid repository path",
    ),
    (
        "harbor namespace mismatch",
        _harbor_with(("event_data", "repository", "namespace"), "station-b"),
        "application/json",
        422,
        "event_data.repository.namespace: 'station-b' is not the first component",
    ),
    (
        "harbor resources not a list",
        _harbor_with(("event_data", "resources"), {}),
        "application/json",
        422,
        "event_data.resources: expected a list",
    ),
    (
        "harbor no event_data",
        _harbor_with(("event_data",), _DELETE),
        "application/json",
        422,
        "event_data: expected an object, got nothing",
    ),
    (
        "harbor type not a string",
        _harbor_with(("type",), 3),
        "application/json",
        422,
        "type: expected a string, got a number",
    ),
    (
        "cloudevent version",
        _cloudevent_with("specversion", "0.3"),
        "application/cloudevents+json",
        422,
        "specversion: '0.3' is not a supported CloudEvents version",
    ),
    (
        "cloudevent not a cloudevent",
        _body(harbor_default()),
        "application/cloudevents+json",
        422,
        "specversion: expected a string",
    ),
    (
        "cloudevent data missing",
        _cloudevent_with("data", None),
        "application/cloudevents+json",
        422,
        "data: expected an object",
    ),
    (
        "cloudevent data content type",
        _cloudevent_with("datacontenttype", "application/xml"),
        "application/cloudevents+json",
        422,
        "datacontenttype: 'application/xml' is not application/json",
    ),
    ("text/plain", b"{}", "text/plain", 415, "unsupported content type 'text/plain'"),
    (
        "too large",
        b" " * (MAX_BODY_BYTES + 1),
        "application/json",
        413,
        f"larger than {MAX_BODY_BYTES} bytes",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed(body: bytes, content_type: str | None, status: int, message: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse_events(body, content_type)
    assert info.value.status == status
    assert message in str(info.value)
    assert isinstance(info.value, PhtError)


def test_error_where_holds_only_the_field_path() -> None:
    with pytest.raises(WebhookError) as info:
        parse_events(_bad_digest_envelope(), DIST)
    assert info.value.where == "events[2].target.digest"
    assert str(info.value) == f"{info.value.where}: {info.value.reason}"


def test_exactly_the_limit_is_accepted() -> None:
    body = envelope(manifest_event())
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    assert len(padded) == MAX_BODY_BYTES
    assert len(parse_events(padded, DIST)) == 1


def test_dropped_events_are_not_validated_beyond_their_shape() -> None:
    # A delete carries no media type or URL; a pull of a bad digest is still only a pull.
    pull = manifest_event("pull", "GET", digest="sha256:nothex")
    assert parse_events(envelope(pull, *delete_events()), DIST) == []


# --- authorization -----------------------------------------------------------------------

SECRET = "whsec-3c1e5f0b7a9d4e2f8b6a1c0d9e8f7a6b"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (SECRET, True),  # Harbor sends the policy's auth_header verbatim
        (f"Bearer {SECRET}", True),
        (f"bearer {SECRET}", True),
        (f"Bearer  {SECRET} ", True),
        (None, False),
        ("", False),
        ("wrong", False),
        (SECRET + "x", False),
        (SECRET[:-1], False),
        (f"Basic {SECRET}", False),
        (f"Bearer {SECRET[:-1]}", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("sécret", False),
    ],
)
def test_check_authorization(header: str | None, ok: bool) -> None:
    assert check_authorization(header, SECRET) is ok


def test_empty_secret_accepts_nothing() -> None:
    assert not check_authorization("", "")
    assert not check_authorization("Bearer ", "")
    assert not check_authorization(None, "")


def test_secret_that_looks_like_a_header() -> None:
    assert check_authorization("Bearer abc", "Bearer abc")
    assert check_authorization("abc", "abc")


# --- projects ----------------------------------------------------------------------------


def test_filter_project() -> None:
    def ev(repo: str) -> PushEvent:
        return PushEvent(None, repo, MANIFEST, None, None, "distribution")

    events = [ev("station-a/t1"), ev("station-b/t1"), ev("station-a/x/y"), ev("station-ab/t")]
    kept = filter_project(events, {"station-a"})
    assert [e.repository for e in kept] == ["station-a/t1", "station-a/x/y"]
    assert filter_project(events, []) == []
    assert filter_project(iter(events), ("station-b", "station-ab")) == [events[1], events[3]]


def test_push_event_is_frozen_and_id_is_derived() -> None:
    event = PushEvent("r:5000", "p/t", MANIFEST, "train", OCI_MANIFEST, "distribution")
    assert event.event_id == f"p/t:train@{MANIFEST}"
    with pytest.raises(AttributeError):
        event.tag = "x"  # type: ignore[misc]
    assert copy.copy(event) == event


def test_harbor_repository_from_namespace_and_name() -> None:
    doc = harbor_default()
    del doc["event_data"]["repository"]["repo_full_name"]
    [event] = parse_events(_body(doc), "application/json")
    assert event.repository == HARBOR_REPO


def test_distribution_repository_named_blobs_is_not_a_blob() -> None:
    [event] = parse_events(envelope(manifest_event(repository="station-a/blobs/x")), DIST)
    assert event.repository == "station-a/blobs/x"
    odd = manifest_event()
    odd["target"]["url"] = "http://[::1/v2/x"  # unparseable: no registry, still a push
    [event] = parse_events(envelope(odd), DIST)
    assert event.registry == HOST
