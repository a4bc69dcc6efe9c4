"""Automatic disclosure control of a train's output, before anything leaves the station.

The train is untrusted and so is everything it wrote to ``/pht/output``. :func:`check_output`
looks at every file there and gives each a verdict with reasons:

``pass``    the station checked it and found nothing to flag;
``review``  a person must look before it leaves (the hop's ``release`` step);
``block``   it must not leave: the hop fails with the reasons, nothing is sealed or pushed.

The report's verdict is the worst of its files' (and ``block`` when there are too many files).
The rules, which only the station config sets (``policy.disclosure``, see
``config/station.example.yaml`` and README "Disclosure control"):

* **file types**: a file whose suffix is not in ``allowed_types``, a symbolic link or any other
  non-regular file → block; more than ``max_files`` files → block.
* **tables** (``.csv``: UTF-8, comma-separated, RFC 4180 quoting, first row the header;
  ``.json``: an array of objects, one per row): a table the train declares a frequency table
  in its output manifest (:data:`MANIFEST_NAME`) is checked cell by cell: a count in a
  declared count column from 1 to ``min_cell_count - 1`` (and 0 when
  ``zeros_are_disclosive``), or a value that is not a whole number ≥ 0, → review, with its
  row and column. Empty cells and ``NaN`` are suppressed cells and fine. A table not declared
  → review (never a silent pass). A JSON object (not a table) may be declared a frequency
  document with ``count_fields``: every number under those top-level fields is a count.
* **row-level data**: a table with at least ``row_fraction`` × the data set's rows
  (``dataset_rows``: the largest table of the train's view) → block; a table or JSON
  document with a column or key named like one of the data set's ``identifier_columns``
  (case-insensitive, runs of other characters than letters and digits read as ``_``) → block.
* **other allowed files** (text, images, JSON that is no table) → review: the station cannot
  check them, a person decides.
* **hostile input**: a table larger than ``max_table_bytes``, with more than ``max_rows``
  rows or ``max_columns`` columns, a field over :data:`MAX_FIELD_CHARS` characters, JSON
  nested deeper than :data:`MAX_JSON_DEPTH`, duplicate keys, ``NaN``, text that is not
  UTF-8, or a file that does not parse as its suffix says → block, with the reason: the
  station cannot check it and a person's preview could not show it faithfully.
* **ACRO** (the SACRO project's output checker): when the train ran ACRO and left its report
  (:data:`ACRO_REPORT_NAME`, ACRO's ``finalise`` format) beside its outputs, the station
  reads it (bounded, validated), says per file what ACRO claims, and checks the files with
  its own rules anyway. ACRO's "fail" or "review" raises a file to at least review; its
  "pass" lowers nothing. An ACRO table output made by ``crosstab`` without ``aggfunc`` counts
  as a declared frequency table (every column but the first, ACRO's index, holds counts).
  The report itself → review (it holds ACRO's session summary, marked DO_NOT_RELEASE);
  ACRO's ``checksums/<file>.txt`` files (64 hex digits) pass.

:meth:`DisclosureReport.summary` is safe for XComs, the audit log and the run attestation:
paths, sizes, kinds, verdicts and reasons naming rows, columns and thresholds, never a value
of the output. :func:`preview_tables` shows the values (bounded) for the authenticated release
review page only.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .. import strictjson
from ..errors import PhtError
from ..text import safe_text

__all__ = [
    "ACRO_REPORT_NAME",
    "MANIFEST_NAME",
    "VERDICTS",
    "DisclosureError",
    "DisclosurePolicy",
    "DisclosureReport",
    "FileCheck",
    "check_output",
    "parse_disclosure_policy",
    "preview_tables",
]

VERDICTS = ("pass", "review", "block")
#: The train's output manifest, at the top of ``/pht/output``.
MANIFEST_NAME = "pht-output.json"
#: ACRO's report (``acro.finalise(path, "json")``), at the top of ``/pht/output``.
ACRO_REPORT_NAME = "results.json"
ACRO_STATUSES = ("pass", "review", "fail")
#: Longest field of a CSV table the station checks (characters).
MAX_FIELD_CHARS = 10_000
#: Deepest nesting of a JSON file the station checks.
MAX_JSON_DEPTH = 32
#: Most file-system entries looked at (beyond ``max_files`` only to say how many there are).
MAX_ENTRIES = 100_000
#: Reasons listed per file; the rest are counted.
MAX_REASONS = 20
#: Characters of a name (path, column) shown in a reason.
NAME_LIMIT = 80
#: Characters of one cell in a preview, and of all cells of one preview call.
PREVIEW_CELL_CHARS = 200
PREVIEW_TOTAL_CHARS = 2_000_000
_INT = re.compile(r"\+?\d{1,18}(?:\.0*)?")
_NAN = frozenset({"nan", "NaN", "NA", "null"})
_HEX64 = re.compile(rb"[0-9a-f]{64}\s?")
_KINDS_BY_SUFFIX = {".csv": "table", ".json": "json", ".png": "image", ".pdf": "document"}


class DisclosureError(PhtError):
    """The station could not run its disclosure checks (not: the output was flagged)."""


@dataclass(frozen=True)
class DisclosurePolicy:
    """``policy.disclosure`` of the station config. The train cannot change any of it.

    :param allowed_types: file suffixes (lowercase, without the dot) that may leave.
    :param max_files: most files the output may have.
    :param row_fraction: a table with at least this fraction of the data set's rows is
        row-level data (blocked).
    :param zeros_are_disclosive: flag a count of 0 as well (structural zeros can disclose).
    :param max_table_bytes: largest table (CSV/JSON) the station reads; a larger one is blocked.
    :param max_rows: most rows of one table; more is blocked.
    :param max_columns: most columns of one table; more is blocked.
    """

    allowed_types: tuple[str, ...] = ("csv", "json", "txt", "md", "png")
    max_files: int = 50
    row_fraction: float = 0.5
    zeros_are_disclosive: bool = False
    max_table_bytes: int = 4 * 1024 * 1024
    max_rows: int = 100_000
    max_columns: int = 500

    def __post_init__(self) -> None:
        for suffix in self.allowed_types:
            if not re.fullmatch(r"[a-z0-9]{1,16}", suffix):
                raise ValueError(f"allowed_types: {suffix!r} is not a suffix like csv or png")
        for name in ("max_files", "max_table_bytes", "max_rows", "max_columns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1")
        if not (0 < self.row_fraction <= 1):
            raise ValueError("row_fraction must be a number above 0 and at most 1")

    def record(self) -> dict[str, Any]:
        """The policy as JSON (for the summary and the attestation)."""
        return {
            "allowed_types": list(self.allowed_types),
            "max_files": self.max_files,
            "row_fraction": self.row_fraction,
            "zeros_are_disclosive": self.zeros_are_disclosive,
            "max_table_bytes": self.max_table_bytes,
            "max_rows": self.max_rows,
            "max_columns": self.max_columns,
        }


_POLICY_FIELDS = tuple(DisclosurePolicy().record())


def parse_disclosure_policy(
    value: Any,
    problem: Callable[[tuple[str, ...], str], None],
    parse_size: Callable[[Any], int],
) -> DisclosurePolicy:
    """``policy.disclosure`` from the config's YAML: every problem reported through
    ``problem((field,), text)`` (the caller adds the file, line and ``policy.disclosure``);
    the defaults for a field in error."""
    if value is None:
        return DisclosurePolicy()
    if not isinstance(value, dict):
        problem((), "must be a mapping")
        return DisclosurePolicy()
    args: dict[str, Any] = {}
    for key in value:
        if key not in _POLICY_FIELDS:
            problem((str(key),), f"unknown field (expected one of {', '.join(_POLICY_FIELDS)})")
    types = value.get("allowed_types")
    if types is not None:
        if not isinstance(types, list) or not all(
            isinstance(t, str) and re.fullmatch(r"\.?[A-Za-z0-9]{1,16}", t) for t in types
        ):
            problem(("allowed_types",), "must be a list of file suffixes like [csv, json, png]")
        else:
            args["allowed_types"] = tuple(dict.fromkeys(t.lstrip(".").lower() for t in types))
    for name, upper in (("max_files", 100_000), ("max_rows", 10_000_000), ("max_columns", 10_000)):
        if name in value:
            n = value[name]
            if isinstance(n, bool) or not isinstance(n, int) or not (1 <= n <= upper):
                problem((name,), f"must be a whole number from 1 to {upper}")
            else:
                args[name] = n
    if "max_table_bytes" in value:
        try:
            args["max_table_bytes"] = parse_size(value["max_table_bytes"])
        except ValueError as exc:
            problem(("max_table_bytes",), str(exc))
    if "row_fraction" in value:
        f = value["row_fraction"]
        if isinstance(f, bool) or not isinstance(f, int | float) or not (0 < f <= 1):
            problem(("row_fraction",), "must be a number above 0 and at most 1 (e.g. 0.5)")
        else:
            args["row_fraction"] = float(f)
    if "zeros_are_disclosive" in value:
        if not isinstance(value["zeros_are_disclosive"], bool):
            problem(("zeros_are_disclosive",), "must be true or false")
        else:
            args["zeros_are_disclosive"] = value["zeros_are_disclosive"]
    return DisclosurePolicy(**args)


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict. ``path`` is relative to the output folder (POSIX)."""

    path: str
    bytes: int
    kind: str
    verdict: str
    reasons: tuple[str, ...] = ()
    #: What ACRO's report says of this file ("pass", "review", "fail"), if it names it.
    acro: str | None = None
    #: Flagged cells as (row, column) indices of the preview's table (never in a summary).
    flagged: frozenset[tuple[int, int]] = field(default=frozenset(), repr=False)
    #: How the preview shows it: "table" (rows and columns) or "leaves" (JSON field, value).
    layout: str = field(default="", repr=False)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": safe_text(self.path, limit=NAME_LIMIT * 3),
            "bytes": self.bytes,
            "kind": self.kind,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
        }
        if self.acro is not None:
            out["acro"] = self.acro
        return out


@dataclass(frozen=True)
class DisclosureReport:
    """The disclosure verdict over one output folder. Build it with :func:`check_output`."""

    files: tuple[FileCheck, ...]
    reasons: tuple[str, ...]
    verdict: str
    policy: DisclosurePolicy
    min_cell_count: int
    #: ACRO's report as the station read it (counts of its statuses), or None.
    acro: Mapping[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-safe, without any value of the output: for XComs, audit and attestation."""
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "files": [f.summary() for f in self.files],
            "min_cell_count": self.min_cell_count,
            "policy": self.policy.record(),
            "acro": dict(self.acro) if self.acro is not None else None,
        }

    def block_message(self) -> str:
        """One readable message: why the output may not leave (empty when not blocked)."""
        return block_message(self.summary())


def block_message(summary: Mapping[str, Any]) -> str:
    """:meth:`DisclosureReport.block_message` from its :meth:`~DisclosureReport.summary` (as
    kept with a resting output): why the output may not leave, empty when not blocked."""
    if summary.get("verdict") != "block":
        return ""
    lines = ["the station's disclosure control blocks this output:"]
    lines += [f"  - {r}" for r in summary.get("reasons") or []]
    for f in summary.get("files") or []:
        if f.get("verdict") == "block":
            lines.append(f"  - {f.get('path')}: {'; '.join(f.get('reasons') or [])}")
    return "\n".join(lines)


def _worst(verdicts: Iterator[str] | Sequence[str]) -> str:
    return max(verdicts, key=VERDICTS.index, default="pass")


def _name(text: str) -> str:
    return repr(safe_text(text, limit=NAME_LIMIT))


class _Reasons:
    """Reasons of one file with its worst verdict, bounded (the rest counted per kind)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.verdict = "pass"
        self.dropped: dict[str, int] = {}
        self.flagged: set[tuple[int, int]] = set()

    def add(self, verdict: str, reason: str, *, group: str | None = None) -> None:
        self.verdict = _worst((self.verdict, verdict))
        if len(self.items) < MAX_REASONS:
            self.items.append(reason)
        else:
            key = group or "other reasons"
            self.dropped[key] = self.dropped.get(key, 0) + 1

    def done(self) -> tuple[str, ...]:
        return tuple(self.items) + tuple(f"… and {n} more: {g}" for g, n in self.dropped.items())


# --- reading files, bounded and without following links ------------------------------------------


class _Unreadable(Exception):
    """The file cannot be checked; the message is the block reason."""


def _walk(root: Path) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """(relative path, lstat) of every entry that is not a folder, sorted by path, and
    whether the listing stopped after :data:`MAX_ENTRIES` entries. Never follows a link."""
    found: list[tuple[str, os.stat_result]] = []
    seen = 0
    stack = [PurePosixPath()]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError as exc:
            raise DisclosureError(
                f"cannot list the output folder {root / rel}: {exc.strerror}"
            ) from None
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                return found, True
            path = rel / entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            else:
                found.append((path.as_posix(), st))
    found.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
    return found, False


def _read(root: Path, rel: str, limit: int) -> bytes:
    """The file's bytes, at most ``limit`` (more → :class:`_Unreadable`); never via a link."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(root / rel, flags)
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _Unreadable(
            f"larger than max_table_bytes ({limit} bytes): the station cannot check it"
        )
    return data


def _text(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise _Unreadable("contains a NUL character")
    return text


# --- parsing tables ----------------------------------------------------------------------------


@dataclass
class _Table:
    """A table: its header and its rows of cells (str for CSV, JSON values for JSON), read
    one at a time (a CSV table is never held whole in memory)."""

    columns: list[str]
    rows: Iterator[list[Any]]


def _parse_csv(text: str, policy: DisclosurePolicy) -> _Table:
    """The CSV table; its rows are checked for shape and bounds as they are read."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)

    def rows() -> Iterator[list[str]]:
        try:
            for row in reader:
                if row:
                    if any(len(c) > MAX_FIELD_CHARS for c in row):
                        raise _Unreadable(
                            f"line {reader.line_num}: a field longer than "
                            f"{MAX_FIELD_CHARS} characters"
                        )
                    yield row
        except csv.Error as exc:
            raise _Unreadable(f"not valid CSV ({safe_text(str(exc), limit=120)})") from None

    lines = rows()
    header = next(lines, [])
    if len(header) > policy.max_columns:
        raise _Unreadable(f"more than max_columns ({policy.max_columns}) columns")

    def body() -> Iterator[list[str]]:
        for n, row in enumerate(lines, 1):
            if len(row) != len(header):
                raise _Unreadable(
                    f"line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
                )
            if n > policy.max_rows:
                raise _Unreadable(f"more than max_rows ({policy.max_rows}) rows")
            yield row

    return _Table(header, body())


def _parse_json(text: str) -> Any:
    try:
        doc = strictjson.loads(text)
    except strictjson.NestedTooDeeplyError:
        raise _Unreadable(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except strictjson.StrictJSONError as exc:
        raise _Unreadable(str(exc)) from None
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _Unreadable(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return doc


def _json_table(doc: Any, policy: DisclosurePolicy) -> _Table | None:
    """A JSON array of objects as a table (columns: the union of keys in order), else None."""
    if not isinstance(doc, list) or not doc or not all(isinstance(r, dict) for r in doc):
        return None
    if len(doc) > policy.max_rows:
        raise _Unreadable(f"more than max_rows ({policy.max_rows}) rows")
    columns = list(dict.fromkeys(k for r in doc for k in r))
    if len(columns) > policy.max_columns:
        raise _Unreadable(f"more than max_columns ({policy.max_columns}) columns")
    return _Table(columns, ([r.get(c) for c in columns] for r in doc))


def _leaves(doc: Any) -> list[tuple[tuple[str, ...], Any]]:
    """(key path, scalar) of every leaf of a JSON document, in document order."""
    out: list[tuple[tuple[str, ...], Any]] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(reversed([((*path, str(k)), v) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([((*path, str(i)), v) for i, v in enumerate(node)]))
        else:
            out.append((path, node))
    return out


def _keys(doc: Any) -> Iterator[str]:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield from node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


# --- the checks --------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.casefold()).strip("_")


def _count(value: Any) -> int | None:
    """The count in a cell, -1 when it is not a count, None for an empty (suppressed) cell."""
    if value is None:
        return None
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value if value >= 0 else -1
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() and value >= 0 else -1
    if isinstance(value, str):
        text = value.strip()
        if not text or text in _NAN:
            return None
        return int(float(text)) if _INT.fullmatch(text) else -1
    return -1


@dataclass(frozen=True)
class _Context:
    policy: DisclosurePolicy
    min_cell_count: int
    dataset_rows: int | None
    identifiers: frozenset[str]


def _check_count(
    ctx: _Context, out: _Reasons, value: Any, where: str, cell: tuple[int, int]
) -> None:
    n = _count(value)
    if n is None:
        return
    if n < 0:
        out.add(
            "review", f"{where}: not a whole number ≥ 0 in a declared count", group="not a count"
        )
        out.flagged.add(cell)
    elif 0 < n < ctx.min_cell_count or (n == 0 and ctx.policy.zeros_are_disclosive):
        what = "a count of 0 (zeros_are_disclosive)" if n == 0 else "a count below min_cell_count"
        out.add(
            "review",
            f"{where}: {what} {ctx.min_cell_count}",
            group=f"cells below min_cell_count {ctx.min_cell_count}",
        )
        out.flagged.add(cell)


def _check_identifiers(ctx: _Context, out: _Reasons, names: Iterator[str] | Sequence[str]) -> None:
    hit: dict[str, None] = {}
    for name in names:
        if _norm(name) in ctx.identifiers:
            hit[name] = None
    for name in hit:
        out.add("block", f"column {_name(name)} is named like an identifier column of the data set")


def _check_rows(ctx: _Context, out: _Reasons, rows: int) -> None:
    if ctx.dataset_rows and rows >= ctx.policy.row_fraction * ctx.dataset_rows:
        out.add(
            "block",
            f"{rows} row{'' if rows == 1 else 's'}, at least row_fraction "
            f"{ctx.policy.row_fraction:g} of the data set's rows: row-level data may not leave",
        )


def _check_table(
    ctx: _Context, out: _Reasons, table: _Table, decl: _Declared | None, row_word: str
) -> None:
    _check_identifiers(ctx, out, table.columns)
    index = {c: i for i, c in enumerate(table.columns)}
    counts: tuple[str, ...] = ()
    if decl is not None:
        counts = decl.count_columns if decl.count_columns is not None else tuple(table.columns[1:])
        for c in counts:
            if c not in index:
                out.add("review", f"declared count column {_name(c)} is not in the table")
    checked = [(c, index[c]) for c in counts if c in index]
    rows = 0
    for rows, row in enumerate(table.rows, 1):  # noqa: B007 - the count is used below
        for c, i in checked:
            _check_count(ctx, out, row[i], f"{row_word} {rows}, column {_name(c)}", (rows - 1, i))
    _check_rows(ctx, out, rows)
    if decl is None:
        out.add(
            "review", "a table not declared a frequency table in pht-output.json: a person decides"
        )


def _check_json_document(ctx: _Context, out: _Reasons, doc: Any, decl: _Declared | None) -> None:
    _check_identifiers(ctx, out, _keys(doc))
    if decl is None or decl.count_fields is None:
        why = (
            "declared with count_columns, but it is not an array of records"
            if decl
            else ("JSON that is not a table: a person decides")
        )
        out.add("review", why)
        return
    if not isinstance(doc, dict):
        out.add("review", "declared with count_fields, but it is not a JSON object")
        return
    leaves = _leaves(doc)
    for f in decl.count_fields:
        if f not in doc:
            out.add("review", f"declared count field {_name(f)} is not in the document")
    entry: dict[str, int] = {}
    for i, (path, value) in enumerate(leaves):
        if path and path[0] in decl.count_fields:
            entry[path[0]] = entry.get(path[0], 0) + 1
            where = f"field {_name(path[0])}, entry {entry[path[0]]}"
            _check_count(ctx, out, value, where, (i, 1))


# --- the manifest and ACRO's report ------------------------------------------------------------


@dataclass(frozen=True)
class _Declared:
    """One manifest entry: a frequency table and where its counts are."""

    count_columns: tuple[str, ...] | None = None  # None: every column but the first (ACRO)
    count_fields: tuple[str, ...] | None = None
    by: str = "manifest"


def _names(value: Any, what: str, limit: int) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > limit
        or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)
    ):
        raise _Unreadable(f"{what} must be a list of 1 to {limit} names")
    return tuple(value)


def _parse_manifest(doc: Any, policy: DisclosurePolicy) -> dict[str, _Declared]:
    """``{"version": 1, "tables": {"<file>": {"kind": "frequency", "count_columns": [...]}}}``
    (``count_fields`` instead of ``count_columns`` for a JSON object)."""
    if not isinstance(doc, dict) or set(doc) - {"version", "tables"}:
        raise _Unreadable("not a pht-output manifest: expected an object with version and tables")
    if doc.get("version", 1) != 1:
        raise _Unreadable("unsupported manifest version (expected 1)")
    tables = doc.get("tables", {})
    if not isinstance(tables, dict) or len(tables) > policy.max_files:
        raise _Unreadable(
            f"tables must be an object of at most max_files ({policy.max_files}) files"
        )
    out: dict[str, _Declared] = {}
    for name, entry in tables.items():
        where = f"tables[{_name(name)}]"
        if not isinstance(entry, dict) or entry.get("kind") != "frequency":
            raise _Unreadable(f'{where}: expected {{"kind": "frequency", ...}}')
        if set(entry) - {"kind", "count_columns", "count_fields"} or len(entry) != 2:
            raise _Unreadable(f"{where}: give exactly one of count_columns or count_fields")
        if "count_columns" in entry:
            cols = _names(entry["count_columns"], f"{where}.count_columns", policy.max_columns)
            out[name] = _Declared(count_columns=cols)
        else:
            fields = _names(entry["count_fields"], f"{where}.count_fields", policy.max_columns)
            out[name] = _Declared(count_fields=fields)
    return out


@dataclass(frozen=True)
class _Acro:
    files: dict[str, str]  # file name (relative) → ACRO's status
    tables: dict[str, _Declared]  # frequency tables ACRO made (crosstab without aggfunc)
    record: dict[str, Any]


def _parse_acro(doc: Any) -> _Acro:
    """ACRO's ``results.json``: ``{"version", "results": {uid: {"status", "type", "properties",
    "files": [{"name", "sdc"}], "command", ...}}}`` (ACRO's ``Records.finalise_json``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise _Unreadable("not an ACRO report: no results object")
    version = doc.get("version")
    statuses = dict.fromkeys(ACRO_STATUSES, 0)
    files: dict[str, str] = {}
    tables: dict[str, _Declared] = {}
    for uid, out in doc["results"].items():
        where = f"ACRO output {_name(uid)}"
        if not isinstance(out, dict) or out.get("status") not in ACRO_STATUSES:
            raise _Unreadable(f"not an ACRO report: {where} has no status pass/review/fail")
        listed = out.get("files", [])
        if not isinstance(listed, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in listed
        ):
            raise _Unreadable(f"not an ACRO report: {where} has no list of files")
        statuses[out["status"]] += 1
        props = out.get("properties")
        command = out.get("command")
        crosstab = (
            out.get("type") == "table"
            and isinstance(props, dict)
            and props.get("method") == "crosstab"
            and isinstance(command, str)
            and "aggfunc" not in command
        )
        for f in listed:
            name = f["name"]
            files[name] = _worst_acro(files.get(name), out["status"])
            if crosstab and name.endswith(".csv"):
                tables[name] = _Declared(by="ACRO")
    record = {
        "version": safe_text(version, limit=40) if isinstance(version, str) else None,
        "outputs": sum(statuses.values()),
        "statuses": statuses,
    }
    return _Acro(files, tables, record)


def _worst_acro(a: str | None, b: str) -> str:
    return b if a is None else max(a, b, key=("pass", "review", "fail").index)


# --- check_output --------------------------------------------------------------------------------


def _classify(
    root: Path,
    rel: str,
    st: os.stat_result,
    ctx: _Context,
    declared: Mapping[str, _Declared],
) -> tuple[str, str, _Reasons]:
    """(kind, preview layout, reasons) of one file that is not the manifest or ACRO's."""
    out = _Reasons()
    suffix = PurePosixPath(rel).suffix.lower()
    if stat.S_ISLNK(st.st_mode):
        out.add("block", "a symbolic link: only regular files may leave")
        return "link", "", out
    if not stat.S_ISREG(st.st_mode):
        out.add("block", "not a regular file")
        return "special", "", out
    if suffix.lstrip(".") not in ctx.policy.allowed_types:
        shown = safe_text(suffix, limit=20) or "no suffix"
        out.add("block", f"file type {shown!r} is not in policy.disclosure.allowed_types")
        return "disallowed", "", out
    kind = _KINDS_BY_SUFFIX.get(suffix, "text")
    if kind in ("image", "document", "text"):
        what = "an image" if kind == "image" else "not a table"
        out.add("review", f"{what}: the station cannot check it, a person decides")
        return kind, "", out
    decl = declared.get(rel)
    try:
        data = _read(root, rel, ctx.policy.max_table_bytes)
        if not data.strip():
            return "empty", "", out
        text = _text(data)
        if kind == "table":
            _check_table(ctx, out, _parse_csv(text, ctx.policy), decl, "row")
            return ("frequency" if decl else "table"), "table", out
        doc = _parse_json(text)
        table = _json_table(doc, ctx.policy)
        if table is not None and (decl is None or decl.count_fields is None):
            _check_table(ctx, out, table, decl, "record")
            return ("frequency" if decl else "table"), "table", out
        _check_json_document(ctx, out, doc, decl)
        return ("frequency" if decl and isinstance(doc, dict) else "json"), "leaves", out
    except _Unreadable as exc:
        out.add("block", str(exc))
        return kind, "", out


def _special_files(
    root: Path, entries: dict[str, os.stat_result], policy: DisclosurePolicy
) -> tuple[dict[str, _Declared], _Acro | None, dict[str, FileCheck]]:
    """Read the manifest and ACRO's report; their own FileChecks."""
    done: dict[str, FileCheck] = {}
    declared: dict[str, _Declared] = {}
    acro: _Acro | None = None
    if MANIFEST_NAME in entries:
        size = _size(entries[MANIFEST_NAME])
        try:
            declared = _parse_manifest(
                _parse_json(_text(_read(root, MANIFEST_NAME, 1024 * 1024))), policy
            )
            extra = [n for n in declared if n not in entries]
            reasons = tuple(
                f"declares {_name(n)}, which is not in the output" for n in extra[:MAX_REASONS]
            )
            done[MANIFEST_NAME] = FileCheck(
                MANIFEST_NAME, size, "manifest", "review" if extra else "pass", reasons
            )
        except _Unreadable as exc:
            done[MANIFEST_NAME] = FileCheck(
                MANIFEST_NAME, size, "manifest", "block", (f"the output manifest: {exc}",)
            )
    if ACRO_REPORT_NAME in entries:
        try:
            doc = _parse_json(_text(_read(root, ACRO_REPORT_NAME, policy.max_table_bytes)))
            acro = _parse_acro(doc)
        except _Unreadable:
            acro = None  # an ordinary JSON file then (checked, and blocked if it does not parse)
        else:
            done[ACRO_REPORT_NAME] = FileCheck(
                ACRO_REPORT_NAME,
                _size(entries[ACRO_REPORT_NAME]),
                "acro-report",
                "review",
                ("ACRO's report (with a session summary marked DO_NOT_RELEASE): a person decides",),
            )
    return declared, acro, done


def _size(st: os.stat_result) -> int:
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _acro_checksum(root: Path, rel: str, acro: _Acro | None) -> bool:
    """ACRO's ``checksums/<file>.txt`` (64 hex digits) beside a valid ACRO report."""
    if acro is None or not rel.startswith("checksums/") or not rel.endswith(".txt"):
        return False
    try:
        return bool(_HEX64.fullmatch(_read(root, rel, 65)))
    except _Unreadable:
        return False


def check_output(
    output_dir: Path | str,
    policy: DisclosurePolicy,
    *,
    min_cell_count: int,
    dataset_rows: int | None = None,
    identifier_columns: Sequence[str] = (),
) -> DisclosureReport:
    """Check every file of ``output_dir`` against the station's disclosure rules.

    ``dataset_rows`` is the row count of the data set the train saw (the largest table of its
    view; None when unknown, e.g. a ``folder`` data set: then only the identifier rule finds
    row-level data). Raises :class:`DisclosureError` only when the folder cannot be listed.
    """
    root = Path(output_dir)
    if not root.is_dir() or root.is_symlink():
        raise DisclosureError(f"the output folder {root} is not a folder")
    if min_cell_count < 1:
        raise ValueError("min_cell_count must be at least 1")
    ctx = _Context(
        policy, min_cell_count, dataset_rows, frozenset(_norm(c) for c in identifier_columns)
    )
    listed, truncated = _walk(root)
    if truncated or len(listed) > policy.max_files:
        more = "more than " if truncated else ""
        count = f"{more}{len(listed)} files"
        reason = f"{count}, more than policy.disclosure.max_files ({policy.max_files})"
        return DisclosureReport((), (reason,), "block", policy, min_cell_count)
    entries = dict(listed)
    declared, acro, done = _special_files(root, entries, policy)
    if acro is not None:
        declared = {**acro.tables, **declared}  # the train's own manifest wins over ACRO's
    checks: list[FileCheck] = []
    for rel, st in listed:
        if rel in done:
            checks.append(replace(done[rel], acro=acro.files.get(rel) if acro else None))
            continue
        if _acro_checksum(root, rel, acro):
            checks.append(FileCheck(rel, _size(st), "acro-checksum", "pass"))
            continue
        kind, layout, out = _classify(root, rel, st, ctx, declared)
        claim = acro.files.get(rel) if acro else None
        if claim in ("fail", "review"):
            out.add("review", f"ACRO says {claim}")
        checks.append(
            FileCheck(
                rel, _size(st), kind, out.verdict, out.done(), claim, frozenset(out.flagged), layout
            )
        )
    verdict = _worst([c.verdict for c in checks])
    return DisclosureReport(
        tuple(checks), (), verdict, policy, min_cell_count, acro.record if acro else None
    )


# --- previews for the release review -------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return safe_text(value, limit=PREVIEW_CELL_CHARS)
    if value is None:
        return ""
    return safe_text(json.dumps(value, ensure_ascii=False), limit=PREVIEW_CELL_CHARS)


def _preview_table(
    root: Path, check: FileCheck, policy: DisclosurePolicy, max_rows: int
) -> tuple[list[str], list[list[Any]]] | None:
    """(columns, rows) of one file for the preview, or None if it is not shown as a table."""
    suffix = PurePosixPath(check.path).suffix.lower()
    try:
        text = _text(_read(root, check.path, policy.max_table_bytes))
        if suffix == ".csv":
            t = _parse_csv(text, policy)
            return t.columns, list(itertools.islice(t.rows, max_rows))
        doc = _parse_json(text)
        if check.layout == "table":
            table = _json_table(doc, policy)
            if table is not None:
                return table.columns, list(itertools.islice(table.rows, max_rows))
        leaves = _leaves(doc)
        return ["field", "value"], [["/".join(p), v] for p, v in leaves[:max_rows]]
    except _Unreadable:
        return None


def preview_tables(
    output_dir: Path | str,
    report: DisclosureReport,
    *,
    max_rows: int = 50,
    max_cols: int = 20,
) -> list[dict[str, Any]]:
    """Bounded previews, with values, of the report's tables and JSON files, flagged cells
    marked: ``[{"path", "verdict", "kind", "columns": [...], "rows": [[{"value", "flagged"}]],
    "rows_shown", "truncated_rows", "truncated_columns"}]``. For the authenticated release
    review page only: never put it in an XCom, a log or an exception."""
    root = Path(output_dir)
    budget = PREVIEW_TOTAL_CHARS
    shown: list[dict[str, Any]] = []
    for check in report.files:
        if not check.layout or budget <= 0:
            continue
        got = _preview_table(root, check, report.policy, max_rows + 1)
        if got is None:
            continue
        columns, rows = got
        cols = [_cell(c) for c in columns[:max_cols]]
        cells: list[list[dict[str, Any]]] = []
        for r, row in enumerate(rows[:max_rows]):
            line = []
            for c, value in enumerate(row[:max_cols]):
                text = _cell(value)
                budget -= len(text)
                line.append({"value": text, "flagged": (r, c) in check.flagged})
            cells.append(line)
            if budget <= 0:
                break
        shown.append(
            {
                "path": safe_text(check.path, limit=NAME_LIMIT * 3),
                "kind": check.kind,
                "verdict": check.verdict,
                "columns": cols,
                "rows": cells,
                "truncated_rows": len(rows) > len(cells),
                "truncated_columns": len(columns) > max_cols,
            }
        )
    return shown
