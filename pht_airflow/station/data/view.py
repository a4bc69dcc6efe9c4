"""The train's view of a data set for one hop, and the digest of what the train saw.

:func:`data_view` is a context manager: for a ``folder`` data set it yields the host folder
itself (mounted read-only as before); for ``sql`` and ``file`` it extracts into
``<work>/data`` (a private folder inside the hop's 0700 work folder), makes it read-only and
readable by the sandbox user, yields it, and wipes it on the way out, whatever happened
(success, failure, exception, ``KeyboardInterrupt``). A task killed outright leaves it behind;
the leftover sweep (:func:`pht_airflow.station.sweep.sweep`, run at the start of every hop
and by the self-test) removes it and says so in the audit log.

:func:`data_digest` is ``sha256:`` over a canonical listing of the view's files, one line per
file sorted by its path's UTF-8 bytes: ``<hex sha256 of the file> <size> <relative path>\\n``.
The same data gives the same digest, wherever and whenever it is extracted (Parquet files are
written deterministically by the same pyarrow version).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .extract import DEFAULT_MEMORY_BUDGET, extract, iter_files
from .model import DataSet, DataSetError

log = logging.getLogger(__name__)

Log = Callable[[str], None]
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class DataView:
    """What is mounted at ``/pht/data`` for one hop, and its digest."""

    path: Path
    dataset: DataSet
    digest: str
    files: int
    bytes: int
    tables: tuple[str, ...] = field(default_factory=tuple)
    #: Rows of the view's largest table (``sql``, ``file``); None for a ``folder`` (unknown).
    #: For the disclosure control's row-level check; not in :meth:`record`, which may reach
    #: people outside the station (the station only ever publishes rounded row counts).
    rows: int | None = None

    @property
    def extracted(self) -> bool:
        return not self.dataset.mounted_as_is

    def record(self) -> dict[str, Any]:
        """The audit record's ``data`` entry (no paths, no values)."""
        return {
            "dataset": self.dataset.name,
            "kind": self.dataset.kind,
            "digest": self.digest,
            "files": self.files,
            "bytes": self.bytes,
            "tables": list(self.tables),
        }


def data_digest(folder: Path) -> tuple[str, int, int]:
    """(``sha256:<hex>`` over the canonical listing, number of files, total bytes)."""
    listing = hashlib.sha256()
    files = total = 0
    for path in iter_files(folder):
        h = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise DataSetError(
                f"cannot read {path.relative_to(folder)} to digest the data: {exc.strerror}"
            ) from None
        rel = path.relative_to(folder).as_posix()
        listing.update(f"{h.hexdigest()} {size} {rel}\n".encode())
        files += 1
        total += size
    return "sha256:" + listing.hexdigest(), files, total


def wipe(folder: Path) -> None:
    """Remove an extracted view (its files and folders were made read-only)."""
    if not folder.exists():
        return
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
    os.chmod(folder, 0o700)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():  # pragma: no cover - only on a permission oddity
        log.error("could not wipe the extracted data in %s", folder)


def _seal_read_only(folder: Path) -> None:
    """Folders 0555 and files 0444: readable by the sandbox user (the hop's work folder
    around it is 0700, so nobody else on the host reaches it), writable by nobody."""
    for root, dirs, names in os.walk(folder):
        for n in names:
            os.chmod(os.path.join(root, n), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)  # noqa: S103 - inside a 0700 folder
    os.chmod(folder, 0o555)  # noqa: S103 - inside the 0700 work folder


@contextmanager
def data_view(
    dataset: DataSet,
    work: Path,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    log: Log | None = None,
) -> Iterator[DataView]:
    """The data set as the train sees it, for the duration of the ``with`` block."""
    if dataset.mounted_as_is:
        assert dataset.path is not None  # noqa: S101 - validated
        digest, files, size = data_digest(dataset.path)
        yield DataView(dataset.path, dataset, digest, files, size)
        return
    folder = work / "data"
    folder.mkdir(mode=0o700)
    try:
        extracted = extract(dataset, folder, memory_budget=memory_budget, log=log)
        _seal_read_only(folder)
        digest, files, size = data_digest(folder)
        yield DataView(
            folder,
            dataset,
            digest,
            files,
            size,
            tuple(t.name for t in extracted.tables),
            max((t.rows for t in extracted.tables), default=0),
        )
    finally:
        wipe(folder)
