"""The wire format of a station's described schema (station and central service).

A station may publish the *shape* of the data sets it chooses (``publish_schema: true`` in
its config) to the central service's station directory, so researchers see what a station
holds before they build a train (``pht central stations show ID``): per data set its kind and
tables, per table its column names and types and a row count. Never a value: the document
has no field that could carry one, and a row count is rounded down to a multiple of the
station's disclosure threshold (``policy.min_cell_count``), so a count below the threshold
shows as 0 ("fewer than the threshold").

The document is signed like a hop report (:mod:`pht_airflow.hopreport`): ECDSA P-256, SHA-256,
DER, base64, by the station's signing key, over the canonical JSON of the document without its
``signature`` field; its ``type`` (``org.pht.dataset-schema``) is part of what is signed, so
the signature cannot be taken for one over another kind of document. The central service checks
it against the station's key in its directory before it stores it, so nobody without that key
can describe a station's data, and anyone can check a stored document again with the station's
public key. Each document replaces the station's previous one (a data set the station stops
publishing disappears); it carries the time it was made, and an older document than the stored
one is refused (a replay cannot bring back a withdrawn description).

The document is bounded (size, counts, name lengths) and its names and types may not hold
control or format characters; :func:`check_document` is the one parser, used by the central
service on receipt and by the CLI before it shows a stored document.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import VerificationError
from .keys import PublicKey, SigningKey
from .protocol import STATION_ID
from .spec import canonical_json

VERSION = 1
# What the station's signature is over: named in the signed bytes, so a signature made for
# this document can never pass as one over another kind of station statement (a hop report).
TYPE = "org.pht.dataset-schema"
CHECK = "dataset-schema"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DATASETS = 64
MAX_TABLES = 256  # per data set
MAX_COLUMNS = 1024  # per table
MAX_NAME = 128
MAX_TYPE = 64
MAX_KIND = 32
MAX_FILES = 8  # per table
MAX_THRESHOLD = 1_000_000
# A clock a little ahead of the central service's is fine; a document from the far future
# would block every later one, so it is refused.
MAX_CLOCK_SKEW = timedelta(minutes=10)

_FIELDS = (
    "type", "version", "station", "time", "key_id", "min_cell_count", "datasets", "signature",
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    """A column: its name, its type (as the train sees it, e.g. ``int64``), and whether the
    station marks it as an identifier (``identifier_columns`` in its config)."""

    name: str
    type: str
    identifier: bool = False


@dataclass(frozen=True)
class TableShape:
    """A table's shape: columns, its row count rounded down to the disclosure threshold
    (``None`` when the station does not count it), and the files the train finds it in under
    ``/pht/data`` (``person.parquet``, ``person.csv``)."""

    name: str
    columns: tuple[Column, ...]
    rows: int | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSetShape:
    """A data set's shape: its name in the station config, its kind (``folder``, ``sql``,
    ``file``) and its tables."""

    name: str
    kind: str
    tables: tuple[TableShape, ...]


@dataclass(frozen=True)
class SchemaDocument:
    """A checked, signed schema document (made by :func:`check_document`)."""

    station: str
    time: datetime
    key_id: str
    min_cell_count: int
    datasets: tuple[DataSetShape, ...]
    document: dict[str, Any]


def round_count(count: int, threshold: int) -> int:
    """``count`` rounded down to a multiple of ``threshold`` (0 means "fewer than it")."""
    if threshold < 1:
        raise ValueError("the disclosure threshold must be at least 1")
    return (max(0, count) // threshold) * threshold


def _payload(document: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k != "signature"}).encode()


def make_document(
    *,
    station: str,
    datasets: Sequence[DataSetShape],
    min_cell_count: int,
    key: SigningKey,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A signed schema document for ``datasets``; row counts are rounded here, so nothing
    unrounded can leave the station by this path. Checked as the central service will."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    document: dict[str, Any] = {
        "type": TYPE,
        "version": VERSION,
        "station": station,
        "time": moment.strftime(TIME_FORMAT),
        "key_id": key.key_id,
        "min_cell_count": min_cell_count,
        "datasets": [
            {
                "name": ds.name,
                "kind": ds.kind,
                "tables": [
                    {
                        "name": t.name,
                        "rows": None if t.rows is None else round_count(t.rows, min_cell_count),
                        "columns": [
                            {"name": c.name, "type": c.type, "identifier": c.identifier}
                            for c in t.columns
                        ],
                        "files": list(t.files),
                    }
                    for t in ds.tables
                ],
            }
            for ds in datasets
        ],
    }
    document["signature"] = base64.b64encode(key.sign(_payload(document))).decode("ascii")
    check_document(document, key.public, station=station, now=moment)
    return document


def _bad(reason: str, key_id: str | None = None) -> VerificationError:
    return VerificationError(reason, check=CHECK, key_id=key_id)


def _text(value: Any, what: str, limit: int) -> str:
    """A name or type: a non-empty string of at most ``limit`` visible characters."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _bad(f"{what} must be a string of 1 to {limit} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value):
        raise _bad(f"{what} holds a control or format character")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(f"{what} must be a list")
    if len(value) > limit:
        raise _bad(f"{what} has {len(value)} entries; at most {limit} are accepted")
    return value


def _mapping(value: Any, what: str, fields: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object")
    unknown = sorted(set(value) - fields)
    missing = sorted(fields - set(value))
    if unknown:
        raise _bad(f"{what} has unknown field(s): {', '.join(map(str, unknown))[:200]}")
    if missing:
        raise _bad(f"{what} has no {', '.join(missing)}")
    return value


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _columns(value: Any, where: str) -> tuple[Column, ...]:
    columns, seen = [], set()
    for i, raw in enumerate(_list(value, f"{where}.columns", MAX_COLUMNS)):
        c = _mapping(raw, f"{where}.columns[{i}]", {"name", "type", "identifier"})
        name = _text(c["name"], f"{where}.columns[{i}].name", MAX_NAME)
        if name in seen:
            raise _bad(f"{where} lists column {name!r} twice")
        seen.add(name)
        if not isinstance(c["identifier"], bool):
            raise _bad(f"{where}.{name}.identifier must be true or false")
        kind = _text(c["type"], f"{where}.columns[{i}].type", MAX_TYPE)
        columns.append(Column(name, kind, c["identifier"]))
    return tuple(columns)


def _tables(value: Any, where: str, threshold: int) -> tuple[TableShape, ...]:
    tables, seen = [], set()
    for i, raw in enumerate(_list(value, f"{where}.tables", MAX_TABLES)):
        t = _mapping(raw, f"{where}.tables[{i}]", {"name", "rows", "columns", "files"})
        name = _text(t["name"], f"{where}.tables[{i}].name", MAX_NAME)
        if name in seen:
            raise _bad(f"{where} lists table {name!r} twice")
        seen.add(name)
        rows = t["rows"]
        if rows is not None and (not _whole(rows) or rows < 0):
            raise _bad(f"{where}.{name}.rows must be a whole number ≥ 0 or null")
        if rows is not None and rows % threshold:
            raise _bad(
                f"{where}.{name}.rows ({rows}) is not rounded to the disclosure threshold "
                f"({threshold}): a station publishes rounded counts only"
            )
        files = tuple(
            _text(f, f"{where}.{name}.files[{j}]", MAX_NAME)
            for j, f in enumerate(_list(t["files"], f"{where}.{name}.files", MAX_FILES))
        )
        tables.append(TableShape(name, _columns(t["columns"], f"{where}.{name}"), rows, files))
    return tuple(tables)


def _datasets(value: Any, threshold: int) -> tuple[DataSetShape, ...]:
    datasets, seen = [], set()
    for i, raw in enumerate(_list(value, "datasets", MAX_DATASETS)):
        d = _mapping(raw, f"datasets[{i}]", {"name", "kind", "tables"})
        name = _text(d["name"], f"datasets[{i}].name", MAX_NAME)
        if name in seen:
            raise _bad(f"the document lists data set {name!r} twice")
        seen.add(name)
        kind = _text(d["kind"], f"datasets[{i}].kind", MAX_KIND)
        datasets.append(DataSetShape(name, kind, _tables(d["tables"], name, threshold)))
    return tuple(datasets)


def check_document(
    document: Any, key: PublicKey, *, station: str, now: datetime | None = None
) -> SchemaDocument:
    """Check a schema document's size, shape, station, signature by ``key`` and time.

    Returns the parsed document; raises :class:`VerificationError` (check
    ``dataset-schema``) naming what is wrong. ``now`` bounds the document's time from above.
    """
    if not isinstance(document, dict):
        raise _bad("a schema document must be a JSON object")
    try:
        size = len(canonical_json(document).encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") is no text to sign or show
        raise _bad("the schema document holds a string that is not valid Unicode") from None
    if size > MAX_DOCUMENT_BYTES:
        raise _bad(f"the schema document is larger than {MAX_DOCUMENT_BYTES // 1024} KiB")
    _mapping(document, "the schema document", set(_FIELDS))
    if document["type"] != TYPE:
        raise _bad(f"the document's type is not {TYPE!r}")
    if document["version"] != VERSION or not _whole(document["version"]):
        raise _bad(f"schema document version {document['version']!r} is not supported")
    if not isinstance(document["station"], str) or not STATION_ID.fullmatch(document["station"]):
        raise _bad("the schema document's station is not a station id")
    if document["station"] != station:
        raise _bad(f"the schema document describes {document['station']!r}, not {station!r}")
    if document["key_id"] != key.key_id:
        raise _bad(
            f"the schema document is signed by key {str(document['key_id'])[:80]!r}, not by "
            f"{station}'s key in the directory ({key.key_id})",
            key.key_id,
        )
    try:
        signature = base64.b64decode(str(document["signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the schema document's signature is not base64", key.key_id) from None
    if not signature or not key.verify(signature, _payload(document)):
        raise _bad(
            f"the schema document's signature does not verify with {station}'s key", key.key_id
        )
    try:
        made = datetime.strptime(str(document["time"]), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _bad("the schema document's time is not an ISO-8601 UTC time") from None
    if made > (now or datetime.now(UTC)) + MAX_CLOCK_SKEW:
        raise _bad("the schema document is dated in the future; check the station's clock")
    threshold = document["min_cell_count"]
    if not _whole(threshold) or not 1 <= threshold <= MAX_THRESHOLD:
        raise _bad(f"min_cell_count must be a whole number from 1 to {MAX_THRESHOLD}")
    return SchemaDocument(
        station=station,
        time=made,
        key_id=key.key_id,
        min_cell_count=threshold,
        datasets=_datasets(document["datasets"], threshold),
        document=dict(document),
    )
