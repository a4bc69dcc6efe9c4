"""Data sets a station offers, and the train's view of them at ``/pht/data``.

``model``     the validated ``datasets:`` entries of ``station.yaml`` (kinds folder, file, sql)
``extract``   a ``sql`` or ``file`` data set written as ``<table>.parquet`` (and ``.csv``) plus
              ``schema.json``, streamed with bounded memory, read-only at the database
``describe``  the shape only (column names and types, rounded row counts), for publishing
``view``      the view for one hop: extracted into the private work folder, mounted
              read-only, wiped afterwards whatever happened; the digest of what the train saw

No Airflow here: a ``sql`` data set's database connection comes from the station's lookups
(the Airflow edge hands in the Postgres provider's hook).
"""

from .describe import DEFAULT_THRESHOLD, describe, round_rows
from .extract import SCHEMA_FILE, Column, Extracted, Table, extract
from .model import FORMATS, KINDS, DataSet, DataSetError, parse_datasets
from .view import DataView, data_digest, data_view, wipe

__all__ = [
    "DEFAULT_THRESHOLD",
    "FORMATS",
    "KINDS",
    "SCHEMA_FILE",
    "Column",
    "DataSet",
    "DataSetError",
    "DataView",
    "Extracted",
    "Table",
    "data_digest",
    "data_view",
    "describe",
    "extract",
    "parse_datasets",
    "round_rows",
    "wipe",
]
