"""The station config: the documented example loads, and bad files say what and where."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.stationkit import make_station

from pht_airflow.errors import ConfigError, KeyFileError
from pht_airflow.station.config import load_config, parse_seconds, parse_size

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "station.example.yaml"


@pytest.fixture()
def station(tmp_path: Path, parties: Any) -> Any:
    return make_station(
        tmp_path / "s",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )


def test_valid_config_loads_and_opens_its_keys(station: Any, parties: Any) -> None:
    config = station.config()
    assert config.station_id == "station-a"
    assert config.public_key.key_id == parties["station-a"].key.key_id
    assert config.load_signing_key().key_id == parties["station-a"].key.key_id
    assert config.load_age_identity().recipient == parties["station-a"].age.recipient
    assert config.limits.memory_bytes == 256 * 1024 * 1024
    assert config.limits.wall_seconds == 60
    assert config.datasets["cohort"].kind == "folder"
    assert config.datasets["cohort"].path == station.root / "data" / "cohort"
    assert config.trust.required_approvals == 1
    assert config.audit_log == station.root / "audit.jsonl"


def test_example_config_is_complete_and_valid(tmp_path: Path, parties: Any) -> None:
    """The documented example names every field; with real files in place it validates."""
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "station-a.pub").write_text(parties["station-a"].public.pem)
    (keys / "station-a.key").write_bytes(parties["station-a"].key.private_pem(b"pw"))
    (keys / "station-a.age").write_text(parties["station-a"].age.secret_text())
    (keys / "station-a.age.pub").write_text(parties["station-a"].age.recipient + "\n")
    (keys / "alice.pub").write_text(parties["alice"].public.pem)
    (keys / "reviewer.pub").write_text(parties["reviewer"].public.pem)
    (tmp_path / "cohort").mkdir()
    data["datasets"] = {"cohort-2024": str(tmp_path / "cohort")}
    data["audit_log"] = str(tmp_path / "audit.jsonl")
    data["work_dir"] = str(tmp_path / "work")
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    assert config.registry.connection_id == "pht_registry"
    assert config.policy.require_approval is True
    assert config.limits.pids == 256
    assert config.central_url == "https://pht-central.example.org"
    assert config.age_recipient == parties["station-a"].age.recipient
    assert config.own_recipient() == parties["station-a"].age.recipient


def _rewrite(station: Any, change: Any) -> Path:
    data = yaml.safe_load(station.config_path.read_text())
    change(data)
    station.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return station.config_path


def test_every_problem_is_listed_with_its_line(station: Any) -> None:
    def change(d: dict[str, Any]) -> None:
        d["station"]["id"] = "Station A"
        d["registry"]["colour"] = "blue"
        d["sandbox"]["memory"] = "lots"
        d["sandbox"]["user"] = "0"
        d["trust"]["required_approvals"] = 3
        d["datasets"]["missing"] = "no/such/folder"
        d["keys"]["signing_passphrase"] = {"vault": "x"}
        d["central"] = {"url": "http://pht-central.example.org"}

    path = _rewrite(station, change)
    lines = path.read_text().splitlines()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    line_of_id = next(i for i, ln in enumerate(lines, 1) if "Station A" in ln)
    assert f"{path}:{line_of_id}: station.id" in message
    assert "registry.colour: unknown field" in message
    assert "sandbox.memory" in message and "'lots' is not a size" in message
    assert "root" in message  # the sandbox user may not be root
    assert "required_approvals: is 3 but only 1 trusted approver" in message
    assert "datasets.missing: no such folder" in message
    assert "keys.signing_passphrase: must be one of" in message
    assert "central.url: plain http only for a loopback host; use https" in message
    assert message.count("\n  - ") >= 8


def test_missing_config_and_bad_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHT_STATION_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="set PHT_STATION_CONFIG"):
        load_config()
    with pytest.raises(ConfigError, match="cannot read the station config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("station:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_age_recipient_as_text_or_file_gives_the_recipient_without_the_identity(
    station: Any, parties: Any
) -> None:
    """keys.age_recipient: the hop encrypts to it without opening the identity; opening the
    identity checks that both belong together."""
    own = parties["station-a"].age.recipient
    _rewrite(station, lambda d: d["keys"].update(age_recipient=own))
    config = station.config()
    assert config.age_recipient == own
    (station.root / "keys" / "station.age").write_text("not an identity any more\n")
    assert config.own_recipient() == own  # the identity is not read
    pub = station.root / "keys" / "station.age.pub"
    pub.write_text(f"# station-a\n{own}\n")
    _rewrite(station, lambda d: d["keys"].update(age_recipient="keys/station.age.pub"))
    assert station.config().age_recipient == own


def test_age_recipient_of_another_identity_is_refused_when_the_identity_opens(
    station: Any, parties: Any
) -> None:
    other = parties["station-b"].age.recipient
    _rewrite(station, lambda d: d["keys"].update(age_recipient=other))
    config = station.config()
    with pytest.raises(KeyFileError, match="does not belong to keys.age_recipient"):
        config.load_age_identity()


def test_bad_age_recipient_is_a_config_problem_that_never_echoes_a_secret(
    station: Any, parties: Any
) -> None:
    secret = parties["station-a"].age.secret_text().strip()
    _rewrite(station, lambda d: d["keys"].update(age_recipient=secret))
    with pytest.raises(ConfigError, match="keys.age_recipient") as err:
        station.config()
    assert "age secret key, not a recipient" in str(err.value)
    assert secret[15:] not in str(err.value)
    _rewrite(station, lambda d: d["keys"].update(age_recipient="keys/missing.age.pub"))
    with pytest.raises(ConfigError, match="keys.age_recipient"):
        station.config()
    _rewrite(station, lambda d: d["keys"].update(age_recipient="keys/station.pub"))
    with pytest.raises(ConfigError, match="keys.age_recipient"):
        station.config()


def test_wrong_passphrase_names_the_reference_not_the_secret(station: Any) -> None:
    (station.root / "keys" / "passphrase").write_text("not the passphrase\n")
    with pytest.raises(KeyFileError) as info:
        station.config().load_signing_key()
    assert "not the passphrase" not in str(info.value)
    assert "wrong passphrase" in str(info.value)


def test_signing_key_must_match_the_public_key(station: Any, parties: Any) -> None:
    (station.root / "keys" / "station.pub").write_text(parties["mallory"].public.pem)
    with pytest.raises(KeyFileError, match="does not belong to keys.public_key"):
        station.config().load_signing_key()


def test_env_secret_reference(station: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def change(d: dict[str, Any]) -> None:
        d["keys"]["signing_passphrase"] = {"env": "PHT_TEST_STATION_PASS"}

    _rewrite(station, change)
    monkeypatch.delenv("PHT_TEST_STATION_PASS", raising=False)
    with pytest.raises(ConfigError, match="PHT_TEST_STATION_PASS is not set"):
        station.config().load_signing_key()
    monkeypatch.setenv("PHT_TEST_STATION_PASS", "station passphrase for tests")
    assert station.config().load_signing_key().key_id == station.party.key.key_id


@pytest.mark.parametrize(
    ("text", "value"), [("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1G", 10**9), (4096, 4096)]
)
def test_sizes(text: Any, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", [0.5, "0.5", "0.4B", "0.0001KiB"])
def test_a_size_under_one_byte_is_refused(text: Any) -> None:
    """It would round to 0, which the Docker engine takes as no memory limit at all."""
    with pytest.raises(ValueError, match="is less than one byte"):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [("90s", 90), ("30m", 1800), ("2h", 7200), (5, 5)])
def test_durations(text: Any, value: float) -> None:
    assert parse_seconds(text) == value


def test_relative_paths_follow_the_file(station: Any, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(station.root, moved)
    config = load_config(moved / "station.yaml")
    assert config.audit_log == moved / "audit.jsonl"


class _Lookups:
    """Lookups as the Airflow edge hands them over: plain values by name."""

    def __init__(self, variables: dict[str, str], connections: dict[str, Any]) -> None:
        self.variables = variables
        self.connections = connections

    def variable(self, name: str) -> str | None:
        return self.variables.get(name)

    def connection(self, conn_id: str) -> tuple[str | None, str | None] | None:
        return self.connections.get(conn_id)

    def database(self, conn_id: str) -> Any:
        return None


def _variable_passphrase(station: Any) -> Path:
    def change(d: dict[str, Any]) -> None:
        d["keys"]["signing_passphrase"] = {"variable": "pht_signing_passphrase"}
        d["registry"]["connection_id"] = "pht_registry"

    return _rewrite(station, change)


def test_airflow_references_are_read_through_the_lookups_handed_in(
    station: Any, parties: Any
) -> None:
    from support.stationkit import PASSPHRASE

    path = _variable_passphrase(station)
    lookups = _Lookups({"pht_signing_passphrase": PASSPHRASE}, {"pht_registry": ("robot", "pw")})
    config = load_config(path, lookups)
    assert config.load_signing_key().key_id == parties["station-a"].key.key_id
    assert config.registry.credentials() == ("robot", "pw")


def test_airflow_references_outside_airflow_say_where_and_what_to_use(station: Any) -> None:
    config = load_config(_variable_passphrase(station))
    with pytest.raises(ConfigError, match=r"station\.yaml:\d+: Airflow Variable") as info:
        config.load_signing_key()
    assert "give the secret as file: or env:" in str(info.value)
    with pytest.raises(ConfigError, match="Airflow Connection 'pht_registry' can only be read"):
        config.registry.credentials()


def test_unset_airflow_references_are_named(station: Any) -> None:
    config = load_config(_variable_passphrase(station), _Lookups({}, {}))
    with pytest.raises(ConfigError, match="Airflow Variable 'pht_signing_passphrase' is not set"):
        config.load_signing_key()
    with pytest.raises(ConfigError, match=r"Connection 'pht_registry' \(registry.connection_id\)"):
        config.registry.credentials()


# --- data sets (kinds folder, file, sql) ------------------------------------------------------


def _datasets(station: Any, datasets: dict[str, Any]) -> Path:
    def change(d: dict[str, Any]) -> None:
        d["datasets"] = datasets

    return _rewrite(station, change)


def test_data_set_kinds_load_with_their_fields(station: Any) -> None:
    (station.root / "registry.csv").write_text("a,b\n1,2\n")
    path = _datasets(
        station,
        {
            "cohort": "data/cohort",
            "omop": {
                "kind": "sql",
                "connection": "pht_omop",
                "tables": ["person", "cdm.measurement"],
                "formats": ["csv", "parquet"],
                "identifier_columns": ["person_id"],
            },
            "q": {"kind": "sql", "connection": "c", "queries": {"cohort": "SELECT 1 AS x;"}},
            "registry": {"kind": "file", "path": "registry.csv", "publish_schema": True},
            "old": {"kind": "folder", "path": "data/cohort"},
        },
    )
    ds = load_config(path).datasets
    assert ds["cohort"].kind == ds["old"].kind == "folder"
    assert ds["cohort"].path == ds["old"].path == station.root / "data" / "cohort"
    omop = ds["omop"]
    assert (omop.kind, omop.connection, omop.formats) == ("sql", "pht_omop", ("parquet", "csv"))
    assert dict(omop.targets) == {
        "person": 'SELECT * FROM "person"',
        "measurement": 'SELECT * FROM "cdm"."measurement"',
    }
    assert omop.identifier_columns == ("person_id",) and omop.publish_schema is False
    assert dict(ds["q"].targets) == {"cohort": "SELECT 1 AS x"}
    reg = ds["registry"]
    assert (reg.kind, reg.table, reg.formats, reg.publish_schema) == (
        "file",
        "registry",
        ("parquet",),
        True,
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": "database"}, "datasets.x.kind: unknown kind 'database' (expected one of folder"),
        ({"path": "data/cohort"}, "datasets.x.kind: missing (one of folder, file, sql)"),
        (
            {"kind": "sql", "connection": "c", "tables": ["t"], "queries": {"q": "SELECT 1"}},
            "datasets.x: give either tables: [..] or queries: {name: SELECT ..}, not both",
        ),
        (
            {"kind": "sql", "connection": "c"},
            "datasets.x: give tables: [..] or queries: {name: SELECT ..}",
        ),
        (
            {"kind": "sql", "tables": ["person"]},
            "datasets.x.connection: missing: the Airflow Connection id of the database",
        ),
        (
            {"kind": "sql", "connection": "c", "tables": ["person; DROP TABLE x"]},
            "datasets.x.tables.0: 'person; DROP TABLE x' is not a table or schema.table name",
        ),
        (
            {"kind": "sql", "connection": "c", "tables": ["a.t", "b.t"]},
            "datasets.x.tables.1: table 't' is listed twice",
        ),
        (
            {"kind": "sql", "connection": "c", "queries": {"../x": "SELECT 1"}},
            "datasets.x.queries.../x: a query's name is letters, digits",
        ),
        (
            {"kind": "sql", "connection": "c", "tables": ["t"], "formats": ["xlsx"]},
            "datasets.x.formats: must be a list of parquet and/or csv",
        ),
        (
            {"kind": "sql", "connection": "c", "tables": ["t"], "path": "/x"},
            "datasets.x.path: unknown field for kind sql",
        ),
        (
            {"kind": "sql", "connection": "c", "queries": {"q": "SELECT 1; COMMIT; DELETE FROM t"}},
            "datasets.x.queries.q: must be one statement (no ';' between statements); give one",
        ),
        (
            {"kind": "sql", "connection": "c", "queries": {"q": "SELECT 1) AS a, (SELECT f()"}},
            "datasets.x.queries.q: closes a parenthesis it did not open",
        ),
        (
            {"kind": "sql", "connection": "c", "queries": {"q": "SELECT 1 /* ) AS q"}},
            "datasets.x.queries.q: has an unterminated comment",
        ),
        ({"kind": "file", "path": "data/cohort/patients.txt"}, "must be a .parquet or .csv file"),
        ({"kind": "file", "path": "nope.csv"}, "datasets.x.path: no such file:"),
        ({"kind": "folder", "path": "nope"}, "datasets.x.path: no such folder:"),
        (
            {"kind": "file", "path": "data/cohort/patients.csv", "publish_schema": "yes"},
            "datasets.x.publish_schema: must be true or false",
        ),
    ],
)
def test_data_set_errors_say_what_and_where(
    station: Any, entry: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_datasets(station, {"x": entry}))
    message = str(info.value)
    assert expected in message
    assert "station.yaml:" in message


def test_sql_data_set_outside_airflow_says_what_is_needed(station: Any) -> None:
    path = _datasets(station, {"omop": {"kind": "sql", "connection": "c", "tables": ["t"]}})
    with pytest.raises(ConfigError, match=r"station\.yaml:\d+: data set 'omop': .*station extra"):
        load_config(path).datasets["omop"].connect()
    with pytest.raises(ConfigError, match="Airflow Connection 'c' is not set"):
        load_config(path, _Lookups({}, {})).datasets["omop"].connect()
