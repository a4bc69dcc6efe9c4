"""The ``datasets`` check: the sandbox user can list and read every data set folder, and
every database and file data set can be read (the database in a read-only transaction).

The real test is a probe container per data set (``_DATASET_SCRIPT``); when it fails,
:func:`scan_dataset` explains why from the mode bits on the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ...errors import PhtError, SelfTestError
from ..config import StationConfig
from ..data import DataSet, describe
from ..data.extract import ReadOnlySession
from .probe import MARKER, _engine, _run_probe, selftest_image

#: Files per data set the probe opens (one byte each) to check they are readable.
PROBE_FILES = 1000
#: Entries per data set the host-side mode-bits scan looks at.
SCAN_ENTRIES = 10_000


def _can(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid:gid`` (no supplementary groups, no capabilities) has ``need`` (rwx bits
    as 4/2/1) on a file with this stat, by its mode bits and ownership."""
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def _describe_entry(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"


def scan_dataset(folder: Path, uid: int, gid: int) -> tuple[int, int, str | None]:
    """Mode-bits scan (on the host) of what ``uid:gid`` cannot read in ``folder``.

    Returns (entries looked at, entries not readable, a description of the first one). Only
    the folder itself and what is below it count: the sandbox bind-mounts the folder, so the
    folders above it on the host need not be open to the sandbox user. Links are skipped.
    ACLs, supplementary groups and user-namespace mappings are not seen here; the probe
    container is the real test.
    """
    looked = bad = 0
    first: str | None = None
    stack: list[tuple[Path, str]] = [(folder, ".")]
    while stack and looked < SCAN_ENTRIES:
        path, rel = stack.pop()
        try:
            st = path.lstat()
        except OSError:
            continue
        looked += 1
        if stat.S_ISLNK(st.st_mode):
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if not _can(st, uid, gid, 5 if is_dir else 4):
            bad += 1
            if first is None:
                what = "the folder itself" if rel == "." else f"{rel!r}"
                first = f"{what} ({_describe_entry(st)})"
            continue
        if is_dir:
            try:
                children = sorted(os.listdir(path), reverse=True)
            except OSError:
                continue
            stack.extend(
                (path / name, name if rel == "." else f"{rel}/{name}") for name in children
            )
    return looked, bad, first


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
    """Why a ``sql`` or ``file`` data set cannot be read, or ``None``.

    ``sql``: a read-only transaction opens and every table or query is described (``LIMIT
    0``: no rows read). ``file``: the file is read as Parquet or CSV. The extracted view is
    made readable by the sandbox user by the station itself.
    """
    try:
        if dataset.kind == "sql":
            with ReadOnlySession(dataset) as session:
                for table in dataset.targets:
                    session.columns(table)
        else:
            describe(dataset)
    except PhtError as exc:  # its message names the data set
        text = str(exc)
        return (
            text if f"data set {dataset.name!r}" in text else f"data set {dataset.name!r}: {text}"
        )
    return None


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
