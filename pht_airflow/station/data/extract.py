"""Extract a ``sql`` or ``file`` data set into the train's view, with bounded memory.

The view is a folder holding, per table, ``<table>.parquet`` (and ``<table>.csv`` when the
data set's ``formats`` ask for it) and ``schema.json`` describing them (column names and
types, row counts). It is written in the station's private work folder just before the run.

``sql``: one read-only transaction per extraction (``SET TRANSACTION ISOLATION LEVEL
REPEATABLE READ, READ ONLY``, checked: every table from one snapshot, no writes).
Each table or query is first described (``SELECT * FROM (q) LIMIT 0``: names and database
types, mapped to Arrow types; every query is checked before any row is read), then streamed
with PostgreSQL's ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` by a producer thread into a
pipe (and into ``<table>.csv`` when kept), while this thread parses the pipe with pyarrow's
streaming CSV reader (column types fixed) into Parquet row groups of at most
``memory_budget`` bytes of rows. Nothing holds a whole table in memory; the peak is about
four times the budget plus pyarrow's reader (tests/test_station_data_extract.py measures it).

``file``: a Parquet file is rewritten batch by batch (a stable copy, whatever happens to the
source during the run); a CSV file is copied and converted the same way (types inferred by
pyarrow from the first block).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import PhtError
from .model import DataSet, DataSetError

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1
#: Bytes of rows buffered before a Parquet row group is written (the extractor's budget).
DEFAULT_MEMORY_BUDGET = 32 * 1024 * 1024
#: Bytes buffered on each side of the pipe between the COPY and the Parquet writer.
PIPE_BUFFER = 256 * 1024
#: Bytes pyarrow's CSV reader parses at a time.
CSV_BLOCK = 256 * 1024
#: Seconds one statement may run at the database before it is cancelled.
STATEMENT_TIMEOUT_S = 6 * 3600

Log = Callable[[str], None]
log = logging.getLogger(__name__)

# PostgreSQL type OIDs -> Arrow types (anything else is text).
_PG_INT = {20: "int64", 21: "int16", 23: "int32", 26: "int64"}
_PG_FLOAT = {700: "float32", 701: "float64"}
_PG_BOOL, _PG_NUMERIC, _PG_DATE, _PG_TS, _PG_TSTZ = 16, 1700, 1082, 1114, 1184


@dataclass(frozen=True)
class Column:
    """One column of a table in the train's view: its name and Arrow type (as text)."""

    name: str
    type: str
    identifier: bool = False

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.identifier:
            d["identifier"] = True
        return d


@dataclass(frozen=True)
class Table:
    """One table of the train's view: columns, exact row count, files written."""

    name: str
    columns: tuple[Column, ...]
    rows: int
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract` wrote into ``folder``."""

    folder: Path
    dataset: str
    kind: str
    tables: tuple[Table, ...] = field(default_factory=tuple)

    def schema(self) -> dict[str, Any]:
        return schema_document(self.dataset, self.kind, self.tables)


def schema_document(dataset: str, kind: str, tables: Sequence[Table]) -> dict[str, Any]:
    """The content of ``/pht/data/schema.json``."""
    return {
        "version": SCHEMA_VERSION,
        "dataset": dataset,
        "kind": kind,
        "tables": {
            t.name: {
                "rows": t.rows,
                "columns": [c.as_dict() for c in t.columns],
                "files": list(t.files),
            }
            for t in tables
        },
    }


def _pa() -> Any:
    import pyarrow as pa

    return pa


def arrow_type_for_pg(type_code: Any, precision: Any, scale: Any) -> Any:
    """The Arrow type a PostgreSQL column (type OID, numeric precision and scale) becomes.

    Unbounded ``numeric`` becomes ``float64``; ``numeric(p, s)`` with p ≤ 38 a decimal;
    types without an Arrow match (json, uuid, arrays, intervals, ...) become text.
    """
    pa = _pa()
    if type_code in _PG_INT:
        return getattr(pa, _PG_INT[type_code])()
    if type_code in _PG_FLOAT:
        return getattr(pa, _PG_FLOAT[type_code])()
    if type_code == _PG_BOOL:
        return pa.bool_()
    if type_code == _PG_NUMERIC:
        if isinstance(precision, int) and 0 < precision <= 38 and isinstance(scale, int):
            return pa.decimal128(precision, max(scale, 0))
        return pa.float64()
    if type_code == _PG_DATE:
        return pa.date32()
    if type_code == _PG_TS:
        return pa.timestamp("us")
    if type_code == _PG_TSTZ:
        return pa.timestamp("us", tz="UTC")
    return pa.string()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _without_values(text: str) -> str:
    """``text`` cut at its first quote, with ``'…'`` in place of the rest: a conversion error
    quotes the value that failed (which may itself hold quotes), and the message goes to the
    audit log and the central service."""
    text = _ROW_ECHO.sub(r"\1", text)  # a CSV parse error echoes the row
    cut = min((i for i in (text.find("'"), text.find('"')) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut] + "'…'"


_ROW_ECHO = re.compile(r"(Expected \d+ columns?, got \d+).*", re.DOTALL)


def _db_error(exc: BaseException) -> str:
    """A database error's first line; for data errors (SQLSTATE classes 22 and 23, which
    quote the offending value) without the quoted parts. Names of tables stay."""
    code = str(getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or "")
    text = _first_line(exc)
    return _without_values(text) if code[:2] in ("22", "23") else text


# --- sql ------------------------------------------------------------------------------------


def _fast_driver(conn: Any) -> Any:
    """The same database through psycopg2 when ``conn`` is a psycopg 3 connection.

    psycopg 3 hands a ``COPY ... TO STDOUT`` to Python one row at a time; psycopg2's
    ``copy_expert`` reads it in C, about twice as fast end to end (benchmarks/bench_extract.py).
    The Postgres provider opens psycopg 3 when SQLAlchemy 2 is installed and depends on
    psycopg2 anyway; the hook has resolved the Connection (host, login, password or IAM token,
    extras such as sslmode), and the twin uses exactly those parameters. Any failure keeps
    the original connection.
    """
    info = getattr(conn, "info", None)
    if info is None or not hasattr(info, "get_parameters") or not hasattr(conn, "pgconn"):
        return conn
    try:
        import psycopg2
    except ImportError:
        return conn
    try:
        params = dict(info.get_parameters())
        if info.password:
            params["password"] = info.password
        twin = psycopg2.connect(**params)
    except Exception:  # noqa: BLE001 - keep the connection the hook opened
        log.debug("could not open a psycopg2 twin; extracting with psycopg 3")
        return conn
    with contextlib.suppress(Exception):
        conn.close()
    return twin


class ReadOnlySession:
    """A read-only transaction on a ``sql`` data set's database; closed (rolled back) on exit.

    Works with psycopg 3 (what the Postgres provider returns with SQLAlchemy 2) and psycopg2.
    """

    def __init__(self, dataset: DataSet) -> None:
        self.dataset = dataset
        self.conn: Any = None

    def __enter__(self) -> ReadOnlySession:
        name = self.dataset.name
        try:
            self.conn = self.dataset.connect()
        except PhtError:
            raise
        except Exception as exc:  # noqa: BLE001 - driver errors of any kind
            raise DataSetError(
                f"data set {name!r}: cannot connect to the database of Airflow Connection "
                f"{self.dataset.connection!r}: {_first_line(exc)}"
            ) from None
        self.conn = _fast_driver(self.conn)
        try:
            if getattr(self.conn, "autocommit", False):
                self.conn.autocommit = False
            cur = self.conn.cursor()
            # One snapshot for every table of the extraction, and no writes.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
            cur.execute("SET LOCAL IntervalStyle = 'iso_8601'")
            cur.execute(f"SET LOCAL statement_timeout = {int(STATEMENT_TIMEOUT_S * 1000)}")
            cur.execute("SHOW transaction_read_only")
            row = cur.fetchone()
            cur.close()
        except Exception as exc:  # noqa: BLE001
            self.close()
            raise DataSetError(
                f"data set {name!r}: could not start a read-only transaction: {_first_line(exc)}"
            ) from None
        if not row or str(row[0]).lower() != "on":
            self.close()
            raise DataSetError(
                f"data set {name!r}: the database did not make the transaction "
                "read-only; the station refuses to extract"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(Exception):  # closing anyway
            self.conn.rollback()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None

    def _fail(self, table: str, exc: BaseException) -> DataSetError:
        return DataSetError(
            f"data set {self.dataset.name!r}, table {table!r}: the database refused the query: "
            f"{_db_error(exc)}"
        )

    def columns(self, table: str) -> list[tuple[str, Any]]:
        """(name, Arrow type) of each column the table's query returns (reads no rows)."""
        sql = self.dataset.targets[table]
        try:
            cur = self.conn.cursor()
            cur.execute(f"SELECT * FROM ({sql}) AS pht_q LIMIT 0")  # noqa: S608 - the station's
            description = cur.description or []
            cur.close()
        except Exception as exc:  # noqa: BLE001
            raise self._fail(table, exc) from None
        cols = [(str(d[0]), arrow_type_for_pg(d[1], d[4], d[5])) for d in description]
        names = [c[0] for c in cols]
        for n in names:
            if names.count(n) > 1:
                raise DataSetError(
                    f"data set {self.dataset.name!r}, table {table!r}: the column {n!r} comes "
                    "twice; give each column its own name (SELECT a.x AS a_x, ...)"
                )
        if not cols:
            raise DataSetError(
                f"data set {self.dataset.name!r}, table {table!r}: the query returns no columns"
            )
        return cols

    def count(self, table: str) -> int:
        """The table's row count."""
        sql = self.dataset.targets[table]
        try:
            cur = self.conn.cursor()
            cur.execute(f"SELECT count(*) FROM ({sql}) AS pht_q")  # noqa: S608 - own query
            row = cur.fetchone()
            cur.close()
        except Exception as exc:  # noqa: BLE001
            raise self._fail(table, exc) from None
        return int(row[0])

    def cancel(self) -> None:
        """Ask the server to cancel the running statement (from another thread)."""
        with contextlib.suppress(Exception):
            cancel = getattr(self.conn, "cancel_safe", None) or self.conn.cancel
            cancel()

    def copy_csv(self, table: str, out: Any) -> None:
        """Stream the table's rows as CSV (no header) into the binary file ``out``."""
        sql = (
            f"COPY (SELECT * FROM ({self.dataset.targets[table]}) AS pht_q) "  # noqa: S608
            "TO STDOUT (FORMAT csv)"
        )
        try:
            cur = self.conn.cursor()
            if hasattr(cur, "copy"):  # psycopg 3: one row per chunk, so keep the loop tight
                write = out.write
                with cur.copy(sql) as copy:
                    for chunk in copy:
                        write(chunk)
            else:  # psycopg2
                cur.copy_expert(sql, out, size=PIPE_BUFFER)
            cur.close()
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(table, exc) from None


def _csv_options(names: Sequence[str], types: dict[str, Any] | None, skip_header: bool) -> Any:
    import pyarrow.csv as pc

    read = pc.ReadOptions(
        column_names=list(names) if types is not None else None,
        skip_rows=1 if (skip_header and types is not None) else 0,
        block_size=CSV_BLOCK,
        use_threads=False,
    )
    parse = pc.ParseOptions(newlines_in_values=True)
    if types is None:  # a hospital's CSV file: pyarrow infers the types
        convert = pc.ConvertOptions(strings_can_be_null=True)
    else:  # PostgreSQL's CSV: empty unquoted is NULL, "" is an empty string, t/f booleans
        convert = pc.ConvertOptions(
            column_types=types,
            true_values=["t"],
            false_values=["f"],
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
    return read, parse, convert


class _RowGroups:
    """A Parquet file written from record batches, one row group per ``budget`` bytes."""

    def __init__(self, path: Path, schema: Any, budget: int) -> None:
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(str(path), schema)
        self.budget = budget
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.rows = 0
        self.schema = schema

    def add(self, batch: Any) -> None:
        self.pending.append(batch)
        self.pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.pending_bytes >= self.budget:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            pa = _pa()
            self.writer.write_table(pa.Table.from_batches(self.pending, schema=self.schema))
        self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _csv_to_parquet(
    source: Path | BinaryIO,
    target: Path | None,
    *,
    names: Sequence[str],
    types: dict[str, Any] | None,
    budget: int,
    what: str,
) -> tuple[Any, int]:
    """Convert CSV with a header line to Parquet (``target`` ``None``: only parse and count);
    returns (schema, rows). ``types`` ``None`` infers them (a hospital's CSV file)."""
    import pyarrow as pa
    import pyarrow.csv as pc

    read, parse, convert = _csv_options(names, types, skip_header=True)
    try:
        reader = pc.open_csv(
            str(source) if isinstance(source, Path) else source,
            read_options=read,
            parse_options=parse,
            convert_options=convert,
        )
    except pa.ArrowInvalid as exc:
        if types is not None:  # the first block already failed to convert
            raise DataSetError(
                f"{what}: a value does not fit its column's type: "
                f"{_without_values(_first_line(exc))}"
            ) from None
        raise DataSetError(
            f"{what}: not readable as CSV: {_without_values(_first_line(exc))}"
        ) from None
    schema = reader.schema
    writer = _RowGroups(target, schema, budget) if target is not None else None
    rows = 0
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise DataSetError(
                    f"{what}: a value does not fit its column's type after row {rows}: "
                    f"{_without_values(_first_line(exc))}"
                    + ("" if types is not None else " (convert the file to Parquet to fix types)")
                ) from None
            rows += batch.num_rows
            if writer is not None:
                writer.add(batch)
    finally:
        if writer is not None:
            writer.close()
    return schema, rows


def _columns(schema: Any, identifiers: Sequence[str]) -> tuple[Column, ...]:
    return tuple(Column(f.name, str(f.type), f.name in identifiers) for f in schema)


class _Tee:
    """A binary sink writing to the pipe and, when kept, the train's CSV file."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def write(self, data: Any) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)


def _stream_table(
    session: ReadOnlySession,
    table: str,
    names: Sequence[str],
    types: dict[str, Any],
    *,
    parquet: Path | None,
    csv_path: Path | None,
    budget: int,
    what: str,
) -> tuple[Any, int]:
    """COPY one table through a pipe into the Parquet writer, in two threads at once.

    A producer thread runs the COPY and writes the header and rows into a pipe (and the
    CSV file when kept); this thread parses the pipe into Parquet row groups as it fills.
    The database's error wins over the parse error it causes; a parse error cancels the
    COPY. Returns (schema, rows).
    """
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(names)

    def produce() -> None:
        pipe = os.fdopen(write_fd, "wb", buffering=PIPE_BUFFER)
        keep = csv_path.open("wb") if csv_path is not None else None
        try:
            sink = _Tee(pipe, keep) if keep is not None else pipe
            sink.write(header.getvalue().encode())
            session.copy_csv(table, sink)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()
            if keep is not None:
                keep.close()

    producer = threading.Thread(target=produce, name="pht-extract-copy", daemon=True)
    producer.start()
    try:
        with os.fdopen(read_fd, "rb", buffering=PIPE_BUFFER) as source:
            result = _csv_to_parquet(
                source, parquet, names=names, types=types, budget=budget, what=what
            )
    except BaseException:
        early = [e for e in errors if not isinstance(e, BrokenPipeError)]
        if early:  # the database failed first: the parse error is only its consequence
            producer.join()
            raise early[0] from None
        session.cancel()  # the COPY's own error after this is the cancel's: ignored
        producer.join()
        raise
    producer.join()
    if errors:
        raise errors[0] from None
    return result


def _extract_sql(dataset: DataSet, folder: Path, budget: int, log: Log | None) -> list[Table]:
    tables: list[Table] = []
    with ReadOnlySession(dataset) as session:
        plan = {t: session.columns(t) for t in dataset.targets}  # every query checked first
        for table, cols in plan.items():
            parquet = folder / f"{table}.parquet" if "parquet" in dataset.formats else None
            csv_path = folder / f"{table}.csv" if "csv" in dataset.formats else None
            schema, rows = _stream_table(
                session,
                table,
                [c[0] for c in cols],
                dict(cols),
                parquet=parquet,
                csv_path=csv_path,
                budget=budget,
                what=f"data set {dataset.name!r}, table {table!r}",
            )
            files = tuple(p.name for p in (parquet, csv_path) if p is not None)
            tables.append(Table(table, _columns(schema, dataset.identifier_columns), rows, files))
            if log:
                log(f"data set {dataset.name}: extracted {table} ({rows} rows)")
    return tables


def _extract_file(dataset: DataSet, folder: Path, budget: int, log: Log | None) -> list[Table]:
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    assert dataset.path is not None and dataset.table is not None  # noqa: S101 - validated
    source, table = dataset.path, dataset.table
    what = f"data set {dataset.name!r} ({source.name})"
    files: list[str] = []
    parquet_path, csv_path = folder / f"{table}.parquet", folder / f"{table}.csv"
    try:
        if source.suffix.lower() == ".csv":
            shutil.copyfile(source, csv_path)  # a stable copy, whatever happens to the source
            schema, rows = None, 0
            if "parquet" in dataset.formats:
                schema, rows = _csv_to_parquet(
                    csv_path, parquet_path, names=(), types=None, budget=budget, what=what
                )
                files.append(parquet_path.name)
            if "csv" in dataset.formats:
                files.append(csv_path.name)
                if schema is None:  # CSV only: parse it all the same (types, row count)
                    schema, rows = _csv_to_parquet(
                        csv_path, None, names=(), types=None, budget=budget, what=what
                    )
            else:
                csv_path.unlink()
        else:
            try:
                pf = pq.ParquetFile(str(source))
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataSetError(
                    f"{what}: not a readable Parquet file: {_first_line(exc)}"
                ) from None
            schema = pf.schema_arrow
            writer = (
                _RowGroups(parquet_path, schema, budget) if "parquet" in dataset.formats else None
            )
            csv_writer = pc.CSVWriter(str(csv_path), schema) if "csv" in dataset.formats else None
            rows = 0
            try:
                for batch in pf.iter_batches(batch_size=65536):
                    rows += batch.num_rows
                    if writer:
                        writer.add(batch)
                    if csv_writer:
                        csv_writer.write_batch(batch)
            finally:
                if writer:
                    writer.close()
                if csv_writer:
                    csv_writer.close()
            files = [n for n, w in ((parquet_path.name, writer), (csv_path.name, csv_writer)) if w]
    except pa.ArrowException as exc:  # a Parquet file damaged past its footer
        raise DataSetError(f"{what}: cannot read it: {_without_values(_first_line(exc))}") from None
    except OSError as exc:
        raise DataSetError(f"{what}: cannot read or copy it: {exc.strerror or exc}") from None
    assert schema is not None  # noqa: S101
    if log:
        log(f"data set {dataset.name}: prepared {table} ({rows} rows)")
    return [Table(table, _columns(schema, dataset.identifier_columns), rows, tuple(files))]


def extract(
    dataset: DataSet,
    folder: Path,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    log: Log | None = None,
) -> Extracted:
    """Write the train's view of a ``sql`` or ``file`` data set into the empty ``folder``.

    Raises :class:`DataSetError` (the database refused, a query failed, a file is malformed);
    the caller wipes ``folder`` then. ``schema.json`` is written last.
    """
    if dataset.kind == "sql":
        tables = _extract_sql(dataset, folder, memory_budget, log)
    elif dataset.kind == "file":
        tables = _extract_file(dataset, folder, memory_budget, log)
    else:
        raise DataSetError(f"data set {dataset.name!r} is a folder; it is mounted as it is")
    done = Extracted(folder, dataset.name, dataset.kind, tuple(tables))
    (folder / SCHEMA_FILE).write_text(json.dumps(done.schema(), indent=2, sort_keys=True) + "\n")
    return done


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder`` (not following links), sorted by relative path."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for n in names:
            p = Path(root) / n
            if p.is_file() and not p.is_symlink():
                found.append(p)
    yield from sorted(found, key=lambda p: p.relative_to(folder).as_posix().encode())
