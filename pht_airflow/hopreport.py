"""The wire format of a station's signed report of a hop's final outcome (station and central).

A hop that ends without a result at a station leaves nothing in the registry, so without a
word from the station the central service would only learn of it when the hop times out.
The station's ``record`` step therefore sends the outcome to the central service, signed
with the station's signing key (ECDSA P-256, SHA-256, DER, base64) over the canonical JSON
of the report without its ``signature`` field. A report has one of three outcomes
(:data:`OUTCOMES`):

``failed``
    the train's fault (a verification check, the sandbox, the output) or a final failure;
    ``check``, ``error`` and ``message`` say what the audit log says.
``rejected``
    a person at the station refused to run the verified train; ``by`` names them and
    ``reason`` is what they gave.
``withheld``
    the train ran, and a person at the station refused to release its output; ``by`` and
    ``reason`` likewise.

A rejected or withheld report must name the train's digest and the hop: it is a decision
about a verified train, never about a reference a station could not verify.

Versions. Version 2 (what :func:`make_report` makes) carries ``outcome``, ``reason`` and
``by``; version 1 (stations before outcomes) has none of the three and reads as
``failed``. :func:`check_report` accepts both, so stations can be upgraded after the
central service; a version 1 report with an outcome field is refused (unknown field), and
a version 2 report without one is refused (missing field). The signature covers the
version, so a version 2 report cannot be passed off as version 1.

The central service checks the signature against the station's key in its directory, so
it needs no shared secret with stations, and a report cannot be forged by anyone without
that station's key. A report names the train id and digest, so it cannot be moved to
another train; it carries the time it was made, and the central service ignores a report
made before the hop was last sent (a replayed old report cannot end a retried hop).

Reports carry what the audit log records (the check, the error type, a short message, who
decided and why) and never a secret. Every text field is bounded (:data:`MAX_MESSAGE`,
:data:`MAX_REASON`, :data:`MAX_BY`): :func:`make_report` cuts, :func:`check_report`
refuses. Text is carried as the station wrote it; whoever shows it to a person strips
control characters (:func:`pht_airflow.text.safe_text`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

from .errors import PhtError, VerificationError
from .keys import PublicKey, SigningKey
from .spec import canonical_json

log = logging.getLogger(__name__)

VERSION = 2
"""The version :func:`make_report` writes."""
VERSIONS = (1, 2)
"""The versions :func:`check_report` reads (1: no outcome, read as ``failed``)."""

Outcome = Literal["failed", "rejected", "withheld"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("failed", "rejected", "withheld")
DECISIONS: Final[tuple[Outcome, ...]] = ("rejected", "withheld")
"""Outcomes a person decided: they need ``reason``, ``by``, ``train_digest`` and ``hop``."""

MAX_MESSAGE = 500
MAX_REASON = 1000
MAX_BY = 200
MAX_NAME = 200
"""Bound on the other text fields (train id, station, check, error, time, key id)."""

_V1_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "train_id": str,
    "train_digest": (str, type(None)),
    "station": str,
    "hop": (int, type(None)),
    "check": (str, type(None)),
    "error": (str, type(None)),
    "message": str,
    "audit_seq": (int, type(None)),
    "time": str,
    "key_id": str,
}
_V2_FIELDS: dict[str, type | tuple[type, ...]] = {
    **_V1_FIELDS,
    "outcome": str,
    "reason": (str, type(None)),
    "by": (str, type(None)),
}
_FIELDS = {1: _V1_FIELDS, 2: _V2_FIELDS}
_LIMITS = {"message": MAX_MESSAGE, "reason": MAX_REASON, "by": MAX_BY}
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class ReportError(PhtError, ValueError):
    """:func:`make_report` was asked for a report the central service would refuse (a
    decision without who, why, the digest or the hop; an unknown outcome). A
    :class:`PhtError`, so a station's ``except PhtError`` around reporting catches it."""


@dataclass(frozen=True)
class HopReport:
    """A checked report (:func:`read_report`); a version 1 report reads as ``failed``."""

    version: int
    train_id: str
    train_digest: str | None
    station: str
    hop: int | None
    outcome: Outcome
    reason: str | None
    by: str | None
    check: str | None
    error: str | None
    message: str
    audit_seq: int | None
    made: datetime
    key_id: str


def _payload(report: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in report.items() if k != "signature"}).encode()


def _decision_problem(report: Mapping[str, Any]) -> str | None:
    """What a report's outcome lacks, or None: a person's decision names who, why, the
    train's digest and the hop."""
    outcome = report.get("outcome", "failed")
    if outcome not in OUTCOMES:
        return f"the report's outcome must be one of {', '.join(OUTCOMES)}"
    if outcome not in DECISIONS:
        return None
    for name, what in (("by", "who decided"), ("reason", "the reason given")):
        value = report.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"a {outcome} report must say {what} ({name!r})"
    if report.get("train_digest") is None or report.get("hop") is None:
        return f"a {outcome} report must name the verified train's digest and hop"
    return None


def make_report(
    *,
    train_id: str,
    train_digest: str | None,
    station: str,
    hop: int | None,
    audit_seq: int | None,
    key: SigningKey,
    failure: Mapping[str, Any] | None = None,
    outcome: Outcome = "failed",
    reason: str | None = None,
    by: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A signed (version 2) report of a hop's final outcome.

    ``failure`` is the audit log's failure summary (``check``, ``error``, ``message``);
    ``outcome`` is ``"failed"`` (the default), ``"rejected"`` (a person refused to run the
    train) or ``"withheld"`` (a person refused to release its output). A rejected or
    withheld report needs ``reason`` and ``by`` (non-empty), ``train_digest`` and ``hop``;
    otherwise :class:`ReportError` says which is missing. Text is cut to its bound.
    """
    failure = failure or {}
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    report: dict[str, Any] = {
        "version": VERSION,
        "train_id": train_id,
        "train_digest": train_digest,
        "station": station,
        "hop": hop,
        "outcome": outcome,
        "reason": None if reason is None else str(reason)[:MAX_REASON],
        "by": None if by is None else str(by)[:MAX_BY],
        "check": failure.get("check"),
        "error": failure.get("error"),
        "message": str(failure.get("message") or "")[:MAX_MESSAGE],
        "audit_seq": audit_seq,
        "time": moment.strftime(_TIME),
        "key_id": key.key_id,
    }
    problem = _decision_problem(report)
    if problem:
        raise ReportError(problem)
    report["signature"] = base64.b64encode(key.sign(_payload(report))).decode("ascii")
    return report


NO_REASON = "no reason given"
UNNAMED = "an unnamed person at the station"


def report_from_record(
    record: Mapping[str, Any],
    *,
    train_id: str,
    station: str,
    key: SigningKey,
    now: datetime | None = None,
) -> dict[str, Any]:
    """:func:`make_report` from a station's audit record.

    The record's ``outcome`` ``rejected`` or ``withheld`` makes that report, with the
    record's ``decision`` (``{"by", "reason"}``): a blank ``by`` or ``reason`` is sent as
    :data:`UNNAMED` / :data:`NO_REASON` rather than leaving the train to time out. Any
    other outcome is ``failed`` with the record's ``failure`` (check, error, message).
    ``train_id`` is the record's, or the one the station read from the reference.
    """
    outcome = record.get("outcome")
    common: dict[str, Any] = {
        "train_id": train_id,
        "train_digest": record.get("train_digest"),
        "station": station,
        "hop": record.get("hop"),
        "audit_seq": record.get("seq"),
        "key": key,
        "now": now,
    }
    if outcome in DECISIONS:
        decision = record.get("decision") or {}
        by, reason = decision.get("by"), decision.get("reason")
        return make_report(
            **common,
            outcome=cast(Outcome, outcome),
            by=str(by) if by and str(by).strip() else UNNAMED,
            reason=str(reason) if reason and str(reason).strip() else NO_REASON,
            failure=record.get("failure") or None,
        )
    return make_report(**common, failure=record.get("failure") or {})


def read_report(report: Mapping[str, Any], key: PublicKey) -> HopReport:
    """Check a report's shape and its signature by ``key``; return what it says.

    Raises :class:`VerificationError` (check ``failure-report``) naming what is wrong.
    """

    def bad(reason: str) -> VerificationError:
        return VerificationError(reason, check="failure-report", key_id=key.key_id)

    if not isinstance(report, Mapping):
        raise bad(f"the failure report is not a JSON object but {type(report).__name__}")
    version = report.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in VERSIONS:
        shown = str(version)[:20] if version is not None else "(none)"
        raise bad(
            f"failure report version {shown} is not supported (this central service reads "
            f"versions {', '.join(map(str, VERSIONS))})"
        )
    fields = _FIELDS[version]
    unknown = sorted(repr(k)[:40] for k in set(report) - set(fields) - {"signature"})
    if unknown:
        shown = ", ".join(unknown[:10]) + (", …" if len(unknown) > 10 else "")
        raise bad(f"unknown field(s) in the version {version} failure report: {shown}")
    for name, kinds in fields.items():
        if name not in report:
            raise bad(f"the failure report has no {name!r}")
        value = report[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise bad(f"the failure report's {name!r} has the wrong type")
        if isinstance(value, str) and len(value) > _LIMITS.get(name, MAX_NAME):
            raise bad(
                f"the failure report's {name!r} is longer than "
                f"{_LIMITS.get(name, MAX_NAME)} characters"
            )
    problem = _decision_problem(report)
    if problem:
        raise bad(problem)
    if report["key_id"] != key.key_id:
        raise bad(f"the report is signed by key {report['key_id'][:80]!r}, not the station's key")
    try:
        payload = _payload(report)
    except ValueError:  # a lone surrogate ("\ud800" in the JSON) cannot be UTF-8
        raise bad("the failure report holds text that is not valid Unicode") from None
    try:
        signature = base64.b64decode(str(report.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise bad("the failure report's signature is not base64") from None
    if not signature or not key.verify(signature, payload):
        raise bad("the failure report's signature does not verify with the station's key")
    try:
        made = datetime.strptime(report["time"], _TIME)
    except ValueError:
        raise bad("the failure report's time is not an ISO-8601 UTC time") from None
    return HopReport(
        version=version,
        train_id=report["train_id"],
        train_digest=report["train_digest"],
        station=report["station"],
        hop=report["hop"],
        outcome=cast(Outcome, report.get("outcome", "failed")),
        reason=report.get("reason"),
        by=report.get("by"),
        check=report["check"],
        error=report["error"],
        message=report["message"],
        audit_seq=report["audit_seq"],
        made=made,
        key_id=report["key_id"],
    )


def check_report(report: Mapping[str, Any], key: PublicKey) -> datetime:
    """Check a report's shape and its signature by ``key``; return when it was made.

    Raises :class:`VerificationError` (check ``failure-report``) naming what is wrong.
    """
    return read_report(report, key).made
