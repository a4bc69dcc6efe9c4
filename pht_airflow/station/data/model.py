"""The data sets a station offers (``datasets:`` in ``station.yaml``), validated at load.

Three kinds:

``folder``  a host folder mounted read-only at ``/pht/data`` as it is (the old form
            ``name: /path`` means this kind).
``file``    one ``.parquet`` or ``.csv`` file, converted into the train's view
            ``/pht/data/<table>.parquet`` (and ``.csv``) with ``schema.json``.
``sql``     an Airflow Connection (PostgreSQL) and either ``tables`` or named ``queries``,
            extracted just before the run into the same view.

Nothing here opens a database or a file: :class:`DataSet` is the validated entry; the
extraction is :mod:`.extract`, the shape :mod:`.describe`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, PhtError
from ..secrets import NO_LOOKUPS, Lookups

KINDS = ("folder", "file", "sql")
FORMATS = ("parquet", "csv")
FILE_SUFFIXES = (".parquet", ".csv")
#: A table's name in the train's view (its file name without suffix).
TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")
#: A table to extract: ``table`` or ``schema.table`` (unquoted PostgreSQL identifiers).
SQL_TABLE = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_$]{0,62})\.)?([A-Za-z_][A-Za-z0-9_$]{0,62})")
#: Characters in one named query.
MAX_QUERY_CHARS = 100_000
#: Tables or queries in one data set.
MAX_TABLES = 200


class DataSetError(PhtError):
    """A data set could not be read or extracted (the database refused, a query failed, a
    file is malformed). The message names the data set and says what to do; never values."""


_FIELDS: dict[str, tuple[str, ...]] = {
    "folder": ("kind", "path"),
    "file": ("kind", "path", "table", "formats", "publish_schema", "identifier_columns"),
    "sql": (
        "kind",
        "connection",
        "tables",
        "queries",
        "formats",
        "publish_schema",
        "identifier_columns",
    ),
}


@dataclass(frozen=True)
class DataSet:
    """One validated ``datasets:`` entry.

    ``path`` is the folder (``folder``) or the file (``file``); ``connection`` the Airflow
    Connection id (``sql``); ``targets`` maps each table of the train's view to the SQL that
    fills it (``sql``: ``SELECT * FROM <table>`` or the named query; ``file``: empty, the one
    table is named ``table``). ``formats`` are the files written per table (``parquet``
    always first). ``publish_schema`` says whether the station may publish the shape to the
    central service; ``identifier_columns`` are marked as identifiers in the described schema.
    """

    name: str
    kind: str
    path: Path | None = None
    connection: str | None = None
    targets: Mapping[str, str] = field(default_factory=dict)
    table: str | None = None
    formats: tuple[str, ...] = ("parquet",)
    publish_schema: bool = False
    identifier_columns: tuple[str, ...] = ()
    where: str = ""  # file:line, for messages
    lookups: Lookups = field(default=NO_LOOKUPS, compare=False, repr=False)

    @property
    def mounted_as_is(self) -> bool:
        """True for a ``folder``: the host folder itself is mounted, nothing is extracted."""
        return self.kind == "folder"

    def tables(self) -> tuple[str, ...]:
        """The table names of the train's view (empty for a ``folder``)."""
        if self.kind == "sql":
            return tuple(self.targets)
        if self.kind == "file" and self.table:
            return (self.table,)
        return ()

    def connect(self) -> Any:
        """A new DB-API connection for a ``sql`` data set (the caller closes it).

        Read through the station's lookups: inside Airflow the Postgres provider's hook for
        the Connection ``connection``; elsewhere a clear error unless the lookups know it.
        """
        if self.kind != "sql" or not self.connection:
            raise ConfigError(f"data set {self.name!r} is not a sql data set")
        try:
            conn = self.lookups.database(self.connection)
        except ConfigError as exc:
            raise ConfigError(f"{self.where}: data set {self.name!r}: {exc}") from None
        if conn is None:
            raise ConfigError(
                f"{self.where}: data set {self.name!r}: Airflow Connection "
                f"{self.connection!r} is not set (add it with conn type postgres)"
            )
        return conn

    def summary(self) -> dict[str, Any]:
        """What the audit log and messages may say about it (no paths, no queries)."""
        return {"name": self.name, "kind": self.kind, "tables": list(self.tables())}


_LEXEMES = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|/\*.*|(\$[A-Za-z_0-9]*\$).*?\1|[();]|[^'"$();/-]+|.""",
    re.DOTALL,
)


def statement_problem(sql: str) -> str | None:
    """Why ``sql`` is not one query the station can wrap as ``SELECT * FROM (sql) AS q``.

    Outside string literals, quoted names, comments and dollar quotes: no ``;`` (one
    statement only) and parentheses that never close more than they opened. The read-only
    transaction refuses writes anyway; this keeps a query from ending that transaction.
    """
    depth = 0
    for m in _LEXEMES.finditer(sql):
        lexeme = m.group(0)
        if lexeme == ";":
            return "must be one statement (no ';' between statements)"
        if lexeme == "(":
            depth += 1
        elif lexeme == ")":
            depth -= 1
            if depth < 0:
                return "closes a parenthesis it did not open"
        elif lexeme[0] in "'\"" and (len(lexeme) < 2 or lexeme[-1] != lexeme[0]):
            return "has an unterminated quote"
        elif lexeme.startswith("/*") and not lexeme.endswith("*/"):
            return "has an unterminated comment"
    if depth:
        return "leaves a parenthesis open"
    return None


Problem = Callable[[tuple[str, ...], str], None]
ResolvePath = Callable[[Any, tuple[str, ...]], Path | None]


def parse_datasets(
    raw: Any,
    *,
    problem: Problem,
    resolve_path: ResolvePath,
    where: Callable[[tuple[str, ...]], str],
    lookups: Lookups = NO_LOOKUPS,
) -> dict[str, DataSet]:
    """Validate the ``datasets:`` section; every problem goes to ``problem(path, text)``.

    ``resolve_path`` makes a path absolute (relative to the config file) and reports a
    non-string; ``where`` gives ``file:line`` for a path.
    """
    found: dict[str, DataSet] = {}
    if not isinstance(raw, dict) or not raw:
        problem(("datasets",), "must map at least one data set name to a folder or a mapping")
        return found
    for key, value in raw.items():
        name = str(key)
        at = ("datasets", name)
        old_form = isinstance(value, str)
        if old_form:  # the old form: a folder
            value = {"kind": "folder", "path": value}
        if not isinstance(value, dict):
            problem(at, "must be a folder path or a mapping with kind: folder, file or sql")
            continue
        kind = value.get("kind")
        if kind not in KINDS:
            problem(
                (*at, "kind"),
                f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})"
                if kind is not None
                else f"missing (one of {', '.join(KINDS)})",
            )
            continue
        for field_ in value:
            if field_ not in _FIELDS[kind]:
                problem(
                    (*at, str(field_)),
                    f"unknown field for kind {kind} (expected one of {', '.join(_FIELDS[kind])})",
                )
        parsed = _parse_one(name, kind, value, at, problem, resolve_path, old_form)
        if parsed is not None:
            found[name] = DataSet(name=name, kind=kind, where=where(at), lookups=lookups, **parsed)
    return found


def _parse_one(
    name: str,
    kind: str,
    value: dict[str, Any],
    at: tuple[str, ...],
    problem: Problem,
    resolve_path: ResolvePath,
    old_form: bool = False,
) -> dict[str, Any] | None:
    ok = True

    def bad(path: tuple[str, ...], text: str) -> None:
        nonlocal ok
        ok = False
        problem(path, text)

    args: dict[str, Any] = {}
    if kind in ("folder", "file"):
        if "path" not in value:
            bad((*at, "path"), f"missing (the {'folder' if kind == 'folder' else 'file'})")
            return None
        where_path = at if old_form else (*at, "path")
        path = resolve_path(value["path"], where_path)
        if path is None:
            return None
        if kind == "folder" and not path.is_dir():
            bad(where_path, f"no such folder: {path}")
        if kind == "file":
            if path.suffix.lower() not in FILE_SUFFIXES:
                bad((*at, "path"), f"must be a .parquet or .csv file, not {path.name}")
            elif not path.is_file():
                bad((*at, "path"), f"no such file: {path}")
            table = value.get("table", path.stem)
            if not isinstance(table, str) or not TABLE_NAME.fullmatch(table):
                bad(
                    (*at, "table") if "table" in value else (*at, "path"),
                    f"the table name {table!r} is not letters, digits, '_' and '-' "
                    "(set table: NAME)",
                )
            args["table"] = table
        args["path"] = path
    if kind == "sql":
        conn_id = value.get("connection")
        if not isinstance(conn_id, str) or not conn_id.strip():
            bad(
                (*at, "connection"),
                "missing: the Airflow Connection id of the database (conn type postgres)",
            )
        args["connection"] = conn_id
        has_tables, has_queries = "tables" in value, "queries" in value
        if has_tables == has_queries:
            bad(
                at,
                "give either tables: [..] or queries: {name: SELECT ..}, not both"
                if has_tables
                else "give tables: [..] or queries: {name: SELECT ..}",
            )
        targets: dict[str, str] = {}
        if has_tables and not has_queries:
            tables = value["tables"]
            if not isinstance(tables, list) or not tables or len(tables) > MAX_TABLES:
                bad((*at, "tables"), f"must be a list of 1 to {MAX_TABLES} table names")
                tables = []
            for i, table in enumerate(tables):
                m = SQL_TABLE.fullmatch(table) if isinstance(table, str) else None
                if m is None:
                    bad((*at, "tables", str(i)), f"{table!r} is not a table or schema.table name")
                    continue
                short = m.group(2)
                if short in targets:
                    bad((*at, "tables", str(i)), f"table {short!r} is listed twice")
                    continue
                quoted = ".".join(f'"{part}"' for part in m.groups() if part)
                targets[short] = f"SELECT * FROM {quoted}"  # noqa: S608 - validated names
        if has_queries and not has_tables:
            queries = value["queries"]
            if not isinstance(queries, dict) or not queries or len(queries) > MAX_TABLES:
                bad((*at, "queries"), f"must map 1 to {MAX_TABLES} table names to SELECT queries")
                queries = {}
            for qname, sql in queries.items():
                qpath = (*at, "queries", str(qname))
                if not TABLE_NAME.fullmatch(str(qname)):
                    bad(qpath, "a query's name is letters, digits, '_' and '-' (its file name)")
                    continue
                if not isinstance(sql, str) or not sql.strip():
                    bad(qpath, "must be a SELECT query")
                    continue
                if len(sql) > MAX_QUERY_CHARS:
                    bad(qpath, f"is longer than {MAX_QUERY_CHARS} characters")
                    continue
                sql = sql.strip().rstrip(";").strip()
                why = statement_problem(sql)
                if why:
                    bad(qpath, f"{why}; give one SELECT query per table name")
                    continue
                targets[str(qname)] = sql
        args["targets"] = targets
    if kind != "folder":
        formats = value.get("formats", ["parquet"])
        if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
            bad((*at, "formats"), f"must be a list of {' and/or '.join(FORMATS)}")
            formats = ["parquet"]
        args["formats"] = tuple(f for f in FORMATS if f in formats)
        publish = value.get("publish_schema", False)
        if not isinstance(publish, bool):
            bad((*at, "publish_schema"), "must be true or false")
        args["publish_schema"] = publish is True
        ids = value.get("identifier_columns", [])
        if not isinstance(ids, list) or not all(isinstance(c, str) and c for c in ids):
            bad((*at, "identifier_columns"), "must be a list of column names")
            ids = []
        args["identifier_columns"] = tuple(ids)
    return args if ok else None
