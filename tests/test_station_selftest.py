"""The station self-test: each check against the real engine, registry and key files, and
the ``pht_station_selftest`` DAG through Airflow's own ``dag.test()``.

``dag.test()`` swallows task exceptions, so the DAG tests assert on the run's and the tasks'
states; the failure messages are asserted by calling the check functions directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from support.stationkit import PASSPHRASE, make_station

import pht_airflow.station.sandbox as sandbox
from pht_airflow.dev.localregistry import free_port
from pht_airflow.errors import PhtError, SelfTestError
from pht_airflow.oci import RegistryClient
from pht_airflow.station import selftest
from pht_airflow.station.sandbox import Limits

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.registry]

CHECKS = ["engine", "registry", "keys", "datasets", "sandbox", "preflight", "leftovers"]


@pytest.fixture(scope="module")
def dag(airflow_db: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "pht_station_selftest_dag", REPO / "dags" / "pht_station_selftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture(autouse=True)
def _default_image(monkeypatch: pytest.MonkeyPatch, busybox_image: str) -> None:
    monkeypatch.delenv(selftest.IMAGE_ENV, raising=False)


def _station(tmp_path: Path, parties: Any, host: str, **overrides: Any) -> Any:
    return make_station(
        tmp_path / "station-a",
        parties["station-a"],
        host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides=overrides or None,
    )


@pytest.fixture()
def station(tmp_path: Path, parties: Any, registry: Any) -> Any:
    return _station(tmp_path, parties, registry.host)


def _leftovers(docker_client: Any) -> list[Any]:
    return [
        c
        for c in docker_client.containers.list(all=True, filters={"label": sandbox.LABEL})
        if c.name.startswith("pht-selftest-")
    ]


# --- the DAG -----------------------------------------------------------------------------------


def test_dag_shape(dag: Any) -> None:
    assert dag.dag_id == "pht_station_selftest"
    assert dag.schedule is None
    assert dag.tags == {"pht"} or list(dag.tags) == ["pht"]
    assert dag.doc_md and "sandbox" in dag.doc_md
    assert sorted(dag.task_ids) == sorted(CHECKS)
    for task in dag.tasks:
        assert task.retries == 0
        assert not task.upstream_task_ids  # independent: one failure hides no other check


def test_dag_passes_on_this_machine(
    dag: Any, station: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == dict.fromkeys(CHECKS, "success"), states
    assert run.state == "success"
    assert _leftovers(docker_client) == []


def test_dag_registry_down_fails_only_the_registry_task(
    dag: Any, tmp_path: Path, parties: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens here
    station = _station(tmp_path, parties, host)
    monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    # the pre-flight task reaches the registry too
    assert states == {
        **dict.fromkeys(CHECKS, "success"),
        "registry": "failed",
        "preflight": "failed",
    }, states

    with pytest.raises(SelfTestError) as failed:
        selftest.check_registry(station.config())
    message = str(failed.value)
    assert message.startswith(f"cannot reach registry {host} (step 'ping'): Connection refused")
    assert "step 'ping'" in message
    assert "\n" not in message


# --- engine ------------------------------------------------------------------------------------


def test_engine_passes(station: Any, docker_client: Any) -> None:
    message = selftest.check_engine(station.config(), docker_client)
    assert message.startswith("engine: Docker ")
    assert "pht-local/busybox:latest" in message


def test_engine_fails_without_the_probe_image(
    station: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(selftest.IMAGE_ENV, "pht-local/no-such-probe:latest")
    with pytest.raises(SelfTestError, match=r"probe image pht-local/no-such-probe:latest is not"):
        selftest.check_engine(station.config(), docker_client)


def test_engine_fails_when_the_engine_is_gone(
    station: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    with pytest.raises(SelfTestError, match=r"^engine: cannot reach the Docker engine"):
        selftest.check_engine(station.config())


# --- registry ----------------------------------------------------------------------------------


def test_registry_round_trip_leaves_nothing_behind(station: Any, registry: Any) -> None:
    message = selftest.check_registry(station.config())
    assert f"on {registry.host}" in message
    assert "station-a/pht-selftest:selftest-" in message
    tag = message.split("station-a/pht-selftest:", 1)[1].split()[0]
    with RegistryClient(registry.host) as client:
        assert tag not in client.list_tags("station-a/pht-selftest")


def test_registry_names_the_failed_step(
    station: Any, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(self: Any, repository: str, digest: str, **kwargs: Any) -> bytes:
        return b"other bytes"

    monkeypatch.setattr(RegistryClient, "get_blob", corrupt)
    with pytest.raises(SelfTestError) as failed:
        selftest.check_registry(station.config())
    assert str(failed.value).startswith(f"registry {registry.host}: step 'pull blob' failed")
    with RegistryClient(registry.host) as client:  # the probe was deleted all the same
        assert client.list_tags("station-a/pht-selftest") == []


# --- keys --------------------------------------------------------------------------------------


def test_keys_pass(station: Any, parties: Any) -> None:
    message = selftest.check_keys(station.config())
    assert parties["station-a"].key.key_id in message
    assert parties["station-a"].age.recipient in message


def test_keys_wrong_passphrase_fails_without_the_passphrase(station: Any, parties: Any) -> None:
    wrong = "wrong passphrase 0123456789"
    (station.root / "keys" / "passphrase").write_text(wrong + "\n")
    with pytest.raises(SelfTestError) as failed:
        selftest.check_keys(station.config())
    message = str(failed.value)
    assert message.startswith("keys: the station signing key does not open")
    assert wrong not in message
    assert PASSPHRASE not in message
    assert "PRIVATE KEY" not in message and "AGE-SECRET-KEY" not in message


def test_keys_signing_key_of_another_station_fails(
    tmp_path: Path, parties: Any, registry: Any
) -> None:
    other = tmp_path / "station-b.pub"
    other.write_text(parties["station-b"].public.pem)
    station = _station(tmp_path, parties, registry.host, keys={"public_key": str(other)})
    with pytest.raises(SelfTestError, match="does not belong to keys.public_key"):
        selftest.check_keys(station.config())


def test_keys_damaged_age_identity_fails_without_key_material(station: Any) -> None:
    path = station.root / "keys" / "station.age"
    secret = path.read_text().strip()
    path.write_text(secret[:-6] + "qqqqqq\n")
    with pytest.raises(SelfTestError) as failed:
        selftest.check_keys(station.config())
    message = str(failed.value)
    assert message.startswith("keys: the station age identity does not open")
    assert "AGE-SECRET-KEY" not in message and secret[15:] not in message


def test_keys_check_is_preflights_key_check(tmp_path: Path, parties: Any, registry: Any) -> None:
    """The self-test opens keys with pre-flight's function: the same kind message for a
    ``.pub`` given as the signing key, with what to do."""
    from pht_airflow.station import preflight

    station = _station(
        tmp_path, parties, registry.host, keys={"signing_key": {"file": "keys/station.pub"}}
    )
    _, _, problems = preflight.open_keys(station.config())
    assert len(problems) == 1
    with pytest.raises(SelfTestError) as failed:
        selftest.check_keys(station.config())
    message = str(failed.value)
    assert message == f"keys: {problems[0].line()}"
    assert "is a signing public key (NAME.pub), not a signing private key (NAME.key)" in message


# --- data sets ---------------------------------------------------------------------------------


def test_datasets_pass(station: Any, docker_client: Any) -> None:
    message = selftest.check_datasets(station.config(), docker_client)
    assert message == "datasets: the sandbox user 65534:65534 can list and read cohort (1 files)"


def test_dataset_folder_unreadable_by_the_sandbox_user(station: Any, docker_client: Any) -> None:
    folder = station.root / "data" / "cohort"
    os.chmod(folder, 0o700)  # owner only; the owner is not uid 65534
    try:
        with pytest.raises(SelfTestError) as failed:
            selftest.check_datasets(station.config(), docker_client)
    finally:
        os.chmod(folder, 0o755)
    message = str(failed.value)
    assert f"data set 'cohort' ({folder})" in message
    assert "the sandbox user 65534:65534 cannot list the folder" in message
    assert "the folder itself (mode 0700" in message
    assert f"chmod -R o+rX {folder}" in message
    assert _leftovers(docker_client) == []


def test_dataset_file_unreadable_by_the_sandbox_user(station: Any, docker_client: Any) -> None:
    secret = station.root / "data" / "cohort" / "restricted.csv"
    secret.write_text("id\n1\n")
    os.chmod(secret, 0o600)
    with pytest.raises(SelfTestError) as failed:
        selftest.check_datasets(station.config(), docker_client)
    message = str(failed.value)
    assert "data set 'cohort'" in message
    assert "1 of 2 file(s) tried cannot be read" in message
    assert "'restricted.csv' (mode 0600" in message
    assert "id\n1" not in message


def test_dataset_folder_gone(station: Any, docker_client: Any) -> None:
    config = station.config()
    shutil.rmtree(station.root / "data" / "cohort")
    with pytest.raises(SelfTestError, match=r"data set 'cohort': the folder .* does not exist"):
        selftest.check_datasets(config, docker_client)


def test_scan_dataset_by_mode_bits(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("x")
    (folder / "sub" / "b.csv").write_text("y")
    for path, mode in ((folder, 0o750), (folder / "sub", 0o755), (folder / "a.csv", 0o640)):
        os.chmod(path, mode)
    os.chmod(folder / "sub" / "b.csv", 0o644)
    uid, gid = os.stat(folder).st_uid, os.stat(folder).st_gid
    assert selftest.scan_dataset(folder, uid, gid) == (4, 0, None)  # the owner
    assert selftest.scan_dataset(folder, 65534, gid)[1] == 0  # the group
    looked, bad, first = selftest.scan_dataset(folder, 65534, 65534)  # everyone else
    assert (looked, bad) == (1, 1) and first and first.startswith("the folder itself")
    os.chmod(folder, 0o755)
    first_bad = f"'a.csv' (mode 0640, owner {uid}:{gid})"
    assert selftest.scan_dataset(folder, 65534, 65534) == (4, 1, first_bad)


# --- sandbox -----------------------------------------------------------------------------------


def test_sandbox_passes(station: Any, docker_client: Any) -> None:
    message = selftest.check_sandbox(station.config(), docker_client)
    assert message.startswith("sandbox: pht-local/busybox:latest ran as 65534:65534 with no net")
    assert _leftovers(docker_client) == []


def test_sandbox_uses_the_station_user(
    tmp_path: Path, parties: Any, registry: Any, docker_client: Any
) -> None:
    station = _station(tmp_path, parties, registry.host, sandbox={"user": "4242:4343"})
    message = selftest.check_sandbox(station.config(), docker_client)
    assert "ran as 4242:4343" in message


def test_sandbox_weakened_is_caught(
    station: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox with the host's network, writable mounts and no no-new-privileges fails, and
    the message names every isolation that broke. The probe only ever connects to 127.0.0.1."""
    original = sandbox.container_settings

    def weakened(*args: Any, **kwargs: Any) -> dict[str, Any]:
        settings = original(*args, **kwargs)
        settings.update(network_mode="host", read_only=False, security_opt=[])
        settings["volumes"] = {k: {**v, "mode": "rw"} for k, v in settings["volumes"].items()}
        return settings

    monkeypatch.setattr(sandbox, "container_settings", weakened)
    with pytest.raises(SelfTestError) as failed:
        selftest.check_sandbox(station.config(), docker_client)
    message = str(failed.value)
    assert message.startswith("sandbox: network: the probe reached a listener on the host's")
    for expected in (
        "network: the probe connected to 127.0.0.1 (net=connected)",
        "read-only root: / is not mounted read-only (mount-root=rw)",
        "read-only data: /pht/data is not mounted read-only (mount-data=rw)",
        "read-only data: the probe could write /pht/data (data-write=allowed)",
        "no-new-privileges: not set for the probe (no-new-privs=0)",
    ):
        assert expected in message
    assert "user:" not in message and "capabilities:" not in message
    assert _leftovers(docker_client) == []


def test_sandbox_problems_judges_the_report() -> None:
    good = {
        "uid": "65534",
        "gid": "65534",
        "net": "blocked",
        "interfaces": "lo",
        "mount-root": "ro",
        "root-write": "denied",
        "mount-data": "ro",
        "data-write": "denied",
        "output-write": "allowed",
        "tmp-write": "allowed",
        "tmp-exec": "denied",
        "cap-eff": "0000000000000000",
        "no-new-privs": "1",
    }
    limits = Limits()
    assert selftest.sandbox_problems(good, limits, 0) == []
    root = selftest.sandbox_problems({**good, "uid": "0", "gid": "0"}, limits, 0)
    assert root == [
        "user: the probe runs as root (uid 0)",
        "user: the probe runs in the root group (gid 0)",
    ]
    assert selftest.sandbox_problems({**good, "cap-eff": "00000000a80425fb"}, limits, 0) == [
        "capabilities: the probe holds capabilities (CapEff 00000000a80425fb)"
    ]
    assert selftest.sandbox_problems({**good, "net": "untested"}, limits, 0) == [
        "network: the probe image has neither nc nor wget, so it was not tested"
    ]
    missing = dict(good)
    del missing["root-write"]
    assert selftest.sandbox_problems(missing, limits, 0) == ["the probe did not report root-write"]


def test_sandbox_probe_image_without_a_shell(
    station: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(selftest.IMAGE_ENV, "pht-local/no-such-probe:latest")
    with pytest.raises(SelfTestError, match=r"^sandbox: the probe container failed: .*not in"):
        selftest.check_sandbox(station.config(), docker_client)


# --- preflight ---------------------------------------------------------------------------------


def test_preflight_check_runs_every_preflight_check_uncached(
    station: Any, docker_client: Any
) -> None:
    from pht_airflow.station import preflight

    config = station.config()
    preflight.preflight(config, docker_client=docker_client)  # remembered now
    message = selftest.check_preflight(config, docker_client)
    assert message == "preflight: folders, keys, datasets, registry, engine passed"
    folder = station.root / "data" / "cohort"
    restricted = folder / "restricted.csv"
    restricted.write_text("id\n1\n")
    os.chmod(restricted, 0o600)  # not part of the config version: only a fresh run sees it
    with pytest.raises(SelfTestError) as failed:
        selftest.check_preflight(config, docker_client)
    text = str(failed.value)
    assert text.startswith(f"preflight: datasets: data set 'cohort' ({folder}): the sandbox user")
    assert f"make it readable, e.g. chmod -R o+rX {folder}" in text


# --- all ---------------------------------------------------------------------------------------


def test_run_all_and_the_error_type(station: Any, docker_client: Any) -> None:
    results = selftest.run_all(station.config(), docker_client)
    assert list(results) == CHECKS
    assert all(isinstance(v, str) for v in results.values()), results
    assert issubclass(SelfTestError, PhtError)
    with pytest.raises(ValueError, match="no self-test check 'nope'"):
        selftest.run_check("nope", station.config())
