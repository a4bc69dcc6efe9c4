"""Trains on the researcher's side: a starter folder, the station directory, build and push.

A train is an ordinary image whose config label ``org.pht.train`` holds the canonical JSON
of the train spec. It is built by the local Docker engine (the docker SDK, never pulling a
base image), pushed by the engine, then signed by digest.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, PhtError
from ..keys import load_public_key, public_key_from_pem, validate_recipient
from ..oci import Reference
from ..protocol import (
    BASE_DIGEST_LABEL,
    BASE_LAYERS_LABEL,
    BASE_NAME_LABEL,
    BASE_TOP_LAYER_LABEL,
    TRAIN_LABEL,
)
from ..spec import TrainSpec

DEFAULT_BASE_IMAGE = "pht-local/python:3.11"

Log = Callable[[str], None]


class TrainBuildError(PhtError):
    """The Docker engine could not build or push the train image."""


# --- starter folder ---------------------------------------------------------------------

_DOCKERFILE = """\
# A PHT train. Build it with `pht train build`; the spec label is added then.
FROM {base}
COPY analysis.py /opt/train/analysis.py
# The station runs this as a non-root user with no network and a read-only root.
ENTRYPOINT ["python3", "/opt/train/analysis.py"]
"""

_ANALYSIS = '''\
"""Example analysis: count the rows of each table at this station, adding to earlier hops.

The data (see README.md): /pht/data holds one file per table, <table>.parquet (and
<table>.csv where the station offers CSV), and schema.json naming the tables with their
columns, types and row counts. Parquet is read with pyarrow where the image has it; without
pyarrow, the CSV files are read with the standard library. /pht/input holds the previous
hop's result (read-only, empty at the first hop); write everything to /pht/output.
"""

import csv
import json
import os
import sys
from pathlib import Path

DATA, INPUT, OUTPUT = Path("/pht/data"), Path("/pht/input"), Path("/pht/output")

try:  # in the image only if the Dockerfile installs it
    import pyarrow.parquet as pq
except ImportError:
    pq = None


def table_files() -> dict[str, Path]:
    """Each table's file, by table name: Parquet where pyarrow reads it, else CSV."""
    found = {str(p.relative_to(DATA).with_suffix("")): p for p in sorted(DATA.rglob("*.csv"))}
    if pq is not None:
        found.update({p.stem: p for p in sorted(DATA.glob("*.parquet"))})
    return found


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.read_table(path).num_rows
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def main() -> None:
    schema_file = DATA / "schema.json"
    schema = json.loads(schema_file.read_text()) if schema_file.exists() else None
    if schema:
        for name, table in schema["tables"].items():
            columns = ", ".join(f"{c['name']} ({c['type']})" for c in table["columns"])
            print(f"table {name}: {columns}")
    files = table_files()
    if not files and any(DATA.glob("*.parquet")):
        sys.exit(
            "this station offers its data as Parquet only and this image has no pyarrow: "
            "install pyarrow in the Dockerfile, or ask the station for formats: [parquet, csv]"
        )
    state_file = INPUT / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"rows": 0, "hops": []}
    counts = {name: count_rows(path) for name, path in files.items()}
    rows = sum(counts.values())
    state["rows"] += rows
    state["hops"].append({"station": os.environ.get("PHT_STATION_ID"), "rows": rows,
                          "tables": counts})
    (OUTPUT / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\\n")
    print(f"counted {rows} rows at {os.environ.get('PHT_STATION_ID')}")


if __name__ == "__main__":
    main()
'''

_README = """\
# A PHT train

This folder is a Personal Health Train analysis. `pht train build` turns it into a signed image
that visits each station on its route.

## The sandbox your code runs in

| path / setting | what you get |
|---|---|
| `/pht/data` | the station's data set (read-only; see "The data" below) |
| `/pht/input` | the previous hop's result, decrypted (read-only; empty at hop 0 / in parallel) |
| `/pht/output` | an empty folder: everything you write here is your result |
| environment | `PHT_TRAIN_ID`, `PHT_STATION_ID`, `PHT_HOP`, `PHT_ROUTE_LENGTH`, `PHT_DATASET` |
| network | none |
| file system | read-only, except `/pht/output` and a small `/tmp` |
| user | not root (uid 65534 unless the station says otherwise) |
| limits | memory, CPUs, processes, wall time and output size, set by each station |

Rules that make a train run everywhere:
- Write only regular files and folders to `/pht/output`; links and special files are refused.
- Keep results aggregate: the next station and the result recipients will read them.
- A non-zero exit, running out of time or memory, or too much output fails the hop.
- Nothing can be downloaded at run time: put every dependency in the image.

## The data at `/pht/data`

A station keeps its data in a database, a Parquet or CSV file, or a folder. For databases and
files the station extracts the rows just before your train runs and gives you the same view
whatever the source:

- `<table>.parquet`: one table (a database table, a station's named query, or the file).
- `<table>.csv`: the same table as CSV, where the station offers CSV
  (`formats: [parquet, csv]`): a header line; an empty field is NULL and `""` an empty
  string; database booleans are `t`/`f`.
- `schema.json`: the tables, their columns and row counts:

```json
{"version": 1, "dataset": "cohort", "kind": "sql",
 "tables": {"person": {"rows": 1200, "files": ["person.parquet", "person.csv"],
                       "columns": [{"name": "person_id", "type": "int64", "identifier": true},
                                   {"name": "year_of_birth", "type": "int32"}]}}}
```

Types are Arrow's names: `int16`/`int32`/`int64`, `float`/`double`, `decimal128(p, s)`,
`bool`, `string`, `date32[day]`, `timestamp[us]`, `timestamp[us, tz=UTC]`; columns the station
marks as identifiers carry `"identifier": true`. Read Parquet with `pyarrow` (add
`RUN pip install pyarrow` to the Dockerfile; the default base image has none) or read the CSV
files with Python's `csv` module. A station whose data set is a plain folder (`kind: folder`)
mounts that folder as it is, without `schema.json`: ask the station for its layout. Ask the
station which tables it offers (`pht central stations show ID` lists published schemas).

## Build and send

```sh
pht train build . --route station-a,station-b --mode sequential --dataset cohort \\
    --creator-key alice.key --stations stations.yaml --push registry.example.org/pht-incoming
```
"""


def init_train(folder: Path, *, base_image: str = DEFAULT_BASE_IMAGE) -> list[Path]:
    """Write a starter analysis into ``folder`` (created; must be empty if it exists)."""
    if folder.exists() and any(folder.iterdir()):
        raise PhtError(f"{folder} is not empty; pht train init writes into a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "Dockerfile": _DOCKERFILE.format(base=base_image),
        "analysis.py": _ANALYSIS,
        "README.md": _README,
    }
    written = []
    for name, text in files.items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


# --- station directory ------------------------------------------------------------------


@dataclass(frozen=True)
class StationInfo:
    """What a researcher needs to put a station on a route."""

    id: str
    key: str  # SubjectPublicKeyInfo PEM
    recipient: str
    project: str | None = None


def load_station_directory(path: Path) -> dict[str, StationInfo]:
    """Read a station directory YAML file.

    Format::

        stations:
          station-a:
            key: keys/station-a.pub        # a file (relative to this YAML) or PEM text
            recipient: age1…               # or recipient_file: keys/station-a.age.pub
            project: station-station-a     # optional
    """
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read station directory {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stations"), dict):
        raise ConfigError(f"{path}: expected a mapping 'stations:' of station id -> entry")
    problems: list[str] = []
    stations: dict[str, StationInfo] = {}
    for sid, entry in data["stations"].items():
        where = f"{path}: stations.{sid}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with key and recipient")
            continue
        unknown = set(entry) - {"key", "recipient", "recipient_file", "project"}
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            key_text = str(entry.get("key", ""))
            if "BEGIN PUBLIC KEY" in key_text:
                pem = public_key_from_pem(key_text, source=f"{where}.key").pem
            elif key_text:
                pem = load_public_key(path.parent / key_text).pem
            else:
                raise ConfigError(f"{where}.key is missing")
            if "recipient_file" in entry:
                recipient_text = (path.parent / str(entry["recipient_file"])).read_text().strip()
            else:
                recipient_text = str(entry.get("recipient", ""))
            recipient = validate_recipient(recipient_text)
            stations[str(sid)] = StationInfo(
                str(sid), pem, recipient, str(entry["project"]) if entry.get("project") else None
            )
        except (PhtError, OSError) as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError("invalid station directory:\n" + "\n".join(f"  - {p}" for p in problems))
    return stations


# --- spec -------------------------------------------------------------------------------


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_spec(
    *,
    name: str,
    creator_id: str,
    creator_key_id: str,
    creator_recipient: str,
    route: Sequence[StationInfo],
    mode: str,
    dataset: str,
    recipients: Sequence[str] = (),
    visibility: str = "final",
    expires_in: timedelta = timedelta(days=30),
    now: datetime | None = None,
) -> TrainSpec:
    """Assemble and validate a new train spec (fresh uuid4 id, ``created`` now)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    result_recipients = [creator_recipient] + [r for r in recipients if r != creator_recipient]
    data: dict[str, Any] = {
        "version": 1,
        "id": str(uuid.uuid4()),
        "name": name,
        "creator": {"id": creator_id, "key": creator_key_id, "recipient": creator_recipient},
        "mode": mode,
        "route": [{"station": s.id, "key": s.key, "recipient": s.recipient} for s in route],
        "result_recipients": result_recipients,
        "results_visibility": visibility,
        "dataset": dataset,
        "created": _stamp(now),
        "expires": _stamp(now + expires_in),
    }
    return TrainSpec.from_dict(data, source="the new train spec")


# --- build and push ---------------------------------------------------------------------


def _docker_stream(lines: Any, log: Log | None, what: str) -> dict[str, Any]:
    """Consume a docker API JSON stream; raise on an error line; return the last aux."""
    aux: dict[str, Any] = {}
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("errorDetail", {}).get("message") or line.get("error")
            raise TrainBuildError(f"{what} failed: {str(detail).strip()}")
        if "aux" in line and isinstance(line["aux"], dict):
            aux = line["aux"]
        if log is None:
            continue
        if "stream" in line and line["stream"].strip():
            log(line["stream"].rstrip())
        elif "status" in line and line.get("id") is None:
            log(str(line["status"]))
    return aux


_FROM = re.compile(r"FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_ARG = re.compile(r"ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def base_image_name(dockerfile: str) -> str | None:
    """The image a Dockerfile's final stage builds on (``FROM x``, following earlier stages'
    names and the global ``ARG`` defaults), or None when it cannot be told without building
    (an ``ARG`` with no default)."""
    text = re.sub(r"\\\r?\n", " ", dockerfile)
    args: dict[str, str] = {}
    stages: dict[str, str | None] = {}
    last: str | None = None
    seen_from = False
    for line in text.splitlines():
        line = line.strip()
        if not seen_from and (m := _ARG.fullmatch(line)):
            if m.group(2) is not None:
                args[m.group(1)] = m.group(2).strip("\"'")
            continue
        m = _FROM.fullmatch(line)
        if m is None:
            continue
        seen_from = True
        image: str | None = _VARIABLE.sub(
            lambda v: args.get(v.group(1) or v.group(2), "$"), m.group(1)
        )
        if image is not None and "$" in image:
            image = None
        elif image is not None and image.lower() in stages:
            image = stages[image.lower()]
        if m.group(2):
            stages[m.group(2).lower()] = image
        last = image
    return last


def base_labels(docker_client: Any, base: str | None) -> dict[str, str]:
    """The labels that tell a station which layers are the base image's (see
    :mod:`pht_airflow.traincode`): the base's layer count and last diff id, its name, and its
    manifest digest when the engine knows one. Empty when the base is not in the engine."""
    if base is None:
        return {}
    if base.lower() == "scratch":
        return {BASE_NAME_LABEL: "scratch", BASE_LAYERS_LABEL: "0"}
    import docker.errors

    try:
        image = docker_client.images.get(base)
    except docker.errors.ImageNotFound:
        return {}
    layers = (image.attrs.get("RootFS") or {}).get("Layers") or []
    labels = {BASE_NAME_LABEL: base, BASE_LAYERS_LABEL: str(len(layers))}
    if layers:
        labels[BASE_TOP_LAYER_LABEL] = str(layers[-1])
    repository = base.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:  # a tag, not a registry's port
        repository = repository.rsplit(":", 1)[0]
    for found in image.attrs.get("RepoDigests") or []:
        name, _, digest = str(found).partition("@")
        if digest and (name == repository or name.endswith("/" + repository)):
            labels[BASE_DIGEST_LABEL] = digest
            break
    return labels


def build_image(
    docker_client: Any, folder: Path, tag: str, spec: TrainSpec, *, log: Log | None = None
) -> str:
    """Build ``folder`` with the spec label and the base image's labels
    (:func:`base_labels`); return the image id. Never pulls on purpose; when the engine had
    to fetch the base, the (cached) build runs again with the base's labels."""
    dockerfile = folder / "Dockerfile"
    if not dockerfile.is_file():
        raise TrainBuildError(f"{folder} has no Dockerfile (pht train init writes a starter)")
    import docker.errors

    base = base_image_name(dockerfile.read_text(errors="replace"))

    def build(labels: dict[str, str]) -> str:
        try:
            stream = docker_client.api.build(
                path=str(folder),
                tag=tag,
                labels={**labels, TRAIN_LABEL: spec.to_canonical_json()},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            aux = _docker_stream(stream, log, "docker build")
        except docker.errors.APIError as exc:
            raise TrainBuildError(f"docker build failed: {exc.explanation or exc}") from exc
        return str(aux.get("ID") or docker_client.images.get(tag).id)

    labels = base_labels(docker_client, base)
    image_id = build(labels)
    if base is not None and not labels:
        labels = base_labels(docker_client, base)
        if labels:
            image_id = build(labels)
    return image_id


def push_image(
    docker_client: Any,
    ref: Reference,
    *,
    username: str | None = None,
    password: str | None = None,
    log: Log | None = None,
) -> str:
    """Push the local image tagged ``ref`` through the engine; return the manifest digest."""
    import docker.errors

    auth = {"username": username, "password": password} if username else None
    repo = ref.name
    try:
        stream = docker_client.api.push(
            repo, tag=ref.tag, stream=True, decode=True, auth_config=auth
        )
        aux = _docker_stream(stream, log, f"docker push {ref}")
    except docker.errors.APIError as exc:
        raise TrainBuildError(f"docker push {ref} failed: {exc.explanation or exc}") from exc
    digest = aux.get("Digest")
    if not digest:
        raise TrainBuildError(f"docker push {ref} did not report a digest")
    return str(digest)
