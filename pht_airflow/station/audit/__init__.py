"""The station's audit log: append-only, hash-chained JSON lines, with a tail hash beside it.

Format. One JSON object per line, UTF-8, keys sorted, compact separators (``,`` and ``:``),
each line ended by ``\\n``. Every record carries, besides the caller's fields:

``seq``    0, 1, 2, … (the line number minus one)
``time``   when it was appended, UTC, RFC 3339 with ``Z`` (``2025-01-31T12:00:00.123456Z``)
``prev``   hex SHA-256 of the previous line's exact bytes without its newline; 64 zeros on
           the first line
``event``  what happened (``"hop"`` for a station's hop, see :func:`hop_record`)

Editing any byte of line *n* breaks line *n+1*'s ``prev``; removing, inserting or reordering
lines breaks ``seq`` and ``prev``. The last line has no successor, so a sidecar file
``<log>.head`` holds ``{"seq":S,"sha256":H}``: the seq and the hash of the last line. It is
written before the first line (``seq`` -1, 64 zeros) and rewritten (temporary file, fsync,
rename) after every append, under the same exclusive ``flock`` as the append. A crash between
the append and the head update leaves the head exactly one record behind, which is accepted
(and repaired by the next append); anything else (an edited last line, removed last lines,
lines added by hand) is reported by :func:`verify_log`. :meth:`AuditLog.append` refuses to
append when the head does not match, so an edit cannot be laundered by the next record.

This makes tampering *evident*, not impossible: someone who can write the log can also
rewrite the whole chain and its head. Ship copies (or the head hash) off the machine for that.

Secrets never go in: there is no parameter for key material, and any string that looks like
a private key (``PRIVATE KEY``, ``AGE-SECRET-KEY``) is refused with :class:`ValueError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ...errors import AuditLogError

ZERO_HASH = "0" * 64
"""The ``prev`` of the first record."""

RESERVED_FIELDS = ("seq", "time", "prev")
"""Fields the log sets itself; a caller's record must not carry them."""

FILE_MODE = 0o640
DIR_MODE = 0o750
HEAD_SUFFIX = ".head"

Outcome = Literal["success", "failure"]
OUTCOMES: tuple[str, ...] = ("success", "failure")

_TAIL_BLOCK = 8192
_HEAD_MAX_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")

PathLike = str | os.PathLike[str]


# --- encoding ----------------------------------------------------------------------------


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of one line's bytes (without its newline): the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


def head_path(path: PathLike) -> Path:
    """The sidecar file that holds the last line's seq and hash: ``<path>.head``."""
    p = Path(path)
    return p.with_name(p.name + HEAD_SUFFIX)


def _encode(obj: Any) -> bytes:
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _looks_secret(text: str) -> bool:
    # PEM headers are upper case; age identities are bech32, which may be either case.
    return "PRIVATE KEY" in text or "AGE-SECRET-KEY" in text.upper()


def _check_value(value: Any, where: str) -> None:
    """Refuse secret-looking strings and anything that is not plain JSON (never echoing it)."""
    if isinstance(value, str):
        if _looks_secret(value):
            raise ValueError(
                f"refusing to write {where} to the audit log: it looks like key material"
            )
    elif value is None or isinstance(value, bool | int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is not a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key of type {type(key).__name__}, not str")
            if _looks_secret(key):
                raise ValueError(
                    f"refusing to write a key of {where} to the audit log: "
                    "it looks like key material"
                )
            _check_value(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(value).__name__}, not a JSON value")


def _prepare(record: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise TypeError(f"an audit record is a mapping, not a {type(record).__name__}")
    reserved = sorted(k for k in RESERVED_FIELDS if k in record)
    if reserved:
        raise ValueError(
            f"the audit log sets {', '.join(reserved)} itself; remove it from the record"
        )
    event = record.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("an audit record needs an 'event' (a non-empty string, e.g. 'hop')")
    _check_value(record, "record")
    return dict(record)


class _Malformed(Exception):
    """A line is not a well-formed record; ``reason`` completes "line N …"."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise _Malformed("is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed("is not UTF-8") from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _Malformed("is not JSON") from exc
    if not isinstance(obj, dict):
        raise _Malformed("is not a JSON object")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise _Malformed("has no valid seq (a non-negative integer)")
    prev = obj.get("prev")
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise _Malformed("has no valid prev (64 lower-case hex digits)")
    if not isinstance(obj.get("time"), str):
        raise _Malformed("has no time")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise _Malformed("has no event")
    return obj


# --- files -------------------------------------------------------------------------------


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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _lines_were(n: int) -> str:
    return "1 line was" if n == 1 else f"{n} lines were"


# --- the log -----------------------------------------------------------------------------


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


def hop_record(
    *,
    train_id: str | None,
    train_digest: str | None,
    station: str,
    outcome: Outcome,
    hop: int | None = None,
    reference: str | None = None,
    run_id: str | None = None,
    signers: Sequence[Mapping[str, Any]] = (),
    checks_passed: Sequence[str] = (),
    failed_check: str | None = None,
    failure: Mapping[str, Any] | None = None,
    approved_by: str | None = None,
    dataset: str | None = None,
    limits: Mapping[str, Any] | None = None,
    exit_code: int | None = None,
    duration_seconds: float | None = None,
    result_digest: str | None = None,
    recipients: Sequence[str] = (),
) -> dict[str, Any]:
    """The record of one hop, for :meth:`AuditLog.append` (``event`` = ``"hop"``).

    ``train_id`` and ``train_digest`` may be ``None`` when the hop failed before they were
    known (an unresolvable reference, an unreadable spec). ``signers`` are the verified
    signatures, each at least ``{"key_id": …, "role": …}``; ``checks_passed`` the checks in the
    order they passed, ``failed_check`` the one that failed; ``failure`` a short summary
    (``error``, ``message``); ``approved_by`` the Airflow user who approved; ``limits`` the
    sandbox's resource limits; ``recipients`` the age recipients the result was sealed to.
    Every key is always present (``None``/empty when unknown), so records are easy to query.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if outcome == "success" and failed_check is not None:
        raise ValueError("a successful hop has no failed_check")
    if not station:
        raise ValueError("station is required")
    signer_list: list[dict[str, Any]] = []
    for i, signer in enumerate(signers):
        if not isinstance(signer, Mapping) or "key_id" not in signer or "role" not in signer:
            raise ValueError(f"signers[{i}] needs a key_id and a role")
        signer_list.append(dict(signer))
    record: dict[str, Any] = {
        "event": "hop",
        "station": station,
        "outcome": outcome,
        "train_id": train_id,
        "train_digest": train_digest,
        "hop": hop,
        "reference": reference,
        "run_id": run_id,
        "signers": signer_list,
        "checks_passed": list(checks_passed),
        "failed_check": failed_check,
        "failure": dict(failure) if failure is not None else None,
        "approved_by": approved_by,
        "dataset": dataset,
        "limits": dict(limits) if limits is not None else None,
        "exit_code": exit_code,
        "duration_seconds": duration_seconds,
        "result_digest": result_digest,
        "recipients": list(recipients),
    }
    _check_value(record, "record")
    return record


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    records: int
    last_seq: int
    last_hash: str
    head: Literal["matches", "behind", "missing", "unchecked"]


def _link_problem(number: int, seq: int, prev: str, prev_seq: int, prev_hash: str) -> str | None:
    """What is wrong with line ``number``'s seq and prev, or ``None``."""
    expected = prev_seq + 1
    prev_ok = prev == prev_hash
    seq_ok = seq == expected
    if prev_ok and seq_ok:
        return None
    if number == 1:
        if not seq_ok:
            return (
                f"line 1 has seq {seq} where 0 was expected: "
                "the first lines of the log were removed or reordered"
            )
        return "line 1: its prev is not 64 zeros, as the first record's must be: it was edited"
    if prev_ok:
        return (
            f"line {number} has seq {seq} but follows seq {prev_seq} on line {number - 1} "
            f"(expected {expected}): line {number} was edited or forged"
        )
    if seq_ok:
        return (
            f"line {number}: its prev does not match the hash of line {number - 1}: "
            f"line {number - 1} was edited, or a line before line {number} was removed "
            "or reordered"
        )
    mismatch = (
        f"line {number} has seq {seq} where {expected} was expected, and its prev does not "
        f"match the hash of line {number - 1}"
    )
    if seq > expected:
        gone = _lines_were(seq - expected)
        return f"{mismatch}: {gone} removed before line {number}, or lines were reordered"
    return f"{mismatch}: lines were reordered, or a line was inserted before line {number}"


def _verify(path: PathLike, *, lock: bool = True, use_head: bool = True) -> _Report:
    log = Path(path)
    hp = head_path(log)

    def error(message: str, line: int | None = None) -> AuditLogError:
        return AuditLogError(message, path=str(log), line=line)

    try:
        f = open(log, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError as exc:
        raise error("no such audit log") from exc
    except OSError as exc:
        raise error(f"cannot read the audit log: {exc.strerror or exc}") from exc
    with f:
        fd = f.fileno()
        # The size and the head are read together under a shared lock, so they describe the
        # same moment even while a station appends.
        with _flock(fd, fcntl.LOCK_SH) if lock else contextlib.nullcontext():
            size = os.fstat(fd).st_size
            head = _read_head(hp, log) if use_head else None
        prev_seq, prev_hash, last_prev = -1, ZERO_HASH, ZERO_HASH
        head_line_hash = ZERO_HASH if head is not None and head.seq == -1 else None
        records = 0
        for number, raw, terminated in _lines(f, size):
            records = number
            if not terminated:
                raise error(
                    f"line {number} is truncated (no newline at the end): an append was "
                    "interrupted or the file was cut",
                    number,
                )
            try:
                rec = _parse(raw)
            except _Malformed as exc:
                raise error(f"line {number} {exc.reason}", number) from exc
            problem = _link_problem(number, rec["seq"], rec["prev"], prev_seq, prev_hash)
            if problem:
                raise error(problem, number)
            if _encode(rec) != raw:
                raise error(
                    f"line {number} is not in the form AuditLog writes (sorted keys, compact "
                    "separators, UTF-8): it was edited",
                    number,
                )
            prev_seq, prev_hash, last_prev = rec["seq"], line_hash(raw), rec["prev"]
            if head is not None and prev_seq == head.seq:
                head_line_hash = prev_hash

    if not use_head:
        return _Report(records, prev_seq, prev_hash, "unchecked")
    if head is None:
        return _Report(records, prev_seq, prev_hash, "missing")
    name = hp.name
    if (head.seq, head.sha256) == (prev_seq, prev_hash):
        return _Report(records, prev_seq, prev_hash, "matches")
    if records and (head.seq, head.sha256) == (prev_seq - 1, last_prev):
        return _Report(records, prev_seq, prev_hash, "behind")
    if head.seq > prev_seq:
        gone = _lines_were(head.seq - prev_seq)
        if not records:
            raise error(
                f"the head file {name} records seq {head.seq} but the log is empty: {gone} removed"
            )
        raise error(
            f"the head file {name} records seq {head.seq} but the log ends with seq {prev_seq} "
            f"on line {records}: the last {gone} removed",
            records,
        )
    if head.seq == prev_seq:
        raise error(
            f"line {records} (the last line) was edited: its hash does not match the head "
            f"file {name}",
            records,
        )
    if head_line_hash == head.sha256:
        first = head.seq + 2
        raise error(
            f"lines {first}..{records} come after the last line the head file {name} records "
            f"(line {first - 1}): they were added without updating it, not by AuditLog",
            first,
        )
    raise error(
        f"the head file {name} records seq {head.seq} but no line with that seq has its hash: "
        "the log was rewritten"
    )


def verify_log(path: PathLike) -> int:
    """Check the whole log; return the number of records.

    Raises :class:`AuditLogError` naming the first bad line: not JSON, a ``seq`` out of
    order, a ``prev`` that does not match the previous line, a truncated last line, or (when
    ``<path>.head`` exists) a last line or tail that does not match the head file.
    """
    return _verify(path).records


def audit_verify_main(path: str) -> tuple[bool, str]:
    """``pht audit verify PATH``: (ok, one line for the person at the terminal)."""
    try:
        report = _verify(path)
    except AuditLogError as exc:
        return False, " ".join(str(exc).split("\n"))
    except OSError as exc:
        return False, f"{path}: cannot read the audit log: {exc.strerror or exc}"
    head = {
        "matches": "the head file matches the last line",
        "behind": "the head file is one record behind (an interrupted append; "
        "the next append updates it)",
        "missing": f"no head file {head_path(path).name}, so an edited last line or removed "
        "last lines cannot be detected",
        "unchecked": "head file not checked",
    }[report.head]
    return True, f"{path}: {_plural(report.records, 'record')}, hash chain intact; {head}"
