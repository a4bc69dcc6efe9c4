"""``RegistryClient`` against a real CNCF distribution registry (Debian ``docker-registry``).

Blobs are streamed both ways and checked by digest; manifests of both media-type families
round-trip; tampering with the registry's storage on disk is caught on download. The only
other servers are tiny ``http.server`` instances on 127.0.0.1 for what distribution 2.8
cannot show (a ``Set-Cookie`` header, tag-list pagination).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from support.authservers import QuietHandler, serve_http, server_url

from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import DigestMismatchError, NotFoundError, RegistryError
from pht_airflow.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    RegistryClient,
    sha256_digest,
)

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> bytes:
    """5 MiB + 12345 bytes of random data: several MiB, not a multiple of any chunk size."""
    return os.urandom(5 * MiB + 12345)


@pytest.fixture
def repo() -> str:
    """A fresh repository name per test, so tests never see each other's blobs."""
    return f"oci-client/t{uuid.uuid4().hex[:12]}"


class Recorder:
    """Every response the client's session received: (method, url, status)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def __call__(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.calls.append((resp.request.method or "", resp.request.url or "", resp.status_code))

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.calls if m == method)

    def urls(self, method: str) -> list[str]:
        return [u for m, u, _ in self.calls if m == method]


@pytest.fixture
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


@pytest.fixture
def recorder(client: RegistryClient) -> Recorder:
    rec = Recorder()
    client._session.hooks["response"].append(rec)
    return rec


def pieces(data: bytes, sizes: tuple[int, ...] = (300_001, 65_536, 1_048_577)) -> Iterator[bytes]:
    """Yield ``data`` in uneven pieces (cycling through ``sizes``), as a generator would."""
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        yield data[pos : pos + step]
        pos += step
        i += 1


def upload_state(url: str) -> int:
    """Status of ``GET <upload location>``: 204 while an upload session lives, 404 after."""
    return requests.get(url, timeout=10).status_code


def test_upload_state_probe(registry: LocalRegistry, repo: str) -> None:
    """Control for ``upload_state``: a live session answers 204, a cancelled one 404."""
    resp = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=10)
    assert resp.status_code == 202
    location = resp.headers["Location"]
    assert upload_state(location) == 204
    assert requests.delete(location, timeout=10).status_code == 204
    assert upload_state(location) == 404


def blob_file(registry: LocalRegistry, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def push_image(
    client: RegistryClient, repo: str, *, docker: bool, tag: str, marker: str = ""
) -> tuple[bytes, str]:
    """Push a config and a layer, then a manifest of the chosen family; return (raw, type)."""
    config_type, manifest_type, layer_type = (
        (DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_LAYER)
        if docker
        else (OCI_CONFIG, OCI_MANIFEST, OCI_LAYER)
    )
    config = json.dumps({"architecture": "amd64", "os": "linux", "marker": marker}).encode()
    config_desc = client.upload_bytes(repo, config, config_type)
    layer_desc = client.upload_blob(repo, [os.urandom(2048)], media_type=layer_type)
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc.to_dict(),
            "layers": [layer_desc.to_dict()],
        },
        indent=2,  # not the canonical form: the digest must be of these exact bytes
    ).encode()
    client.put_manifest(repo, tag, raw, manifest_type)
    return raw, manifest_type


# --- streaming uploads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch_size", "patches"),
    [
        (None, 1),  # one streamed PATCH carries everything
        (2 * MiB, 3),  # 5 MiB + 12345 bytes -> 2 + 2 + 1.01 MiB
        (700_000, 8),  # smaller than the 1 MiB read size: blocks are split across PATCHes
    ],
)
def test_upload_blob_from_generator(
    client: RegistryClient,
    registry: LocalRegistry,
    recorder: Recorder,
    repo: str,
    payload: bytes,
    patch_size: int | None,
    patches: int,
) -> None:
    moved: list[int] = []
    desc = client.upload_blob(
        repo, pieces(payload), media_type=OCI_LAYER, patch_size=patch_size, progress=moved.append
    )

    assert desc == Descriptor(
        media_type=OCI_LAYER, digest=sha256_digest(payload), size=len(payload)
    )
    assert recorder.count("PATCH") == patches
    assert recorder.count("PUT") == 1
    assert sum(moved) == len(payload)
    assert client.blob_size(repo, desc.digest) == len(payload)
    assert blob_file(registry, desc.digest).read_bytes() == payload


@pytest.mark.parametrize(
    ("patch_size", "patches"),
    [(None, 1), (MiB, 6), (5 * MiB + 12345, 1)],
)
def test_upload_blob_from_file_and_download(
    client: RegistryClient,
    recorder: Recorder,
    repo: str,
    payload: bytes,
    tmp_path: Path,
    patch_size: int | None,
    patches: int,
) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    with source.open("rb") as f:
        desc = client.upload_blob(repo, f, patch_size=patch_size)
    assert desc.digest == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert desc.size == len(payload)
    assert recorder.count("PATCH") == patches

    # download_blob: into a file, digest-checked, byte count returned
    target = tmp_path / "back.bin"
    with target.open("wb") as out:
        assert client.download_blob(repo, desc.digest, out) == len(payload)
    assert target.read_bytes() == payload

    # open_blob: the bytes arrive in several chunks, not as one buffer
    received = list(client.open_blob(repo, desc.digest, chunk_size=256 * 1024))
    assert len(received) >= len(payload) // (256 * 1024)
    assert b"".join(received) == payload


def test_patch_size_that_divides_the_blob_sends_no_empty_patch(
    client: RegistryClient, recorder: Recorder, repo: str
) -> None:
    data = os.urandom(4 * MiB)
    desc = client.upload_blob(repo, io.BytesIO(data), patch_size=MiB)
    assert recorder.count("PATCH") == 4
    assert client.get_blob(repo, desc.digest) == data


def test_upload_empty_blob(client: RegistryClient, repo: str) -> None:
    desc = client.upload_blob(repo, iter([b"", b""]))
    assert desc.digest == sha256_digest(b"")
    assert desc.size == 0
    assert client.get_blob(repo, desc.digest) == b""


def test_upload_bytes_and_blob_size(client: RegistryClient, recorder: Recorder, repo: str) -> None:
    data = os.urandom(1000)
    desc = client.upload_bytes(repo, data, OCI_CONFIG)
    assert (desc.digest, desc.size, desc.media_type) == (sha256_digest(data), 1000, OCI_CONFIG)
    assert client.blob_size(repo, desc.digest) == 1000
    posts = recorder.count("POST")
    # a second push of the same bytes is skipped: the blob is already there
    assert client.upload_bytes(repo, data, OCI_CONFIG) == desc
    assert recorder.count("POST") == posts
    assert client.blob_size(repo, sha256_digest(b"not there")) is None


def test_expected_digest_mismatch_leaves_no_blob(
    client: RegistryClient, recorder: Recorder, repo: str, payload: bytes
) -> None:
    wrong = sha256_digest(b"something else")
    with pytest.raises(DigestMismatchError, match=f"not the expected {wrong}"):
        client.upload_blob(repo, pieces(payload), expected_digest=wrong, patch_size=2 * MiB)
    assert recorder.count("PUT") == 0  # the upload was never completed ...
    assert recorder.count("DELETE") == 1  # ... but cancelled
    assert client.blob_size(repo, sha256_digest(payload)) is None
    assert client.blob_size(repo, wrong) is None
    assert upload_state(recorder.urls("DELETE")[0]) == 404

    # the right expected digest goes through
    desc = client.upload_blob(repo, pieces(payload), expected_digest=sha256_digest(payload))
    assert client.blob_size(repo, desc.digest) == len(payload)


# --- manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_manifest_round_trip_and_resolve(client: RegistryClient, repo: str, docker: bool) -> None:
    raw, media_type = push_image(client, repo, docker=docker, tag="v1")
    digest = sha256_digest(raw)

    by_tag = client.get_manifest(repo, "v1")
    assert (by_tag.raw, by_tag.media_type, by_tag.digest) == (raw, media_type, digest)
    assert by_tag.layers[0].size == 2048
    by_digest = client.get_manifest(repo, digest)
    assert by_digest.raw == raw

    assert client.resolve(repo, "v1") == digest
    assert client.resolve(repo, digest) == digest

    # pushing by digest stores the same manifest under its digest
    assert client.put_manifest(repo, digest, raw, media_type) == digest
    # a digest reference that does not match the bytes is refused before any request
    with pytest.raises(DigestMismatchError, match="hash to"):
        client.put_manifest(repo, sha256_digest(b"other"), raw, media_type)


def test_get_missing_manifest(client: RegistryClient, repo: str) -> None:
    push_image(client, repo, docker=False, tag="v1")
    with pytest.raises(NotFoundError, match="HTTP 404") as info:
        client.get_manifest(repo, "nope")
    assert info.value.status == 404
    with pytest.raises(NotFoundError):
        client.resolve(repo, "nope")


def test_delete_manifest(client: RegistryClient, repo: str) -> None:
    raw, _ = push_image(client, repo, docker=False, tag="doomed", marker="d")
    push_image(client, repo, docker=False, tag="kept", marker="k")
    digest = sha256_digest(raw)
    client.delete_manifest(repo, digest)
    with pytest.raises(NotFoundError):
        client.get_manifest(repo, digest)
    with pytest.raises(NotFoundError):
        client.get_manifest(repo, "doomed")
    assert client.list_tags(repo) == ["kept"]
    with pytest.raises(NotFoundError):
        client.delete_manifest(repo, digest)


# --- tags --------------------------------------------------------------------------------


def test_list_tags_real_registry(client: RegistryClient, recorder: Recorder, repo: str) -> None:
    tags = [f"v{i}" for i in range(5)]
    raw, media_type = push_image(client, repo, docker=False, tag=tags[0])
    for tag in tags[1:]:
        client.put_manifest(repo, tag, raw, media_type)
    recorder.calls.clear()
    assert sorted(client.list_tags(repo, page_size=2)) == tags
    # distribution 2.8 ignores ?n= on tags/list and sends no Link header: one page only
    pages = [u for u in recorder.urls("GET") if "/tags/list" in u]
    assert pages[0] == f"{client.base_url}/v2/{repo}/tags/list?n=2"
    assert len(pages) == 1
    assert client.list_tags("oci-client/never-pushed") == []


class _PagingHandler(QuietHandler):
    """``/v2/<repo>/tags/list`` with ``n``/``last`` pagination and RFC 5988 ``Link``."""

    tags = ["a1", "b2", "c3", "d4", "e5"]
    seen: list[str] = []
    link_host = ""  # set to "http://elsewhere:1" to send a Link to another host

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/v2/":
            self._send(200, b"{}")
            return
        query = parse_qs(parts.query)
        n = int(query.get("n", ["1000"])[0])
        last = query.get("last", [""])[0]
        rest = [t for t in self.tags if t > last]
        page, more = rest[:n], len(rest) > n
        body = json.dumps({"name": "p/r", "tags": page}).encode()
        link = f'<{self.link_host}/v2/p/r/tags/list?n={n}&last={page[-1]}>; rel="next"'
        self._send(200, body, {"Link": link} if more else {})

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def paging_server() -> Iterator[ThreadingHTTPServer]:
    class Handler(_PagingHandler):
        seen: list[str] = []

    with serve_http(Handler) as server:
        yield server


def _host(server: ThreadingHTTPServer) -> str:
    return server_url(server).removeprefix("http://")


def test_list_tags_follows_link_pagination(paging_server: ThreadingHTTPServer) -> None:
    handler: type[_PagingHandler] = paging_server.RequestHandlerClass  # type: ignore[assignment]
    with RegistryClient(_host(paging_server)) as c:
        assert c.list_tags("p/r", page_size=2) == ["a1", "b2", "c3", "d4", "e5"]
    assert handler.seen == [
        "/v2/p/r/tags/list?n=2",
        "/v2/p/r/tags/list?n=2&last=b2",
        "/v2/p/r/tags/list?n=2&last=d4",
    ]


def test_list_tags_refuses_link_to_another_host(paging_server: ThreadingHTTPServer) -> None:
    handler: type[_PagingHandler] = paging_server.RequestHandlerClass  # type: ignore[assignment]
    handler.link_host = "http://127.0.0.2:9"
    with (
        RegistryClient(_host(paging_server)) as c,
        pytest.raises(RegistryError, match="paginates to another host"),
    ):
        c.list_tags("p/r", page_size=2)
    assert len(handler.seen) == 1  # nothing was sent to the other host


# --- cross-repository mount --------------------------------------------------------------


def test_mount_blob(client: RegistryClient, recorder: Recorder, repo: str) -> None:
    data = os.urandom(4096)
    desc = client.upload_bytes(repo, data)
    target = repo + "-copy"
    assert client.blob_size(target, desc.digest) is None
    assert client.mount_blob(target, desc.digest, repo) is True
    assert client.get_blob(target, desc.digest) == data
    assert recorder.count("DELETE") == 0


def test_mount_missing_blob_is_false_and_clean(
    client: RegistryClient, recorder: Recorder, repo: str
) -> None:
    client.upload_bytes(repo, b"something")
    missing = sha256_digest(os.urandom(32))
    target = repo + "-copy"
    # distribution answers 202 with a fresh upload session instead of 201 ...
    assert client.mount_blob(target, missing, repo) is False
    posts = [(u, s) for m, u, s in recorder.calls if m == "POST"]
    assert posts[-1][1] == 202
    # ... which the client cancels, so no upload session is left open
    deletes = recorder.urls("DELETE")
    assert len(deletes) == 1
    assert "/v2/" + target + "/blobs/uploads/" in deletes[0]
    assert upload_state(deletes[0]) == 404
    assert client.blob_size(target, missing) is None


# --- tampering in storage ----------------------------------------------------------------


def test_blob_altered_on_disk_is_detected(
    client: RegistryClient, registry: LocalRegistry, repo: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    desc = client.upload_blob(repo, io.BytesIO(data))
    path = blob_file(registry, desc.digest)
    assert path.read_bytes() == data  # the layout we rely on
    with path.open("r+b") as f:
        f.seek(2 * MiB + 7)
        byte = f.read(1)
        f.seek(2 * MiB + 7)
        f.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(DigestMismatchError, match="altered in storage or in transit") as info:
        for _ in client.open_blob(repo, desc.digest):
            pass
    assert desc.digest in str(info.value)
    assert not info.value.retryable
    with pytest.raises(DigestMismatchError):
        client.get_blob(repo, desc.digest)
    with (tmp_path / "out").open("wb") as out, pytest.raises(DigestMismatchError):
        client.download_blob(repo, desc.digest, out)


def test_manifest_altered_on_disk_is_detected(
    client: RegistryClient, registry: LocalRegistry, repo: str
) -> None:
    raw, _ = push_image(client, repo, docker=False, tag="v1", marker=uuid.uuid4().hex)
    digest = sha256_digest(raw)
    path = blob_file(registry, digest)
    stored = path.read_bytes()
    assert stored == raw
    path.write_bytes(stored.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(DigestMismatchError, match=f"{repo}@{digest}"):
        client.get_manifest(repo, digest)


# --- transport ---------------------------------------------------------------------------


class _CookieHandler(QuietHandler):
    """Answers everything with 200 and a session cookie; records the Cookie headers it got."""

    cookies_seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).cookies_seen.append(self.headers.get("Cookie"))
        body = b"{}"
        self.send_response(200)
        self.send_header("Set-Cookie", "sid=abc123; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_no_cookies_are_kept() -> None:
    class Handler(_CookieHandler):
        cookies_seen: list[str | None] = []

    with serve_http(Handler) as server:
        # control: a plain session stores the cookie and sends it back
        with requests.Session() as plain:
            plain.get(server_url(server) + "/v2/", timeout=10)
            plain.get(server_url(server) + "/v2/", timeout=10)
        assert len(plain.cookies) == 1
        assert Handler.cookies_seen == [None, "sid=abc123"]

        Handler.cookies_seen.clear()
        with RegistryClient(_host(server)) as c:
            c.ping()
            c.ping()
            c.list_tags("a/b")
            assert len(c._session.cookies) == 0
        assert Handler.cookies_seen == [None, None, None]


@pytest.mark.parametrize(
    ("host", "insecure", "scheme"),
    [
        ("registry.example.org", False, "https"),
        ("registry.example.org:5000", False, "https"),
        ("10.0.0.5:5000", False, "https"),
        ("localhost.example.org", False, "https"),
        ("127.0.0.1.nip.io", False, "https"),
        ("127.0.0.1:5000", False, "http"),
        ("127.0.0.2", False, "http"),
        ("localhost", False, "http"),
        ("localhost:5000", False, "http"),
        ("[::1]:5000", False, "http"),
        ("registry.example.org", True, "http"),
        ("10.0.0.5:5000", True, "http"),
    ],
)
def test_scheme_choice(host: str, insecure: bool, scheme: str) -> None:
    # building a client makes no request; only the base URL is checked
    with RegistryClient(host, insecure=insecure) as c:
        assert c.base_url == f"{scheme}://{host}"
        assert c._session.trust_env is False
