"""The central service's registry admin: plain-registry copies by mount, and Harbor's API.

Everything runs against the session's real ``docker-registry``. Harbor cannot run here, so
:mod:`harbor_standin` (a FastAPI app following Harbor's swagger, served by uvicorn on
127.0.0.1) plays Harbor's REST API and performs its artifact copies on that same registry.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from harbor_standin import HarborStandIn, serve

from pht_airflow.central.registry import (
    CopyReport,
    HarborAdmin,
    PlainRegistryAdmin,
    RegistryAdmin,
    RobotAccount,
)
from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    RegistryAuthError,
    RegistryError,
)
from pht_airflow.keys import SigningKey
from pht_airflow.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Manifest, Reference, RegistryClient
from pht_airflow.protocol import RESULT_ARTIFACT_TYPE, RESULT_CONFIG_MEDIA_TYPE, RESULT_MEDIA_TYPE
from pht_airflow.signing import sign, signature_tag, verify

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
LAYER = "application/vnd.oci.image.layer.v1.tar"
ADMIN_PASSWORD = "Harbor12345-admin-pw"


@dataclass
class Train:
    """A train pushed for a test: its manifests and the repository it sits in."""

    repository: str
    train: Manifest
    result: Manifest
    creator: SigningKey
    station: SigningKey

    @property
    def expected_tags(self) -> dict[str, str]:
        return {
            "train": self.train.digest,
            signature_tag(self.train.digest): "",
            "result-0": self.result.digest,
            signature_tag(self.result.digest): "",
        }


def _canonical(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def push_image(
    client: RegistryClient, repository: str, tag: str, *, layer_bytes: int = 5 * MiB
) -> Manifest:
    """A tiny OCI image: a config and one random layer of ``layer_bytes``."""
    layer = client.upload_blob(repository, io.BytesIO(os.urandom(layer_bytes)), media_type=LAYER)
    config = client.upload_bytes(
        repository,
        _canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"org.pht.test": uuid.uuid4().hex}},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        ),
        OCI_CONFIG,
    )
    raw = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [layer.to_dict()],
        }
    )
    digest = client.put_manifest(repository, tag, raw, OCI_MANIFEST)
    return Manifest(OCI_MANIFEST, digest, raw)


def push_result(client: RegistryClient, repository: str, train: Manifest, hop: int) -> Manifest:
    """A ``result-<hop>`` artifact: one small layer, ``subject`` = the train."""
    layer = client.upload_bytes(repository, os.urandom(4096), RESULT_MEDIA_TYPE)
    config = client.upload_bytes(
        repository,
        _canonical({"hop": hop, "train": {"digest": train.digest}}),
        RESULT_CONFIG_MEDIA_TYPE,
    )
    raw = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": RESULT_ARTIFACT_TYPE,
            "config": config.to_dict(),
            "layers": [layer.to_dict()],
            "subject": train.descriptor().to_dict(),
        }
    )
    digest = client.put_manifest(repository, f"result-{hop}", raw, OCI_MANIFEST)
    return Manifest(OCI_MANIFEST, digest, raw)


def push_train(
    client: RegistryClient, repository: str, *, layer_bytes: int = 5 * MiB, noise: bool = True
) -> Train:
    """Train + creator signature + result-0 + station signature; optionally unrelated tags
    (``latest``, and a ``result-1`` whose subject is another image) that must stay behind."""
    creator, station = SigningKey.generate(), SigningKey.generate()
    train = push_image(client, repository, "train", layer_bytes=layer_bytes)
    registry = client.registry
    sign(client, Reference(registry, repository, digest=train.digest), creator, role="creator")
    result = push_result(client, repository, train, 0)
    sign(client, Reference(registry, repository, digest=result.digest), station, role="station")
    if noise:
        other = push_image(client, repository, "latest", layer_bytes=1024)
        push_result(client, repository, other, 1)
    return Train(repository, train, result, creator, station)


def tag_digests(client: RegistryClient, repository: str) -> dict[str, str]:
    return {tag: client.resolve(repository, tag) for tag in client.list_tags(repository)}


def assert_copied(client: RegistryClient, t: Train, dst: str) -> None:
    """The destination holds exactly the train's set, same digests, signatures verifying."""
    src_tags = tag_digests(client, t.repository)
    dst_tags = tag_digests(client, dst)
    assert set(dst_tags) == set(t.expected_tags)
    assert dst_tags["train"] == t.train.digest
    assert dst_tags["result-0"] == t.result.digest
    for tag in dst_tags:
        assert dst_tags[tag] == src_tags[tag], tag
    registry = client.registry
    signers = verify(client, Reference(registry, dst, digest=t.train.digest), [t.creator.public])
    assert [s.role for s in signers] == ["creator"]
    signers = verify(client, Reference(registry, dst, digest=t.result.digest), [t.station.public])
    assert [s.role for s in signers] == ["station"]


@pytest.fixture()
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


def new_id() -> str:
    return uuid.uuid4().hex[:16]


# --- plain distribution registry -------------------------------------------------------


def test_plain_copy_mounts_and_moves_no_layer_bytes(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    tid = new_id()
    src, dst = f"pht-incoming/{tid}", f"station-a/{tid}"
    t = push_train(client, src)
    admin = PlainRegistryAdmin(client)
    assert isinstance(admin, RegistryAdmin)

    before = registry.storage_bytes()
    report = admin.copy_train(src, dst, t.train.digest)
    growth = registry.storage_bytes() - before
    print(f"\nplain copy of a 5 MiB train: {report}; blob storage grew by {growth} bytes")

    assert isinstance(report, CopyReport)
    assert growth < 64 * 1024  # distribution keeps one copy per digest: only links are new
    assert report.bytes_streamed == 0 and report.blobs_streamed == 0
    assert report.manifests == 4 and report.manifests_present == 0
    # train: config + layer; each .sig: config + payload; result: config + layer
    assert report.blobs_mounted == 8
    assert sorted(report.tags) == sorted(t.expected_tags)
    assert report.tags[-1] == "train"  # tagged last: the station's webhook fires on it
    assert_copied(client, t, dst)

    # Copying again changes nothing and mounts nothing.
    tags_before = tag_digests(client, dst)
    again = admin.copy_train(src, dst, t.train.digest)
    assert (again.manifests, again.manifests_present, again.blobs_mounted) == (0, 4, 0)
    assert again.bytes_streamed == 0
    assert tag_digests(client, dst) == tags_before
    assert registry.storage_bytes() - before < 64 * 1024


def test_plain_copy_of_a_missing_digest_says_what_is_missing(client: RegistryClient) -> None:
    tid = new_id()
    src = f"pht-incoming/{tid}"
    push_image(client, src, "train", layer_bytes=1024)
    missing = "sha256:" + "0" * 64
    admin = PlainRegistryAdmin(client)
    with pytest.raises(NotFoundError) as exc:
        admin.copy_train(src, f"station-a/{tid}", missing)
    assert missing in str(exc.value) and src in str(exc.value)
    with pytest.raises(NotFoundError):
        admin.copy_train(f"pht-incoming/{new_id()}", f"station-a/{tid}", missing)
    assert client.list_tags(f"station-a/{tid}") == []


def test_plain_copy_streams_and_counts_when_mounts_are_refused(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    class NoMounts(RegistryClient):
        """A registry that declines cross-repository mounts (a proxy, another storage)."""

        def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
            return False

    tid = new_id()
    src, dst = f"pht-incoming/{tid}", f"station-b/{tid}"
    t = push_train(client, src, layer_bytes=256 * 1024, noise=False)
    with NoMounts(registry.host) as refusing:
        report = PlainRegistryAdmin(refusing).copy_train(src, dst, t.train.digest)
    signatures = [client.get_manifest(src, signature_tag(m.digest)) for m in (t.train, t.result)]
    blobs = [
        d for m in (t.train, t.result, *signatures) for d in [m.config, *m.layers] if d is not None
    ]
    assert report.blobs_mounted == 0
    assert report.blobs_streamed == len(blobs) == 8
    assert report.bytes_streamed == sum(d.size for d in blobs) >= 256 * 1024
    assert_copied(client, t, dst)


def test_plain_copy_of_an_index_train_copies_its_children(client: RegistryClient) -> None:
    tid = new_id()
    src, dst = f"pht-incoming/{tid}", f"station-a/{tid}"
    child = push_image(client, src, "child", layer_bytes=2048)
    raw = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **child.descriptor().to_dict(),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    )
    index = client.put_manifest(src, "train", raw, OCI_INDEX)
    key = SigningKey.generate()
    sign(client, Reference(client.registry, src, digest=index), key, role="creator")
    report = PlainRegistryAdmin(client).copy_train(src, dst, index)
    assert report.manifests == 3  # child, index, signature
    assert client.get_manifest(dst, child.digest).digest == child.digest
    assert client.resolve(dst, "train") == index
    assert "child" not in client.list_tags(dst)
    verify(client, Reference(client.registry, dst, digest=index), [key.public])


def test_plain_copy_refuses_to_replace_another_train(client: RegistryClient) -> None:
    tid = new_id()
    src, dst = f"pht-incoming/{tid}", f"station-a/{tid}"
    t = push_train(client, src, layer_bytes=1024, noise=False)
    other = push_image(client, dst, "train", layer_bytes=1024)
    with pytest.raises(ConflictError) as exc:
        PlainRegistryAdmin(client).copy_train(src, dst, t.train.digest)
    assert other.digest in str(exc.value) and t.train.digest in str(exc.value)
    assert client.resolve(dst, "train") == other.digest


def test_plain_admin_projects_robots_webhooks_delete_and_list(client: RegistryClient) -> None:
    admin = PlainRegistryAdmin(client)
    admin.ensure_project("station-z")  # a prefix: nothing to create, nothing fails
    with pytest.raises(NotSupportedError, match="no accounts"):
        admin.create_robot("station-z", "station")
    with pytest.raises(NotSupportedError, match="notifications"):
        admin.ensure_webhook("station-z", "https://central.example.org/hook", "Bearer x")

    tid = new_id()
    project = f"list{tid}"
    t = push_train(client, f"pht-incoming/{tid}", layer_bytes=1024, noise=False)
    admin.copy_train(t.repository, f"{project}/{tid}", t.train.digest)
    assert admin.list_repositories(project) == [f"{project}/{tid}"]
    admin.delete_repository(f"{project}/{tid}")
    assert client.list_tags(f"{project}/{tid}") == []
    assert admin.list_repositories(project) == []
    with pytest.raises(NotFoundError):
        admin.delete_repository(f"{project}/{tid}")


# --- Harbor, through the stand-in ------------------------------------------------------


@pytest.fixture()
def harbor(registry: LocalRegistry) -> Iterator[tuple[HarborStandIn, str]]:
    standin = HarborStandIn(registry.host, users={"admin": ADMIN_PASSWORD})
    with serve(standin) as url:
        yield standin, url


@pytest.fixture()
def admin(harbor: tuple[HarborStandIn, str]) -> Iterator[HarborAdmin]:
    with HarborAdmin(harbor[1], "admin", ADMIN_PASSWORD) as a:
        yield a


def _calls(standin: HarborStandIn, start: int) -> list[tuple[str, str]]:
    return [(r.method, r.path.removeprefix("/api/v2.0")) for r in standin.requests[start:]]


def test_standin_behaves_like_harbor_with_cookies(harbor: tuple[HarborStandIn, str]) -> None:
    """The negative control: a client that keeps cookies is refused on its second call."""
    standin, url = harbor
    naive = requests.Session()
    naive.trust_env = False
    first = naive.head(
        f"{url}/api/v2.0/projects", params={"project_name": "x"}, auth=("admin", ADMIN_PASSWORD)
    )
    assert first.status_code == 404
    assert first.headers["Set-Cookie"].startswith("sid=") and first.headers["X-Request-Id"]
    second = naive.post(
        f"{url}/api/v2.0/projects", json={"project_name": "x"}, auth=("admin", ADMIN_PASSWORD)
    )
    assert second.status_code == 403
    assert second.json() == {"errors": [{"code": "FORBIDDEN", "message": "CSRF token invalid"}]}
    assert "sid=" in standin.requests[-1].headers["cookie"]
    anonymous = requests.head(f"{url}/api/v2.0/projects", params={"project_name": "x"})
    assert anonymous.status_code == 401


def test_ensure_project_creates_once(harbor: tuple[HarborStandIn, str], admin: HarborAdmin) -> None:
    standin, _ = harbor
    admin.ensure_project("station-a")
    assert _calls(standin, 0) == [("HEAD", "/projects"), ("POST", "/projects")]
    assert standin.requests[0].params == {"project_name": "station-a"}
    assert standin.requests[1].json() == {
        "project_name": "station-a",
        "metadata": {"public": "false"},
    }
    assert standin.projects["station-a"].metadata["public"] == "false"

    start = len(standin.requests)
    admin.ensure_project("station-a")  # exists: looked at, not created
    assert _calls(standin, start) == [("HEAD", "/projects"), ("GET", "/projects/station-a")]
    assert standin.requests[-1].headers["x-is-resource-name"] == "true"

    standin.head_misses = 1  # HEAD says 404, but someone created it meanwhile: POST -> 409
    start = len(standin.requests)
    admin.ensure_project("station-a")
    assert [r.status for r in standin.requests[start:]] == [404, 409, 200]

    standin.projects["station-a"].metadata["public"] = "true"
    admin.ensure_project("station-a")  # made private again
    assert standin.projects["station-a"].metadata["public"] == "false"
    for r in standin.requests:
        assert "cookie" not in r.headers
        assert r.headers["authorization"].startswith("Basic ")


def test_create_robot_keeps_its_secret_out_of_logs_and_repr(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    standin, url = harbor
    caplog.set_level(logging.DEBUG)
    project = f"station-{new_id()}"  # the backing registry is shared: a fresh project
    admin.ensure_project(project)
    robot = admin.create_robot(project, "station")
    assert isinstance(robot, RobotAccount)
    assert robot.name == f"robot${project}+station"
    assert robot.secret == standin.robots[robot.name].secret
    assert robot.secret not in repr(robot) and robot.secret not in str(robot)
    assert robot.secret not in caplog.text and ADMIN_PASSWORD not in caplog.text
    assert ADMIN_PASSWORD not in repr(admin)
    assert standin.requests[-1].json() == {
        "name": "station",
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

    # The robot can use its project, and nothing else.
    with HarborAdmin(url, robot.name, robot.secret) as as_robot:
        assert as_robot.list_repositories(project) == []
        with pytest.raises(RegistryAuthError) as refused:
            as_robot.ensure_project("station-b")
    assert refused.value.status == 403 and "creating project station-b" in str(refused.value)
    assert robot.secret not in str(refused.value)

    with pytest.raises(ConflictError) as conflict:
        admin.create_robot(project, "station")
    assert "already exists" in str(conflict.value) and "secret only" in str(conflict.value)
    assert robot.secret not in caplog.text


def test_ensure_webhook_creates_then_updates(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    standin, _ = harbor
    caplog.set_level(logging.DEBUG)
    admin.ensure_project("station-a")
    hook = "https://central.example.org/webhooks/harbor"
    secret_header = "Bearer webhook-s3cret-value"

    start = len(standin.requests)
    admin.ensure_webhook("station-a", hook, secret_header)
    assert _calls(standin, start) == [
        ("GET", "/projects/station-a/webhook/policies"),
        ("POST", "/projects/station-a/webhook/policies"),
    ]
    created = standin.requests[-1]
    assert created.headers["x-is-resource-name"] == "true"
    assert created.json()["event_types"] == ["PUSH_ARTIFACT"]
    assert created.json()["targets"] == [
        {
            "type": "http",
            "address": hook,
            "auth_header": secret_header,
            "skip_cert_verify": False,
            "payload_format": "Default",
        }
    ]

    start = len(standin.requests)
    admin.ensure_webhook("station-a", hook, secret_header)  # up to date: read only
    assert _calls(standin, start) == [("GET", "/projects/station-a/webhook/policies")]

    start = len(standin.requests)
    admin.ensure_webhook("station-a", hook, secret_header, payload_format="CloudEvents")
    policy_id = standin.policies["station-a"][0]["id"]
    assert _calls(standin, start) == [
        ("GET", "/projects/station-a/webhook/policies"),
        ("PUT", f"/projects/station-a/webhook/policies/{policy_id}"),
    ]
    assert standin.requests[-1].headers["x-is-resource-name"] == "true"
    assert len(standin.policies["station-a"]) == 1
    assert standin.policies["station-a"][0]["targets"][0]["payload_format"] == "CloudEvents"

    admin.ensure_webhook("station-a", hook, "Bearer rotated-s3cret", payload_format="CloudEvents")
    assert standin.policies["station-a"][0]["targets"][0]["auth_header"] == "Bearer rotated-s3cret"
    with pytest.raises(ConfigError):
        admin.ensure_webhook("station-a", hook, secret_header, payload_format="Slack")  # type: ignore[arg-type]
    assert "s3cret" not in caplog.text


def test_harbor_copy_train(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin, client: RegistryClient
) -> None:
    standin, _ = harbor
    tid = new_id()
    station = f"station-{tid}"  # the backing registry is shared: a fresh project
    admin.ensure_project("pht-incoming")
    admin.ensure_project(station)
    # A nested repository name: Harbor wants it URL-encoded twice in the path.
    src, dst = f"pht-incoming/trains/{tid}", f"{station}/trains/{tid}"
    t = push_train(client, src, layer_bytes=MiB)

    start = len(standin.requests)
    report = admin.copy_train(src, dst, t.train.digest)
    requests_made = standin.requests[start:]
    copies = [r for r in requests_made if r.method == "POST" and r.path.endswith("/artifacts")]
    tags = [r for r in requests_made if r.method == "POST" and r.path.endswith("/tags")]
    assert copies and tags
    # The train is copied last: a station starts when `train` appears in its project, so
    # its signatures and results must be there first.
    assert copies[-1].params["from"] == f"{src}@{t.train.digest}"
    assert tags[-1].json() == {"name": "train"}
    for r in requests_made:
        if "/repositories/" in r.raw_path:
            assert f"/repositories/trains%252F{tid}/" in r.raw_path, r.raw_path
        assert r.headers.get("x-is-resource-name") == "true" or r.method == "HEAD"
        assert "cookie" not in r.headers
        assert r.headers["authorization"].startswith("Basic ")
    assert (
        copies[0].raw_path
        == f"/api/v2.0/projects/{station}/repositories/trains%252F{tid}/artifacts"
    )
    train_tag = [r for r in tags if r.json() == {"name": "train"}]
    assert train_tag and t.train.digest in train_tag[0].raw_path
    assert report.manifests + report.manifests_present == 4
    assert report.bytes_streamed == 0
    assert_copied(client, t, dst)

    # Idempotent: nothing is copied again.
    start = len(standin.requests)
    again = admin.copy_train(src, dst, t.train.digest)
    assert (again.manifests, again.manifests_present) == (0, 4)
    assert not [r for r in standin.requests[start:] if r.method != "GET"]
    assert_copied(client, t, dst)

    # Listing and deleting go through Harbor too.
    assert admin.list_repositories(station) == [dst]
    admin.delete_repository(dst)
    assert client.list_tags(dst) == []
    assert admin.list_repositories(station) == []


def test_harbor_copy_with_an_older_harbor_that_answers_409(
    registry: LocalRegistry, client: RegistryClient
) -> None:
    standin = HarborStandIn(
        registry.host, users={"admin": ADMIN_PASSWORD}, conflict_on_existing_copy=True
    )
    with serve(standin) as url, HarborAdmin(url, "admin", ADMIN_PASSWORD) as admin:
        admin.ensure_project("pht-incoming")
        admin.ensure_project("station-b")
        tid = new_id()
        t = push_train(client, f"pht-incoming/{tid}", layer_bytes=1024)
        # Someone copied only the train before: its tag is missing in the destination.
        for blob in [t.train.config, *t.train.layers]:
            assert blob is not None
            client.mount_blob(f"station-b/{tid}", blob.digest, f"pht-incoming/{tid}")
        client.put_manifest(f"station-b/{tid}", t.train.digest, t.train.raw, OCI_MANIFEST)
        standin._known[f"station-b/{tid}"] = {t.train.digest}
        report = admin.copy_train(f"pht-incoming/{tid}", f"station-b/{tid}", t.train.digest)
        assert report.manifests + report.manifests_present == 4
        assert_copied(client, t, f"station-b/{tid}")


def test_harbor_errors_are_clear_and_keep_secrets_out(
    harbor: tuple[HarborStandIn, str], admin: HarborAdmin
) -> None:
    standin, url = harbor
    with HarborAdmin(url, "admin", "wrong-password") as wrong:
        with pytest.raises(RegistryAuthError) as unauthorized:
            wrong.ensure_project("station-a")  # a HEAD: no error body, the status speaks
        with pytest.raises(RegistryAuthError) as unauthorized_get:
            wrong.list_repositories("station-a")
    message = str(unauthorized.value)
    assert unauthorized.value.status == 401 and "HTTP 401" in message
    assert "rejected the credentials of 'admin' while checking project station-a" in message
    assert "wrong-password" not in message and "request id" in message
    message = str(unauthorized_get.value)
    assert "UNAUTHORIZED: unauthorized" in message and "wrong-password" not in message

    admin.ensure_project("pht-incoming")
    missing = "sha256:" + "1" * 64
    with pytest.raises(NotFoundError) as not_found:
        admin.copy_train(f"pht-incoming/{new_id()}", "station-a/x", missing)
    assert missing in str(not_found.value)
    with pytest.raises(NotFoundError) as no_repo:
        admin.delete_repository(f"pht-incoming/{new_id()}")
    assert no_repo.value.status == 404 and "deleting repository" in str(no_repo.value)

    standin.inject(403, "FORBIDDEN", "CSRF token invalid", method="POST")
    with pytest.raises(RegistryAuthError, match="session cookie"):
        admin.ensure_project("station-q")
    standin.inject(412, "PRECONDITION", "the project is not empty", method="DELETE")
    with pytest.raises(RegistryError) as precondition:
        admin.delete_repository("pht-incoming/whatever")
    assert precondition.value.status == 412 and "precondition" in str(precondition.value)
    assert not precondition.value.retryable
    standin.inject(503, "SERVICE_UNAVAILABLE", "registry is read-only", method="GET")
    with pytest.raises(RegistryError) as unavailable:
        admin.list_repositories("pht-incoming")
    assert unavailable.value.retryable and "registry is read-only" in str(unavailable.value)
    for r in standin.requests:
        assert "cookie" not in r.headers


def test_harbor_admin_url_rules() -> None:
    with pytest.raises(ConfigError, match="plain http"):
        HarborAdmin("http://harbor.example.org", "admin", "pw")
    assert HarborAdmin("harbor.example.org", "a", "pw").api == "https://harbor.example.org/api/v2.0"
    assert HarborAdmin("https://h.example/api/v2.0/", "a", "pw").api == "https://h.example/api/v2.0"
    assert HarborAdmin("127.0.0.1:8080", "a", "pw").api == "http://127.0.0.1:8080/api/v2.0"
    assert HarborAdmin("http://h.example", "a", "pw", insecure=True).api.startswith("http://")
    with pytest.raises(ConfigError, match="project part"):
        HarborAdmin("h.example", "a", "pw").copy_train(
            "noproject", "station-a/x", "sha256:" + "2" * 64
        )
