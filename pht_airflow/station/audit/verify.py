"""Verifying an audit log: the whole hash chain, line by line, and the tail against the head file.

``_verify`` is the walk (it names the first bad line, and says how the head file relates to
the last line); :func:`verify_log` and :func:`audit_verify_main` are its two faces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import AuditLogError
from .files import PathLike, _flock, _lines, _read_head, head_path
from .records import ZERO_HASH, _encode, _Malformed, _parse, line_hash


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _lines_were(n: int) -> str:
    return "1 line was" if n == 1 else f"{n} lines were"


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
