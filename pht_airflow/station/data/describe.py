"""The shape of a data set, never its values: what a station may publish to researchers.

:func:`describe` gives, per table of the train's view, the column names and types (as the
train will see them in ``/pht/data/<table>.parquet``) and the row count rounded down to a
multiple of the station's disclosure threshold. It reads no row values: a ``sql`` data set is
described with ``SELECT * FROM (q) LIMIT 0`` and ``SELECT count(*)`` in a read-only
transaction, a Parquet file from its footer, a CSV file by pyarrow's streaming reader (type
inference and a row count), a ``folder`` by its top-level ``.parquet`` and ``.csv`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .extract import (
    Column,
    ReadOnlySession,
    Table,
    _csv_options,
    _first_line,
    _without_values,
    schema_document,
)
from .model import DataSet, DataSetError

#: The default disclosure threshold: row counts are published as multiples of this.
DEFAULT_THRESHOLD = 10
#: Top-level files of a ``folder`` data set described (the rest is not listed).
MAX_FOLDER_TABLES = 200


def round_rows(rows: int, threshold: int) -> int:
    """``rows`` rounded down to a multiple of ``threshold`` (so fewer than it shows as 0)."""
    if threshold < 1:
        raise ValueError("the disclosure threshold is a whole number ≥ 1")
    return (rows // threshold) * threshold


def _file_table(path: Path, name: str, identifiers: tuple[str, ...], what: str) -> Table:
    import pyarrow as pa
    import pyarrow.csv as pc
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            meta = pq.ParquetFile(str(path))
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
        else:
            reader = pc.open_csv(str(path), *_csv_options((), None, False))
            schema, rows = reader.schema, sum(b.num_rows for b in reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataSetError(
            f"{what}: cannot read {path.name}: {_without_values(_first_line(exc))}"
        ) from None
    columns = tuple(Column(f.name, str(f.type), f.name in identifiers) for f in schema)
    return Table(name, columns, int(rows))


def describe(dataset: DataSet, *, threshold: int = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The data set's shape: ``{"version", "dataset", "kind", "tables": {name: {"rows",
    "columns": [{"name", "type", "identifier"?}], "files"}}, "rows_rounded_to"}``.

    ``rows`` is rounded down to a multiple of ``threshold``. Raises :class:`DataSetError`
    when the source cannot be read (the database refuses, a file is malformed).
    """
    if threshold < 1:
        raise ValueError("the disclosure threshold is a whole number ≥ 1")
    what = f"data set {dataset.name!r}"
    tables: list[Table] = []
    if dataset.kind == "sql":
        with ReadOnlySession(dataset) as session:
            for name in dataset.targets:
                cols = session.columns(name)
                columns = tuple(Column(n, str(t), n in dataset.identifier_columns) for n, t in cols)
                tables.append(Table(name, columns, session.count(name)))
    elif dataset.kind == "file":
        assert dataset.path is not None and dataset.table is not None  # noqa: S101 - validated
        tables.append(_file_table(dataset.path, dataset.table, dataset.identifier_columns, what))
    else:
        assert dataset.path is not None  # noqa: S101 - validated
        try:
            entries = sorted(dataset.path.iterdir())
        except OSError as exc:
            raise DataSetError(f"{what}: cannot list {dataset.path}: {exc.strerror}") from None
        for entry in entries:
            if len(tables) >= MAX_FOLDER_TABLES:
                break
            if entry.suffix.lower() in (".parquet", ".csv") and entry.is_file():
                tables.append(_file_table(entry, entry.name, dataset.identifier_columns, what))
    files = {t.name: _files(dataset, t.name) for t in tables}
    shaped = [
        Table(t.name, t.columns, round_rows(t.rows, threshold), tuple(files[t.name]))
        for t in tables
    ]
    doc = schema_document(dataset.name, dataset.kind, shaped)
    doc["rows_rounded_to"] = threshold
    return doc


def _files(dataset: DataSet, table: str) -> list[str]:
    if dataset.kind == "folder":
        return [table]
    return [f"{table}.{fmt}" for fmt in dataset.formats]
