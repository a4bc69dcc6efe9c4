"""The local registry's notifications: what an endpoint is told, as the registry sends it.

A real ``docker-registry`` notifies a small HTTP listener on 127.0.0.1. One endpoint gets
every event; one made with :meth:`Endpoint.manifest_pushes` (what ``make demo`` uses) gets
only manifest pushes: no blob uploads, no mounts, no pulls.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.dev.localregistry import Endpoint, start_registry, write_private
from pht_airflow.errors import ConfigError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, RegistryClient

pytestmark = [pytest.mark.registry]


@pytest.fixture()
def listener() -> Iterator[tuple[str, dict[str, list[tuple[str, str, str | None]]]]]:
    """An HTTP listener recording (action, media type, tag) per event, by request path."""
    seen: dict[str, list[tuple[str, str, str | None]]] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            events = [
                (e["action"], e["target"].get("mediaType"), e["target"].get("tag"))
                for e in json.loads(body)["events"]
            ]
            with lock:
                seen.setdefault(self.path, []).extend(events)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_manifest_pushes_endpoint_hears_no_blobs_mounts_or_pulls(
    tmp_path: Path, listener: tuple[str, dict[str, list[tuple[str, str, str | None]]]]
) -> None:
    url, seen = listener
    endpoints = [
        Endpoint("everything", f"{url}/all"),
        Endpoint.manifest_pushes("pushes", f"{url}/pushes", {"Authorization": ["Bearer x"]}),
    ]
    registry = start_registry(tmp_path / "registry", endpoints=endpoints)
    try:
        with RegistryClient(registry.host) as client:
            config = client.upload_bytes("p/a", b"{}", OCI_CONFIG)
            raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                              "config": config.to_dict(), "layers": []}).encode()  # fmt: skip
            client.put_manifest("p/a", "one", raw, OCI_MANIFEST)
            client.mount_blob("p/b", config.digest, "p/a")
            client.put_manifest("p/b", "two", raw, OCI_MANIFEST)
            client.get_manifest("p/b", "two")
            client.get_blob("p/b", config.digest)
            # A sentinel push: each endpoint is notified in order, so once both have heard
            # of it, every earlier event has arrived (or was never going to be sent).
            client.put_manifest("p/b", "sentinel", raw, OCI_MANIFEST)
            last = ("push", OCI_MANIFEST, "sentinel")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(last in list(seen.get(path, [])) for path in ("/all", "/pushes")):
                    break
                time.sleep(0.05)
    finally:
        registry.stop()
    actions = sorted({(action, media) for action, media, _ in seen["/all"]})
    assert actions == [
        ("mount", "application/octet-stream"),
        ("pull", "application/octet-stream"),
        ("pull", OCI_MANIFEST),
        ("push", "application/octet-stream"),
        ("push", OCI_MANIFEST),
    ]
    assert seen["/pushes"] == [
        ("push", OCI_MANIFEST, "one"),
        ("push", OCI_MANIFEST, "two"),
        ("push", OCI_MANIFEST, "sentinel"),
    ]


def test_the_config_with_the_webhook_secret_is_mode_0600(tmp_path: Path) -> None:
    """The registry's config holds the endpoints' Authorization headers: owner-only, even
    over an existing world-readable file and under a permissive umask."""
    root = tmp_path / "registry"
    root.mkdir()
    (root / "config.yml").write_text("old")
    (root / "config.yml").chmod(0o644)
    secret = "Bearer webhook-secret-" + os.urandom(8).hex()
    old_umask = os.umask(0)
    try:
        registry = start_registry(
            root,
            endpoints=[
                Endpoint.manifest_pushes("c", "http://127.0.0.1:9/", {"Authorization": [secret]})
            ],  # fmt: skip
        )
    finally:
        os.umask(old_umask)
    try:
        config = root / "config.yml"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert secret in config.read_text()  # the file the registry was started with
    finally:
        registry.stop()


def test_a_link_in_place_of_the_config_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    link = tmp_path / "config.yml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="a link is refused"):
        write_private(link, "secret")
    assert target.read_text() == "untouched"
