"""One active run per train at a station (``station.active``): a second run of the same train
is refused with the run that holds it, a claim left by a run that is no longer active is
taken over, and only the holder gives a claim back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.stationkit import make_station

from pht_airflow.errors import PolicyError
from pht_airflow.station import active
from pht_airflow.station.hop import failure_summary

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture()
def config(tmp_path: Path, parties: Any) -> Any:
    station = make_station(
        tmp_path / "a", parties["station-a"], "127.0.0.1:5000",
        creators=[parties["alice"].public.pem], approvers=[parties["reviewer"].public.pem],
    )  # fmt: skip
    return station.config()


def test_a_second_active_run_of_the_same_train_is_refused_naming_the_first(config: Any) -> None:
    active.claim(config, DIGEST, "manual__first", lambda run: True)
    with pytest.raises(active.DuplicateRunError) as caught:
        active.claim(config, DIGEST, "manual__second", lambda run: run == "manual__first")
    assert str(caught.value) == (
        f"train {DIGEST} already has an active run at this station (manual__first); "
        "answer or stop that run instead of starting another"
    )
    # The station's own mistake: audited, never reported to the central service.
    assert failure_summary(caught.value)["station_fault"] is True
    # The holder's retried verify keeps its claim; another train is not affected.
    active.claim(config, DIGEST, "manual__first", lambda run: True)
    active.claim(config, "sha256:" + "cd" * 32, "manual__second", lambda run: True)


def test_a_claim_of_a_run_that_ended_is_taken_over_and_only_the_holder_gives_it_back(
    config: Any,
) -> None:
    active.claim(config, DIGEST, "manual__killed", lambda run: True)
    asked: list[str] = []
    active.claim(config, DIGEST, "manual__next", lambda run: asked.append(run) or False)
    assert asked == ["manual__killed"]
    assert active.give_back(config, DIGEST, "manual__killed") is False  # not its claim now
    assert active.give_back(config, DIGEST, "manual__next") is True
    assert list(config.work_dir.glob("active-*")) == []
    assert active.give_back(config, None, "manual__next") is False


def test_a_hostile_digest_never_names_a_file(config: Any) -> None:
    with pytest.raises(PolicyError, match="not a train digest"):
        active.claim(config, "sha256:../../etc/passwd", "r", lambda run: False)
    assert active.give_back(config, "../x", "r") is False


def test_resting_outputs_of_hops_that_ended_long_ago_are_swept(config: Any) -> None:
    import os
    import time

    from pht_airflow.station import rest

    config.work_dir.mkdir(parents=True, exist_ok=True)
    old = config.work_dir / "rest-t-0-aaaa.age"
    new = config.work_dir / "rest-t-0-bbbb.age"
    half = config.work_dir / ".rest-t-0-cccc.age.99.tmp"
    for path in (old, new, half):
        path.write_bytes(b"age ciphertext")
    long_ago = time.time() - rest.MAX_REST_AGE.total_seconds() - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(half, (long_ago, long_ago))
    assert sorted(rest.sweep_rest(config)) == sorted([old.name, half.name])
    assert new.exists() and not old.exists() and not half.exists()
