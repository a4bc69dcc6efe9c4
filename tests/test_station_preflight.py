"""Station pre-flight against real key files, folders, registries and the Docker engine.

Each misconfiguration of issue 11 fails pre-flight with its own message saying what was
found and what to do, and the message never holds a passphrase or key material.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.authservers import htpasswd_line, start_registry_with_auth
from support.stationkit import PASSPHRASE, Station, make_station

from pht_airflow.dev.localregistry import LocalRegistry, free_port
from pht_airflow.errors import ConfigError, PreflightError
from pht_airflow.keys import generate_keypair
from pht_airflow.station import preflight as pf
from pht_airflow.station.config import load_config

pytestmark = [pytest.mark.registry, pytest.mark.docker]

ROBOT = "robot$station-a"
ROBOT_SECRET = "robot-secret-7f3a91c2"  # noqa: S105 - a test registry's password


def _station(tmp_path: Path, parties: Any, host: str, **overrides: Any) -> Station:
    return make_station(
        tmp_path / "station-a",
        parties["station-a"],
        host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides=overrides or None,
    )


@pytest.fixture()
def station(tmp_path: Path, parties: Any, registry: Any) -> Station:
    return _station(tmp_path, parties, registry.host)


def _fails(station: Station, docker_client: Any, **kwargs: Any) -> PreflightError:
    with pytest.raises(PreflightError) as failed:
        pf.preflight(station.config(), docker_client=docker_client, cache=False, **kwargs)
    return failed.value


def _failed_checks(error: PreflightError) -> list[str]:
    report = error.report
    assert isinstance(report, pf.PreflightReport)
    return [r.name for r in report.failed]


def _no_secrets(text: str) -> None:
    assert PASSPHRASE not in text
    assert "PRIVATE KEY" not in text and "AGE-SECRET-KEY" not in text
    assert ROBOT_SECRET not in text


# --- a healthy station, and the cache ---------------------------------------------------------


def test_a_healthy_station_passes_every_check(station: Station, docker_client: Any) -> None:
    report = pf.preflight(station.config(), docker_client=docker_client, cache=False)
    assert report.ok
    assert [r.name for r in report.results] == list(pf.CHECKS)
    assert not any(r.cached for r in report.results)
    lines = report.lines()
    assert all(line.startswith("✓ ") for line in lines), lines
    keys = next(line for line in lines if line.startswith("✓ keys"))
    assert station.party.key.key_id in keys and station.party.age.recipient in keys
    assert any("cohort (folder)" in line for line in lines)
    assert report.summary()["ok"] is True


def test_passed_checks_are_remembered_per_config_version_in_a_private_file(
    station: Station, docker_client: Any
) -> None:
    config = station.config()
    first = pf.preflight(config, docker_client=docker_client)
    assert not any(r.cached for r in first.results)
    cache = config.work_dir / f"{pf.CACHE_PREFIX}station-a.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    _no_secrets(cache.read_text())
    second = pf.preflight(config, docker_client=docker_client)
    assert all(r.cached for r in second.results)
    assert second.version == first.version
    assert [r.summary for r in second.results] == [r.summary for r in first.results]
    # --no-cache runs everything again
    assert not any(r.cached for r in pf.preflight(config, cache=False).results)


def test_a_changed_key_file_or_config_is_checked_again(
    station: Station, docker_client: Any
) -> None:
    config = station.config()
    pf.preflight(config, docker_client=docker_client)
    passfile = station.root / "keys" / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")  # same text, a new file version
    again = {r.name: r.cached for r in pf.preflight(config, docker_client=docker_client).results}
    assert again == dict.fromkeys(pf.CHECKS, False)
    before = pf.config_version(config)
    with station.config_path.open("a") as f:
        f.write("# edited\n")
    edited = load_config(station.config_path)
    assert pf.config_version(edited) != before
    assert not any(r.cached for r in pf.preflight(edited, docker_client=docker_client).results)


def test_registry_datasets_and_engine_are_rechecked_after_ten_minutes(
    station: Station, docker_client: Any
) -> None:
    config = station.config()
    pf.preflight(config, docker_client=docker_client)
    import time

    later = time.time() + pf.TTL_SECONDS + 1
    report = pf.run_preflight(config, docker_client=docker_client, now=lambda: later)
    cached = {r.name: r.cached for r in report.results}
    assert cached == {
        "folders": True,
        "keys": True,
        "datasets": False,
        "registry": False,
        "engine": False,
    }


def test_keys_from_the_environment_are_rechecked_after_ten_minutes(
    tmp_path: Path,
    parties: Any,
    registry: Any,
    docker_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHT_TEST_SIGNING_PASSPHRASE", PASSPHRASE)
    env_station = _station(
        tmp_path,
        parties,
        registry.host,
        keys={"signing_passphrase": {"env": "PHT_TEST_SIGNING_PASSPHRASE"}},
    )
    config = env_station.config()
    pf.preflight(config, docker_client=docker_client)
    import time

    later = time.time() + pf.TTL_SECONDS + 1
    report = pf.run_preflight(config, docker_client=docker_client, now=lambda: later)
    assert {r.name: r.cached for r in report.results}["keys"] is False


def test_a_failed_check_is_not_remembered(station: Station, docker_client: Any) -> None:
    config = station.config()
    restricted = station.root / "data" / "cohort" / "restricted.csv"
    restricted.write_text("id\n1\n")
    os.chmod(restricted, 0o600)  # a file inside a folder is not part of the config version
    with pytest.raises(PreflightError):
        pf.preflight(config, docker_client=docker_client)
    os.chmod(restricted, 0o644)
    report = pf.preflight(config, docker_client=docker_client)
    assert {r.name: r.cached for r in report.results} == {
        "folders": True,
        "keys": True,
        "datasets": False,  # failed last time: run again, and now it passes
        "registry": True,
        "engine": True,
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    junk=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_a_damaged_cache_file_is_ignored(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(junk)
    assert pf._load_cache(path, "sha256:" + "0" * 64) == {}


def test_a_forged_cache_for_another_version_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    body = {"format": 1, "version": "sha256:old", "passed": {"keys": {"at": 1.0, "summary": "x"}}}
    path.write_text(json.dumps(body))
    assert pf._load_cache(path, "sha256:new") == {}
    assert pf._load_cache(path, "sha256:old") == {"keys": (1.0, "x")}
    path.write_bytes(b"{" * (70 * 1024))  # over the size bound: not parsed
    assert pf._load_cache(path, "sha256:old") == {}


# --- keys ---------------------------------------------------------------------------------------


def test_wrong_signing_passphrase_fails_preflight(station: Station, docker_client: Any) -> None:
    wrong = "wrong passphrase 0123456789"
    (station.root / "keys" / "passphrase").write_text(wrong + "\n")
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["keys"]
    message = str(error)
    assert message.startswith("station station-a failed pre-flight (1 of 5 checks, 1 problem(s))")
    assert "keys: the station signing key does not open:" in message
    assert "wrong passphrase for this key" in message
    assert "what to do: put this key's passphrase in keys.signing_passphrase (file '" in message
    assert wrong not in message
    _no_secrets(message)


def test_missing_signing_passphrase_says_which_field_to_set(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    station = _station(tmp_path, parties, registry.host)
    text = station.config_path.read_text().replace(
        "  signing_passphrase:\n    file: keys/passphrase\n", ""
    )
    station.config_path.write_text(text)
    error = _fails(station, docker_client)
    assert "the key is encrypted and no passphrase was given" in str(error)
    assert "what to do: set keys.signing_passphrase to this key's passphrase" in str(error)


def test_a_pub_file_as_signing_key_fails_preflight(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    station = _station(
        tmp_path, parties, registry.host, keys={"signing_key": {"file": "keys/station.pub"}}
    )
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["keys"]
    message = str(error)
    assert (
        f"keys.signing_key (file '{station.root / 'keys' / 'station.pub'}') is a signing public "
        "key (NAME.pub), not a signing private key (NAME.key)" in message
    )
    assert "what to do: this is the public half: give the private key file NAME.key" in message


def test_an_age_pub_file_as_age_identity_fails_preflight(
    station: Station, parties: Any, docker_client: Any
) -> None:
    (station.root / "keys" / "station.age.pub").write_text(parties["station-a"].age.recipient)
    text = station.config_path.read_text()
    assert "file: keys/station.age\n" in text
    station.config_path.write_text(text.replace("keys/station.age\n", "keys/station.age.pub\n"))
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["keys"]
    message = str(error)
    assert (
        f"keys.age_identity (file '{station.root / 'keys' / 'station.age.pub'}') is an age "
        "recipient (NAME.age.pub), not an age identity (NAME.age)" in message
    )
    assert "what to do: this is the public half (NAME.age.pub): give the identity file" in message


def test_a_signing_key_of_another_pair_fails_preflight(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    other = tmp_path / "station-b.pub"
    other.write_text(parties["station-b"].public.pem)
    station = _station(tmp_path, parties, registry.host, keys={"public_key": str(other)})
    message = str(_fails(station, docker_client))
    assert "does not belong to keys.public_key" in message
    assert "what to do: give keys.public_key and keys.signing_key from the same key pair" in message


def test_an_age_recipient_of_another_identity_fails_preflight(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    other = parties["station-b"].age.recipient
    station = _station(tmp_path, parties, registry.host, keys={"age_recipient": other})
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["keys"]
    message = str(error)
    assert f"not of keys.age_recipient ({other})" in message
    assert "what to do: give the identity's own recipient (its NAME.age.pub)" in message


def test_passphrase_protected_age_identity_with_a_wrong_passphrase(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    made = generate_keypair("st", tmp_path / "gen", PASSPHRASE.encode())
    (tmp_path / "wrong").write_text("not the passphrase\n")
    station = _station(
        tmp_path,
        parties,
        registry.host,
        keys={
            "age_identity": {"file": str(made["age"])},
            "age_passphrase": {"file": str(tmp_path / "wrong")},
        },
    )
    message = str(_fails(station, docker_client))
    assert "the station age identity does not open:" in message
    assert "wrong passphrase for this age identity" in message
    assert "what to do: put this identity's passphrase in keys.age_passphrase" in message
    assert "not the passphrase" not in message


def test_a_private_key_given_as_public_key_is_refused_when_the_config_loads(
    tmp_path: Path, parties: Any, registry: Any
) -> None:
    station = _station(tmp_path, parties, registry.host)
    text = station.config_path.read_text().replace(
        "public_key: keys/station.pub", "public_key: keys/station.key"
    )
    station.config_path.write_text(text)
    with pytest.raises(ConfigError) as failed:
        load_config(station.config_path)
    message = str(failed.value)
    assert "keys.public_key" in message
    assert "expected a PEM public key" in message and "but this is a signing private key" in message


# --- data sets ----------------------------------------------------------------------------------


def test_a_data_folder_the_sandbox_user_cannot_read_fails_preflight(
    station: Station, docker_client: Any
) -> None:
    folder = station.root / "data" / "cohort"
    os.chown(folder, 0, 0)
    os.chmod(folder, 0o700)  # root only; the sandbox user is 65534:65534
    try:
        error = _fails(station, docker_client)
    finally:
        os.chmod(folder, 0o755)
    assert _failed_checks(error) == ["datasets"]
    message = str(error)
    assert (
        f"data set 'cohort' ({folder}): the sandbox user 65534:65534 cannot read 1 of 1 entry "
        "looked at, e.g. the folder itself (mode 0700, owner 0:0)" in message
    )
    assert f"what to do: make it readable, e.g. chmod -R o+rX {folder}" in message


def test_one_unreadable_file_in_a_data_folder_fails_preflight(
    station: Station, docker_client: Any
) -> None:
    restricted = station.root / "data" / "cohort" / "restricted.csv"
    restricted.write_text("id\n1\n")
    os.chmod(restricted, 0o600)
    message = str(_fails(station, docker_client))
    assert "cannot read 1 of 3 entries looked at, e.g. 'restricted.csv' (mode 0600" in message
    assert "id\n1" not in message


def test_a_missing_data_folder_fails_preflight(station: Station, docker_client: Any) -> None:
    config = station.config()
    (station.root / "data" / "cohort" / "patients.csv").unlink()
    (station.root / "data" / "cohort").rmdir()
    with pytest.raises(PreflightError, match=r"data set 'cohort': the folder .* does not exist"):
        pf.preflight(config, docker_client=docker_client, cache=False)


def test_a_data_folder_given_as_a_link_is_judged_by_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    os.chmod(target, 0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    looked, bad, first = pf.scan_dataset(link, 65534, 65534)
    assert (looked, bad) == (1, 1)
    assert first is not None and first.startswith("the folder itself (mode 0700")


def test_an_acl_is_not_judged_by_mode_bits(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    os.chmod(folder, 0o700)
    assert pf.scan_dataset(folder, 65534, 65534)[1] == 1
    try:
        # A minimal access ACL granting user 65534 r-x (user::rwx, user:65534:r-x, group::---,
        # mask::r-x, other::---), as setfacl -m u:65534:rx writes it.
        entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 5, 65534), (0x04, 0, 0xFFFFFFFF),
                   (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]  # fmt: skip
        import struct

        blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
        os.setxattr(folder, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"this file system takes no POSIX ACL ({exc.strerror})")
    assert pf.scan_dataset(folder, 65534, 65534)[1] == 0


def test_sql_data_sets_open_a_read_only_transaction(
    tmp_path: Path, parties: Any, registry: Any, postgres_url: str
) -> None:
    import psycopg

    from pht_airflow.station.secrets import DatabaseUrls

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE person (person_id bigint, year_of_birth int)")
    station = _station(
        tmp_path,
        parties,
        registry.host,
        datasets={
            "cohort": "data/cohort",
            "omop": {"kind": "sql", "connection": "pht_omop", "tables": ["person"]},
            "broken": {"kind": "sql", "connection": "pht_omop", "tables": ["no_such_table"]},
        },
    )
    config = load_config(station.config_path, DatabaseUrls({"pht_omop": postgres_url}))
    report = pf.run_preflight(config, cache=False)
    datasets = next(r for r in report.results if r.name == "datasets")
    assert not datasets.ok
    assert len(datasets.problems) == 1
    problem = datasets.problems[0]
    assert problem.text.startswith("data set 'broken'")
    assert "no_such_table" in problem.text
    assert "check the Airflow Connection 'pht_omop'" in problem.fix


# --- registry -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(htpasswd_line(ROBOT, ROBOT_SECRET) + "\n")
    reg = start_registry_with_auth(
        root, {"htpasswd": {"realm": "pht-preflight", "path": str(htpasswd)}}
    )
    try:
        yield reg
    finally:
        reg.stop()


def _with_credentials(tmp_path: Path, parties: Any, host: str, password: str) -> Station:
    secret = tmp_path / "robot.secret"
    secret.write_text(password + "\n")
    return _station(
        tmp_path,
        parties,
        host,
        registry={"username": ROBOT, "password": {"file": str(secret)}},
    )


def test_right_registry_credentials_pass(
    tmp_path: Path, parties: Any, auth_registry: LocalRegistry, docker_client: Any
) -> None:
    station = _with_credentials(tmp_path, parties, auth_registry.host, ROBOT_SECRET)
    report = pf.preflight(station.config(), docker_client=docker_client, cache=False)
    registry = next(r for r in report.results if r.name == "registry")
    assert registry.summary == (
        f"{auth_registry.host} lets user {ROBOT!r} list station-a/{pf.PROBE_REPOSITORY}"
    )


def test_wrong_registry_credentials_fail_preflight(
    tmp_path: Path, parties: Any, auth_registry: LocalRegistry, docker_client: Any
) -> None:
    station = _with_credentials(tmp_path, parties, auth_registry.host, "not-the-robot-secret")
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["registry"]
    message = str(error)
    assert (
        f"registry: registry {auth_registry.host} refused the station's credentials "
        f"(user {ROBOT!r}) (HTTP 401)" in message
    )
    assert "what to do: check the robot account's name and secret" in message
    assert "not-the-robot-secret" not in message
    assert not error.retryable  # a person must fix the credentials


def test_a_registry_that_is_down_fails_preflight(
    tmp_path: Path, parties: Any, docker_client: Any
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens here
    station = _station(tmp_path, parties, host)
    error = _fails(station, docker_client)
    assert _failed_checks(error) == ["registry"]
    message = str(error)
    assert f"registry: cannot reach registry {host}: Connection refused" in message
    assert "what to do: check that the registry is running and registry.host" in message
    assert error.retryable  # waiting may fix it: the hop's pre-flight task may retry


def test_every_failed_check_is_listed_in_one_error(
    tmp_path: Path, parties: Any, docker_client: Any
) -> None:
    host = f"127.0.0.1:{free_port()}"
    station = _station(tmp_path, parties, host, keys={"signing_key": {"file": "keys/station.pub"}})
    folder = station.root / "data" / "cohort"
    os.chmod(folder, 0o700)
    try:
        error = _fails(station, docker_client)
    finally:
        os.chmod(folder, 0o755)
    assert _failed_checks(error) == ["keys", "datasets", "registry"]
    message = str(error)
    assert "(3 of 5 checks, 3 problem(s))" in message
    assert not error.retryable  # the registry is down, but the keys need a person too
    assert message.count("\n    what to do: ") == 3
    lines = error.report.lines()  # type: ignore[attr-defined]
    assert [line[:12] for line in lines if line.startswith(("✓", "✗"))] == [
        "✓ folders: w",
        "✗ keys: keys",
        "✗ datasets: ",
        "✗ registry: ",
        "✓ engine: th",
    ]


def test_the_engine_check_names_an_engine_that_is_gone(
    station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    report = pf.run_preflight(station.config(), cache=False)
    engine = next(r for r in report.results if r.name == "engine")
    assert not engine.ok
    assert engine.problems[0].text.startswith("cannot reach the Docker engine")
    assert "start dockerd, or set DOCKER_HOST" in engine.problems[0].fix


def _heads() -> tuple[bytes, bytes]:
    """The first bytes of an encrypted private key PEM and of an age secret key, made now
    (no key material in the repository)."""
    from pht_airflow.keys import SigningKey, generate_age_identity

    pem = SigningKey.generate().private_pem(b"made at test time").split(b"\n")[0]
    return pem + b"\nAAAA\n", str(generate_age_identity().identity).encode()[:19]


_ENCRYPTED_PEM_HEAD, _AGE_SECRET_HEAD = _heads()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.sampled_from(
            [
                b"-----BEGIN PUBLIC KEY-----\n",
                _ENCRYPTED_PEM_HEAD,
                b"age-encryption.org/v1\n-> scrypt",
                _AGE_SECRET_HEAD,
                b"age1qqq",
                b"# x\n",
            ]
        ).flatmap(lambda head: st.binary(max_size=200).map(lambda tail: head + tail)),
    )
)
def test_any_bytes_as_a_key_file_give_problems_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, parties: Any, data: bytes
) -> None:
    """Whatever a key file holds, pre-flight names a problem with what to do (or opens it)."""
    root = tmp_path_factory.mktemp("hostile")
    station = _station(root, parties, "127.0.0.1:5000")
    config = station.config()
    for name in ("station.key", "station.age"):
        (station.root / "keys" / name).write_bytes(data)
    _, _, problems = pf.open_keys(config)
    assert len(problems) == 2
    for problem in problems:
        assert problem.text and problem.fix
        assert PASSPHRASE not in problem.line()
