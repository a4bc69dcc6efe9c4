"""The station's hop as plain Python (what `pht station run` and the DAG's tasks call).

Real engine, real registry: a two-station sequential route end to end, and the rule that a
station runs a train once. Every verification check's refusal is in ``test_station_verify.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.stationkit import (
    copy_repository,
    repository_tags,
    signed_train,
)

from pht_airflow.errors import (
    AlreadyDoneError,
)
from pht_airflow.keys import generate_age_identity
from pht_airflow.oci import Reference
from pht_airflow.results import fetch_results, verify_chain
from pht_airflow.signing import verify
from pht_airflow.station import hop
from pht_airflow.station.audit import AuditLog, verify_log
from pht_airflow.station.hop import run_hop

pytestmark = [pytest.mark.registry, pytest.mark.docker]


def test_two_station_sequential_route(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, tmp_path: Path
) -> None:
    a, b = stations["station-a"], stations["station-b"]
    ref, spec = signed_train(docker_client, client, registry, parties, "station-a",
                       ["station-a", "station-b"])  # fmt: skip
    lines: list[str] = []
    record = run_hop(a.config(), str(ref), logger=lines.append, docker_client=docker_client)
    assert record["outcome"] == "success"
    assert record["hop"] == 0
    # The station pulled the train by digest and dropped that reference after the hop.
    pulled = f"{ref.registry}/{ref.repository}@{record['train_digest']}"
    assert any(line == f"pulling {pulled}" for line in lines), lines
    image = docker_client.images.get(str(ref))  # the builder's tag is the researcher's
    assert pulled not in image.attrs["RepoDigests"]
    assert record["failed_check"] is None
    assert any("counted 5 rows at station-a" in line for line in lines)
    result0 = client.get_manifest(ref.repository, "result-0")
    assert record["result_digest"] == result0.digest
    signer = verify(client, Reference(registry.host, ref.repository, digest=result0.digest),
                    [parties["station-a"].public])  # fmt: skip
    assert signer[0].role == "station"
    # The hop's signed run attestation: what ran, on what data, under which checks.
    from pht_airflow.attestation import verify_attestation

    attested = Reference(registry.host, ref.repository, digest=result0.digest)
    predicate = verify_attestation(client, attested, parties["station-a"].public)["predicate"]
    assert predicate["train"]["digest"] == record["train_digest"]
    assert (predicate["station"], predicate["hop"], predicate["exit_code"]) == ("station-a", 0, 0)
    assert predicate["dataset"]["digest"] == record["data"]["digest"]
    assert predicate["disclosure"]["verdict"] == "pass"
    assert predicate["sandbox"]["network"] == "none"
    # The result of hop 0 is for station-b only (sequential, visibility "final").
    assert record["recipients"] == [parties["station-b"].age.recipient]

    # The router's copy: train, signatures and result into station-b's project.
    target = f"station-b/{spec.id}"
    copy_repository(client, ref.repository, target)
    record = run_hop(b.config(), f"{registry.host}/{target}:train", docker_client=docker_client)
    assert record["outcome"] == "success" and record["hop"] == 1

    pinned = Reference(registry.host, target, digest=record["train_digest"])
    chain = verify_chain(client, pinned, spec)
    assert [c.station for c in chain] == ["station-a", "station-b"]
    out = tmp_path / "results"
    fetch_results(client, pinned, spec, parties["alice"].age, out)
    state = json.loads((out / "1-station-b" / "state.json").read_text())
    assert state["rows"] == 12
    assert [h["station"] for h in state["hops"]] == ["station-a", "station-b"]
    # Audit: one success line per station, chain intact; no plaintext left in work folders.
    assert verify_log(a.audit_path) == 1 and verify_log(b.audit_path) == 1
    assert list((a.root / "work").iterdir()) == []
    assert list((b.root / "work").iterdir()) == []


def test_a_second_run_is_refused_and_a_rerun_reuses_the_result(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any
) -> None:
    a = stations["station-a"]
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    first = run_hop(a.config(), str(ref), docker_client=docker_client)
    with pytest.raises(AlreadyDoneError):
        run_hop(a.config(), str(ref), docker_client=docker_client)
    again = run_hop(a.config(), str(ref), rerun=True, docker_client=docker_client)
    # A retried or rerun hop never produces a second result for the same hop.
    assert again["result_digest"] == first["result_digest"]
    assert [t for t in repository_tags(client, ref.repository) if t.startswith("result-")] == [
        "result-0"
    ]
    records = list(AuditLog(a.audit_path).entries())
    assert [r["outcome"] for r in records] == ["success", "failure", "success"]
    assert records[1]["failed_check"] == "already-done"


# --- sql data sets: the train reads /pht/data/<table>.csv, extracted just before the run ------

SQL_ANALYSIS = r"""
import csv, json, os
from pathlib import Path
schema = json.loads(Path("/pht/data/schema.json").read_text())
with open("/pht/data/person.csv", newline="") as f:
    people = list(csv.DictReader(f))
weights = [float(p["weight"]) for p in people if p["weight"]]
state = {"rows": len(people), "mean_weight": sum(weights) / len(weights),
         "schema_rows": schema["tables"]["person"]["rows"],
         "files": sorted(os.listdir("/pht/data"))}
try:
    Path("/pht/data/x").write_text("x")
    state["data_writable"] = True
except OSError:
    state["data_writable"] = False
Path("/pht/output/state.json").write_text(json.dumps(state, sort_keys=True))
print("read", len(people), "people")
"""


def _sql_station(stations: Any, url: str, **entry: Any) -> Any:
    """station-a with its data set ``cohort`` in PostgreSQL, and its config loaded."""
    import yaml

    from pht_airflow.station.config import load_config
    from pht_airflow.station.secrets import DatabaseUrls

    a = stations["station-a"]
    data = yaml.safe_load(a.config_path.read_text())
    data["datasets"] = {"cohort": {"kind": "sql", "connection": "pht_omop", **entry}}
    a.config_path.write_text(yaml.safe_dump(data))
    return a, load_config(a.config_path, DatabaseUrls({"pht_omop": url}))


def _seed_people(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE person (person_id bigint, weight numeric(5,1))")
        conn.execute("INSERT INTO person VALUES (1, 60.5), (2, NULL), (3, 80.5), (4, 70.0)")


def _sql_train(docker_client: Any, client: Any, registry: Any, parties: Any, script: str) -> Any:
    from support.stationkit import build_train, make_train_spec, sign_train

    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec, script)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return ref, spec


def test_a_train_reads_a_sql_data_set_extracted_for_its_hop(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any,
    postgres_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    from pht_airflow.station.data import data_view

    _seed_people(postgres_url)
    a, config = _sql_station(stations, postgres_url, tables=["person"], formats=["parquet", "csv"])
    ref, spec = _sql_train(docker_client, client, registry, parties, SQL_ANALYSIS)
    lines: list[str] = []
    # Its output is no frequency table: a person releases it (disclosure verdict "review").
    record = run_hop(config, str(ref), logger=lines.append, docker_client=docker_client,
                     released_by="tester")  # fmt: skip
    assert record["outcome"] == "success", record
    assert any("read 4 people" in line for line in lines), lines
    out = tmp_path / "results"
    fetch_results(client, Reference(registry.host, ref.repository, digest=record["train_digest"]),
                  spec, parties["alice"].age, out)  # fmt: skip
    state = json.loads((out / "0-station-a" / "state.json").read_text())
    assert state == {"rows": 4, "schema_rows": 4, "mean_weight": 70.333333333333329,
                     "files": ["person.csv", "person.parquet", "schema.json"],
                     "data_writable": False}  # fmt: skip
    # The audit record names the data the train saw; extracting again gives the same digest.
    data = record["data"]
    assert (data["dataset"], data["kind"], data["tables"], data["files"]) == (
        "cohort", "sql", ["person"], 3,
    )  # fmt: skip
    view_root = tmp_path / "again"
    view_root.mkdir()
    with data_view(config.datasets["cohort"], view_root) as again:
        assert again.digest == data["digest"]
    assert AuditLog(a.audit_path).entries().__next__()["data"] == data
    assert list((a.root / "work").iterdir()) == []


def test_a_failing_query_fails_the_hop_before_the_container_starts(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any,
    postgres_url: str,
) -> None:  # fmt: skip
    from support.stationkit import sandbox_containers

    from pht_airflow.station.data import DataSetError

    a, config = _sql_station(stations, postgres_url, queries={"person": "SELECT * FROM nobody"})
    ref, _ = _sql_train(docker_client, client, registry, parties, SQL_ANALYSIS)
    lines: list[str] = []
    before = {c.id for c in sandbox_containers(docker_client)}
    with pytest.raises(DataSetError, match='relation "nobody" does not exist'):
        run_hop(config, str(ref), logger=lines.append, docker_client=docker_client)
    assert {c.id for c in sandbox_containers(docker_client)} == before
    assert not any("train exited" in line for line in lines)
    (record,) = AuditLog(a.audit_path).entries()
    assert record["outcome"] == "failure" and record["failure"]["error"] == "DataSetError"
    assert record["data"] is None  # no data was extracted, so none was seen
    assert "table 'person': the database refused the query" in record["failure"]["message"]
    assert list((a.root / "work").iterdir()) == []


def test_a_failed_train_leaves_no_extracted_data(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any,
    postgres_url: str,
) -> None:  # fmt: skip
    from pht_airflow.errors import TrainExitError

    _seed_people(postgres_url)
    a, config = _sql_station(stations, postgres_url, tables=["person"])
    script = "import sys; print(open('/pht/data/schema.json').read()[:1]); sys.exit(3)"
    ref, _ = _sql_train(docker_client, client, registry, parties, script)
    with pytest.raises(TrainExitError):
        run_hop(config, str(ref), docker_client=docker_client)
    assert list((a.root / "work").iterdir()) == []
    # The failed train saw the data: its audit record says which.
    (record,) = AuditLog(a.audit_path).entries()
    assert record["outcome"] == "failure" and record["data"]["tables"] == ["person"]
    assert record["data"]["digest"].startswith("sha256:")


KILLED_HOP = """
import sys
from pht_airflow.station.config import load_config
from pht_airflow.station.data import data_view
from pht_airflow.station.sweep import open_work
from pht_airflow.station.secrets import DatabaseUrls
config = load_config(sys.argv[1], DatabaseUrls({"pht_omop": sys.argv[2]}))
work, lock = open_work(config, "hop-killed-")
with data_view(config.datasets["cohort"], work):
    print(work.name, flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def test_the_next_hop_removes_what_a_killed_hop_left_and_audits_it(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any,
    postgres_url: str,
) -> None:  # fmt: skip
    import signal
    import subprocess
    import sys

    from pht_airflow.station.sweep import sweep

    _seed_people(postgres_url)
    a, config = _sql_station(stations, postgres_url, tables=["person"], formats=["csv"])
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_HOP, str(a.config_path), postgres_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        left = proc.stdout.readline().strip() if proc.stdout else ""
        assert left.startswith("hop-killed-")
        # While that hop lives, its folder is not touched by another hop's sweep.
        assert not sweep(config, docker_client)
        assert (a.root / "work" / left / "data" / "person.csv").exists()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (a.root / "work" / left / "data" / "person.csv").exists()
    ref, _ = _sql_train(docker_client, client, registry, parties, SQL_ANALYSIS)
    lines: list[str] = []
    record = run_hop(config, str(ref), logger=lines.append, docker_client=docker_client,
                     released_by="tester")  # fmt: skip
    assert record["outcome"] == "success"
    assert "sweep: removed 1 hop folder(s), 0 container(s), 0 train image reference(s)" in lines
    cleanup, hop = AuditLog(a.audit_path).entries()
    assert cleanup["event"] == "cleanup" and cleanup["removed"]["folders"] == [left]
    assert hop["event"] == "hop"
    assert list((a.root / "work").iterdir()) == []


def test_failure_summary_redacts_whole_age_keys_and_shows_controls_escaped() -> None:
    """What the audit log and central get about a failure: no age secret key (all of it, not
    only its prefix), control characters visible, line breaks kept for multi-problem errors."""
    secret = generate_age_identity().secret_text()  # made here: no key material in the repo
    exc = ValueError(f"cannot open {secret} in /tmp/x\x1b[2J\nsecond line\u202e")
    summary = hop.failure_summary(exc)
    assert summary["error"] == "ValueError"
    message = summary["message"]
    assert "SECRET" not in message.upper().replace("[REDACTED]", "")
    assert secret[len("AGE-SECRET-KEY-1") :] not in message
    assert message == "cannot open [redacted] in /tmp/x\\x1b[2J\nsecond line\\u202e"


def _set_keys(station: Any, **keys: Any) -> None:
    import yaml

    data = yaml.safe_load(station.config_path.read_text())
    data["keys"].update(keys)
    station.config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_after_run_no_task_opens_the_station_identity(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, tmp_path: Path
) -> None:
    """run checks the output while it has the plaintext and encrypts the result's layer for
    the hop's recipients then; check_output and seal decrypt nothing (with a passphrase,
    each opening of the identity is a scrypt run). Shown by breaking the identity file after
    run: the hop still checks, seals and delivers a result station-b opens."""
    a = stations["station-a"]
    _set_keys(a, age_recipient=parties["station-a"].age.recipient)
    ref, spec = signed_train(docker_client, client, registry, parties, "station-a",
                             ["station-a", "station-b"])  # fmt: skip
    config = a.config()
    verified = hop.verify_step(config, str(ref))
    key = hop.rest.run_key(spec.id, 0, "manual__test")
    ran = hop.run_step(config, verified, run_key=key, docker_client=docker_client)
    try:
        assert "disclosure" not in ran  # the verdicts stay in the facts file, not the XCom
        payload = hop.rest.stored_payload(config, key)
        assert payload is not None
        assert payload.recipients == (parties["station-b"].age.recipient,)
        assert payload.path.stat().st_mode & 0o777 == 0o600
        identity_file = a.root / "keys" / "station.age"
        identity_file.write_text("broken on purpose: nothing after run may open it\n")
        lines: list[str] = []
        checked = hop.check_step(config, verified, ran, logger=lines.append)
        assert checked["verdict"] == "pass" and checked["release_needed"] is False
        assert not any("checking again" in line for line in lines)
        sealed = hop.seal_step(config, verified, ran, checked)
    finally:
        hop.end_step(config, ran)
    layer = client.get_manifest(ref.repository, "result-0").layers[0]
    assert layer.digest == f"sha256:{payload.sha256}"  # the layer run made, pushed as is
    assert sealed["recipients"] == [parties["station-b"].age.recipient]
    assert list((a.root / "work").iterdir()) == []  # payload and station copy removed


def test_a_changed_disclosure_policy_is_checked_again_on_the_station_copy(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any
) -> None:
    """Verdicts made by run under one policy are not trusted under another: check_output
    decrypts the station's copy and checks it under the policy in force."""
    import yaml

    a = stations["station-a"]
    ref, spec = signed_train(docker_client, client, registry, parties, "station-a",
                             ["station-a", "station-b"])  # fmt: skip
    config = a.config()
    verified = hop.verify_step(config, str(ref))
    ran = hop.run_step(config, verified, run_key=hop.rest.run_key(spec.id, 0, "m"),
                       docker_client=docker_client)  # fmt: skip
    try:
        data = yaml.safe_load(a.config_path.read_text())
        data.setdefault("policy", {})["require_release_approval"] = True
        data["policy"]["min_cell_count"] = 1000  # every count the train wrote is now small
        a.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        lines: list[str] = []
        checked = hop.check_step(a.config(), verified, ran, logger=lines.append)
        assert any("the disclosure policy changed since the train ran" in ln for ln in lines)
        assert checked["min_cell_count"] == 1000
        assert checked["release_needed"] is True
    finally:
        hop.end_step(config, ran)
