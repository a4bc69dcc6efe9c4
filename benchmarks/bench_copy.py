"""Train copy between projects: cross-repository mounts against a naive pull and push.

Run:  .venv/bin/python benchmarks/bench_copy.py [--size-mb 100] [--repeat 3] [--markdown]

Starts its own ``docker-registry`` on 127.0.0.1 (storage under ``.pht/bench/copy-<pid>``,
deleted at the end), pushes a train the way the protocol lays it out — one image of
``--size-mb`` MiB of random layer bytes, its creator signature, a 1 MiB ``result-0`` with
``subject`` = the train and the station's signature of it — and copies it from
``pht-incoming/<id>`` into a fresh ``station-x/<id>`` repository per run, two ways:

  (a) ``PlainRegistryAdmin.copy_train``: mounts every blob, PUTs the manifests' exact bytes;
  (b) naive: every blob downloaded (``open_blob``, digest-checked) and uploaded again
      (``upload_blob``, streamed), then the same manifests; the best a copy can do without
      mounts, since nothing touches the disk on the client.

Per run it reports the wall time, the HTTP requests sent, the bytes this process sent and
received on its sockets (counted by wrapping ``socket.socket``'s send and receive methods:
request and response bodies and headers alike) and how much the registry's blob storage
grew. Every copy is checked afterwards: same tags, same digests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pht_airflow.central.registry import PlainRegistryAdmin  # noqa: E402
from pht_airflow.dev.localregistry import start_registry  # noqa: E402
from pht_airflow.keys import SigningKey  # noqa: E402
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Manifest, Reference, RegistryClient  # noqa: E402
from pht_airflow.protocol import (  # noqa: E402
    RESULT_ARTIFACT_TYPE,
    RESULT_CONFIG_MEDIA_TYPE,
    RESULT_MEDIA_TYPE,
)
from pht_airflow.signing import sign, signature_tag  # noqa: E402

MiB = 1024 * 1024
BENCH_DIR = ROOT / ".pht" / "bench"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _random(size: int) -> Iterator[bytes]:
    left = size
    while left:
        n = min(left, 4 * MiB)
        yield os.urandom(n)
        left -= n


class SocketBytes:
    """Count the bytes this process sends and receives on its sockets while active.

    Wraps ``socket.socket``'s send and receive methods (urllib3 and http.client use only
    ``sendall``/``send`` and ``recv_into``/``recv``): request and response bodies and
    headers alike, the client's side of the network.
    """

    _METHODS = ("send", "sendall", "recv", "recv_into")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    @property
    def total(self) -> int:
        return self.sent + self.received

    def __enter__(self) -> SocketBytes:
        cls = socket.socket
        self._saved = {name: cls.__dict__.get(name) for name in self._METHODS}
        send, sendall = cls.send, cls.sendall
        recv, recv_into = cls.recv, cls.recv_into
        counter = self

        def c_send(sock: socket.socket, data: Any, *args: Any) -> int:
            n = send(sock, data, *args)
            counter.sent += n
            return n

        def c_sendall(sock: socket.socket, data: Any, *args: Any) -> None:
            sendall(sock, data, *args)
            counter.sent += memoryview(data).nbytes

        def c_recv(sock: socket.socket, *args: Any) -> bytes:
            data = recv(sock, *args)
            counter.received += len(data)
            return data

        def c_recv_into(sock: socket.socket, buffer: Any, *args: Any) -> int:
            n = recv_into(sock, buffer, *args)
            counter.received += n
            return n

        cls.send, cls.sendall = c_send, c_sendall  # type: ignore[method-assign,assignment]
        cls.recv, cls.recv_into = c_recv, c_recv_into  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(socket.socket, name)
            else:
                setattr(socket.socket, name, original)


def push_train(client: RegistryClient, repo: str, size: int) -> dict[str, str]:
    """The train, its signature, result-0 and its signature; return tag -> digest."""
    layers = []
    left = size
    while left:  # 32 MiB layers, as a real image has several
        n = min(left, 32 * MiB)
        layers.append(client.upload_blob(repo, _random(n), media_type=LAYER))
        left -= n
    config = client.upload_bytes(
        repo,
        _canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
            }
        ),
        OCI_CONFIG,
    )
    raw = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [d.to_dict() for d in layers],
        }
    )
    train = Manifest(OCI_MANIFEST, client.put_manifest(repo, "train", raw, OCI_MANIFEST), raw)
    sign(client, Reference(client.registry, repo, digest=train.digest), SigningKey.generate(),
         role="creator")  # fmt: skip
    layer = client.upload_blob(repo, _random(MiB), media_type=RESULT_MEDIA_TYPE)
    rconfig = client.upload_bytes(repo, _canonical({"hop": 0}), RESULT_CONFIG_MEDIA_TYPE)
    rraw = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": RESULT_ARTIFACT_TYPE,
            "config": rconfig.to_dict(),
            "layers": [layer.to_dict()],
            "subject": train.descriptor().to_dict(),
        }
    )
    result = client.put_manifest(repo, "result-0", rraw, OCI_MANIFEST)
    sign(client, Reference(client.registry, repo, digest=result), SigningKey.generate(),
         role="station")  # fmt: skip
    return {
        "train": train.digest,
        signature_tag(train.digest): client.resolve(repo, signature_tag(train.digest)),
        "result-0": result,
        signature_tag(result): client.resolve(repo, signature_tag(result)),
    }


def naive_copy(client: RegistryClient, src: str, dst: str, tags: dict[str, str]) -> None:
    """Pull every blob and push it again, then the manifests (no mounts)."""
    for tag in tags:
        manifest = client.get_manifest(src, tag)
        for blob in [manifest.config, *manifest.layers]:
            if blob is not None:
                client.upload_blob(
                    dst,
                    client.open_blob(src, blob.digest),
                    media_type=blob.media_type,
                    expected_digest=blob.digest,
                )
        client.put_manifest(dst, tag, manifest.raw, manifest.media_type)


@dataclass
class Runs:
    label: str
    seconds: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    growth: list[int] = field(default_factory=list)


def measure(
    runs: Runs,
    client: RegistryClient,
    storage: Callable[[], int],
    copy: Callable[[str], object],
    src: str,
    tags: dict[str, str],
) -> None:
    dst = f"station-x/{uuid.uuid4().hex[:12]}"
    session = client._session  # count requests on the client's own session
    original = session.request
    sent = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return original(*args, **kwargs)

    session.request = counting  # type: ignore[method-assign]
    try:
        stored = storage()
        with SocketBytes() as moved:
            start = time.perf_counter()
            copy(dst)
            runs.seconds.append(time.perf_counter() - start)
        runs.moved.append(moved.total)
        runs.growth.append(storage() - stored)
        runs.requests.append(sent)
    finally:
        session.request = original  # type: ignore[method-assign]
    copied = {tag: client.resolve(dst, tag) for tag in client.list_tags(dst)}
    if copied != tags:
        raise RuntimeError(f"{runs.label}: the copy in {dst} differs from the source")


def _size(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < MiB else f"{n / MiB:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100, help="train layer bytes (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (interleaved)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    work = BENCH_DIR / f"copy-{os.getpid()}"
    registry = start_registry(work / "registry")
    try:
        with RegistryClient(registry.host) as client:
            src = f"pht-incoming/{uuid.uuid4().hex[:12]}"
            tags = push_train(client, src, args.size_mb * MiB)
            admin = PlainRegistryAdmin(client)
            mounts = Runs("(a) `PlainRegistryAdmin.copy_train` (mounts)")
            naive = Runs("(b) naive pull + push of every blob")

            def by_mounts(dst: str) -> object:
                return admin.copy_train(src, dst, tags["train"])

            def by_pull_push(dst: str) -> object:
                naive_copy(client, src, dst, tags)
                return None

            for _ in range(args.repeat):
                measure(mounts, client, registry.storage_bytes, by_mounts, src, tags)
                measure(naive, client, registry.storage_bytes, by_pull_push, src, tags)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    total = args.size_mb * MiB + MiB
    print(
        f"# train copy, {args.size_mb} MiB train + 1 MiB result (+ signatures), "
        f"{args.repeat} runs each, {dt.date.today()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores",
        file=sys.stderr,
    )
    rows = []
    for runs in (mounts, naive):
        rows.append(
            (
                runs.label,
                f"{min(runs.seconds):.2f}",
                f"{statistics.median(runs.seconds):.2f}",
                str(max(runs.requests)),
                _size(statistics.median(runs.moved)),
                f"{statistics.median(runs.moved) / total * 100:.2f} %",
                _size(max(runs.growth)),
            )
        )
    head = (
        "method",
        "best s",
        "median s",
        "HTTP requests",
        "through the client's sockets",
        "of train+result bytes",
        "blob storage growth",
    )
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in rows:
            print("; ".join(f"{h}: {v}" for h, v in zip(head, row, strict=True)))
    ratio = statistics.median(naive.moved) / max(1, statistics.median(mounts.moved))
    print(f"naive / mounts, bytes through the client: {ratio:.0f} x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
