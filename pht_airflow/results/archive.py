"""The result archive: a deterministic tar of an output folder, and safe extraction of one.

Implements the plaintext of the layer in PROTOCOL.md "A result": a deterministic tar of the
output folder (sorted names, mtime 0, uid/gid 0, no special files, no links). :func:`plan_tar`
lists what a folder holds and refuses what is not allowed before a byte is written,
:class:`TarStream` produces the archive on demand and :func:`tar_size` gives its exact length.
:func:`safe_extract` reads a tar stream once, front to back, and refuses any member that could
write outside the destination.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UnsafeArchiveError

__all__ = [
    "DEFAULT_MAX_EXTRACT_BYTES",
    "ExtractStats",
    "Progress",
    "TarEntry",
    "TarStream",
    "plan_tar",
    "safe_extract",
    "tar_bytes",
    "tar_size",
]

#: Extraction refuses archives whose files add up to more than this (override per call).
DEFAULT_MAX_EXTRACT_BYTES = 16 * 1024**3

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_READ = 1024 * 1024

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
        # Sort by UTF-8 bytes so the order does not depend on the locale.
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
