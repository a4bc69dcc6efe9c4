"""The central service's registry admin on a plain registry: copies by mount, and what a
plain registry cannot do.

Everything runs against the session's real ``docker-registry``. The helpers that push a
train with its signatures and results (:func:`push_train`, :func:`assert_copied`) are also
used by ``test_central_registry_harbor.py``.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pht_airflow.central.registry import CopyReport, PlainRegistryAdmin, RegistryAdmin
from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import ConflictError, NotFoundError, NotSupportedError
from pht_airflow.keys import SigningKey
from pht_airflow.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Manifest, Reference, RegistryClient
from pht_airflow.protocol import RESULT_ARTIFACT_TYPE, RESULT_CONFIG_MEDIA_TYPE, RESULT_MEDIA_TYPE
from pht_airflow.signing import sign, signature_tag, verify

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
LAYER = "application/vnd.oci.image.layer.v1.tar"


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
