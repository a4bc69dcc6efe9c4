"""The audit log's files: locking, crash-safe writes, reading lines and the tail, the head file.

The head file ``<log>.head`` holds the last line's seq and hash (``_Head``); it is read with
``_read_head`` and replaced atomically (temporary file, fsync, rename) by ``_write_head``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import AuditLogError
from .records import _HEX64, _encode

FILE_MODE = 0o640
DIR_MODE = 0o750
HEAD_SUFFIX = ".head"

_TAIL_BLOCK = 8192
_HEAD_MAX_BYTES = 4096

PathLike = str | os.PathLike[str]


def head_path(path: PathLike) -> Path:
    """The sidecar file that holds the last line's seq and hash: ``<path>.head``."""
    p = Path(path)
    return p.with_name(p.name + HEAD_SUFFIX)


@contextlib.contextmanager
def _flock(fd: int, operation: int) -> Iterator[None]:
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    # One os.write for the whole line; loop only if the kernel reports a short write.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("short write to the audit log")
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_tail(fd: int, size: int) -> tuple[bytes, bool]:
    """The last line of a non-empty file (without its newline) and whether it had one.

    Reads backwards from the end in blocks, so the cost does not grow with the file.
    """
    terminated = os.pread(fd, 1, size - 1) == b"\n"
    pos = size - 1 if terminated else size
    chunks: list[bytes] = []
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        block = os.pread(fd, pos - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            chunks.append(block[cut + 1 :])
            break
        chunks.append(block)
        pos = start
    return b"".join(reversed(chunks)), terminated


def _lines(f: BinaryIO, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based number, bytes without newline, had a newline) for the first ``size`` bytes."""
    remaining = size
    number = 0
    while remaining > 0:
        raw = f.readline(remaining)
        if not raw:
            return
        remaining -= len(raw)
        number += 1
        if raw.endswith(b"\n"):
            yield number, raw[:-1], True
        else:
            yield number, raw, False


@dataclass(frozen=True)
class _Head:
    seq: int
    sha256: str


def _read_head(path: Path, log: Path) -> _Head | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_HEAD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    problem = f"the head file {path.name} is not valid"
    if len(data) > _HEAD_MAX_BYTES:
        raise AuditLogError(f"{problem} (too large)", path=str(log))
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise AuditLogError(f"{problem} (not JSON)", path=str(log)) from None
    except ValueError as exc:
        raise AuditLogError(f"{problem} (not JSON)", path=str(log)) from exc
    if not isinstance(obj, dict):
        raise AuditLogError(f"{problem} (not a JSON object)", path=str(log))
    seq, sha = obj.get("seq"), obj.get("sha256")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < -1:
        raise AuditLogError(f"{problem} (no valid seq)", path=str(log))
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise AuditLogError(f"{problem} (no valid sha256)", path=str(log))
    return _Head(seq, sha)


def _write_head(path: Path, seq: int, sha256: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        _write_all(fd, _encode({"seq": seq, "sha256": sha256}) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
