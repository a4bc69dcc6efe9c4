"""The OCI image layout archive: written as a stream, read as hostile input.

Archives are made by ``LayoutWriter`` (the real writer) or by hand with ``tarfile`` for the
rules a writer would never break; every refusal is a ``LayoutError`` naming the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pht_airflow.errors import PhtError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Manifest
from pht_airflow.oci.layout import (
    MAX_INDEX_BYTES,
    REF_NAME,
    LayoutError,
    LayoutReader,
    LayoutRegistryView,
    LayoutWriter,
)

LAYER = b"layer bytes " * 1000
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
).encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(config: bytes = CONFIG, layer: bytes = LAYER) -> Manifest:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return Manifest.from_raw(raw)


def write_sample(path: Path, chunk: int = 100) -> Manifest:
    manifest = image_manifest()
    with open(path, "wb") as fh, LayoutWriter(fh) as writer:
        writer.add_bytes(CONFIG)
        chunks = (LAYER[i : i + chunk] for i in range(0, len(LAYER), chunk))
        writer.add_blob(digest_of(LAYER), len(LAYER), chunks)
        writer.tag("train", writer.add_manifest(manifest))
    return manifest


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def write_members(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> None:  # type: ignore[assignment]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)


def test_a_written_layout_reads_back_with_every_blob_verified(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    manifest = write_sample(path)
    names = set(members(path))
    assert {"oci-layout", "index.json"} <= names
    assert f"blobs/sha256/{manifest.digest[7:]}" in names
    index = json.loads(members(path)["index.json"])
    assert index["manifests"][0]["annotations"] == {REF_NAME: "train"}
    with LayoutReader(path) as reader:
        reader.verify()
        assert list(reader.tags) == ["train"]
        assert [m.digest for m in reader.manifests_in_order()] == [manifest.digest]
        assert b"".join(reader.open_blob(digest_of(LAYER), chunk_size=7)) == LAYER
        view = LayoutRegistryView(reader)
        assert view.resolve("any/repo", "train") == manifest.digest
        assert view.get_blob("any/repo", digest_of(CONFIG)) == CONFIG
        with pytest.raises(LayoutError, match="read-only and offline"):
            view.upload_bytes("any/repo", b"x")
        with pytest.raises(PhtError, match="no tag"):
            view.get_manifest("any/repo", "nope")


@pytest.mark.parametrize(
    ("digest", "size", "chunks", "message"),
    [
        (digest_of(b"other"), 5, [b"hello"], "does not hash to its digest"),
        (digest_of(b"hello"), 5, [b"hel"], "ended after 3 of its stated 5 bytes"),
        (digest_of(b"hel"), 2, [b"hel"], "larger than its stated 2 bytes"),
    ],
)
def test_the_writer_refuses_a_blob_that_breaks_its_descriptor_and_stops(
    tmp_path: Path, digest: str, size: int, chunks: list[bytes], message: str
) -> None:
    with open(tmp_path / "w.tar", "wb") as fh:
        writer = LayoutWriter(fh)
        with pytest.raises(LayoutError, match=message):
            writer.add_blob(digest, size, chunks)
        with pytest.raises(LayoutError, match="an earlier blob failed"):
            writer.add_bytes(b"next")
        with pytest.raises(LayoutError, match="an earlier blob failed"):
            writer.close()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo: run scripts/bootstrap.sh")
def test_skopeo_reads_a_written_layout(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    manifest = write_sample(path)
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{path}:train"],
        capture_output=True,
        check=True,
    )
    assert digest_of(proc.stdout) == manifest.digest


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo: run scripts/bootstrap.sh")
def test_the_reader_reads_an_archive_skopeo_wrote(tmp_path: Path) -> None:
    write_sample(tmp_path / "ours.tar")
    theirs = tmp_path / "theirs.tar"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci-archive:{tmp_path / 'ours.tar'}:train",
         f"oci-archive:{theirs}:copied"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with LayoutReader(theirs) as reader:
        reader.verify()
        assert list(reader.tags) == ["copied"]
        (manifest,) = reader.manifests_in_order()
        config = manifest.config
        assert config is not None
        assert json.loads(reader.read_blob(config.digest, 4096))["os"] == "linux"


def _tampered(tmp_path: Path, change: object) -> Path:
    src = tmp_path / "ok.tar"
    write_sample(src)
    files = members(src)
    extra: list[tarfile.TarInfo] = []
    change(files, extra)  # type: ignore[operator]
    dst = tmp_path / "bad.tar"
    write_members(dst, files, extra)
    return dst


def _flip_layer(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    name = f"blobs/sha256/{digest_of(LAYER)[7:]}"
    files[name] = b"X" + files[name][1:]


def _traversal(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    files["../evil"] = b"x"


def _symlink(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    extra.append(info)


def _no_layout(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    del files["oci-layout"]


def _version(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    files["oci-layout"] = b'{"imageLayoutVersion": "9.9.9"}'


def _missing_blob(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    del files[f"blobs/sha256/{digest_of(CONFIG)[7:]}"]


def _huge_index(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    files["index.json"] = b" " * (MAX_INDEX_BYTES + 1)


def _hostile_tag(files: dict[str, bytes], extra: list[tarfile.TarInfo]) -> None:
    index = json.loads(files["index.json"])
    index["manifests"][0]["annotations"][REF_NAME] = "\x1b[31m../x"
    files["index.json"] = json.dumps(index).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_flip_layer, "does not hash to its digest"),
        (_traversal, r"member \.\./evil is not part of an OCI image layout"),
        (_symlink, "is a link or special file"),
        (_no_layout, "has no oci-layout"),
        (_version, "imageLayoutVersion is 9.9.9"),
        (_missing_blob, "lacks manifest .*'s blob sha256:"),
        (_huge_index, "index.json is larger than"),
        (_hostile_tag, r"invalid tag \\x1b\[31m\.\./x"),
    ],
)
def test_the_reader_refuses_a_broken_layout(tmp_path: Path, change: object, message: str) -> None:
    path = _tampered(tmp_path, change)
    with pytest.raises(LayoutError, match=message), LayoutReader(path) as reader:
        reader.verify()


def test_the_reader_refuses_a_truncated_archive(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    write_sample(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LayoutError, match="truncated"):
        LayoutReader(path)


_SAMPLE: dict[str, bytes] = {}


def _sample_bytes(tmp: Path) -> bytes:
    if "data" not in _SAMPLE:
        path = tmp / "sample.tar"
        write_sample(path)
        # Trim the tar's zero padding so mutations hit content more often.
        data = path.read_bytes().rstrip(b"\0")
        _SAMPLE["data"] = data + b"\0" * (-len(data) % 512) + b"\0" * 1024
    return _SAMPLE["data"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_mutated_layouts_raise_only_pht_errors(
    tmp_path: Path, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    data = bytearray(_sample_bytes(tmp_path))
    for at, chunk in edits:
        pos = at % len(data)
        data[pos : pos + len(chunk)] = chunk
    if cut is not None:
        del data[cut % len(data) :]
    path = tmp_path / "m.tar"
    path.write_bytes(bytes(data))
    try:
        with LayoutReader(path) as reader:
            reader.verify()
            view = LayoutRegistryView(reader)
            for tag in reader.tags:
                view.get_manifest("x/y", tag)
    except PhtError:
        pass
