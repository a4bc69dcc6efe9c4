"""Start and stop a local CNCF distribution registry (Debian ``docker-registry``).

Used by the test fixtures, the benchmarks and the demo. The registry always binds to
127.0.0.1 on a free port, keeps its storage in a folder the caller owns, has deletes
enabled, and is stopped by PID. Notifications (webhooks) to local endpoints can be
configured for the routing tests and the demo.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from ..errors import ConfigError, RegistryError

REGISTRY_BINARY = "docker-registry"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BLOB_MEDIA_TYPE = "application/octet-stream"  # the target media type of blob events


@dataclass
class Endpoint:
    """A notification endpoint: the registry POSTs event envelopes to ``url``."""

    name: str
    url: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    #: Actions the registry does not announce to this endpoint (e.g. ``pull``, ``mount``).
    ignore_actions: tuple[str, ...] = ()
    #: Target media types it does not announce (blob events carry
    #: ``application/octet-stream``).
    ignore_media_types: tuple[str, ...] = ()
    #: How long the registry waits for the endpoint's answer before it counts a failure.
    timeout: str = "3s"

    @classmethod
    def manifest_pushes(
        cls, name: str, url: str, headers: dict[str, list[str]], timeout: str = "3s"
    ) -> Endpoint:
        """An endpoint told only of manifest pushes and deletes: no pulls, no blob events,
        no mounts (about nine in ten of a route's notifications, which the registry would
        otherwise deliver one at a time before the pushes that matter)."""
        return cls(
            name,
            url,
            headers,
            ignore_actions=("pull", "mount"),
            ignore_media_types=(BLOB_MEDIA_TYPE,),
            timeout=timeout,
        )


@dataclass
class LocalRegistry:
    """A running ``docker-registry`` process. Use :func:`start_registry` to make one."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the registry part of references to this registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def storage_bytes(self) -> int:
        """Total size of every blob file in the registry's storage (for copy measurements)."""
        blobs = self.storage / "docker" / "registry" / "v2" / "blobs"
        return sum(p.stat().st_size for p in blobs.rglob("data") if p.is_file())

    def stop(self) -> None:
        """Stop the registry by PID; wait for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _endpoint_config(endpoint: Endpoint) -> dict[str, object]:
    config: dict[str, object] = {
        "name": endpoint.name,
        "url": endpoint.url,
        "headers": endpoint.headers,
        "timeout": endpoint.timeout,
        "threshold": 5,
        "backoff": "1s",
    }
    if endpoint.ignore_actions or endpoint.ignore_media_types:
        config["ignore"] = {
            "actions": list(endpoint.ignore_actions),
            "mediatypes": list(endpoint.ignore_media_types),
        }
    return config


def registry_config(
    root: Path,
    port: int,
    endpoints: Sequence[Endpoint] = (),
    debug_port: int | None = None,
    htpasswd: Path | None = None,
) -> dict[str, object]:
    """The registry's YAML config as a dict: filesystem storage under ``root``, deletes on;
    with ``htpasswd`` (a bcrypt htpasswd file), every request needs basic auth."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "pht-local", "path": str(htpasswd)}}
    if debug_port is not None:
        config["http"]["debug"] = {"addr": f"127.0.0.1:{debug_port}"}  # type: ignore[index]
    if endpoints:
        config["notifications"] = {
            "events": {"includereferences": True},
            "endpoints": [_endpoint_config(e) for e in endpoints],
        }
    return config


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600, whatever the umask).

    The registry's config holds each notification endpoint's headers, and so the webhook
    secret (``Authorization``). The file is created 0600 and an existing one is made 0600
    before a byte is written; a link at ``path`` is refused (``O_NOFOLLOW``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror} (a link is refused)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(fd, 0o600)
        out.write(text)


def start_registry(
    root: Path,
    *,
    port: int | None = None,
    endpoints: Sequence[Endpoint] = (),
    timeout: float = 20,
    htpasswd: Path | None = None,
) -> LocalRegistry:
    """Start ``docker-registry`` on 127.0.0.1 with storage under ``root``; wait until it answers
    (with ``htpasswd``, it asks every client for basic auth)."""
    binary = shutil.which(REGISTRY_BINARY) or (
        "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None
    )
    if binary is None:
        raise ConfigError(
            "docker-registry is not installed; run scripts/bootstrap.sh "
            "(or apt-get install docker-registry)"
        )
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config_path = root / "config.yml"
    config = registry_config(root, port, endpoints, htpasswd=htpasswd)
    write_private(config_path, yaml.safe_dump(config))
    log_path = root / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    registry = LocalRegistry(root=root, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RegistryError(
                f"docker-registry exited at start (code {process.returncode}): {tail}"
            )
        try:
            answer = requests.get(f"{registry.url}/v2/", timeout=1).status_code
            if answer == 200 or (htpasswd is not None and answer == 401):
                return registry
        except requests.RequestException:
            pass
        time.sleep(0.1)
    registry.stop()
    raise RegistryError(f"docker-registry did not answer on {registry.url} within {timeout:.0f} s")
