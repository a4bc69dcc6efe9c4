"""What leaves the hospital (issue 12's Must-show) on the real, running Airflow.

One deployment per module (:mod:`support.airflowstack`: API server, scheduler, DAG processor,
triggerer on 127.0.0.1) for station-a, whose data set is a CSV file of 40 patients (so the
station knows its row count) with ``patient_id`` as its identifier column, under
``min_cell_count: 10`` and the default ``policy.disclosure``. A real central service (uvicorn
on 127.0.0.1, SQLite) routes every train: the researcher submits it, the router copies it into
station-a's project, the station's ``record`` step reports a final outcome that is not a
success. Real trains on the Python base image write:

1. a clean frequency table (declared, counts ≥ 10): passes, released without a person, pushed;
2. a frequency table with a cell of 3: waits at ``release``; approved through the HITL REST
   endpoint it is sealed and pushed (the audit names who released it); a second such train
   rejected with a reason pushes nothing, is audited ``withheld`` with who and why, and the
   researcher's ``pht train status`` says withheld;
3. a copy of the data set (row-level): blocked in ``check_output`` with the reason, nothing
   pushed, the audit's failure names it;
4. a file type the policy does not allow (``output.exe``): blocked with the reason;
5. an ACRO report claiming "pass" over a table with a cell of 3: the station's own check wins
   (review);
6. after the reviewed hops: the Airflow database file, every XCom value and every task log
   hold none of the output's distinctive values ("Zebrafinch-7731", …), and the station's
   work folder holds nothing but the pre-flight cache.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import uvicorn
import yaml
from click.testing import CliRunner
from support.airflowstack import (
    AirflowStack,
    airflow_stack,
    answer,
    audit_record,
    run_url,
    task_states,
    trigger,
    wait_for_end,
    wait_for_person,
    wait_for_success,
)
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import free_port
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.results import fetch_results
from pht_airflow.spec import TrainSpec
from pht_airflow.station.preflight import CACHE_PREFIX
from pht_airflow.web.central_app import create_app

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

MIN_CELL = 10
ROWS = 40
#: Distinctive values of the output (a region's name; the data set holds them too): they
#: must never reach Airflow's database, an XCom or a task log.
COMMON = "Zebrafinch-7731"  # 37 patients
RARE = "Quokkaville-5512"  # 3 patients: a cell under min_cell_count
DISTINCTIVE = (COMMON, RARE)
TOKEN = "release-tests-central-token"

_READ = r"""
import csv, hashlib, json
from collections import Counter
from pathlib import Path
out = Path("/pht/output")
with open("/pht/data/patients.csv", newline="") as f:
    rows = list(csv.DictReader(f))

def table(name, header, items):
    with open(out / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(items)

def declare(**tables):
    (out / "pht-output.json").write_text(json.dumps({"version": 1, "tables": {
        name: {"kind": "frequency", "count_columns": cols} for name, cols in tables.items()}}))
"""

#: 1. counts by stage (20 and 20), declared a frequency table.
CLEAN = (
    _READ
    + r"""
by_stage = Counter(r["stage"] for r in rows)
table("by_stage.csv", ["stage", "patients"], sorted(by_stage.items()))
declare(**{"by_stage.csv": ["patients"]})
print("wrote counts by stage")
"""
)

#: 2. counts by region: 3 and 37, declared a frequency table.
SMALL_CELL = (
    _READ
    + r"""
by_region = Counter(r["region"] for r in rows)
table("by_region.csv", ["region", "patients"], sorted(by_region.items()))
declare(**{"by_region.csv": ["patients"]})
print("wrote counts by region")
"""
)

#: 3. the data set itself, row by row (without its identifier column).
COPY = (
    _READ
    + r"""
table("extract.csv", ["age", "stage", "region"],
      [(r["age"], r["stage"], r["region"]) for r in rows])
print("wrote the rows")
"""
)

#: 4. a clean table and a file type the policy does not allow.
EXE = (
    CLEAN
    + r"""
(out / "output.exe").write_bytes(b"MZ\x90\x00not really a program")
"""
)

#: 5. what acro.crosstab then acro.finalise(out, "json") leave: ACRO says "pass".
ACRO = (
    _READ
    + r"""
by = Counter((r["region"], r["stage"]) for r in rows)
regions, stages = sorted({r for r, _ in by}), sorted({s for _, s in by})
table("output_0_0.csv", ["region", *stages],
      [["region", *[""] * len(stages)]] + [[g, *[by[(g, s)] for s in stages]] for g in regions])
(out / "checksums").mkdir()
digest = hashlib.sha256((out / "output_0_0.csv").read_bytes()).hexdigest()
(out / "checksums" / "output_0_0.csv.txt").write_text(digest)
sdc = {"summary": {"suppressed": False, "negative": 0, "missing": 0, "threshold": 0,
                   "p-ratio": 0, "nk-rule": 0, "all-values-are-same": 0},
       "cells": {k: [] for k in ("negative", "missing", "threshold", "p-ratio", "nk-rule",
                                 "all-values-are-same")}}
(out / "results.json").write_text(json.dumps({
    "version": "0.4.8",
    "results": {"output_0": {
        "uid": "output_0", "status": "pass", "type": "table",
        "properties": {"method": "crosstab"},
        "files": [{"name": "output_0_0.csv", "sdc": sdc}], "outcome": {},
        "command": "acro.crosstab(df.region, df.stage)", "summary": "pass; ",
        "timestamp": "2026-12-05T06:00:00", "comments": [], "exception": ""}},
    "session_summary": {"DO_NOT_RELEASE": True, "purpose": "Session summary", "data": []},
}, indent=4))
print("ACRO says pass")
"""
)


# --- the central service, the station, the deployment -------------------------------------


class Central:
    """The central app served on 127.0.0.1, and what the researcher asks it."""

    def __init__(self, url: str, router: Router) -> None:
        self.url = url
        self.router = router

    def train(self, train_id: str) -> dict[str, Any]:
        answer = requests.get(f"{self.url}/trains/{train_id}", timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def status(self, train_id: str) -> str:
        """What ``pht train status`` shows the researcher."""
        result = CliRunner().invoke(
            main, ["train", "status", train_id, "--central", self.url], env={"COLUMNS": "1000"}
        )
        assert result.exit_code == 0, result.output
        return str(result.output)


@pytest.fixture(scope="module")
def central(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any
) -> Iterator[Central]:
    root = tmp_path_factory.mktemp("release-central")
    engine = make_engine(f"sqlite:///{root / 'central.db'}")
    with RegistryClient(registry.host) as client:
        router = Router(make_sessionmaker(engine), client, PlainRegistryAdmin(client))
        router.add_station("station-a", parties["station-a"].public.pem,
                           parties["station-a"].age.recipient, project="station-a")  # fmt: skip
        app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: TOKEN,
                         reconcile_seconds=0)  # fmt: skip
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while thread.is_alive() and not server.started:
            time.sleep(0.05)  # waiting for the server to listen, not fixing a race
        assert server.started, "the central service did not start"
        try:
            yield Central(f"http://127.0.0.1:{port}", router)
        finally:
            server.should_exit = True
            thread.join(30)
            engine.dispose()


def _patients() -> str:
    lines = ["patient_id,age,stage,region"]
    for i in range(ROWS):
        region = RARE if i < 3 else COMMON
        lines.append(f"P{1000 + i},{30 + i},{'I' if i % 2 else 'II'},{region}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any, central: Central
) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("airflow-release")
    station = make_station(
        root / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={
            "datasets": {
                "cohort": {
                    "kind": "file",
                    "path": "data/patients.csv",
                    "table": "patients",
                    "formats": ["csv"],
                    "identifier_columns": ["patient_id"],
                }
            },
            "policy": {"min_cell_count": MIN_CELL, "disclosure": {}},
            "central": {"url": central.url},
        },
    )
    (station.root / "data" / "patients.csv").write_text(_patients())
    with airflow_stack(root, station) as stack:
        yield stack


@pytest.fixture()
def client(registry: Any) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


def _submit(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
    script: str,
) -> tuple[TrainSpec, Reference]:  # fmt: skip
    """Build and sign a one-hop train running ``script``, submit it to the central service
    (which copies it into station-a's project); the station's reference to it."""
    spec = make_train_spec(parties, ["station-a"])
    incoming = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, incoming, spec, script)
    sign_train(client, incoming.with_digest(digest), parties, "alice", "reviewer")
    info = central.router.submit(str(incoming), parties["alice"].public.pem)
    assert info["status"] == "routing", info
    return spec, Reference(registry.host, f"station-a/{spec.id}", tag="train")


def _results(client: RegistryClient, ref: Reference) -> list[str]:
    """The result tags of a train's repository."""
    return sorted(t for t in client.list_tags(ref.repository) if t.startswith("result"))


def _tags(client: RegistryClient, ref: Reference) -> list[str]:
    """Every tag in the train's repository (results, signatures, attestations)."""
    return sorted(client.list_tags(ref.repository))


def _checked(http: httpx.Client, run_id: str) -> dict[str, Any]:
    """The check_output task's XCom (verdicts only)."""
    resp = http.get(
        f"{run_url(run_id)}/taskInstances/check_output/xcomEntries/return_value",
        params={"deserialize": True, "stringify": False},
    )
    assert resp.status_code == 200, resp.text
    value = resp.json()["value"]
    return value if isinstance(value, dict) else json.loads(value)


def _files(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in summary.get("files") or []}


def _task_log(stack: AirflowStack, run_id: str, task_id: str) -> str:
    """Every log file of one task of one run (all attempts), as text."""
    folder = stack.home / "logs" / "dag_id=pht_run_train" / f"run_id={run_id}"
    files = sorted((folder / f"task_id={task_id}").rglob("*.log"))
    assert files, f"no log of {task_id} under {folder}"
    return "\n".join(f.read_text(errors="replace") for f in files)


# --- 1. a clean frequency table -----------------------------------------------------------


def test_a_clean_frequency_table_is_released_without_a_person(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any, tmp_path: Path,
) -> None:  # fmt: skip
    spec, ref = _submit(central, docker_client, client, registry, parties, CLEAN)
    with stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_success(stack, http, run_id)
        states = task_states(http, run_id)
        checked = _checked(http, run_id)
    assert (states["check_output"], states["release"]) == ("success", "skipped"), states
    assert states["seal"] == "success" and states["record"] == "success", states
    assert checked["verdict"] == "pass" and checked["release_needed"] is False, checked
    assert _files(checked)["by_stage.csv"]["verdict"] == "pass"

    assert _results(client, ref) == ["result-0"]
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "success"
    assert record["released_by"] is None  # nobody had to
    assert record["disclosure"]["verdict"] == "pass"
    out = tmp_path / "results"
    fetch_results(client, ref.with_digest(record["train_digest"]), spec, parties["alice"].age, out)
    assert (out / "0-station-a" / "by_stage.csv").read_text().splitlines() == [
        "stage,patients", "I,20", "II,20"
    ]  # fmt: skip


def test_a_policy_asking_for_release_holds_even_a_clean_table(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    """``policy.require_release_approval: true`` (read when each task runs): a person releases
    every output, also one that passed every check."""
    _, ref = _submit(central, docker_client, client, registry, parties, CLEAN)
    path = stack.station.config_path
    original = path.read_text()
    config = yaml.safe_load(original)
    config["policy"]["require_release_approval"] = True
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        with stack.client() as http:
            run_id = trigger(http, ref)
            wait_for_person(stack, http, run_id, "release")
            checked = _checked(http, run_id)
            assert _results(client, ref) == []
            answer(http, run_id, "release", "Approve")
            wait_for_success(stack, http, run_id)
    finally:
        path.write_text(original)
    assert checked["verdict"] == "pass" and checked["release_needed"] is True, checked
    assert _results(client, ref) == ["result-0"]
    record = audit_record(stack.station, run_id)
    assert (record["outcome"], record["released_by"]) == ("success", "admin")


# --- 2. a cell of 3: a person decides -------------------------------------------------------


@pytest.fixture(scope="module")
def approved(
    stack: AirflowStack, central: Central, docker_client: Any, registry: Any, parties: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:  # fmt: skip
    """A train with a cell of 3, released by a person through the HITL REST endpoint: what was
    seen while it waited, and after (test 2 asserts on it; test 6 scans Airflow after it)."""
    seen: dict[str, Any] = {}
    with RegistryClient(registry.host) as client:
        spec, ref = _submit(central, docker_client, client, registry, parties, SMALL_CELL)
        with stack.client() as http:
            run_id = trigger(http, ref)
            wait_for_person(stack, http, run_id, "release")
            seen["waiting"] = task_states(http, run_id)
            seen["results_while_waiting"] = _results(client, ref)
            seen["checked"] = _checked(http, run_id)
            seen["answered"] = answer(
                http, run_id, "release", "Approve", "checked with the data steward"
            )
            wait_for_success(stack, http, run_id)
            seen["states"] = task_states(http, run_id)
        seen["results"] = _results(client, ref)
        seen["record"] = record = audit_record(stack.station, run_id)
        out = tmp_path_factory.mktemp("approved-results")
        pinned = ref.with_digest(record["train_digest"])
        fetch_results(client, pinned, spec, parties["alice"].age, out)
    seen["output"] = (out / "0-station-a" / "by_region.csv").read_text()
    return seen


def test_a_small_cell_waits_for_release_and_is_pushed_once_a_person_approves(
    approved: dict[str, Any],
) -> None:
    waiting = approved["waiting"]
    assert waiting["check_output"] == "success" and waiting["seal"] in (None, "none"), waiting
    assert approved["results_while_waiting"] == []  # nothing leaves while the person decides
    checked = approved["checked"]
    assert checked["verdict"] == "review" and checked["release_needed"] is True
    assert _files(checked)["by_region.csv"]["reasons"] == [
        f"row 1, column 'patients': a count below min_cell_count {MIN_CELL}"
    ]
    card = checked["card"]["body"]
    assert "by\\_region\\.csv" in card and "**review**" in card
    assert not any(value in json.dumps(checked) for value in DISTINCTIVE)

    assert approved["answered"]["responded_by"]["name"] == "admin"
    states = approved["states"]
    assert (states["release"], states["seal"], states["record"]) == ("success",) * 3, states
    assert approved["results"] == ["result-0"]
    record = approved["record"]
    assert record["outcome"] == "success"
    assert record["released_by"] == "admin"
    assert record["disclosure"]["verdict"] == "review"
    # The output held the distinctive values (test 6 looks for them in Airflow).
    assert approved["output"].splitlines() == ["region,patients", f"{RARE},3", f"{COMMON},37"]


def test_a_small_cell_rejected_at_release_is_withheld_and_the_researcher_sees_it(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    spec, ref = _submit(central, docker_client, client, registry, parties, SMALL_CELL)
    tags_before = _tags(client, ref)
    with stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_person(stack, http, run_id, "release")
        answer(http, run_id, "release", "Reject", "a region of 3 patients\x1b[31m")
        run = wait_for_end(stack, http, run_id)
        states = task_states(http, run_id)
    # Withheld is an outcome the station chose, not a crash.
    assert run["state"] == "success", f"{states}\n{stack.diagnostics()}"
    assert (states["release"], states["seal"], states["record"]) == (
        "success", "skipped", "success"
    ), states  # fmt: skip

    # Nothing pushed: no result tag, no new manifest of any kind in the repository.
    assert _results(client, ref) == []
    assert _tags(client, ref) == tags_before
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "withheld"
    assert record["decision"] == {"by": "admin", "reason": "a region of 3 patients\\x1b[31m"}
    assert record["released_by"] is None and record["result_digest"] is None
    assert record["disclosure"]["verdict"] == "review"
    assert "hop withheld: withheld by admin" in _task_log(stack, run_id, "record")

    # The researcher's view: the central service got the signed report.
    train = central.train(spec.id)
    assert train["status"] == "withheld", train
    assert [h["state"] for h in train["hops"]] == ["withheld"]
    shown = central.status(spec.id)
    assert f"train {spec.id} (withheld)" in shown, shown
    assert "withheld by the station station-a" in shown and "(decided by admin)" in shown
    assert "a region of 3 patients\\x1b[31m" in shown and "\x1b" not in shown


# --- 3, 4. blocked outputs ------------------------------------------------------------------


def _blocked(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any, script: str,
) -> tuple[TrainSpec, Reference, str, dict[str, Any]]:  # fmt: skip
    spec, ref = _submit(central, docker_client, client, registry, parties, script)
    with stack.client() as http:
        run_id = trigger(http, ref)
        run = wait_for_end(stack, http, run_id)
        states = task_states(http, run_id)
    assert run["state"] == "failed", states
    assert states["run"] == "success" and states["check_output"] == "failed", states
    for task in ("release", "seal"):
        assert states[task] == "upstream_failed", states
    assert states["record"] == "failed", states  # it audited the failure, then failed the run
    assert _results(client, ref) == []
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "failure"
    assert record["failure"]["error"] == "PolicyError"
    assert "station_fault" not in record["failure"]  # the train's doing: reported
    return spec, ref, run_id, record


def test_a_copy_of_the_data_set_is_blocked_and_nothing_leaves(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    spec, _, run_id, record = _blocked(
        stack, central, docker_client, client, registry, parties, COPY
    )
    reason = (
        f"extract.csv: {ROWS} rows, at least row_fraction 0.5 of the data set's rows: "
        "row-level data may not leave"
    )
    assert reason in record["failure"]["message"], record["failure"]
    assert record["failure"]["message"].startswith(
        "the station's disclosure control blocks this output:"
    )
    assert reason in _task_log(stack, run_id, "check_output")
    train = central.train(spec.id)
    assert train["status"] == "failed" and "row-level data may not leave" in train["reason"]


def test_a_disallowed_file_type_is_blocked(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    _, _, run_id, record = _blocked(stack, central, docker_client, client, registry, parties, EXE)
    reason = "output.exe: file type '.exe' is not in policy.disclosure.allowed_types"
    assert reason in record["failure"]["message"], record["failure"]
    assert "by_stage.csv" not in record["failure"]["message"]  # the clean table is not to blame
    assert reason in _task_log(stack, run_id, "check_output")


# --- 5. ACRO says pass; the station looks itself ----------------------------------------------


def test_an_acro_pass_over_a_small_cell_still_needs_a_person(
    stack: AirflowStack, central: Central, docker_client: Any, client: RegistryClient,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    _, ref = _submit(central, docker_client, client, registry, parties, ACRO)
    with stack.client() as http:
        run_id = trigger(http, ref)
        wait_for_person(stack, http, run_id, "release")
        checked = _checked(http, run_id)
        assert _results(client, ref) == []
        answer(http, run_id, "release", "Reject", "small cells")
        wait_for_end(stack, http, run_id)
    assert checked["verdict"] == "review" and checked["release_needed"] is True
    table = _files(checked)["output_0_0.csv"]
    assert table["acro"] == "pass"  # what ACRO claimed is shown ...
    assert table["kind"] == "frequency" and table["verdict"] == "review"  # ... and overruled
    assert any(
        f"a count below min_cell_count {MIN_CELL}" in r for r in table["reasons"]
    ), table  # fmt: skip
    assert _files(checked)["results.json"]["kind"] == "acro-report"
    assert checked["acro"]["statuses"] == {"pass": 1, "review": 0, "fail": 0}
    assert _results(client, ref) == []
    record = audit_record(stack.station, run_id)
    assert record["outcome"] == "withheld"
    assert record["disclosure"]["verdict"] == "review"


# --- 6. no plaintext in Airflow, nothing left in the work folder -------------------------------


def _xcom_values(http: httpx.Client) -> list[Any]:
    """Every XCom value of every run of the DAG (deserialized, as the API shows it)."""
    values = []
    runs = http.get("/api/v2/dags/pht_run_train/dagRuns", params={"limit": 100}).json()
    for run in runs["dag_runs"]:
        url = f"{run_url(run['dag_run_id'])}/taskInstances/~/xcomEntries"
        entries = http.get(url, params={"limit": 1000}).json()["xcom_entries"]
        for entry in entries:
            one = http.get(
                f"{run_url(run['dag_run_id'])}/taskInstances/{entry['task_id']}/xcomEntries/"
                f"{entry['key']}",
                params={"deserialize": True, "map_index": entry.get("map_index", -1)},
            )
            assert one.status_code == 200, one.text
            values.append(one.json()["value"])
    return values


def test_no_plaintext_in_airflow_and_nothing_left_behind(
    stack: AirflowStack, approved: dict[str, Any]
) -> None:
    assert approved["record"]["released_by"] == "admin"  # a reviewed hop ran here
    with stack.client() as http:
        values = _xcom_values(http)
    needles = [v.encode() for v in DISTINCTIVE]

    # Every XCom value: verdicts, digests, names; never the output's values.
    assert len(values) >= 10
    shown = json.dumps(values, default=str)
    assert "by_region.csv" in shown  # the scan sees the checks' summaries
    assert not [v for v in DISTINCTIVE if v in shown]

    # Airflow's database file (and a journal or WAL beside it), byte by byte.
    db_files = sorted(stack.home.glob("airflow.db*"))
    assert db_files and db_files[0].stat().st_size > 100_000
    for path in db_files:
        data = path.read_bytes()
        assert b"by_region.csv" in data or path.name != "airflow.db"
        assert not [n for n in needles if n in data], path

    # Every task log (all runs, all attempts) and every component's log.
    logs = sorted((stack.home / "logs").rglob("*.log"))
    assert len(logs) >= 8, logs
    for path in [*logs, *stack.home.parent.glob("airflow-*.log")]:
        data = path.read_bytes()
        assert not [n for n in needles if n in data], path
    assert any(b"wrote counts by region" in p.read_bytes() for p in logs)  # the train's lines

    # The station's work folder: the pre-flight cache, nothing else (no resting output, no
    # hop folder, no decrypted input or data copy).
    config = stack.station.config()
    left = sorted(p.name for p in config.work_dir.iterdir())
    assert left == [f"{CACHE_PREFIX}{config.station_id}.json"], left
