"""The audit log writer and reader, :class:`AuditLog`: append under ``flock``, read back."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ...errors import AuditLogError
from .files import (
    DIR_MODE,
    FILE_MODE,
    PathLike,
    _flock,
    _fsync_dir,
    _Head,
    _lines,
    _read_head,
    _read_tail,
    _write_all,
    _write_head,
    head_path,
)
from .records import ZERO_HASH, _encode, _Malformed, _parse, _prepare, _utc_now, line_hash
from .verify import _verify


class AuditLog:
    """The station's audit log at ``path`` (created with mode 0640, and its folder, if missing).

    Safe for several processes appending at once (``flock``) and for crashes (one
    ``O_APPEND`` write per line, ``fsync``, the head file renamed into place).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.head_path = head_path(self.path)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def _error(self, message: str, line: int | None = None) -> AuditLogError:
        return AuditLogError(message, path=str(self.path), line=line)

    def _open_for_append(self) -> int:
        folder = self.path.parent
        if not folder.is_dir():
            os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return os.open(self.path, flags)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            _fsync_dir(folder)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` (which must have an ``event``) and return it as written.

        Raises :class:`ValueError` for a secret-looking value or a reserved field,
        :class:`TypeError` for a value that is not JSON, and :class:`AuditLogError` when the
        log's tail is damaged (truncated last line, head file that does not match): nothing
        is appended to a log that may have been tampered with.
        """
        fields = _prepare(record)
        fd = self._open_for_append()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            head = _read_head(self.head_path, self.path)
            if size == 0:
                if head is None:
                    _write_head(self.head_path, -1, ZERO_HASH)
                elif (head.seq, head.sha256) != (-1, ZERO_HASH):
                    raise self._error(
                        f"the log is empty but its head file records seq {head.seq}: "
                        "its lines were removed; refusing to append"
                    )
                seq, prev = 0, ZERO_HASH
            else:
                seq, prev = self._next_link(fd, size, head)
            line = _encode({**fields, "seq": seq, "time": _utc_now(), "prev": prev})
            _write_all(fd, line + b"\n")
            os.fsync(fd)
            _write_head(self.head_path, seq, line_hash(line))
        finally:
            os.close(fd)  # also releases the lock
        written: dict[str, Any] = json.loads(line)
        return written

    def _next_link(self, fd: int, size: int, head: _Head | None) -> tuple[int, str]:
        """(seq, prev) for the next record, after checking the last line against the head."""
        raw, terminated = _read_tail(fd, size)
        if not terminated:
            raise self._error(
                "the last line is truncated (no newline at the end): an append was interrupted "
                "or the file was cut; refusing to append (check it with `pht audit verify`)"
            )
        try:
            last = _parse(raw)
        except _Malformed as exc:
            raise self._error(f"the last line {exc.reason}; refusing to append") from exc
        sha = line_hash(raw)
        if head is None:
            raise self._error(
                f"the head file {self.head_path.name} is missing for a non-empty log: it was "
                "deleted, or the log was copied without it; refusing to append (check the log "
                "with `pht audit verify`, then restore it or call AuditLog.reseal_head())"
            )
        current = (head.seq, head.sha256) == (last["seq"], sha)
        behind = (head.seq, head.sha256) == (last["seq"] - 1, last["prev"])  # crash window
        if not (current or behind):
            raise self._error(
                f"the head file {self.head_path.name} does not match the last line "
                f"(seq {last['seq']}): the last line was edited or lines were removed; "
                "refusing to append (check it with `pht audit verify`)"
            )
        return last["seq"] + 1, sha

    def reseal_head(self) -> int:
        """Rewrite the head file for the log as it is, after checking its hash chain.

        For an operator who restored a log without its head file, after reviewing it. Raises
        :class:`AuditLogError` if the chain is broken. Returns the number of records.
        """
        fd = self._open_for_append()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            report = _verify(self.path, lock=False, use_head=False)
            _write_head(self.head_path, report.last_seq, report.last_hash)
        finally:
            os.close(fd)
        return report.records

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every record, in order (none if the log does not exist yet).

        Checks each line is a well-formed record (raising :class:`AuditLogError` with its
        line number), not the hash chain: that is :func:`verify_log`.
        """
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return
        with f:
            with _flock(f.fileno(), fcntl.LOCK_SH):
                size = os.fstat(f.fileno()).st_size  # lines up to here are complete
            for number, raw, terminated in _lines(f, size):
                if not terminated:
                    raise self._error(
                        f"line {number} is truncated (no newline at the end)", line=number
                    )
                try:
                    rec = _parse(raw)
                except _Malformed as exc:
                    raise self._error(f"line {number} {exc.reason}", line=number) from exc
                yield rec

    def last(self) -> dict[str, Any] | None:
        """The last record, read from the end of the file; ``None`` if there is none."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return None
        with f:
            fd = f.fileno()
            with _flock(fd, fcntl.LOCK_SH):
                size = os.fstat(fd).st_size
                if size == 0:
                    return None
                raw, terminated = _read_tail(fd, size)
        if not terminated:
            raise self._error("the last line is truncated (no newline at the end)")
        try:
            return _parse(raw)
        except _Malformed as exc:
            raise self._error(f"the last line {exc.reason}") from exc

    def completed(self, train_digest: str, station: str) -> bool:
        """True if a hop of ``train_digest`` at ``station`` was recorded with outcome success."""
        return any(
            rec.get("event") == "hop"
            and rec.get("outcome") == "success"
            and rec.get("train_digest") == train_digest
            and rec.get("station") == station
            for rec in self.entries()
        )
