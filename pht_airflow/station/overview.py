"""What the station dashboard shows: the station as a whole, as plain data (no Airflow, no HTML).

:func:`overview` reads the station's own files only: the trains seen (the audit log's ``hop``
records, newest first, at most ``limit``), the audit log's chain status
(:func:`~pht_airflow.station.audit.verify_log`), the trust store (key ids, named after their
key files), the data sets (names and kinds: no paths, connections or queries) and the
policy. The last self-test is not in the station's files (the Airflow edge reads it from the
``pht_station_selftest`` runs) and is passed in.

Every string that came from outside (a train, the registry, an Airflow user name, the audit
log itself) goes through :func:`~pht_airflow.text.safe_text` here, so a page or a JSON client
shows no control or format character as such; the page still escapes HTML.

Hop records are read field by field with defaults, so records written before a field existed
still show. Fields read (see :func:`~pht_airflow.station.audit.hop_record`): ``time``,
``run_id``, ``train_id``, ``train_digest``, ``hop``, ``outcome``, ``signers`` (the creator is
the ``role: creator`` signer, named from the trust store), ``approved_by``, ``failure``
(``error``, ``message``), ``decision`` (``by``, ``reason``: who refused a ``rejected`` or
``withheld`` hop and why), ``released_by``, ``result_digest``, ``recipients``, ``dataset``,
and when present ``train_name`` and ``recipient_names`` (age recipient -> party name).

:func:`release_review` checks and cleans the release review dict (files, verdicts, bounded
table previews with flagged cells) that :func:`pht_airflow.station.release.review` returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import AuditLogError, PhtError
from ..keys import PublicKey
from ..text import safe_text
from .audit import AuditLog, verify_log
from .config import StationConfig

#: The most trains listed (the newest hop records).
DEFAULT_LIMIT = 200
#: Bounds of a release review's table preview as shown (rows, columns, characters a cell).
PREVIEW_ROWS = 50
PREVIEW_COLUMNS = 30
CELL_CHARS = 80
#: The most files a release review lists.
REVIEW_FILES = 200
VERDICTS = ("pass", "review", "block")


def _text(value: Any, limit: int = 200) -> str | None:
    return None if value is None else safe_text(value, limit=limit)


def key_name(key: PublicKey) -> str | None:
    """A trust store key's name: its file name without ``.pub``/``.pem`` (``alice.pub`` ->
    ``alice``); None for a key given as PEM text in the config."""
    name = Path(key.source).name
    for suffix in (".pub", ".pem"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return safe_text(name[: -len(suffix)], limit=80)
    return None  # PEM text in the config (its source is "config.yaml:line")


def _names(config: StationConfig) -> dict[str, str]:
    """key id -> name for every trust store key that has one (and the station's own)."""
    names: dict[str, str] = {}
    for key in (*config.trust.creators, *config.trust.approvers):
        name = key_name(key)
        if name:
            names.setdefault(key.key_id, name)
    names.setdefault(config.public_key.key_id, config.station_id)
    return names


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _party(key_id: Any, names: Mapping[str, str]) -> dict[str, str | None]:
    kid = _text(key_id, 80) or ""
    return {"key_id": kid, "name": names.get(kid)}


def _train(record: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    signers = _list(record.get("signers"))
    creators = [
        _party(s.get("key_id"), names)
        for s in signers
        if isinstance(s, Mapping) and s.get("role") == "creator"
    ]
    approvers = [
        _party(s.get("key_id"), names)
        for s in signers
        if isinstance(s, Mapping) and s.get("role") == "approver"
    ]
    failure = record.get("failure") if isinstance(record.get("failure"), Mapping) else None
    raw_decision = record.get("decision")
    decision: Mapping[str, Any] = raw_decision if isinstance(raw_decision, Mapping) else {}
    recipient_names = record.get("recipient_names")
    if not isinstance(recipient_names, Mapping):
        recipient_names = {}
    recipients = _list(record.get("recipients"))
    hop = record.get("hop")
    return {
        "time": _text(record.get("time"), 40),
        "run_id": _text(record.get("run_id"), 120),
        "train_id": _text(record.get("train_id"), 80),
        "train_name": _text(record.get("train_name") or record.get("name"), 120),
        "train_digest": _text(record.get("train_digest"), 80),
        "hop": hop if isinstance(hop, int) and not isinstance(hop, bool) else None,
        "outcome": _text(record.get("outcome"), 40),
        "creators": creators,
        "approvers": approvers,
        "approved_by": _text(record.get("approved_by"), 120),
        # A person's refusal: ``decision`` {by, reason} (``rejected``: not run; ``withheld``:
        # run, output not released).
        "rejected_by": _text(decision.get("by"), 120),
        "reason": _text(decision.get("reason"), 500),
        "released_by": _text(record.get("released_by"), 120),
        "failure": (
            {
                "error": _text(failure.get("error"), 80),
                "message": _text(failure.get("message"), 500),
            }
            if failure
            else None
        ),
        "dataset": _text(record.get("dataset"), 80),
        "result_digest": _text(record.get("result_digest"), 80),
        "recipients": [
            {
                "recipient": _text(r, 100),
                "name": _text(recipient_names.get(r), 80) if isinstance(r, str) else None,
            }
            for r in recipients[:50]
        ],
    }


def trains_seen(config: StationConfig, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """The newest ``limit`` hop records of this station, newest first, cleaned for display.

    Raises :class:`AuditLogError` when a line cannot be read (the chain status says more).
    """
    names = _names(config)
    newest: deque[Mapping[str, Any]] = deque(maxlen=max(1, limit))
    for record in AuditLog(config.audit_log).entries():
        if record.get("event") == "hop" and record.get("station") in (None, config.station_id):
            newest.append(record)
    return [_train(r, names) for r in reversed(newest)]


def audit_status(path: Path) -> dict[str, Any]:
    """``{"ok", "records", "message"}``: the hash chain checked from the first line."""
    if not path.exists():
        return {"ok": True, "records": 0, "message": "no audit log yet (no hop has run)"}
    try:
        records = verify_log(path)
    except AuditLogError as exc:
        message = str(exc).removeprefix(f"{path}: ")  # the page names no host path
        return {"ok": False, "records": None, "message": safe_text(message, limit=500)}
    except OSError as exc:
        reason = safe_text(exc.strerror or type(exc).__name__, limit=200)
        return {"ok": False, "records": None, "message": f"cannot read the audit log: {reason}"}
    return {"ok": True, "records": records, "message": f"{records} record(s), hash chain intact"}


def trust_store(config: StationConfig) -> dict[str, Any]:
    """The keys this station trusts (key id and name), and how many approvals it wants."""

    def keys(items: Iterable[PublicKey]) -> list[dict[str, str | None]]:
        return [{"key_id": k.key_id, "name": key_name(k)} for k in items]

    return {
        "creators": keys(config.trust.creators),
        "approvers": keys(config.trust.approvers),
        "required_approvals": config.trust.required_approvals,
        "station_key": {"key_id": config.public_key.key_id, "name": config.station_id},
    }


def datasets(config: StationConfig) -> list[dict[str, Any]]:
    """Each data set's name, kind, tables and file formats: no path, connection or query."""
    return [
        {
            "name": safe_text(ds.name, limit=80),
            "kind": ds.kind,
            "tables": [safe_text(t, limit=80) for t in ds.tables()],
            "formats": list(ds.formats) if not ds.mounted_as_is else [],
        }
        for ds in config.datasets.values()
    ]


def overview(
    config: StationConfig,
    *,
    self_test: Mapping[str, Any] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Everything the dashboard's station page shows, as JSON-ready data.

    :param self_test: the last self-test as the Airflow edge found it (``state``, ``when``,
        ``checks``: ``{name: state}``), or None if it never ran.
    """
    chain = audit_status(config.audit_log)
    try:
        trains = trains_seen(config, limit)
        trains_error = None
    except (AuditLogError, OSError) as exc:
        trains, trains_error = [], safe_text(str(exc), limit=500)
    return {
        "station": config.station_id,
        "trains": trains,
        "trains_error": trains_error,
        "audit": chain,
        "trust": trust_store(config),
        "datasets": datasets(config),
        "policy": {
            "require_approval": config.policy.require_approval,
            "require_release_approval": config.policy.require_release_approval,
            "min_cell_count": config.policy.min_cell_count,
        },
        "self_test": _self_test(self_test),
    }


def _self_test(found: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not found:
        return None
    raw = found.get("checks")
    checks: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return {
        "state": _text(found.get("state"), 40),
        "when": _text(found.get("when"), 40),
        "run_id": _text(found.get("run_id"), 120),
        "checks": {safe_text(k, limit=40): _text(v, 40) for k, v in list(checks.items())[:20]},
    }


class ReviewError(PhtError):
    """A release review dict is not of the expected shape (a bug in its producer)."""


def _cell(value: Any) -> str:
    return "" if value is None else safe_text(value, limit=CELL_CHARS)


def _preview(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ReviewError(f"{where}.preview is not a mapping")
    columns = raw.get("columns") or []
    rows = raw.get("rows") or []
    flagged = raw.get("flagged") or []
    if not isinstance(columns, list) or not isinstance(rows, list) or not isinstance(flagged, list):
        raise ReviewError(f"{where}.preview: columns, rows and flagged must be lists")
    shown_rows = [
        [_cell(v) for v in (row[:PREVIEW_COLUMNS] if isinstance(row, list) else [row])]
        for row in rows[:PREVIEW_ROWS]
    ]
    marks: set[tuple[int, int]] = set()
    for item in flagged:
        if (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in item)
        ):
            marks.add((item[0], item[1]))
        else:
            raise ReviewError(f"{where}.preview.flagged holds {safe_text(item, limit=40)!r}")
    return {
        "columns": [_cell(c) for c in columns[:PREVIEW_COLUMNS]],
        "rows": [
            [{"value": v, "flagged": (r, c) in marks} for c, v in enumerate(row)]
            for r, row in enumerate(shown_rows)
        ],
        "flagged_cells": len(marks),
        "flagged_hidden": sum(1 for r, c in marks if r >= len(shown_rows) or c >= PREVIEW_COLUMNS),
        "rows_total": len(rows),
        "columns_total": len(columns),
        "truncated": len(rows) > PREVIEW_ROWS or len(columns) > PREVIEW_COLUMNS,
    }


def release_review(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The release review (``review(config, run_key)``'s dict) checked, bounded and cleaned.

    Shape in: ``{"verdict", "files": [{"path", "bytes", "verdict", "reasons": [str],
    "preview": {"columns", "rows", "flagged": [[row, column], ...]} | None}]}``. Every string
    goes through :func:`safe_text`; previews are cut to :data:`PREVIEW_ROWS` rows and
    :data:`PREVIEW_COLUMNS` columns, each cell to :data:`CELL_CHARS` characters.
    """
    if not isinstance(raw, Mapping):
        raise ReviewError("a release review is a mapping")
    files = raw.get("files")
    if not isinstance(files, list):
        raise ReviewError("a release review needs a list of files")
    shown = []
    for i, f in enumerate(files[:REVIEW_FILES]):
        where = f"files[{i}]"
        if not isinstance(f, Mapping):
            raise ReviewError(f"{where} is not a mapping")
        size = f.get("bytes")
        reasons = f.get("reasons") or []
        if not isinstance(reasons, list):
            raise ReviewError(f"{where}.reasons is not a list")
        verdict = f.get("verdict")
        shown.append(
            {
                "path": safe_text(f.get("path", ""), limit=300),
                "bytes": size if isinstance(size, int) and not isinstance(size, bool) else None,
                "verdict": verdict if verdict in VERDICTS else safe_text(verdict, limit=20),
                "reasons": [safe_text(r, limit=500) for r in reasons[:20]],
                "preview": _preview(f.get("preview"), where),
            }
        )
    verdict = raw.get("verdict")
    return {
        "verdict": verdict if verdict in VERDICTS else safe_text(verdict, limit=20),
        "files": shown,
        "files_total": len(files),
    }
