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
from pht_airflow.oci import Reference
from pht_airflow.results import fetch_results, verify_chain
from pht_airflow.signing import verify
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
