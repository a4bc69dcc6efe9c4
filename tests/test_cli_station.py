"""`pht station run` and `pht audit verify`: the operator's tools, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.cli import main
from pht_airflow.oci import Reference, RegistryClient

pytestmark = [pytest.mark.registry, pytest.mark.docker]


def test_station_run_then_audit_verify(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    station = make_station(
        tmp_path / "a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"require_approval": True}},
    )
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    with RegistryClient(registry.host) as client:
        digest = build_train(docker_client, ref, spec)
        sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    runner = CliRunner()
    config = str(station.config_path)

    result = runner.invoke(main, ["station", "run", str(ref), "--config", config])
    assert result.exit_code == 1
    assert "requires a person's approval" in result.output

    result = runner.invoke(
        main, ["station", "run", str(ref), "--config", config, "--approved-by", "dr-staff"]
    )
    assert result.exit_code == 0, result.output
    assert "success" in result.stdout
    assert "counted 5 rows at station-a" in result.output

    result = runner.invoke(
        main, ["station", "run", str(ref), "--config", config, "--approved-by", "dr-staff"]
    )
    assert result.exit_code == 3
    assert "[already-done]" in result.output

    result = runner.invoke(main, ["audit", "verify", str(station.audit_path)])
    assert result.exit_code == 0, result.output
    assert "3 records, hash chain intact" in result.stdout

    lines = station.audit_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"dr-staff"', b'"dr-other"')
    station.audit_path.write_bytes(b"".join(lines))
    result = runner.invoke(main, ["audit", "verify", str(station.audit_path)])
    assert result.exit_code == 3
    assert "line 2" in result.output
