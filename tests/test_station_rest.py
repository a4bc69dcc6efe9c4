"""A hop's output at rest between its tasks (``station.rest``): encrypted to the station
itself, never plaintext on disk outside a step's private folder, checked before decryption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.stationkit import make_station

from pht_airflow.errors import PhtError
from pht_airflow.station import rest

VALUE = b"Zebrafinch-7731,42\n"


@pytest.fixture()
def config(tmp_path: Path, parties: Any) -> Any:
    station = make_station(
        tmp_path / "a", parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
    )  # fmt: skip
    return station.config()


def _output(tmp_path: Path) -> Path:
    out = tmp_path / "output"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "counts.csv").write_bytes(VALUE)
    (out / "README.md").write_text("notes\n")
    return out


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_the_output_rests_encrypted_and_opens_only_inside_the_step(
    config: Any, tmp_path: Path
) -> None:
    key = rest.run_key("train-1", 0, "manual__2026")
    facts = rest.store_output(config, key, _output(tmp_path), {"exit_code": 0})
    assert facts["files"] == 2 and facts["exit_code"] == 0 and facts["rest_key"] == key
    assert rest.load_facts(config, key) == facts
    assert VALUE not in _all_bytes(config.work_dir)  # only ciphertext at rest
    assert {p.stat().st_mode & 0o777 for p in config.work_dir.glob("rest-*")} == {0o600}
    with rest.opened_output(config, key, "train-1") as folder:
        assert (folder / "tables" / "counts.csv").read_bytes() == VALUE
        inside = folder
    assert not inside.exists()  # wiped on leaving
    assert VALUE not in _all_bytes(config.work_dir)
    assert rest.drop_output(config, key) is True
    assert list(config.work_dir.glob("rest-*")) == []
    assert rest.drop_output(config, key) is False


def test_a_changed_resting_output_is_refused_before_decryption(config: Any, tmp_path: Path) -> None:
    key = rest.run_key("train-1", 1, "run")
    rest.store_output(config, key, _output(tmp_path), {})
    cipher = config.work_dir / f"rest-{key}.age"
    data = bytearray(cipher.read_bytes())
    data[-1] ^= 1
    cipher.write_bytes(bytes(data))
    with (
        pytest.raises(PhtError, match="was changed on disk"),
        rest.opened_output(config, key, "train-1"),
    ):
        pass
    assert [p.name for p in config.work_dir.iterdir() if p.name.startswith("hop-")] == []


def test_a_missing_output_and_a_hostile_key_say_what_is_wrong(config: Any) -> None:
    missing = rest.run_key("t", 0, "r")
    with (
        pytest.raises(PhtError, match="the run task did not finish"),
        rest.opened_output(config, missing, "t"),
    ):
        pass
    with pytest.raises(PhtError, match="not a resting output key"):
        rest.load_facts(config, "../../etc/passwd")
    assert rest.run_key("../../X Y", 3, "r").startswith("x-y-3-")
