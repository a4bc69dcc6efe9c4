"""Fault injection on the real parts, for tests/test_faults.py.

* :class:`GateProxy`: a byte-for-byte TCP relay in front of the registry (so the Docker
  engine's chunked pushes pass untouched) that can hold one connection when the client sends
  a given request line: before forwarding it ("request") or after the registry took it, its
  answer withheld ("response"). The test then knows exactly where the push stands and which
  process made it (:func:`pid_of_peer`).
* :func:`result_manifests`: the result manifests of a repository as the registry stores them
  (tagged or not), read from its storage folder, not through its API.
* :class:`SandboxStarts`: sandbox container starts from the engine's live event stream.
* :func:`holders_of`: the processes holding a file descriptor under a folder (a running hop
  task holds its locked work folder).
* :func:`leftover_files`: every file under a station's folders besides its keys, data,
  config and audit log.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pht_airflow.protocol import RESULT_ARTIFACT_TYPE, RESULT_CONFIG_MEDIA_TYPE


class GateProxy:
    """A TCP relay on 127.0.0.1 to ``upstream_port``, with one arming gate.

    :meth:`arm` sets a request-line prefix (``b"POST /v2/<repo>/blobs/uploads/"``); the first
    connection whose client sends it is held (``mode="request"``: the bytes are not
    forwarded; ``"response"``: they are forwarded and the registry's answer is withheld).
    :attr:`held` is set with :attr:`held_peer` (the client's port). :meth:`release` closes the
    held connection (the client sees it reset)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._pattern: bytes | None = None
        self._mode = "request"
        self._lock = threading.Lock()
        self.held = threading.Event()
        self.held_peer: int | None = None
        self._release = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(self, pattern: bytes, mode: str = "request") -> None:
        with self._lock:
            self._pattern, self._mode = pattern, mode
            self.held.clear()
            self._release.clear()
            self.held_peer = None

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._stop.set()
        self._release.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _trip(self, seen: bytes) -> bool:
        with self._lock:
            if self._pattern is not None and self._pattern in seen:
                self._pattern = None  # once
                return True
        return False

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()  # the registry is down: the client sees the connection end
            return
        upstream.settimeout(None)
        peer = int(client.getpeername()[1])
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        tail = b""
        answer_withheld = False
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client:
                        seen, tail = tail + data, (tail + data)[-512:]
                        if self._trip(seen):
                            if self._mode == "response":
                                upstream.sendall(data)
                                answer_withheld = True  # held once the registry answers
                                continue
                            self.held_peer = peer
                            self.held.set()
                            self._release.wait()
                            return
                    elif answer_withheld:
                        # The registry answered (it has the whole request): withhold it.
                        self.held_peer = peer
                        self.held.set()
                        self._release.wait()
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()


def pid_of_peer(port: int) -> int:
    """The process whose TCP connection to 127.0.0.1 has local port ``port``."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid and conn.pid != os.getpid():
            return int(conn.pid)
    raise LookupError(f"no process holds a connection from port {port}")


def holders_of(folder: Path) -> set[int]:
    """PIDs with an open file descriptor on ``folder`` or anything below it."""
    prefix = str(folder.resolve()) + "/"
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(prefix):
                        found.add(int(proc.name))
                        break
    return found


def _blob(storage: Path, digest: str) -> bytes:
    hexd = digest.split(":", 1)[1]
    return (storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data").read_bytes()


def result_manifests(storage: Path, repository: str) -> list[str]:
    """Digests of every result manifest the registry stores for ``repository`` (tagged or
    not), read from its storage folder."""
    revisions = storage / "docker/registry/v2/repositories" / repository / "_manifests"
    found = []
    for link in sorted((revisions / "revisions" / "sha256").glob("*/link")):
        digest = link.read_text().strip()
        try:
            doc = json.loads(_blob(storage, digest))
        except (OSError, ValueError):
            continue
        config = doc.get("config") or {}
        if (
            doc.get("artifactType") == RESULT_ARTIFACT_TYPE
            or config.get("mediaType") == RESULT_CONFIG_MEDIA_TYPE
        ):
            found.append(digest)
    return found


class SandboxStarts:
    """Counts sandbox container starts as the engine announces them, from a live event stream
    (the engine keeps only its last 256 events for a ``since`` query, and other tests make
    many). Use as a context manager; :meth:`count` the starts of names with a prefix."""

    def __init__(self, docker_client: Any) -> None:
        self._stream = docker_client.events(
            filters={"type": "container", "event": "start", "label": "org.pht.sandbox"},
            decode=True,
        )
        self._names: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._stream:
                name = (event.get("Actor") or {}).get("Attributes", {}).get("name")
                self._names.append(str(name))

    def count(self, prefix: str, expect: int = 0, within: float = 30.0) -> int:
        """Starts of containers named ``prefix…``; waits up to ``within`` seconds for the
        stream to deliver ``expect`` of them (events arrive asynchronously), never longer."""
        deadline = time.monotonic() + within
        while True:
            found = sum(1 for n in list(self._names) if n.startswith(prefix))
            if found >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def __enter__(self) -> SandboxStarts:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()


#: What a station's root legitimately holds between hops.
STATION_FILES = ("keys", "data", "station.yaml", "audit.jsonl", "audit.jsonl.lock")


def leftover_files(root: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Every file or folder under a station's root besides its keys, data, config and audit
    log (and ``keep``, relative paths): anything a hop left behind, folders included."""
    left = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in STATION_FILES or str(rel) in keep or rel.parts[0].startswith("audit"):
            continue
        if rel.name.startswith(".pht-preflight-"):
            continue  # the pre-flight's cache of passed checks (summaries, no data)
        if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            continue  # listed through its contents
        if path.is_dir() and rel.parts[-1] in ("work", "work-tmpfs"):
            continue  # the (empty) work folder itself
        left.append(str(rel))
    return left


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (as root), unmounted on leaving."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem: write a file there until it is full."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError:
                break
        small = b"\0" * 4096
        while True:
            try:
                out.write(small)
            except OSError:
                break
    return filler


def marked(seed: str, script: str) -> str:
    """``script`` (one that ends by writing ``/pht/output/state.json``, as ANALYSIS does),
    then a marker added to that output table: sha256 of ``seed``, made at run time, so the
    marker is in the result's plaintext only, never in the train image. The secret scan
    looks for it."""
    return (
        script
        + f"""
import hashlib, json
from pathlib import Path
state = json.loads(Path("/pht/output/state.json").read_text())
state["marker"] = hashlib.sha256({seed!r}.encode()).hexdigest()
Path("/pht/output/state.json").write_text(json.dumps(state, sort_keys=True))
"""
    )


def marker_of(seed: str) -> str:
    import hashlib

    return hashlib.sha256(seed.encode()).hexdigest()
