"""`pht station run`, `pht station publish-schema` and `pht audit verify`: the operator's
tools, end to end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import text
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import free_port
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.web.central_app import create_app

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

    # Dry by default: verified, run and checked; nothing pushed, recorded or reported.
    result = runner.invoke(main, ["station", "run", str(ref), "--config", config])
    assert result.exit_code == 0, result.output
    assert "counted 5 rows at station-a" in result.output
    assert "dry-run; disclosure pass; dry run: nothing pushed; not recorded" in result.stdout
    with RegistryClient(registry.host) as client:
        assert "result-0" not in client.list_tags(ref.repository)
    assert not station.audit_path.exists()
    result = runner.invoke(main, ["station", "run", str(ref), "--config", config, "--record"])
    assert result.exit_code == 2 and "--record needs --push" in result.output

    push = ["station", "run", str(ref), "--config", config, "--push", "--record"]
    result = runner.invoke(main, push)
    assert result.exit_code == 1
    assert "requires a person's approval" in result.output

    result = runner.invoke(main, [*push, "--approved-by", "dr-staff"])
    assert result.exit_code == 0, result.output
    assert "success" in result.stdout
    assert "counted 5 rows at station-a" in result.output

    result = runner.invoke(main, [*push, "--approved-by", "dr-staff"])
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


# --- pht station publish-schema ------------------------------------------------------------

# Values no published schema may carry: each appears in the station's data, none in what the
# central service stores. (Not bare digits: those could occur in a key id or a signature.)
SECRET_VALUES = ("Zebrafinch-7731", "Quokka-4242", "88.125", "C18.7-secret", "2024-05-06")


def _seed_omop(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE person (person_id bigint PRIMARY KEY, year_of_birth int, "
                     "gender_source_value text)")  # fmt: skip
        conn.execute("CREATE TABLE condition_occurrence (condition_occurrence_id bigint, "
                     "person_id bigint, condition_start_date date, "
                     "condition_source_value text)")  # fmt: skip
        with conn.cursor().copy("COPY person FROM STDIN") as copy:
            for i in range(23):
                copy.write_row((900000 + i, 1937, "Zebrafinch-7731"))
        with conn.cursor().copy("COPY condition_occurrence FROM STDIN") as copy:
            for i in range(7):
                copy.write_row((i, 900000 + i, "2024-05-06", "C18.7-secret"))


@pytest.fixture()
def central(registry: Any, parties: Any, tmp_path: Path) -> Iterator[tuple[str, Router]]:
    """The central service's app under uvicorn on 127.0.0.1, station-a registered."""
    with RegistryClient(registry.host) as client:
        router = Router(
            make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'central.db'}")),
            client,
            PlainRegistryAdmin(client),
        )
        a = parties["station-a"]
        router.add_station("station-a", a.public.pem, a.age.recipient)
        app = create_app(router, api_token=lambda: "t", webhook_secret=lambda: "s",
                         reconcile_seconds=0)  # fmt: skip
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))  # fmt: skip
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start the central app", pytrace=False)
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}", router
        server.should_exit = True
        thread.join(10)


def _schema_station(tmp_path: Path, parties: Any, registry: Any, url: str) -> Any:
    registry_csv = tmp_path / "registry.csv"
    rows = ["patient,age,weight"] + [f"Quokka-4242,{40 + i},88.125" for i in range(14)]
    registry_csv.write_text("\n".join(rows) + "\n")
    return make_station(
        tmp_path / "a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={
            "datasets": {
                "omop": {"kind": "sql", "connection": "pht_omop",
                         "tables": ["person", "condition_occurrence"],
                         "formats": ["parquet", "csv"], "publish_schema": True,
                         "identifier_columns": ["person_id"]},
                "registry": {"kind": "file", "path": str(registry_csv), "publish_schema": True},
                "private": {"kind": "file", "path": str(registry_csv), "table": "hidden"},
                "cohort": "data/cohort",
            },
            "central": {"url": url},
            "policy": {"require_approval": False, "min_cell_count": 5},
        },
    )  # fmt: skip


def test_publish_schema_sends_the_shape_of_marked_data_sets_and_never_values(
    tmp_path: Path, parties: Any, registry: Any, central: tuple[str, Router],
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, router = central
    _seed_omop(postgres_url)
    monkeypatch.setenv("AIRFLOW_CONN_PHT_OMOP", postgres_url)
    station = _schema_station(tmp_path, parties, registry, url)
    runner = CliRunner()
    config = ["--config", str(station.config_path)]

    shown = runner.invoke(main, ["station", "publish-schema", *config, "--show"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert [d["name"] for d in document["datasets"]] == ["omop", "registry"]
    assert router.station("station-a")["schema"] is None  # --show sends nothing

    result = runner.invoke(main, ["station", "publish-schema", *config])
    assert result.exit_code == 0, result.output
    assert "station-a: schema published at" in result.stdout
    assert "(data sets: omop, registry)" in result.stdout

    stored = router.station("station-a")["schema"]
    tables = {t["name"]: t for d in stored["datasets"] for t in d["tables"]}
    assert stored["min_cell_count"] == 5
    assert tables["person"]["rows"] == 20  # 23 rounded down to a multiple of 5
    assert tables["condition_occurrence"]["rows"] == 5  # 7
    assert tables["registry"]["rows"] == 10  # 14
    assert tables["person"]["files"] == ["person.parquet", "person.csv"]
    assert {"name": "person_id", "type": "int64", "identifier": True} in tables["person"][
        "columns"
    ]  # fmt: skip
    assert [c["name"] for c in tables["registry"]["columns"]] == ["patient", "age", "weight"]
    assert "hidden" not in tables and "cohort" not in json.dumps(stored)
    # Nothing the central service holds carries a value: not the stored document, not any row.
    with router.sessions() as s:
        dump = json.dumps([list(r) for r in s.execute(text("SELECT * FROM station_schemas"))],
                          default=str)  # fmt: skip
    for value in SECRET_VALUES:
        assert value not in dump, value
        assert value not in json.dumps(stored)

    shown = runner.invoke(main, ["central", "stations", "show", "station-a", "--central", url])
    assert shown.exit_code == 0, shown.output
    assert "table person: 20 rows; /pht/data/{person.parquet, person.csv}" in shown.stdout
    assert "table registry: 10 rows" in shown.stdout
    for value in SECRET_VALUES:
        assert value not in shown.stdout


def test_unmarking_a_data_set_and_publishing_again_withdraws_it(
    tmp_path: Path, parties: Any, registry: Any, central: tuple[str, Router],
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import yaml

    url, router = central
    _seed_omop(postgres_url)
    monkeypatch.setenv("AIRFLOW_CONN_PHT_OMOP", postgres_url)
    station = _schema_station(tmp_path, parties, registry, url)
    publish = ["station", "publish-schema", "--config", str(station.config_path)]
    assert CliRunner().invoke(main, publish).exit_code == 0
    first = router.station("station-a")["schema"]
    assert [d["name"] for d in first["datasets"]] == ["omop", "registry"]

    config = yaml.safe_load(station.config_path.read_text())
    config["datasets"]["omop"]["publish_schema"] = False
    station.config_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, publish)
    assert result.exit_code == 0, result.output
    assert "(data sets: registry)" in result.stdout
    assert [d["name"] for d in router.station("station-a")["schema"]["datasets"]] == ["registry"]

    config["datasets"]["registry"]["publish_schema"] = False
    station.config_path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, publish)
    assert result.exit_code == 0, result.output
    assert "none has publish_schema: true" in result.output
    assert "(data sets: none)" in result.stdout
    assert router.station("station-a")["schema"]["datasets"] == []
    shown = CliRunner().invoke(main, ["central", "stations", "show", "station-a", "--central", url])
    assert "0 data set(s) published" in shown.stdout
    assert "person" not in shown.stdout


def test_publish_schema_signed_with_a_key_the_directory_does_not_hold_is_refused(
    tmp_path: Path, parties: Any, registry: Any, central: tuple[str, Router],
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, router = central
    _seed_omop(postgres_url)
    monkeypatch.setenv("AIRFLOW_CONN_PHT_OMOP", postgres_url)
    station = _schema_station(tmp_path, parties, registry, url)
    other = parties["station-b"]
    router.add_station("station-a", other.public.pem, other.age.recipient)
    result = CliRunner().invoke(
        main, ["station", "publish-schema", "--config", str(station.config_path)]
    )
    assert result.exit_code == 1
    assert "failed (422)" in result.output
    assert "not by station-a's key in the directory" in result.output
    assert router.station("station-a")["schema"] is None


def test_publish_schema_without_a_central_url_says_what_to_set(
    tmp_path: Path, parties: Any, registry: Any
) -> None:
    station = make_station(
        tmp_path / "a", parties["station-a"], registry.host,
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
    )  # fmt: skip
    result = CliRunner().invoke(
        main, ["station", "publish-schema", "--config", str(station.config_path)]
    )
    assert result.exit_code == 1
    assert "central.url is not set" in result.output


@pytest.mark.parametrize("value", [0, -5, "ten", True, 1_000_001])
def test_a_disclosure_threshold_that_is_not_a_whole_number_from_1_is_refused(
    tmp_path: Path, parties: Any, registry: Any, value: Any
) -> None:
    station = make_station(
        tmp_path / "a", parties["station-a"], registry.host,
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"min_cell_count": value}, "central": {"url": "http://127.0.0.1:9"}},
    )  # fmt: skip
    result = CliRunner().invoke(
        main, ["station", "publish-schema", "--config", str(station.config_path), "--show"]
    )
    assert result.exit_code == 1
    assert "policy.min_cell_count: must be a whole number from 1 to 1000000" in result.output
    assert "station.yaml:" in result.output


# --- pht station check ---------------------------------------------------------------------


def _check_station(tmp_path: Path, parties: Any, host: str, **overrides: Any) -> Any:
    return make_station(
        tmp_path / "a",
        parties["station-a"],
        host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides=overrides or None,
    )


def test_station_check_passes_and_remembers(tmp_path: Path, parties: Any, registry: Any) -> None:
    station = _check_station(tmp_path, parties, registry.host)
    runner = CliRunner()
    config = str(station.config_path)
    result = runner.invoke(main, ["station", "check", "--config", config])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "✓ folders",
        "✓ keys",
        "✓ datasets",
        "✓ registry",
        "✓ engine",
    ]
    assert lines[-1] == "station station-a: pre-flight passed"
    assert "(remembered)" not in result.stdout

    again = runner.invoke(main, ["station", "check", "--config", config])
    assert again.exit_code == 0
    assert again.stdout.count("(remembered)") == 5
    fresh = runner.invoke(main, ["station", "check", "--config", config, "--no-cache"])
    assert fresh.exit_code == 0
    assert "(remembered)" not in fresh.stdout

    as_json = runner.invoke(main, ["station", "check", "--config", config, "--json"])
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    assert report["ok"] is True and list(report["checks"]) == [
        "datasets",
        "engine",
        "folders",
        "keys",
        "registry",
    ]


def test_station_check_shows_each_failure_with_what_to_do_and_exits_1(
    tmp_path: Path, parties: Any
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens here
    station = _check_station(
        tmp_path, parties, host, keys={"signing_key": {"file": "keys/station.pub"}}
    )
    result = CliRunner().invoke(main, ["station", "check", "--config", str(station.config_path)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    keys = lines.index(next(line for line in lines if line.startswith("✗ keys: ")))
    assert "is a signing public key (NAME.pub), not a signing private key" in lines[keys]
    assert lines[keys + 1].startswith("  → this is the public half: give the private key file")
    registry = lines.index(next(line for line in lines if line.startswith("✗ registry: ")))
    assert f"cannot reach registry {host}: Connection refused" in lines[registry]
    assert lines[registry + 1].startswith("  → check that the registry is running")
    assert lines[-1] == "station station-a: pre-flight failed (2 check(s))"
    assert "Traceback" not in result.output


def test_station_check_with_a_broken_config_names_the_problem(
    tmp_path: Path, parties: Any, registry: Any
) -> None:
    station = _check_station(tmp_path, parties, registry.host)
    text = station.config_path.read_text()
    station.config_path.write_text(
        text.replace("public_key: keys/station.pub", "public_key: keys/station.key")
    )
    result = CliRunner().invoke(main, ["station", "check", "--config", str(station.config_path)])
    assert result.exit_code == 1
    assert "error: invalid station config" in result.output
    assert "keys.public_key" in result.output
    assert "but this is a signing private key (NAME.key)" in result.output
