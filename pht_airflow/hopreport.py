"""The wire format of a station's signed report of a failed hop (station and central service).

A hop that fails at a station (a verification check, a person's rejection, the sandbox, the
push) leaves no result in the registry, so without a word from the station the central
service would only learn of it when the hop times out. The station's ``record`` step
therefore sends the failure part of its audit record to the central service, signed with
the station's signing key (ECDSA P-256, SHA-256, DER, base64) over the canonical JSON of
the report without its ``signature`` field.

The central service checks the signature against the station's key in its directory, so
it needs no shared secret with stations, and a report cannot be forged by anyone without
that station's key. A report names the train id and digest, so it cannot be moved to
another train; it carries the time it was made, and the central service ignores a report
made before the hop was last sent (a replayed old report cannot fail a retried hop).

Reports carry what the audit log records about a failure (the check, the error type, a
short message) and never a secret: the messages are the same ones the audit log keeps.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import VerificationError
from .keys import PublicKey, SigningKey
from .spec import canonical_json

log = logging.getLogger(__name__)

VERSION = 1
MAX_MESSAGE = 500
_FIELDS: dict[str, type | tuple[type, ...]] = {
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


def _payload(report: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in report.items() if k != "signature"}).encode()


def make_report(
    *,
    train_id: str,
    train_digest: str | None,
    station: str,
    hop: int | None,
    failure: Mapping[str, Any],
    audit_seq: int | None,
    key: SigningKey,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A signed failure report from the audit log's ``failure`` summary."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    report: dict[str, Any] = {
        "version": VERSION,
        "train_id": train_id,
        "train_digest": train_digest,
        "station": station,
        "hop": hop,
        "check": failure.get("check"),
        "error": failure.get("error"),
        "message": str(failure.get("message") or "")[:MAX_MESSAGE],
        "audit_seq": audit_seq,
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "key_id": key.key_id,
    }
    report["signature"] = base64.b64encode(key.sign(_payload(report))).decode("ascii")
    return report


def check_report(report: Mapping[str, Any], key: PublicKey) -> datetime:
    """Check a report's shape and its signature by ``key``; return when it was made.

    Raises :class:`VerificationError` (check ``failure-report``) naming what is wrong.
    """

    def bad(reason: str) -> VerificationError:
        return VerificationError(reason, check="failure-report", key_id=key.key_id)

    if not isinstance(report, Mapping):
        raise bad(f"the failure report is not a JSON object but {type(report).__name__}")
    unknown = sorted(repr(k)[:40] for k in set(report) - set(_FIELDS) - {"signature"})
    if unknown:
        shown = ", ".join(unknown[:10]) + (", …" if len(unknown) > 10 else "")
        raise bad(f"unknown field(s) in the failure report: {shown}")
    for name, kinds in _FIELDS.items():
        if name not in report:
            raise bad(f"the failure report has no {name!r}")
        value = report[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise bad(f"the failure report's {name!r} has the wrong type")
    if report["version"] != VERSION:
        raise bad(f"failure report version {str(report['version'])[:20]} is not supported")
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
        made = datetime.strptime(report["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise bad("the failure report's time is not an ISO-8601 UTC time") from None
    return made
