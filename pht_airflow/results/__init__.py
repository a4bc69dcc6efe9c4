"""Sealed results: a deterministic tar of the output folder, age-encrypted, as an OCI artifact.

Implements PROTOCOL.md "A result" and "The chain".

Sealing is one pass over the data with memory independent of the result size:
folder → :class:`TarStream` (a deterministic tar produced on demand) → age encryption
(``pyrage.encrypt_io`` in a worker thread) → a bounded queue of ciphertext chunks →
``RegistryClient.upload_blob``, which computes the blob's SHA-256 while it streams.

Opening runs the same way backwards: blob chunks (digest verified while streaming) →
age decryption → a streaming tar reader → files, written into a private staging folder that
is renamed into place only after the whole blob verified, so a failure leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyrage
from pyrage import x25519

from ..errors import (
    ChainError,
    NotFoundError,
    PhtError,
    UnsafeArchiveError,
    VerificationError,
)
from ..keys import AgeIdentity, SigningKey, public_key_from_pem
from ..oci import OCI_MANIFEST, Descriptor, Manifest, Reference, RegistryClient, sha256_digest
from ..protocol import (
    HOP_ANNOTATION,
    RESULT_ARTIFACT_TYPE,
    RESULT_CONFIG_MEDIA_TYPE,
    RESULT_MEDIA_TYPE,
    RESULT_TAG_CLAIM,
    STATION_ANNOTATION,
    result_tag,
)
from ..signing import sign, verify
from ..spec import TrainSpec

#: Extraction refuses archives whose files add up to more than this (override per call).
DEFAULT_MAX_EXTRACT_BYTES = 16 * 1024**3

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_READ = 1024 * 1024
_QUEUE_CHUNK = 1024 * 1024
_QUEUE_DEPTH = 8

Progress = Callable[[int], None]


# --- deterministic tar ------------------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    """One member of a result archive: a folder or a regular file, relative to the root."""

    arcname: str
    path: Path
    is_dir: bool
    size: int
    mode: int
    header: bytes = field(repr=False)


def _sort_key(name: str) -> bytes:
    # Sort by UTF-8 bytes so the order does not depend on the locale.
    return name.encode("utf-8")


def _header(arcname: str, *, is_dir: bool, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(arcname)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX carries UTF-8 names of any length; with mtime 0 and ids 0 it adds no time records.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def plan_tar(root: Path) -> list[TarEntry]:
    """List what a result archive of ``root`` holds, refusing anything not allowed.

    Only folders and regular files are allowed; symbolic links (wherever they point),
    device files, FIFOs and sockets are refused with an error naming the path. Nothing is
    followed, so nothing outside ``root`` can be reached. Modes are normalised to 0755 for
    folders and executable files and 0644 for other files.
    """
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise UnsafeArchiveError(f"cannot read output folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeArchiveError(f"{root} is not a folder")
    entries: list[TarEntry] = []

    def walk(folder: Path, prefix: str) -> None:
        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise UnsafeArchiveError(f"cannot list {prefix or '.'}: {exc.strerror}") from exc
        for name in sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape")):
            rel = f"{prefix}{name}"
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise UnsafeArchiveError(
                    f"{rel.encode('utf-8', 'surrogateescape')!r}: file name is not valid UTF-8"
                ) from None
            path = folder / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeArchiveError(f"{rel}: symbolic links are not allowed in a result")
            if stat.S_ISDIR(st.st_mode):
                entries.append(
                    TarEntry(
                        rel, path, True, 0, 0o755, _header(rel, is_dir=True, size=0, mode=0o755)
                    )
                )
                walk(path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(
                    TarEntry(
                        rel,
                        path,
                        False,
                        st.st_size,
                        mode,
                        _header(rel, is_dir=False, size=st.st_size, mode=mode),
                    )
                )
            else:
                kind = (
                    "FIFO"
                    if stat.S_ISFIFO(st.st_mode)
                    else "socket"
                    if stat.S_ISSOCK(st.st_mode)
                    else "device file"
                )
                raise UnsafeArchiveError(f"{rel}: a {kind} is not allowed in a result")

    walk(root, "")
    return entries


def tar_size(entries: Sequence[TarEntry]) -> int:
    """The exact byte length of the archive :class:`TarStream` produces for ``entries``."""
    total = 0
    for e in entries:
        total += len(e.header)
        if not e.is_dir:
            total += -(-e.size // _BLOCK) * _BLOCK
    total += 2 * _BLOCK
    return -(-total // _RECORD) * _RECORD


class TarStream(io.RawIOBase):
    """A readable stream of the deterministic tar of a planned folder, made on demand.

    The same folder always gives the same bytes: sorted names, mtime 0, uid/gid 0, empty
    owner names, normalised modes, PAX headers, padded to a whole tar record.
    """

    def __init__(self, entries: Sequence[TarEntry], progress: Progress | None = None) -> None:
        super().__init__()
        self._chunks = self._generate(entries)
        self._pending = memoryview(b"")
        self._progress = progress
        self.produced = 0

    def readable(self) -> bool:
        return True

    def _generate(self, entries: Sequence[TarEntry]) -> Iterator[bytes]:
        written = 0
        for e in entries:
            yield e.header
            written += len(e.header)
            if e.is_dir:
                continue
            remaining = e.size
            with open(e.path, "rb") as f:
                while remaining > 0:
                    chunk = f.read(min(_READ, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
                if remaining != 0 or f.read(1):
                    raise UnsafeArchiveError(f"{e.arcname}: file changed size while it was sealed")
            pad = -e.size % _BLOCK
            if pad:
                yield bytes(pad)
            written += e.size + pad
        end = 2 * _BLOCK
        end += -(written + end) % _RECORD
        yield bytes(end)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.produced += n
        if self._progress is not None:
            self._progress(n)
        return n


def tar_bytes(root: Path) -> bytes:
    """The whole deterministic tar of ``root`` in memory (for tests and small folders)."""
    return TarStream(plan_tar(root)).read()


# --- threads between push and pull ------------------------------------------------------


class _IterReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks; remembers the iterator's error."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it = iter(chunks)
        self._pending = memoryview(b"")
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(next(self._it))
            except StopIteration:
                return 0
            except BaseException as exc:
                # pyrage sees only an I/O failure; the caller re-raises the real error.
                self.error = exc
                raise
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _Cancelled(Exception):
    pass


def _pump(
    work: Callable[[io.RawIOBase], None], sources: Sequence[_IterReader] = ()
) -> Iterator[bytes]:
    """Run ``work(writer)`` in a thread and yield what it writes, in chunks of about 1 MiB.

    pyrage's streaming calls push into a writer while HTTP uploads and tar readers pull;
    a bounded queue between them keeps memory constant. Errors in the worker are raised
    here (the real error of a source iterator wins over pyrage's wrapper); closing the
    generator early stops the worker.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_DEPTH)
    cancelled = threading.Event()
    done = object()

    def put(item: object) -> None:
        while not cancelled.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Cancelled

    class _Writer(io.RawIOBase):
        # pyrage writes one bytes object per 64 KiB age chunk: keep them and join once per
        # queue chunk (one copy) rather than growing and copying a bytearray.
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[bytes] = []
            self.size = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.parts.append(data if type(data) is bytes else bytes(data))
            self.size += len(data)
            if self.size >= _QUEUE_CHUNK:
                self.hand_over()
            return len(data)

        def hand_over(self) -> None:
            if self.parts:
                put(self.parts[0] if len(self.parts) == 1 else b"".join(self.parts))
                self.parts = []
                self.size = 0

    def run() -> None:
        writer = _Writer()
        try:
            work(writer)
            writer.hand_over()
            put(done)
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            real = next((s.error for s in sources if s.error is not None), None)
            try:
                put(real or exc)
            except _Cancelled:
                return

    thread = threading.Thread(target=run, name="pht-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        cancelled.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def _recipients(recipients: Sequence[str]) -> list[x25519.Recipient]:
    if not recipients:
        raise PhtError("a result needs at least one recipient")
    parsed = []
    for r in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(r))
        except (pyrage.RecipientError, ValueError) as exc:
            raise PhtError(f"not an age X25519 recipient: {r!r}") from exc
    return parsed


def encrypt_stream(source: io.RawIOBase, recipients: Sequence[str]) -> Iterator[bytes]:
    """Yield the age encryption of ``source`` to ``recipients``, streaming."""
    parsed = _recipients(recipients)
    # pyrage reads 8 KiB at a time; a buffer serves those reads in C and calls the
    # (Python) source once per 1 MiB.
    buffered = io.BufferedReader(source, _READ)

    def work(writer: io.RawIOBase) -> None:
        pyrage.encrypt_io(buffered, writer, parsed)

    return _pump(work)


def decrypt_stream(chunks: Iterable[bytes], identity: AgeIdentity) -> Iterator[bytes]:
    """Yield the plaintext of an age ciphertext given as chunks, streaming.

    Raises :class:`PhtError` when ``identity`` is not a recipient or the ciphertext is
    damaged; an error of the chunk source itself (a digest mismatch) is raised as is.
    """
    reader = _IterReader(chunks)
    buffered = io.BufferedReader(reader, _READ)  # see encrypt_stream

    def work(writer: io.RawIOBase) -> None:
        try:
            pyrage.decrypt_io(buffered, writer, [identity.identity])
        except pyrage.DecryptError as exc:
            if reader.error is not None:
                raise reader.error from None
            text = str(exc).lower()
            if "no matching keys" in text or "no identity matched" in text:
                raise PhtError(
                    f"this age identity ({identity.recipient}) is not a recipient of the result"
                ) from None
            # Damaged ciphertext: read the rest so the blob's digest check can say whether
            # the registry served other bytes than the signed manifest names.
            try:
                while reader.read(_READ):
                    pass
            except Exception:  # noqa: BLE001 - reader.error holds the real one
                if reader.error is not None:
                    raise reader.error from None
                raise
            raise PhtError(f"the result's ciphertext is damaged: {exc}") from None

    return _pump(work, sources=[reader])


# --- safe extraction --------------------------------------------------------------------


@dataclass
class ExtractStats:
    """What :func:`safe_extract` wrote."""

    files: int = 0
    folders: int = 0
    bytes: int = 0


def _safe_relpath(name: str) -> PurePosixPath:
    if not name or name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{name!r}: absolute paths are not allowed in a result")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise UnsafeArchiveError(f"{name!r}: '..' is not allowed in a result path")
    parts = [p for p in path.parts if p != "."]
    if not parts:
        raise UnsafeArchiveError(f"{name!r}: empty member name")
    return PurePosixPath(*parts)


def safe_extract(
    stream: io.RawIOBase | io.BufferedIOBase | Any,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
) -> ExtractStats:
    """Extract a tar stream into the existing folder ``dest``, refusing anything unsafe.

    Refused, with the member's name: absolute paths, ``..``, symbolic and hard links,
    device files and FIFOs, and a total file size over ``max_bytes``. Files are created
    with ``O_EXCL | O_NOFOLLOW`` so nothing already at ``dest`` is followed or overwritten.
    Reads the stream once, front to back.
    """
    stats = ExtractStats()
    dest_fd_root = dest.resolve()
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            rel = _safe_relpath(member.name)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(
                    f"{member.name!r}: links are not allowed in a result (-> {member.linkname!r})"
                )
            if not (member.isdir() or member.isfile()):
                raise UnsafeArchiveError(
                    f"{member.name!r}: special files are not allowed in a result"
                )
            target = dest_fd_root.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                stats.folders += 1
                continue
            stats.bytes += member.size
            if stats.bytes > max_bytes:
                raise UnsafeArchiveError(
                    f"{member.name!r}: the result holds more than the extraction limit "
                    f"of {max_bytes} bytes"
                )
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(
                target,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o755 if member.mode & 0o111 else 0o644,
            )
            src = archive.extractfile(member)
            assert src is not None  # a regular file member always has data
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_READ):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            stats.files += 1
    return stats


# --- result artifacts -------------------------------------------------------------------


@dataclass(frozen=True)
class SealedResult:
    """A result artifact as pushed: where it is and what it says."""

    reference: Reference
    digest: str
    layer: Descriptor
    config: dict[str, Any]

    @property
    def recipients(self) -> list[str]:
        return list(self.config["recipients"])


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(
    client: RegistryClient,
    train: Reference,
    train_manifest: Manifest,
    spec: TrainSpec,
    *,
    hop: int,
    output_dir: Path,
    key: SigningKey,
    previous: str | None,
    recipients: Sequence[str] | None = None,
    progress: Progress | None = None,
    created: str | None = None,
) -> SealedResult:
    """Seal ``output_dir`` as the result of ``hop`` and push it beside the train, signed.

    ``train`` must be pinned to the train's digest and name the repository the result goes
    to (the train's repository in this station's project). ``recipients`` defaults to the
    protocol's rule (:meth:`TrainSpec.recipients_for_hop`). The archive is planned (and
    refused if unsafe) before a single byte is uploaded.
    """
    if train.digest is None or train.digest != train_manifest.digest:
        raise PhtError("seal needs the train reference pinned to the train manifest's digest")
    if not 0 <= hop < len(spec.route):
        raise PhtError(f"hop {hop} is not on the route (0..{len(spec.route) - 1})")
    station = spec.route[hop].station
    recipients = list(recipients if recipients is not None else spec.recipients_for_hop(hop))
    entries = plan_tar(output_dir)
    plaintext_bytes = tar_size(entries)
    ciphertext = encrypt_stream(TarStream(entries, progress=progress), recipients)
    layer = client.upload_blob(train.repository, ciphertext, media_type=RESULT_MEDIA_TYPE)
    config = {
        "train": {"id": spec.id, "digest": train.digest},
        "hop": hop,
        "station": station,
        "previous": previous,
        "created": created or _now(),
        "recipients": recipients,
        "plaintext_bytes": plaintext_bytes,
    }
    config_desc = client.upload_bytes(
        train.repository, _canonical(config), RESULT_CONFIG_MEDIA_TYPE
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": RESULT_ARTIFACT_TYPE,
        "config": config_desc.to_dict(),
        "layers": [layer.to_dict()],
        "subject": train_manifest.descriptor().to_dict(),
        "annotations": {
            HOP_ANNOTATION: str(hop),
            STATION_ANNOTATION: station,
            "org.opencontainers.image.created": config["created"],
        },
    }
    raw = _canonical(manifest)
    # Pushed by digest, signed, and only then tagged: the registry announces the tag push,
    # and by then the signature is there for whoever the announcement wakes (the router).
    digest = client.put_manifest(train.repository, sha256_digest(raw), raw, OCI_MANIFEST)
    ref = Reference(train.registry, train.repository, digest=digest)
    sign(client, ref, key, role="station", signer=station)
    client.put_manifest(train.repository, result_tag(hop), raw, OCI_MANIFEST)
    return SealedResult(reference=ref, digest=digest, layer=layer, config=config)


# --- the chain --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultCandidate:
    """A manifest tagged ``result-<k>…`` in a train's repository, not yet trusted."""

    tag: str
    tag_hop: int
    manifest: Manifest
    config: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class AcceptedResult:
    """A result that passed every check of PROTOCOL.md "The chain"."""

    hop: int
    station: str
    reference: Reference
    digest: str
    layer: Descriptor
    config: dict[str, Any]
    signer_key_id: str

    @property
    def recipients(self) -> list[str]:
        return list(self.config.get("recipients", []))


def find_results(client: RegistryClient, train: Reference) -> list[ResultCandidate]:
    """Collect every ``result-<k>`` artifact in the train's repository (unverified)."""
    try:
        tags = client.list_tags(train.repository)
    except NotFoundError:
        return []
    found = []
    for tag in sorted(tags):
        m = RESULT_TAG_CLAIM.match(tag)
        if not m:
            continue
        manifest = client.get_manifest(train.repository, tag)
        config: dict[str, Any] | None = None
        problem = None
        try:
            if manifest.config is None:
                raise ValueError("manifest has no config")
            data = json.loads(
                client.get_blob(train.repository, manifest.config.digest, max_bytes=1 << 20)
            )
            if not isinstance(data, dict):
                raise ValueError("config is not a JSON object")
            config = data
        except (ValueError, PhtError) as exc:
            problem = f"unreadable result config: {exc}"
        found.append(ResultCandidate(tag, int(m.group(1)), manifest, config, problem))
    return found


def check_result(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    candidate: ResultCandidate,
    hop: int,
    previous: str | None,
    *,
    chained: bool,
) -> AcceptedResult:
    """Check one candidate for ``hop``; raise :class:`ChainError` naming the broken rule."""
    station = spec.route[hop].station
    m = candidate.manifest

    def fail(reason: str, key_id: str | None = None) -> ChainError:
        return ChainError(reason, hop=hop, station=station, digest=m.digest, key_id=key_id)

    if candidate.problem or candidate.config is None:
        raise fail(candidate.problem or "result has no config")
    if m.artifact_type != RESULT_ARTIFACT_TYPE or len(m.layers) != 1:
        raise fail(f"{candidate.tag} is not a PHT result artifact")
    if m.layers[0].media_type != RESULT_MEDIA_TYPE:
        raise fail(f"result layer has media type {m.layers[0].media_type}")
    if m.subject is None or m.subject.digest != train.digest:
        subject = m.subject.digest if m.subject else "none"
        raise fail(f"result is for another train: its subject is {subject}, not {train.digest}")
    cfg = candidate.config
    named_value = cfg.get("train")
    named: dict[str, Any] = named_value if isinstance(named_value, dict) else {}
    if named.get("id") != spec.id or named.get("digest") != train.digest:
        raise fail(
            f"result config names another train ({named.get('id')}@{named.get('digest')}), "
            f"not {spec.id}@{train.digest}"
        )
    if cfg.get("hop") != hop:
        raise fail(f"result config is for hop {cfg.get('hop')!r}, not hop {hop}")
    if cfg.get("station") != station:
        raise fail(f"result config names station {cfg.get('station')!r}, not {station!r}")
    route_key = public_key_from_pem(spec.route[hop].key)
    try:
        signers = verify(
            client, Reference(train.registry, train.repository, digest=m.digest), [route_key]
        )
    except VerificationError as exc:
        raise fail(
            f"result is not signed by {station}'s key from the train spec: {exc.reason}",
            key_id=route_key.key_id,
        ) from exc
    if chained and cfg.get("previous") != previous:
        raise fail(
            f"result's previous link is {cfg.get('previous')!r}, but the accepted result of "
            f"hop {hop - 1} is {previous!r}"
        )
    if not chained and cfg.get("previous") is not None:
        raise fail("a parallel result must not name a previous result")
    return AcceptedResult(
        hop=hop,
        station=station,
        reference=Reference(train.registry, train.repository, digest=m.digest),
        digest=m.digest,
        layer=m.layers[0],
        config=cfg,
        signer_key_id=signers[0].key_id,
    )


def accept_hop(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    candidates: Sequence[ResultCandidate],
    hop: int,
    previous: str | None,
) -> AcceptedResult | None:
    """The one result of ``hop`` that passes, None if there is none at all.

    Raises :class:`ChainError` if candidates exist and none passes (with each one's reason)
    or if more than one passes.
    """
    station = spec.route[hop].station
    mine = [c for c in candidates if c.tag_hop == hop]
    if not mine:
        return None
    chained = spec.mode == "sequential"
    accepted: list[AcceptedResult] = []
    failures: list[ChainError] = []
    for c in mine:
        try:
            accepted.append(check_result(client, train, spec, c, hop, previous, chained=chained))
        except ChainError as exc:
            failures.append(exc)
    if len(accepted) > 1:
        raise ChainError(
            f"{len(accepted)} valid results for one hop: " + ", ".join(a.digest for a in accepted),
            hop=hop,
            station=station,
            digest=train.digest,
        )
    if accepted:
        return accepted[0]
    if len(failures) == 1:
        raise failures[0]
    raise ChainError(
        f"none of {len(failures)} results passes",
        hop=hop,
        station=station,
        digest=train.digest,
        details=[str(f) for f in failures],
    )


def verify_chain(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    *,
    upto: int | None = None,
    candidates: Sequence[ResultCandidate] | None = None,
) -> list[AcceptedResult]:
    """Verify the results of hops ``0..upto-1`` (default: the whole route), in hop order.

    Sequential trains: every hop in range must have exactly one passing result, linked to
    the previous one. Parallel trains: each present result is checked on its own; missing
    hops are left out (a station may have failed). Raises :class:`ChainError` naming the
    hop, the station and the reason.
    """
    if train.digest is None:
        raise PhtError("verify_chain needs the train reference pinned to its digest")
    upto = len(spec.route) if upto is None else upto
    if candidates is None:
        candidates = find_results(client, train)
    accepted: list[AcceptedResult] = []
    previous: str | None = None
    for hop in range(upto):
        result = accept_hop(client, train, spec, candidates, hop, previous)
        if result is None:
            if spec.mode == "sequential":
                raise ChainError(
                    "no result for this hop",
                    hop=hop,
                    station=spec.route[hop].station,
                    digest=train.digest,
                )
            continue
        accepted.append(result)
        previous = result.digest
    return accepted


# --- opening ----------------------------------------------------------------------------


def open_result(
    client: RegistryClient,
    result: AcceptedResult | SealedResult,
    identity: AgeIdentity,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
) -> ExtractStats:
    """Download, verify, decrypt and safely extract a result into ``dest`` (must not exist).

    Everything is written into a private staging folder beside ``dest`` and renamed into
    place only after the blob's digest verified and the archive extracted cleanly; on any
    failure the staging folder is removed and ``dest`` is not created.
    """
    if dest.exists():
        raise PhtError(f"{dest} already exists; choose a new folder for the result")
    declared = int(result.config.get("plaintext_bytes", 0) or 0)
    if declared > max_bytes:
        raise UnsafeArchiveError(
            f"the result declares {declared} bytes, over the extraction limit of {max_bytes}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        chunks = client.open_blob(result.reference.repository, result.layer.digest)

        def counted() -> Iterator[bytes]:
            for c in chunks:
                if progress is not None:
                    progress(len(c))
                yield c

        plaintext = _IterReader(decrypt_stream(counted(), identity))
        try:
            stats = safe_extract(io.BufferedReader(plaintext, _READ), staging, max_bytes=max_bytes)
            # Drain: the digest is checked when the blob's last chunk has been read.
            while plaintext.read(_READ):
                pass
        except tarfile.TarError as exc:
            raise UnsafeArchiveError(f"the result is not a valid tar archive: {exc}") from exc
        os.chmod(staging, 0o755)  # noqa: S103 - the opened result, for its reader
        os.rename(staging, dest)
        return stats
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --- the researcher's view ----------------------------------------------------------------


@dataclass(frozen=True)
class HopStatus:
    """One hop of a train as ``pht train status`` shows it."""

    hop: int
    station: str
    state: str  # "accepted", "missing", "rejected", "unchecked"
    digest: str | None = None
    signer_key_id: str | None = None
    reason: str | None = None


def chain_status(client: RegistryClient, train: Reference, spec: TrainSpec) -> list[HopStatus]:
    """Check each hop in order without raising: what exists, who signed it, where it breaks."""
    candidates = find_results(client, train)
    rows: list[HopStatus] = []
    previous: str | None = None
    broken = False
    for hop, entry in enumerate(spec.route):
        if broken:
            rows.append(HopStatus(hop, entry.station, "unchecked", reason="chain broken earlier"))
            continue
        try:
            result = accept_hop(client, train, spec, candidates, hop, previous)
        except ChainError as exc:
            rows.append(HopStatus(hop, entry.station, "rejected", reason=exc.reason))
            broken = spec.mode == "sequential"
            continue
        if result is None:
            rows.append(HopStatus(hop, entry.station, "missing"))
            broken = spec.mode == "sequential"
            continue
        rows.append(HopStatus(hop, entry.station, "accepted", result.digest, result.signer_key_id))
        previous = result.digest
    return rows


def fetch_results(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    identity: AgeIdentity,
    out_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
    on_result: Callable[[AcceptedResult], None] | None = None,
) -> list[tuple[AcceptedResult, Path]]:
    """Verify the chain and open every result addressed to ``identity`` into ``out_dir``.

    Writes ``out_dir/<hop>-<station>/…``. All or nothing: results are opened into a private
    staging folder that becomes ``out_dir`` only when every one verified and decrypted.
    The caller verifies the train's own signatures first (``train`` must be pinned).
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PhtError(f"{out_dir} is not empty; fetch into a new or empty folder")
    accepted = verify_chain(client, train, spec)
    mine = [r for r in accepted if identity.recipient in r.recipients]
    if not mine:
        raise PhtError(
            f"no verified result of train {spec.id} is addressed to {identity.recipient} "
            f"({len(accepted)} verified result(s) in total)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        placed = []
        for result in mine:
            if on_result is not None:
                on_result(result)
            name = f"{result.hop}-{result.station}"
            open_result(
                client, result, identity, staging / name, max_bytes=max_bytes, progress=progress
            )
            placed.append((result, out_dir / name))
        if out_dir.exists():
            out_dir.rmdir()
        os.chmod(staging, 0o755)  # noqa: S103 - the opened result, for its reader
        os.rename(staging, out_dir)
        return placed
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
