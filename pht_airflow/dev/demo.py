"""``make demo``: a train across three stations, sequential then parallel, with real parts only.

What runs, all on 127.0.0.1 and all started (and stopped, by PID) here:

* a CNCF distribution registry (``docker-registry``) whose notifications go to the central
  service and to each station's webhook receiver;
* the central service (``pht central serve``: station directory and router, SQLite);
* a private PostgreSQL server (:mod:`.localpostgres`) holding two hospitals' cohorts as
  OMOP-style tables (``person``, ``condition_occurrence``, ``measurement``), one database and
  one read-only role per hospital; the third hospital keeps its cohort in one CSV file;
* one Airflow deployment (API server, scheduler, DAG processor, triggerer; LocalExecutor) that
  hosts the three stations, each with its own config, keys, data set, registry project, audit
  log and DAG ``pht_run_train__<station>``. One Airflow for three stations is what fits a
  2-core machine; in production each hospital runs its own. The ``sql`` data sets reach their
  databases through Airflow Connections (``AIRFLOW_CONN_PHT_OMOP_<STATION>``).

The researcher's side is the ``pht`` command line, run as a user would: keys, ``train init``,
``train build --central``, ``train approve``, ``train submit``, ``results fetch``. The train
computes an age histogram and per-stage counts; in sequential mode each station adds its counts
to the previous hop's result, in parallel mode each station counts alone and the researcher
adds the decrypted results up. Either way the demo checks the numbers against the same
statistic computed directly (SQL over the two databases, the CSV file read here) and says
whether they match. The stations extract their data sets just before each run into
``/pht/data/<table>.parquet`` and ``.csv``, so one analysis reads both kinds. Two stations
publish the shape of their data set (``pht station publish-schema``), which the researcher
sees with ``pht central stations show``.

Everything lives under ``.pht/demo`` (wiped at the start of the next run; the keys, station
configs, audit logs, results and logs stay there for inspection until then).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from ..airflow.names import dag_id_for
from ..central_client import CentralClient
from ..errors import PhtError, ServiceError
from ..station.audit import AuditLog
from ..text import safe_text
from .localairflow import LocalAirflow, start_airflow
from .localpostgres import LocalPostgres, start_postgres, stop_leftover
from .localregistry import Endpoint, LocalRegistry, free_port, start_registry

console = Console(highlight=False)

# Three hospitals; each station's registry project is station-<id> (PROTOCOL.md, Routing).
STATIONS = {"aachen": 2400, "bonn": 3100, "cologne": 1800}  # station id -> cohort size
SQL_STATIONS = ("aachen", "bonn")  # OMOP tables in PostgreSQL; the others keep a CSV file
PUBLISHED = ("aachen", "cologne")  # publish_schema: true (bonn keeps its shape to itself)
DATASET = "cohort"
OMOP_TABLES = ["person", "condition_occurrence", "measurement"]
STAGE_SOURCE = "tumour stage"  # measurement_source_value of the stage measurements
# Age bins: everyone under 30 in one bin, since a few patients in their teens would be a cell
# the stations' disclosure control flags (below min_cell_count) and a person would have to
# release the result; the smallest cell of any hop is then well above it (see DISCLOSURE).
AGE_BINS = ["<30"] + [f"{lo}-{lo + 9}" for lo in range(30, 90, 10)] + ["90+"]
STAGES = ["I", "II", "III", "IV"]
DIAGNOSES = ["C18 colon", "C34 lung", "C50 breast", "C61 prostate", "C43 melanoma"]
HOP_TIMEOUT = 600.0  # seconds for a whole route, on a busy 2-core machine
# The stations' disclosure control (policy.disclosure, README "Disclosure control"): the train
# may only hand out JSON (its result and its output manifest), and every count it declares must
# be 0 or at least MIN_CELL_COUNT. The demo cohorts' smallest cell is 24 (cologne, age <30).
MIN_CELL_COUNT = 10
DISCLOSURE = {"allowed_types": ["json"], "max_files": 2}

# The train's analysis: Python's standard library only (the image has nothing else).
ANALYSIS = '''\
"""Age histogram and per-stage counts, added to the previous hop's (sequential mode).

Reads the station's data set from /pht/data, either OMOP tables (person.csv,
condition_occurrence.csv, measurement.csv: age at diagnosis from year_of_birth and
condition_start_date, the stage from the tumour-stage measurement) or flat files
(*.csv with columns age and stage), and /pht/input/result.json (the previous hop's result,
absent at the first hop and in parallel mode); writes /pht/output/result.json. Only
aggregate counts leave the station, and /pht/output/pht-output.json declares every number
in the result a count, so the station's disclosure control checks each one.
"""

import csv
import json
import os
from pathlib import Path

BINS = ["<30"] + [f"{lo}-{lo + 9}" for lo in range(30, 90, 10)] + ["90+"]
DATA = Path("/pht/data")
OUTPUT = Path("/pht/output")
COUNTS = ["patients", "age_histogram", "stage_counts", "stations"]


def age_bin(age):
    return BINS[min(max(age // 10 - 2, 0), len(BINS) - 1)]


def table(path):
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def patients():
    """(age at diagnosis, stage) for every patient of the data set."""
    if (DATA / "person.csv").exists():
        born = {r["person_id"]: int(r["year_of_birth"]) for r in table(DATA / "person.csv")}
        diagnosed = {r["person_id"]: int(r["condition_start_date"][:4])
                     for r in table(DATA / "condition_occurrence.csv")}
        for r in table(DATA / "measurement.csv"):
            if r["measurement_source_value"] == "tumour stage":
                person = r["person_id"]
                yield diagnosed[person] - born[person], r["value_source_value"]
        return
    for path in sorted(DATA.glob("*.csv")):
        for r in table(path):
            yield int(r["age"]), r["stage"]


def main():
    previous = Path("/pht/input/result.json")
    if previous.exists():
        result = json.loads(previous.read_text())
    else:
        result = {"patients": 0, "age_histogram": {b: 0 for b in BINS}, "stage_counts": {},
                  "stations": {}}
    counted = 0
    for age, stage in patients():
        counted += 1
        result["age_histogram"][age_bin(age)] += 1
        result["stage_counts"][stage] = result["stage_counts"].get(stage, 0) + 1
    result["patients"] += counted
    result["stations"][os.environ["PHT_STATION_ID"]] = counted  # in visiting order
    (OUTPUT / "result.json").write_text(json.dumps(result, indent=2))
    manifest = {"version": 1,
                "tables": {"result.json": {"kind": "frequency", "count_fields": COUNTS}}}
    (OUTPUT / "pht-output.json").write_text(json.dumps(manifest))
    print(f"{os.environ['PHT_STATION_ID']}: added {counted} patients (hop {os.environ['PHT_HOP']})")


main()
'''


# --- the cohorts and the direct computation ------------------------------------------------


def age_bin(age: int) -> str:
    return AGE_BINS[min(max(age // 10 - 2, 0), len(AGE_BINS) - 1)]


def cohort(station: str, rows: int) -> list[dict[str, Any]]:
    """A synthetic cohort (seeded per station): id, age at diagnosis, sex, diagnosis (ICD-10
    code and name), stage, date of diagnosis."""
    rng = random.Random(f"pht-demo-{station}")
    patients = []
    for i in range(rows):
        age = max(18, min(99, int(rng.gauss(62, 14))))
        stage = rng.choices(STAGES, weights=[30, 30, 25, 15])[0]
        sex, diagnosis = rng.choice("FM"), rng.choice(DIAGNOSES)
        when = datetime.date(rng.randint(2019, 2024), rng.randint(1, 12), rng.randint(1, 28))
        patients.append({"id": f"{station}-{i:05d}", "age": age, "sex": sex,
                         "diagnosis": diagnosis, "stage": stage, "diagnosed": when})  # fmt: skip
    return patients


def write_cohort(path: Path, patients: list[dict[str, Any]]) -> None:
    """The CSV file a station keeps: id, age, sex, diagnosis, stage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "age", "sex", "diagnosis", "stage"])
        for p in patients:
            w.writerow([p["id"], p["age"], p["sex"], p["diagnosis"], p["stage"]])
    # The station reads it when it extracts the data set (the train sees only the extract).
    os.chmod(path.parent, 0o755)  # noqa: S103 - data set folder
    os.chmod(path, 0o644)


OMOP_DDL = [
    "CREATE TABLE person (person_id bigint PRIMARY KEY, gender_concept_id integer NOT NULL, "
    "year_of_birth integer NOT NULL, gender_source_value varchar(50))",
    "CREATE TABLE condition_occurrence (condition_occurrence_id bigint PRIMARY KEY, "
    "person_id bigint NOT NULL REFERENCES person, condition_concept_id integer NOT NULL, "
    "condition_start_date date NOT NULL, condition_source_value varchar(50))",
    "CREATE TABLE measurement (measurement_id bigint PRIMARY KEY, person_id bigint NOT NULL "
    "REFERENCES person, measurement_concept_id integer NOT NULL, measurement_date date NOT "
    "NULL, measurement_source_value varchar(50), value_source_value varchar(50))",
]
GENDER_CONCEPT = {"F": 8532, "M": 8507}  # OMOP standard concepts FEMALE, MALE


def load_omop(server_url: str, station: str, patients: list[dict[str, Any]]) -> str:
    """The station's database ``omop_<station>`` with its cohort as OMOP-style tables, and a
    role that can only read it; returns the Airflow Connection URI for that role.

    Concept ids other than gender are 0 ("no matching concept"); the source values carry the
    ICD-10 code and the stage, as an ETL without vocabulary mapping would leave them.
    """
    import psycopg

    database, role = f"omop_{station}", f"reader_{station}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
        conn.execute(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
    with psycopg.connect(f"{server_url}/{database}") as conn:
        for ddl in OMOP_DDL:
            conn.execute(ddl)
        cur = conn.cursor()
        with cur.copy("COPY person FROM STDIN") as copy:
            for i, p in enumerate(patients, 1):
                born = p["diagnosed"].year - p["age"]
                copy.write_row((i, GENDER_CONCEPT[p["sex"]], born, p["sex"]))
        with cur.copy("COPY condition_occurrence FROM STDIN") as copy:
            for i, p in enumerate(patients, 1):
                copy.write_row((i, i, 0, p["diagnosed"], p["diagnosis"].split()[0]))
        with cur.copy("COPY measurement FROM STDIN") as copy:
            for i, p in enumerate(patients, 1):
                copy.write_row((i, i, 0, p["diagnosed"], STAGE_SOURCE, p["stage"]))
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    return f"{server_url.replace('://pht@', f'://{role}@')}/{database}"


def direct_statistic(server_url: str, csv_paths: list[Path]) -> dict[str, Any]:
    """The same statistic as the train, computed here over every cohort at once: SQL over
    the OMOP databases, and the CSV files read directly."""
    import psycopg

    hist: Counter[str] = Counter(dict.fromkeys(AGE_BINS, 0))
    stages: Counter[str] = Counter()
    patients = 0
    found: list[tuple[int, str]] = []
    for station in SQL_STATIONS:
        with psycopg.connect(f"{server_url}/omop_{station}") as conn:
            found += conn.execute(
                "SELECT extract(year FROM c.condition_start_date)::int - p.year_of_birth, "
                "m.value_source_value FROM person p "
                "JOIN condition_occurrence c ON c.person_id = p.person_id "
                "JOIN measurement m ON m.person_id = p.person_id "
                "AND m.measurement_source_value = %s",
                (STAGE_SOURCE,),
            ).fetchall()
    for path in csv_paths:
        with path.open(newline="") as f:
            found += [(int(row["age"]), row["stage"]) for row in csv.DictReader(f)]
    for age, stage in found:
        patients += 1
        hist[age_bin(age)] += 1
        stages[stage] += 1
    return {"patients": patients, "age_histogram": dict(hist), "stage_counts": dict(stages)}


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up parallel results (each a single station's counts)."""
    hist: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for r in results:
        hist.update(r["age_histogram"])
        stages.update(r["stage_counts"])
    return {
        "patients": sum(r["patients"] for r in results),
        "age_histogram": dict(hist),
        "stage_counts": dict(stages),
        "stations": {s: n for r in results for s, n in r["stations"].items()},
    }


def comparable(stat: dict[str, Any]) -> dict[str, Any]:
    return {
        "patients": stat["patients"],
        "age_histogram": {k: v for k, v in stat["age_histogram"].items() if v},
        "stage_counts": {k: v for k, v in stat["stage_counts"].items() if v},
    }


def result_table(title: str, stat: dict[str, Any], direct: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("statistic")
    table.add_column("from the train", justify="right")
    table.add_column("computed directly", justify="right")
    rows = [("patients", stat["patients"], direct["patients"])]
    for label in direct["age_histogram"]:
        rows.append((f"age {label}", stat["age_histogram"].get(label, 0),
                     direct["age_histogram"][label]))  # fmt: skip
    for stage in STAGES:
        rows.append((f"stage {stage}", stat["stage_counts"].get(stage, 0),
                     direct["stage_counts"].get(stage, 0)))  # fmt: skip
    for name, got, want in rows:
        mark = "" if got == want else " [red]≠[/red]"
        table.add_row(name, f"{got}{mark}", str(want))
    return table


def verdict_line(record: dict[str, Any]) -> str:
    """One hop's disclosure verdict from its station's audit record, e.g. ``aachen hop 0:
    disclosure pass (result.json: pass, pht-output.json: pass)``; control characters escaped."""
    disclosure = record.get("disclosure") or {}
    files = ", ".join(
        f"{safe_text(f.get('path'), limit=80)}: {safe_text(f.get('verdict'), limit=10)}"
        for f in disclosure.get("files") or []
        if isinstance(f, dict)
    )
    verdict = safe_text(disclosure.get("verdict") or "not checked", limit=20)
    station = safe_text(record.get("station"), limit=40)
    head = f"{station} hop {record.get('hop')}: disclosure {verdict}"
    released = record.get("released_by")
    tail = f"; released by {safe_text(released, limit=80)}" if released else ""
    return f"{head} ({files or 'no files'}){tail}; outcome {record.get('outcome')}"


def hop_records(audit_logs: dict[str, Path], train_id: str) -> list[dict[str, Any]]:
    """The audit records of ``train_id``'s hops at each station, in hop order."""
    found = []
    for path in audit_logs.values():
        if path.exists():
            found += [r for r in AuditLog(path).entries() if r.get("train_id") == train_id]
    return sorted(found, key=_hop_number)


def _hop_number(record: dict[str, Any]) -> int:
    hop = record.get("hop")
    return hop if isinstance(hop, int) else -1


# --- running things ----------------------------------------------------------------------


class Demo:
    """The demo's state: folders, secrets, processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.secrets = root / "secrets"
        self.passfile = self.secrets / "passphrase"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PHT_")}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.registry: LocalRegistry | None = None
        self.central: subprocess.Popen[bytes] | None = None
        self.airflow: LocalAirflow | None = None
        self.postgres: LocalPostgres | None = None
        self.connections: dict[str, str] = {}  # AIRFLOW_CONN_* -> URI
        self.central_url = ""
        self.pidfile = root.parent / "demo.pids"
        self.postgres_file = root.parent / "demo.postgres"  # the cluster's temporary folder

    # -- helpers

    def pht(self, *args: str, show: bool = True) -> str:
        """Run the ``pht`` command line as a user would, echoing the command."""
        shown = " ".join(a if len(a) < 60 else a[:57] + "…" for a in args)
        console.print(f"[bold cyan]$ pht {shown}[/bold cyan]")
        proc = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "pht_airflow.cli", *args],
            env=self.env,
            text=True,
            capture_output=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if show and proc.stdout.strip():
            console.print(proc.stdout.rstrip(), markup=False)
        if proc.returncode != 0:
            console.print(proc.stderr.rstrip(), markup=False, style="red")
            raise PhtError(f"demo step failed: pht {args[0]} {args[1]} exited {proc.returncode}")
        return proc.stdout

    def secret_file(self, name: str) -> tuple[Path, str]:
        value = secrets.token_urlsafe(24)
        path = self.secrets / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path, value

    def remember_pids(self) -> None:
        pids = []
        if self.registry:
            pids.append(self.registry.process.pid)
        if self.central:
            pids.append(self.central.pid)
        if self.airflow:
            pids.extend(self.airflow.pids)
        self.pidfile.write_text("\n".join(map(str, pids)) + "\n")

    # -- setup

    def make_keys(self) -> None:
        self.keys.mkdir(parents=True)
        self.secrets.mkdir(mode=0o700)
        self.passfile.write_text(secrets.token_urlsafe(24) + "\n")
        self.passfile.chmod(0o600)
        for name in ("alice", "reviewer", *STATIONS):
            self.pht("keys", "generate", "--name", name, "--out", str(self.keys),
                     "--passphrase-file", str(self.passfile), show=False)  # fmt: skip
        console.print(f"keys for alice (researcher), reviewer and {', '.join(STATIONS)} in "
                      f"{self.keys} (private files encrypted, mode 0600)")  # fmt: skip

    def start_postgres(self) -> None:
        """The hospitals' PostgreSQL with the OMOP databases of the ``sql`` stations."""
        self.postgres = start_postgres(prefix="pht-demo-postgres-")
        self.postgres_file.write_text(f"{self.postgres.root}\n")
        for station in SQL_STATIONS:
            uri = load_omop(self.postgres.url, station, cohort(station, STATIONS[station]))
            self.connections[f"AIRFLOW_CONN_PHT_OMOP_{station.upper()}"] = uri
        # The pht command (publish-schema) reads the same Connections, as Airflow does.
        self.env.update(self.connections)
        self.env["AIRFLOW_HOME"] = str(self.root / "airflow-cli")
        console.print(f"PostgreSQL   127.0.0.1:{self.postgres.port}  (pid {self.postgres.pid}; "
                      f"databases {', '.join(f'omop_{s}' for s in SQL_STATIONS)} with tables "
                      f"{', '.join(OMOP_TABLES)}; a read-only role per hospital)")  # fmt: skip

    def dataset_config(self, station: str, rel: Path) -> dict[str, Any]:
        """The station's data set: OMOP tables in PostgreSQL, or one CSV file."""
        common = {"formats": ["parquet", "csv"], "publish_schema": station in PUBLISHED}
        if station in SQL_STATIONS:
            return {"kind": "sql", "connection": f"pht_omop_{station}", "tables": OMOP_TABLES,
                    **common, "identifier_columns": ["person_id"]}  # fmt: skip
        path = rel / "station-state" / station / "data" / "patients.csv"
        return {"kind": "file", "path": str(path), **common, "identifier_columns": ["id"]}

    def write_stations(self, registry_host: str) -> list[str]:
        """Each station's data set, secrets and config; returns its webhook secrets."""
        configs = self.root / "stations"
        configs.mkdir()
        webhook_secrets = []
        for station, rows in STATIONS.items():
            state = self.root / "station-state" / station
            state.mkdir(parents=True)
            if station not in SQL_STATIONS:
                write_cohort(state / "data" / "patients.csv", cohort(station, rows))
            secret_path, secret = self.secret_file(f"webhook-{station}")
            webhook_secrets.append(secret)
            rel = Path("..")
            config = {
                "station": {"id": station},
                "keys": {
                    "public_key": str(rel / "keys" / f"{station}.pub"),
                    "signing_key": {"file": str(rel / "keys" / f"{station}.key")},
                    "signing_passphrase": {"file": str(rel / "secrets" / "passphrase")},
                    "age_identity": {"file": str(rel / "keys" / f"{station}.age")},
                    "age_recipient": str(rel / "keys" / f"{station}.age.pub"),
                    "age_passphrase": {"file": str(rel / "secrets" / "passphrase")},
                },
                "registry": {"host": registry_host, "project": f"station-{station}"},
                "trust": {
                    "trusted_creators": [str(rel / "keys" / "alice.pub")],
                    "trusted_approvers": [str(rel / "keys" / "reviewer.pub")],
                    "required_approvals": 1,
                },
                "datasets": {DATASET: self.dataset_config(station, rel)},
                "sandbox": {
                    "memory": "256MiB",
                    "cpus": 1,
                    "pids": 64,
                    "wall_time": "120s",
                    "output_bytes": "1MiB",
                },  # fmt: skip
                # A scripted demo has nobody to click Approve; stations default to asking.
                # Published row counts are rounded down to multiples of min_cell_count.
                # Every count the train declares is checked against min_cell_count; a smaller
                # one would need a person's release (the release step), which nobody gives here.
                "policy": {
                    "require_approval": False,
                    "min_cell_count": MIN_CELL_COUNT,
                    "disclosure": DISCLOSURE,
                },
                "audit_log": str(rel / "station-state" / station / "audit.jsonl"),
                "work_dir": str(rel / "station-state" / station / "work"),
                "webhook": {"secret": {"file": str(rel / "secrets" / secret_path.name)}},
                # A failed hop is reported to the central service at once, signed.
                "central": {"url": self.central_url},
            }
            (configs / f"{station}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        kinds = {s: "OMOP tables in PostgreSQL" if s in SQL_STATIONS else "a CSV file"
                 for s in STATIONS}  # fmt: skip
        console.print(f"station configs in {configs}; cohorts of " + ", ".join(
            f"{n} ({r} patients, {kinds[n]})" for n, r in STATIONS.items()))  # fmt: skip
        return webhook_secrets

    def start_services(self) -> None:
        central_port, airflow_port = free_port(), free_port()
        self.central_url = f"http://127.0.0.1:{central_port}"
        airflow_url = f"http://127.0.0.1:{airflow_port}"
        _, central_secret = self.secret_file("central-webhook")
        _, token = self.secret_file("central-token")
        self.env["PHT_CENTRAL_TOKEN"] = token

        console.rule("2. a registry, the central service, the hospitals' databases and three "
                     "stations on Airflow")  # fmt: skip
        with console.status("starting PostgreSQL and loading the OMOP tables…"):
            self.start_postgres()
        registry_port = free_port()
        registry_host = f"127.0.0.1:{registry_port}"
        station_secrets = self.write_stations(registry_host)
        endpoints = [
            Endpoint.manifest_pushes(
                "central",
                f"{self.central_url}/webhooks/registry-events",
                {"Authorization": [central_secret]},
            )  # fmt: skip
        ] + [
            Endpoint.manifest_pushes(
                f"station-{s}",
                f"{airflow_url}/pht/{s}/registry-events",
                {"Authorization": [secret]},
            )  # fmt: skip
            for s, secret in zip(STATIONS, station_secrets, strict=True)
        ]
        self.registry = start_registry(
            self.root / "registry", port=registry_port, endpoints=endpoints
        )
        self.remember_pids()
        console.print(f"registry     {self.registry.url}  (pid {self.registry.process.pid}; "
                      "notifies the central service and each station)")  # fmt: skip

        log = (self.root / "central.log").open("wb")
        self.central = subprocess.Popen(  # noqa: S603 - our own CLI
            [
                sys.executable, "-m", "pht_airflow.cli", "central", "serve",
                "--registry", registry_host, "--port", str(central_port),
                "--db", f"sqlite:///{self.root / 'central.db'}",
                "--reconcile-seconds", "10", "--hop-timeout", "15m",
            ],
            env={**self.env, "PHT_WEBHOOK_SECRET": central_secret},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.remember_pids()
        client = CentralClient(self.central_url, token=token)
        deadline = time.monotonic() + 60
        while True:
            if self.central.poll() is not None:
                raise ServiceError(f"the central service exited; see {self.root / 'central.log'}")
            with contextlib.suppress(PhtError):
                client.stations()
                break
            if time.monotonic() > deadline:
                raise ServiceError(f"the central service did not answer; see {log.name}")
            time.sleep(0.5)
        console.print(f"central      {self.central_url}  (pid {self.central.pid}; API docs at "
                      f"{self.central_url}/docs)")  # fmt: skip

        with console.status("starting Airflow (API server, scheduler, DAG processor, triggerer)…"):
            started = time.monotonic()
            self.airflow = start_airflow(
                self.root / "airflow",
                env={"PHT_STATION_CONFIG_DIR": str(self.root / "stations"), **self.connections},
                port=airflow_port,
                log_dir=self.root,
            )
            self.remember_pids()
            for station in STATIONS:
                self.airflow.wait_for_dag(dag_id_for(station))
        console.print(f"Airflow      {self.airflow.url}  (pids "
                      f"{', '.join(map(str, sorted(self.airflow.pids)))}; up in "
                      f"{time.monotonic() - started:.0f} s; user admin, password in "
                      f"{self.airflow.home / 'passwords.json'})")  # fmt: skip
        console.print("stations     " + ", ".join(f"{s} (DAG {dag_id_for(s)}, webhook "
                      f"/pht/{s}/registry-events)" for s in STATIONS))  # fmt: skip

        console.rule("3. the central team registers the stations")
        for station in STATIONS:
            self.pht("central", "stations", "add", "--central", self.central_url,
                     "--id", station, "--key", str(self.keys / f"{station}.pub"),
                     "--recipient-file", str(self.keys / f"{station}.age.pub"))  # fmt: skip
        self.pht("central", "stations", "list", "--central", self.central_url)

        console.rule("4. stations publish the shape of their data sets; a researcher looks")
        for station in PUBLISHED:
            self.pht("station", "publish-schema", "--config",
                     str(self.root / "stations" / f"{station}.yaml"))  # fmt: skip
        console.print(f"({', '.join(s for s in STATIONS if s not in PUBLISHED)} publishes "
                      "nothing: its data set is not marked publish_schema)")  # fmt: skip
        for station in PUBLISHED:
            self.pht("central", "stations", "show", station, "--central", self.central_url)

    # -- one train

    def run_train(self, mode: str, step: int) -> dict[str, Any]:
        assert self.registry is not None and self.airflow is not None
        console.rule(f"{step}. a {mode} train across {', '.join(STATIONS)}")
        folder = self.root / f"age-histogram-{mode}"
        self.pht("train", "init", str(folder))
        (folder / "analysis.py").write_text(ANALYSIS)
        console.print("analysis.py replaced by the age histogram / stage count analysis")
        out = self.pht(
            "train", "build", str(folder), "--route", ",".join(STATIONS), "--mode", mode,
            "--dataset", DATASET, "--creator-key", str(self.keys / "alice.key"),
            "--central", self.central_url, "--push", f"{self.registry.host}/pht-incoming",
            "--passphrase-file", str(self.passfile), "--json", show=False,
        )  # fmt: skip
        train = json.loads(out)
        ref = f"{train['reference'].rsplit(':', 1)[0]}@{train['digest']}"
        console.print(f"train {train['id']} built, pushed and signed by alice: {train['digest']}")
        self.pht("train", "approve", ref, "--key", str(self.keys / "reviewer.key"), "--yes",
                 "--max-files", "5", "--passphrase-file", str(self.passfile),
                 show=False)  # fmt: skip
        console.print("approved by reviewer (approver signature added)")
        self.pht("train", "submit", ref, "--central", self.central_url,
                 "--key", str(self.keys / "alice.pub"))  # fmt: skip

        info = self.follow(train["id"])
        console.print("each hop's disclosure control, from the station's audit log:")
        for record in self.wait_for_records(train["id"], info["hops"]):
            console.print(f"  {verdict_line(record)}", markup=False)
        if info["status"] != "done":
            raise PhtError(f"train {train['id']} {info['status']}: {info.get('reason')}")

        results = self.root / "results" / mode
        self.pht("results", "fetch", f"{self.registry.host}/pht-outbox/{train['id']}:train",
                 "--identity", str(self.keys / "alice.age"), "--out", str(results),
                 "--passphrase-file", str(self.passfile))  # fmt: skip
        files = sorted(results.glob("*/result.json"))
        decrypted = [json.loads(p.read_text()) for p in files]
        if mode == "sequential":
            # visibility "final": only the last hop is addressed to alice
            if len(decrypted) != 1:
                raise PhtError(f"expected one readable result, got {len(decrypted)}")
            stat = decrypted[0]
        else:
            stat = combine(decrypted)
        return stat

    def wait_for_records(self, train_id: str, hops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each hop's audit record: the central service may see a hop's result before the
        station's ``record`` task has appended it, so wait for them (up to a minute)."""
        audit_logs = {s: self.root / "station-state" / s / "audit.jsonl" for s in STATIONS}
        expected = {(h["station"], h["hop"]) for h in hops}
        deadline = time.monotonic() + 60
        while True:
            records = hop_records(audit_logs, train_id)
            if expected <= {(r.get("station"), r.get("hop")) for r in records}:
                return records
            if time.monotonic() > deadline:
                console.print("(some stations have not recorded their hop yet)")
                return records
            time.sleep(1)

    def follow(self, train_id: str) -> dict[str, Any]:
        """Print the train's timeline (central) and its stations' Airflow runs as they move."""
        assert self.airflow is not None
        client = CentralClient(self.central_url)
        seen_events = 0
        run_states: dict[tuple[str, str], str] = {}
        started = time.monotonic()
        with console.status("routing…") as status:
            while True:
                info = client.train(train_id)
                for e in info["events"][seen_events:]:
                    console.print(f"  [dim]{e['time'][11:19]}[/dim] central  "
                                  f"{e['kind']:<9} {e['message']}")  # fmt: skip
                seen_events = len(info["events"])
                waiting = []
                for hop in info["hops"]:
                    if hop["state"] not in ("sent", "done"):
                        continue
                    for run in self.airflow.runs(dag_id_for(hop["station"])):
                        if train_id not in str((run.get("conf") or {}).get("train", "")):
                            continue
                        key = (hop["station"], run["dag_run_id"])
                        if run_states.get(key) != run["state"]:
                            run_states[key] = run["state"]
                            console.print(f"  [dim]{time.strftime('%H:%M:%S', time.gmtime())}"
                                          f"[/dim] {hop['station']:<8} Airflow run "
                                          f"{run['dag_run_id'][:20]}… {run['state']}")  # fmt: skip
                        if run["state"] in ("queued", "running"):
                            waiting.append(f"hop {hop['hop']} at {hop['station']}")
                if info["status"] in ("done", "failed"):
                    break
                if time.monotonic() - started > HOP_TIMEOUT:
                    raise PhtError(f"train {train_id} did not finish in {HOP_TIMEOUT:.0f} s")
                status.update(f"{time.monotonic() - started:.0f} s: " +
                              (", ".join(waiting) or "routing"))  # fmt: skip
                self.airflow.check_alive()
                time.sleep(2)
        table = Table(title=f"train {train_id}: {info['status']} in "
                      f"{time.monotonic() - started:.0f} s", title_justify="left")  # fmt: skip
        for col in ("hop", "station", "state", "result"):
            table.add_column(col)
        for hop in info["hops"]:
            table.add_row(str(hop["hop"]), hop["station"], hop["state"],
                          (hop["result_digest"] or "")[:23])  # fmt: skip
        console.print(table)
        if info["status"] == "failed":
            console.print(f"[red]reason: {info.get('reason')}[/red]")
            console.print(self.airflow.diagnostics(lines=15), markup=False)
        return info

    def stop(self) -> None:
        if self.airflow is not None:
            self.airflow.stop()
        if self.central is not None and self.central.poll() is None:
            self.central.send_signal(signal.SIGTERM)
            try:
                self.central.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.central.kill()
                self.central.wait(timeout=10)
        if self.registry is not None:
            _remove_images_of(self.registry.host)
            self.registry.stop()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres_file.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)


def _remove_images_of(host: str) -> None:
    """Remove the train images built or pulled for the demo's registry (it lives only as long
    as the demo, so they could never be used again)."""
    import docker

    engine = docker.from_env(timeout=60)
    try:
        for image in engine.api.images():
            names = (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
            if names and all(n.startswith(f"{host}/") for n in names):
                with contextlib.suppress(docker.errors.APIError):  # in use: left alone
                    engine.api.remove_image(image["Id"], force=True)
    finally:
        engine.close()


def _stop_leftovers(pidfile: Path, postgres_file: Path) -> None:
    """Stop what an interrupted earlier demo left running (only our own processes)."""
    if postgres_file.exists():
        folder = Path(postgres_file.read_text().strip())
        if folder.name.startswith("pht-demo-postgres-") and stop_leftover(folder):
            console.print(f"stopped the PostgreSQL an earlier demo left in {folder}")
        postgres_file.unlink()
    if not pidfile.exists():
        return
    for line in pidfile.read_text().split():
        pid = int(line)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"airflow" in cmdline or b"docker-registry" in cmdline or b"pht_airflow" in cmdline:
            console.print(f"stopping process {pid} left by an earlier demo")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pidfile.unlink()


@contextlib.contextmanager
def _phase(title: str) -> Iterator[None]:
    console.rule(title)
    yield


def main() -> int:
    root = Path(".pht/demo").resolve()
    demo = Demo(root)
    _stop_leftovers(demo.pidfile, demo.postgres_file)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    os.chmod(root, 0o700)
    started = time.monotonic()
    try:
        with _phase("1. keys for a researcher, a reviewer and three stations"):
            demo.make_keys()
        demo.start_services()
        assert demo.postgres is not None
        files = [root / "station-state" / s / "data" / "patients.csv" for s in STATIONS
                 if s not in SQL_STATIONS]  # fmt: skip
        direct = direct_statistic(demo.postgres.url, files)
        outcomes = []
        for step, mode in ((5, "sequential"), (6, "parallel")):
            stat = demo.run_train(mode, step)
            console.print(result_table(f"{mode}: the decrypted result", stat, direct))
            ok = comparable(stat) == comparable(direct)
            outcomes.append(ok)
            if ok:
                console.print(f"[bold green]{mode}: matches direct computation[/bold green] "
                              f"({stat['patients']} patients from "
                              f"{', '.join(stat['stations'])})")  # fmt: skip
            else:
                console.print(f"[bold red]{mode}: does NOT match direct computation[/bold red]")
    except PhtError as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}", markup=True)
        console.print(f"logs and state are in {root}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        with console.status("stopping the registry, the central service and Airflow…"):
            demo.stop()
    console.rule("done")
    console.print(f"both modes finished in {time.monotonic() - started:.0f} s; keys, station "
                  f"configs, audit logs ({root}/station-state/*/audit.jsonl), results and logs "
                  f"are in {root}. Check an audit log with: pht audit verify "
                  f"{root}/station-state/aachen/audit.jsonl")  # fmt: skip
    return 0 if all(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
