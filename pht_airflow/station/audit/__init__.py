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

Modules, each importing only those before it: ``records`` (the line format, parsing,
:func:`hop_record`), ``files`` (locking, reading lines and the tail, the head file), ``verify``
(the chain walk, :func:`verify_log`) and ``log`` (:class:`AuditLog`).
"""

from __future__ import annotations

from .files import DIR_MODE, FILE_MODE, HEAD_SUFFIX, PathLike, head_path
from .log import AuditLog
from .records import OUTCOMES, RESERVED_FIELDS, ZERO_HASH, Outcome, hop_record, line_hash
from .verify import audit_verify_main, verify_log

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "HEAD_SUFFIX",
    "OUTCOMES",
    "RESERVED_FIELDS",
    "ZERO_HASH",
    "AuditLog",
    "Outcome",
    "PathLike",
    "audit_verify_main",
    "head_path",
    "hop_record",
    "line_hash",
    "verify_log",
]
