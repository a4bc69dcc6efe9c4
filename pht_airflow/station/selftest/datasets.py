"""The ``datasets`` check: the sandbox user can list and read every data set folder, and
every database and file data set can be read (the database in a read-only transaction).

The real test is a probe container per data set (``_DATASET_SCRIPT``); when it fails,
:func:`scan_dataset` (pre-flight's mode-bits scan, the same one) explains why from the mode
bits on the host. Databases and files are checked by pre-flight's
:func:`~pht_airflow.station.preflight.dataset_problem`.
"""

from __future__ import annotations

from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from ..data import DataSet
from ..preflight import SCAN_ENTRIES, dataset_problem, scan_dataset
from .probe import MARKER, _engine, _run_probe, selftest_image

__all__ = ["PROBE_FILES", "SCAN_ENTRIES", "check_datasets", "scan_dataset"]

#: Files per data set the probe opens (one byte each) to check they are readable.
PROBE_FILES = 1000


_DATASET_SCRIPT = f"""
say() {{ echo "{MARKER} $1=$2"; }}
if ls -A /pht/data >/dev/null 2>&1; then say list ok; else say list denied; fi
say find-errors "$(find /pht/data 2>&1 >/dev/null | wc -l | tr -d ' ')"
say files "$(find /pht/data -type f 2>/dev/null | head -n {PROBE_FILES} | wc -l | tr -d ' ')"
say unreadable "$(find /pht/data -type f 2>/dev/null | head -n {PROBE_FILES} | \
  while IFS= read -r f; do head -c 1 "$f" >/dev/null 2>&1 || echo x; done | wc -l | tr -d ' ')"
say done 1
exit 0
"""


def _check_source(dataset: DataSet) -> str | None:
    """Why a ``sql`` or ``file`` data set cannot be read, or ``None``: pre-flight's check
    (:func:`~pht_airflow.station.preflight.dataset_problem`), reading a file whole."""
    problem = dataset_problem(dataset, thorough=True)
    return None if problem is None else problem.text


def check_datasets(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """Every data set folder exists, and the sandbox user can list it and read its files.

    Each folder is mounted at ``/pht/data`` in a probe container running as
    ``sandbox.user``, which lists it, walks it and opens (one byte of) up to
    :data:`PROBE_FILES` files. A failure is explained with a host-side mode-bits scan.
    """
    image = image or selftest_image(config)
    limits = config.limits
    who = f"the sandbox user {limits.uid}:{limits.gid}"
    if not config.datasets:
        raise SelfTestError("datasets: the station offers no data set")
    problems: list[str] = []
    reports: list[str] = []
    with _engine(docker_client, "datasets") as engine:
        for name, dataset in sorted(config.datasets.items()):
            if not dataset.mounted_as_is:
                found_problem = _check_source(dataset)
                if found_problem:
                    problems.append(found_problem)
                else:
                    tables = len(dataset.tables())
                    reports.append(f"{name} ({dataset.kind}, {tables} table(s), read-only)")
                continue
            assert dataset.path is not None  # noqa: S101 - a folder has its path
            folder = dataset.path
            if not folder.is_dir():
                problems.append(f"data set {name!r}: the folder {folder} does not exist")
                continue
            found = _run_probe(
                config, engine, image, _DATASET_SCRIPT, data_dir=folder, what="datasets"
            )
            listed = found.get("list") == "ok"
            errors = int(found.get("find-errors", "0") or 0)
            unreadable = int(found.get("unreadable", "0") or 0)
            files = int(found.get("files", "0") or 0)
            if listed and errors == 0 and unreadable == 0:
                reports.append(f"{name} ({files}{'+' if files >= PROBE_FILES else ''} files)")
                continue
            _, bad, first = scan_dataset(folder, limits.uid, limits.gid)
            if not listed:
                why = "cannot list the folder"
            else:
                parts = []
                if errors:
                    parts.append(f"{errors} sub-folder(s) cannot be walked")
                if unreadable:
                    parts.append(f"{unreadable} of {files} file(s) tried cannot be read")
                why = " and ".join(parts)
            hint = f"; on the host, e.g. {first}" if bad and first else ""
            problems.append(
                f"data set {name!r} ({folder}): {who} {why}{hint}; make it readable, e.g. "
                f"chmod -R o+rX {folder} or give group {limits.gid} read access"
            )
    if problems:
        raise SelfTestError("datasets: " + "; ".join(problems))
    return f"datasets: {who} can list and read " + ", ".join(reports)
