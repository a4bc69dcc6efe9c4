"""Audit records: the line format, the checks on what goes in, parsing, and the hop record.

:func:`line_hash` chains the lines; ``_encode`` writes one line's exact bytes (sorted keys,
compact separators, UTF-8); ``_prepare`` and ``_check_value`` refuse reserved fields,
non-JSON values and anything that looks like key material; ``_parse`` reads one line back
into a record or raises ``_Malformed``; :func:`hop_record` builds the record of one hop.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

ZERO_HASH = "0" * 64
"""The ``prev`` of the first record."""

RESERVED_FIELDS = ("seq", "time", "prev")
"""Fields the log sets itself; a caller's record must not carry them."""

Outcome = Literal["success", "failure", "rejected", "withheld"]
#: ``rejected``: a person at the station refused to run the train; ``withheld``: the train ran
#: and a person refused to release its output. Both carry ``decision`` (who and why).
OUTCOMES: tuple[str, ...] = ("success", "failure", "rejected", "withheld")

_HEX64 = re.compile(r"[0-9a-f]{64}")


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of one line's bytes (without its newline): the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


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


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity, which AuditLog never writes
        raise ValueError(f"{text[:20]} is out of range")
    return value


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise _Malformed("is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed("is not UTF-8") from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise _Malformed("is not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise _Malformed("is not JSON") from exc
    if not isinstance(obj, dict):
        raise _Malformed("is not a JSON object")
    try:  # JSON reads lone surrogates ("\ud800") that AuditLog could never have written
        _encode(obj)
    except ValueError:
        raise _Malformed("holds text that is not valid Unicode") from None
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
    data: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
    released_by: str | None = None,
    disclosure: Mapping[str, Any] | None = None,
    train_name: str | None = None,
) -> dict[str, Any]:
    """The record of one hop, for :meth:`AuditLog.append` (``event`` = ``"hop"``).

    ``train_id`` and ``train_digest`` may be ``None`` when the hop failed before they were
    known (an unresolvable reference, an unreadable spec). ``signers`` are the verified
    signatures, each at least ``{"key_id": …, "role": …}``; ``checks_passed`` the checks in the
    order they passed, ``failed_check`` the one that failed; ``failure`` a short summary
    (``error``, ``message``); ``approved_by`` the Airflow user who approved; ``limits`` the
    sandbox's resource limits; ``recipients`` the age recipients the result was sealed to;
    ``data`` what the train saw at ``/pht/data`` (``digest``: ``sha256:`` over the sorted
    listing of its files' digests, sizes and names; ``files``, ``bytes``, ``kind``, ``tables``).
    ``decision`` is a person's refusal (``{"by": user, "reason": text}``) of a ``rejected`` or
    ``withheld`` hop; ``released_by`` who released the output; ``disclosure`` the output checks'
    verdicts (file names, verdicts and reasons; never values).
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
        "train_name": train_name,
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
        "data": dict(data) if data is not None else None,
        "decision": dict(decision) if decision is not None else None,
        "released_by": released_by,
        "disclosure": dict(disclosure) if disclosure is not None else None,
    }
    _check_value(record, "record")
    return record
