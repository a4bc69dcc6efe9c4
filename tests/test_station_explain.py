"""Readable failures: the lines station staff read first when a hop fails for a reason the
protocol expects. One real verification through the registry; the rest from the errors the
station raises, with a real station config (its trust store names the keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.stationkit import make_station, signed_train

from pht_airflow.errors import (
    AlreadyDoneError,
    ChainError,
    ExpiredError,
    InvalidSignatureError,
    InvalidSpecError,
    MalformedSignatureError,
    NotOnRouteError,
    PolicyError,
    PreflightError,
    RegistryAuthError,
    RegistryError,
    RouteKeyMismatchError,
    SignatureDigestMismatchError,
    TooFewApprovalsError,
    TrainExitError,
    TrainOOMError,
    TrainTimeoutError,
    UnsignedError,
    UntrustedCreatorError,
    UntrustedSignatureError,
    VerificationError,
)
from pht_airflow.station import verify
from pht_airflow.station.explain import HINTS, failure_lines, key_label

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture()
def station(tmp_path: Path, parties: Any) -> Any:
    creators = [{"key": parties["alice"].public.pem, "name": "Alice Researcher (UKA)"}]
    approvers = [parties["reviewer"].public.pem]
    return make_station(
        tmp_path / "station-a",
        parties["station-a"],
        "127.0.0.1:5000",
        creators=creators,  # type: ignore[arg-type]
        approvers=approvers,
    )


ALL_CHECKS = [
    UnsignedError,
    UntrustedSignatureError,
    InvalidSignatureError,
    MalformedSignatureError,
    SignatureDigestMismatchError,
    InvalidSpecError,
    UntrustedCreatorError,
    TooFewApprovalsError,
    NotOnRouteError,
    RouteKeyMismatchError,
    ExpiredError,
    AlreadyDoneError,
    ChainError,
]


def test_every_check_of_the_verify_step_has_its_own_hint() -> None:
    checks = {*verify.CHECKS, *(cls.check for cls in ALL_CHECKS)}
    assert checks <= set(HINTS), checks - set(HINTS)
    hints = [todo for _, todo in HINTS.values()]
    assert len(set(hints)) == len(hints)  # one hint each, none shared


@pytest.mark.parametrize("cls", ALL_CHECKS, ids=lambda c: c.check)
def test_first_line_is_the_check_and_the_reason_last_what_to_do(station: Any, cls: Any) -> None:
    exc = cls("the reason as raised", digest=DIGEST)
    lines = failure_lines(exc, station.config())
    plain, todo = HINTS[cls.check]
    assert lines[0] == f"{cls.check}: {plain} (the reason as raised)"
    assert lines[1] == f"train digest: {DIGEST}"
    assert lines[-1] == f"what to do: {todo}"
    assert "Traceback" not in "\n".join(lines)


def test_an_untrusted_creator_through_the_real_verify_step(
    tmp_path: Path, parties: Any, registry: Any, client: Any, docker_client: Any
) -> None:
    """The train is signed by alice, but this station trusts only mallory as a creator."""
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["mallory"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )
    config = station.config()
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    with pytest.raises(UntrustedCreatorError) as failed:
        verify.verify_train(
            client,
            ref,
            station_id="station-a",
            station_key=config.public_key,
            trust=verify.Trust(config.trust.creators, config.trust.approvers, 1),
        )
    lines = failure_lines(failed.value, config)
    assert lines[0].startswith(
        "creator: the creator's signature is not from a trusted creator (no creator signature "
        "by a trusted key: the spec's creator key is not in trusted_creators)"
    )
    assert lines[1] == f"train digest: {failed.value.digest}"
    alice = parties["alice"].key.key_id
    assert lines[2] == f"key: {alice} (not in this station's trust store)"
    assert lines[3] == "what to do: add the key to trust.trusted_creators if you trust this creator"


def test_a_key_is_named_from_the_trust_store(station: Any, parties: Any) -> None:
    config = station.config()
    alice = parties["alice"].key.key_id
    exc = TooFewApprovalsError("0 approval(s), 1 required", digest=DIGEST, key_id=alice)
    assert f"key: {alice} (Alice Researcher (UKA))" in failure_lines(exc, config)
    reviewer = parties["reviewer"].key.key_id
    assert key_label(config, reviewer) == f"{reviewer} (trusted, no name given)"
    own = parties["station-a"].key.key_id
    assert key_label(config, own) == f"{own} (this station's own key)"
    assert key_label(None, own) == own


def test_names_never_come_from_the_train(station: Any, parties: Any) -> None:
    """A signature's self-declared signer name is the train's text: only the key id and the
    station's own name for it are shown."""
    mallory = parties["mallory"].key.key_id
    exc = UntrustedSignatureError(
        "signed by 'Alice Researcher (UKA)'? no: no signature verifies", key_id=mallory
    )
    lines = failure_lines(exc, station.config())
    assert lines[1] == f"key: {mallory} (not in this station's trust store)"


def test_control_characters_from_a_train_are_shown_escaped(station: Any) -> None:
    exc = InvalidSpecError(
        "name: \x1b[2J\x1b[31mAPPROVED\u202e",
        digest=DIGEST,
        details=["route[0]: \x9b31m bad\nsecond line"],
    )
    lines = failure_lines(exc, station.config())
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert "\\x1b[2J\\x1b[31mAPPROVED\\u202e" in lines[0]
    assert lines[2] == "  route[0]: \\x9b31m bad\\nsecond line"
    assert all("\n" not in line for line in lines)


def test_a_chain_failure_names_the_hop(station: Any) -> None:
    exc = ChainError("no result-0 signed by station-a", hop=0, station="station-a", digest=DIGEST)
    lines = failure_lines(exc, station.config())
    assert lines[0].startswith("chain: the results of the previous hops do not form a valid chain")
    assert "(hop 0 (station-a): no result-0 signed by station-a)" in lines[0]


def test_other_expected_failures(station: Any) -> None:
    config = station.config()
    exit_lines = failure_lines(TrainExitError("train exited 3", exit_code=3), config)
    assert exit_lines[0] == "sandbox: the train exited with code 3 (train exited 3)"
    assert exit_lines[1].startswith("what to do: this is the train's own failure")
    slow = TrainTimeoutError("too slow", limit_seconds=60, elapsed=61)
    assert "raise sandbox.wall_time" in failure_lines(slow, config)[1]
    oom = TrainOOMError("oom", limit_bytes=268435456)
    assert "sandbox.memory (268435456 bytes)" in failure_lines(oom, config)[0]
    policy = failure_lines(PolicyError("x:1 is not in this station's registry"), config)
    assert policy[0].startswith("policy: this station's policy refused the hop")
    down = failure_lines(RegistryError("registry 127.0.0.1:1 did not answer"), config)
    assert down[1] == (
        "what to do: the task retries by itself; if it keeps failing, check that the registry is up"
    )
    auth = failure_lines(RegistryAuthError("refused user 'robot'", status=401), config)
    assert "run `pht station check`" in auth[1]
    pre = failure_lines(PreflightError("station a failed pre-flight:\n  - keys: x"), config)
    assert pre == ["station a failed pre-flight:", "  - keys: x"]
    assert failure_lines(VerificationError("odd", check="new-check"))[0] == (
        "new-check: the train did not pass verification (odd)"
    )
    assert failure_lines(ValueError("boom")) == ["unexpected ValueError: boom"]
