"""Air-gapped transport: a train exported from one registry, imported into a second registry
that shares nothing with it, run there by a station, and its result carried back.

Both registries are real CNCF distribution registries; the hop runs on the real Docker
engine. Tampered bundles are refused on import with their reasons, and the target registry
is listed afterwards to show that nothing of them was pushed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.stationkit import make_station, signed_train

from pht_airflow.attestation import attestation_tag
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import LocalRegistry, start_registry
from pht_airflow.errors import PhtError
from pht_airflow.oci import OCI_MANIFEST, RegistryClient
from pht_airflow.oci.layout import REF_NAME
from pht_airflow.protocol import (
    HOP_ANNOTATION,
    RESULT_ARTIFACT_TYPE,
    RESULT_CONFIG_MEDIA_TYPE,
    RESULT_MEDIA_TYPE,
    STATION_ANNOTATION,
)
from pht_airflow.researcher.bundle import (
    BundleError,
    BundleTrust,
    export_bundle,
    import_bundle,
    parse_target,
)
from pht_airflow.researcher.collect import collect_results
from pht_airflow.signing import signature_tag
from pht_airflow.station.hop import run_hop

pytestmark = [pytest.mark.registry, pytest.mark.docker]


@pytest.fixture(scope="module")
def offline_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A second registry: its own process, port and storage (the air-gapped site's)."""
    if shutil.which("docker-registry") is None:
        pytest.skip("the docker-registry binary is not available: run scripts/bootstrap.sh")
    reg = start_registry(tmp_path_factory.mktemp("offline-registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture()
def offline(offline_registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(offline_registry.host) as c:
        yield c


def trust(parties: Any, approvals: int = 1) -> BundleTrust:
    return BundleTrust([parties["alice"].public], [parties["reviewer"].public], approvals)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rewrite(
    src: Path, dst: Path, change: Callable[[dict[str, bytes], dict[str, Any]], None]
) -> Path:
    """Copy a bundle with ``change(blobs_by_name, index)`` applied (test code: trusted)."""
    with tarfile.open(src) as tar:
        files = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    index = json.loads(files.pop("index.json"))
    change(files, index)
    files["index.json"] = json.dumps(index).encode()
    with tarfile.open(dst, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def add_blob(files: dict[str, bytes], data: bytes) -> dict[str, Any]:
    files[f"blobs/sha256/{sha(data)[7:]}"] = data
    return {"digest": sha(data), "size": len(data)}


def unsigned_result(
    files: dict[str, bytes], index: dict[str, Any], spec: Any, tag: str, hop: int = 0
) -> None:
    """Add a result artifact for ``hop`` that looks right but carries no signature."""
    train = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == "train")
    if train["mediaType"].endswith("index.v1+json"):  # the wrapper around a Docker-typed train
        train = json.loads(files[f"blobs/sha256/{train['digest'][7:]}"])["manifests"][0]
    config = {
        "train": {"id": spec.id, "digest": train["digest"]},
        "hop": hop,
        "station": spec.route[hop].station,
        "previous": None,
        "created": "2026-12-01T00:00:00Z",
        "recipients": [spec.creator.recipient],
        "plaintext_bytes": 3,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": RESULT_ARTIFACT_TYPE,
        "config": {
            "mediaType": RESULT_CONFIG_MEDIA_TYPE,
            **add_blob(files, json.dumps(config).encode()),
        },
        "layers": [{"mediaType": RESULT_MEDIA_TYPE, **add_blob(files, b"not age")}],
        "subject": {k: train[k] for k in ("mediaType", "digest", "size")},
        "annotations": {HOP_ANNOTATION: str(hop), STATION_ANNOTATION: spec.route[hop].station},
    }
    raw = json.dumps(manifest).encode()
    desc = add_blob(files, raw)
    index["manifests"].append({"mediaType": OCI_MANIFEST, **desc, "annotations": {REF_NAME: tag}})


def catalog(client: RegistryClient, project: str) -> list[str]:
    return [r for r in client.list_catalog() if r.startswith(project + "/")]


def test_round_trip_through_an_air_gap(
    docker_client: Any,
    client: RegistryClient,
    registry: Any,
    offline: RegistryClient,
    offline_registry: LocalRegistry,
    parties: Any,
    tmp_path: Path,
) -> None:
    # The researcher's side: a signed one-hop train in the connected registry.
    ref, spec = signed_train(docker_client, client, registry, parties, "pht-incoming",
                             ["station-a"])  # fmt: skip
    docker_client.images.remove(str(ref), force=True)
    out = tmp_path / "train.tar"
    summary = export_bundle(client, str(ref), out)
    train_digest = summary.digest
    assert summary.tags == ["train", signature_tag(train_digest)]

    # Debian's skopeo reads the archive: the train by its tag (through a one-entry OCI index,
    # since skopeo addresses only OCI-typed entries and the docker-built train keeps its
    # Docker media type and signed digest), and its signature artifact.
    if shutil.which("skopeo"):
        info = json.loads(
            subprocess.run(
                ["skopeo", "inspect", f"oci-archive:{out}:train"], capture_output=True, check=True
            ).stdout
        )
        assert json.loads(info["Labels"]["org.pht.train"])["id"] == spec.id
        sig = signature_tag(train_digest)
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci-archive:{out}:{sig}"],
            capture_output=True,
            check=True,
        ).stdout
        assert json.loads(raw)["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]

    # The air-gapped site: its registry shares nothing with the first.
    assert offline.list_catalog() == []
    imported = import_bundle(out, offline, "station-a", trust(parties))
    assert imported.creator.key_id == parties["alice"].key.key_id
    assert [a.key_id for a in imported.approvers] == [parties["reviewer"].key.key_id]
    target = f"station-a/{spec.id}"
    assert sorted(offline.list_tags(target)) == sorted(["train", signature_tag(train_digest)])
    assert offline.resolve(target, "train") == train_digest

    # The station runs the normal hop from its own project in the offline registry.
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        offline_registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )
    record = run_hop(
        station.config(), f"{offline_registry.host}/{target}:train", docker_client=docker_client
    )
    assert record["outcome"] == "success", record
    result_digest = record["result_digest"]

    # ... and exports the result for the way back.
    back = tmp_path / "back.tar"
    exported = export_bundle(offline, f"{offline_registry.host}/{target}:train", back)
    assert set(exported.tags) == {
        "train",
        signature_tag(train_digest),
        "result-0",
        signature_tag(result_digest),
        attestation_tag(result_digest),  # the station's run attestation travels with it
    }

    # Carried back with an extra unsigned result: refused, nothing pushed.
    outbox = f"pht-outbox/{spec.id}"
    bad = rewrite(back, tmp_path / "bad.tar",
                  lambda f, i: unsigned_result(f, i, spec, "result-0-extra"))  # fmt: skip
    with pytest.raises(BundleError, match="result tag result-0-extra .* is not an accepted"):
        import_bundle(bad, client, "pht-outbox", trust(parties))
    assert outbox not in client.list_catalog()

    # The real one is accepted, and the researcher's fetch verifies the chain and decrypts.
    back_in = import_bundle(back, client, "pht-outbox", trust(parties))
    assert [(r.hop, r.digest) for r in back_in.results] == [(0, result_digest)]
    placed = collect_results(
        client,
        f"{registry.host}/{outbox}:train",
        [parties["alice"].public],
        parties["alice"].age,
        tmp_path / "results",
    )
    assert [r.digest for r, _ in placed] == [result_digest]
    state = json.loads((tmp_path / "results" / "0-station-a" / "state.json").read_text())
    assert state["rows"] == 5
    assert list((station.root / "work").iterdir()) == []


@pytest.fixture()
def exported(
    docker_client: Any, client: RegistryClient, registry: Any, parties: Any, tmp_path: Path
) -> tuple[Path, Any]:
    """A signed two-hop train exported to a bundle (no results yet)."""
    ref, spec = signed_train(docker_client, client, registry, parties, "pht-incoming",
                             ["station-a", "station-b"])  # fmt: skip
    docker_client.images.remove(str(ref), force=True)
    out = tmp_path / "train.tar"
    export_bundle(client, str(ref), out)
    return out, spec


def _flip_layer(files: dict[str, bytes], index: dict[str, Any]) -> None:
    name = max(files, key=lambda n: len(files[n]))  # the largest blob: an image layer
    files[name] = bytes([files[name][0] ^ 1]) + files[name][1:]


def _drop_signature(files: dict[str, bytes], index: dict[str, Any]) -> None:
    index["manifests"] = [
        m for m in index["manifests"] if not m["annotations"][REF_NAME].endswith(".sig")
    ]


def _foreign_tag(files: dict[str, bytes], index: dict[str, Any]) -> None:
    train = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == "train")
    index["manifests"].append({**train, "annotations": {REF_NAME: "latest"}})


def _two_trains(files: dict[str, bytes], index: dict[str, Any]) -> None:
    entry = next(m for m in index["manifests"] if m["annotations"][REF_NAME] == "train")
    wrapper = json.loads(files[f"blobs/sha256/{entry['digest'][7:]}"])
    wrapper["manifests"] *= 2
    entry.update(add_blob(files, json.dumps(wrapper).encode()))


def _foreign_attestation(files: dict[str, bytes], index: dict[str, Any]) -> None:
    sig = next(m for m in index["manifests"] if m["annotations"][REF_NAME].endswith(".sig"))
    index["manifests"].append({**sig, "annotations": {REF_NAME: f"sha256-{'0' * 64}.att"}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_foreign_attestation, f"tag sha256-{'0' * 64}.att is neither the train"),
        (_two_trains, "'train' tag names an index of 2 manifests; a train is one image"),
        (_flip_layer, r"blob sha256:[0-9a-f]{64} in the bundle does not hash to its digest"),
        (_drop_signature, "the train's signatures: .*no signature"),
        (_foreign_tag, "tag latest is neither the train, a verified result"),
        ("unsigned", "the result chain: .*not signed by station-a's key"),
    ],
)
def test_a_tampered_bundle_is_refused_and_nothing_is_pushed(
    exported: tuple[Path, Any],
    offline: RegistryClient,
    parties: Any,
    tmp_path: Path,
    change: Any,
    message: str,
) -> None:
    path, spec = exported
    if change == "unsigned":
        change = lambda f, i: unsigned_result(f, i, spec, "result-0")  # noqa: E731
    bad = rewrite(path, tmp_path / "bad.tar", change)
    with pytest.raises(BundleError, match=message):
        import_bundle(bad, offline, "tampered", trust(parties))
    assert catalog(offline, "tampered") == []


def test_a_train_from_an_untrusted_creator_or_without_approval_is_refused(
    exported: tuple[Path, Any], offline: RegistryClient, parties: Any
) -> None:
    path, _ = exported
    mallory = BundleTrust([parties["mallory"].public], [parties["reviewer"].public])
    with pytest.raises(BundleError, match="creator key is not among the trusted creator keys"):
        import_bundle(path, offline, "untrusted", mallory)
    lonely = BundleTrust([parties["alice"].public], [parties["mallory"].public])
    with pytest.raises(BundleError, match="0 approval"):
        import_bundle(path, offline, "untrusted", lonely)
    assert catalog(offline, "untrusted") == []


def test_the_cli_exports_and_refuses_with_exit_3(
    exported: tuple[Path, Any],
    offline: RegistryClient,
    offline_registry: LocalRegistry,
    parties: Any,
    tmp_path: Path,
) -> None:
    path, spec = exported
    (tmp_path / "alice.pub").write_text(parties["alice"].public.pem)
    (tmp_path / "reviewer.pub").write_text(parties["reviewer"].public.pem)
    bad = rewrite(path, tmp_path / "bad.tar", _drop_signature)
    runner = CliRunner()
    args = ["--creator", str(tmp_path / "alice.pub"), "--approver", str(tmp_path / "reviewer.pub")]
    refused = runner.invoke(
        main, ["bundle", "import", str(bad), "--to", f"{offline_registry.host}/cli", *args]
    )
    assert refused.exit_code == 3, refused.output
    assert "bundle refused: the train's signatures" in refused.output
    assert catalog(offline, "cli") == []
    ok = runner.invoke(
        main,
        ["bundle", "import", str(path), "--to", f"{offline_registry.host}/cli", "--json", *args],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["train_id"] == spec.id
    again = runner.invoke(
        main,
        [
            "bundle",
            "export",
            f"{offline_registry.host}/cli/{spec.id}:train",
            "--out",
            str(tmp_path / "again.tar"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.tar").read_bytes() == path.read_bytes()


def test_a_file_that_is_not_a_bundle_is_refused(
    offline: RegistryClient, parties: Any, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x1b[2J" * 300)
    with pytest.raises(PhtError, match="invalid tar header|truncated"):
        import_bundle(junk, offline, "junk", trust(parties))


def test_the_cli_imports_with_a_station_s_trust(
    exported: tuple[Path, Any],
    offline: RegistryClient,
    offline_registry: LocalRegistry,
    parties: Any,
    tmp_path: Path,
) -> None:
    path, spec = exported
    common = {"creators": [parties["alice"].public.pem], "rows": 1}
    trusting = make_station(tmp_path / "a", parties["station-a"], offline_registry.host,
                            approvers=[parties["reviewer"].public.pem], **common)  # fmt: skip
    wary = make_station(tmp_path / "b", parties["station-b"], offline_registry.host,
                        approvers=[parties["mallory"].public.pem], **common)  # fmt: skip
    runner = CliRunner()
    to = ["--to", f"{offline_registry.host}/station-b"]
    refused = runner.invoke(
        main, ["bundle", "import", str(path), *to, "--station-config", str(wary.config_path)]
    )
    assert refused.exit_code == 3, refused.output
    assert "0 approval(s) by trusted approver keys, 1 required" in refused.output
    assert catalog(offline, "station-b") == []
    to = ["--to", f"{offline_registry.host}/station-a"]
    ok = runner.invoke(
        main, ["bundle", "import", str(path), *to, "--station-config", str(trusting.config_path)]
    )
    assert ok.exit_code == 0, ok.output
    assert f"imported {offline_registry.host}/station-a/{spec.id}:train" in ok.stdout


def test_attestations_travel_with_the_train(
    docker_client: Any,
    client: RegistryClient,
    registry: Any,
    offline: RegistryClient,
    parties: Any,
    tmp_path: Path,
) -> None:
    """A ``.att`` tag attached to the train (cosign's attestation tag) is exported and
    imported with it; it is carried, not verified (see the README)."""
    ref, spec = signed_train(docker_client, client, registry, parties, "pht-incoming",
                             ["station-a"])  # fmt: skip
    docker_client.images.remove(str(ref), force=True)
    digest = client.resolve(ref.repository, "train")
    att = signature_tag(digest)[: -len(".sig")] + ".att"
    statement = client.upload_bytes(ref.repository, b'{"predicateType":"x"}', "application/json")
    empty = client.upload_bytes(ref.repository, b"{}", "application/vnd.oci.empty.v1+json")
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": empty.to_dict(),
            "layers": [statement.to_dict()],
        }
    ).encode()
    att_digest = client.put_manifest(ref.repository, att, raw, OCI_MANIFEST)
    out = tmp_path / "att.tar"
    assert att in export_bundle(client, str(ref), out).tags
    imported = import_bundle(out, offline, "attested", trust(parties))
    assert att in imported.tags
    assert offline.resolve(f"attested/{spec.id}", att) == att_digest


def test_the_import_target_is_registry_slash_project() -> None:
    assert parse_target("127.0.0.1:5000/station-a") == ("127.0.0.1:5000", "station-a")
    assert parse_target("harbor.site/team/station-a") == ("harbor.site", "team/station-a")
    with pytest.raises(PhtError, match=r"REGISTRY/PROJECT, not \\x1b\[2Jnoslash"):
        parse_target("\x1b[2Jnoslash")
    with pytest.raises(PhtError, match="invalid image reference"):
        parse_target("127.0.0.1:5000/Station-A")
    with pytest.raises(PhtError, match="invalid image reference"):
        parse_target("bad host/station-a")
