"""`pht sign`, `pht verify` and `pht inspect` end to end: real engine, real registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pht_airflow.cli import main
from pht_airflow.protocol import TRAIN_LABEL
from pht_airflow.researcher.train import StationInfo, make_spec

pytestmark = [pytest.mark.registry, pytest.mark.docker]


@pytest.fixture(scope="module")
def train(build_and_push: Any, parties: Any, key_files: dict[str, Path]) -> Any:
    """A train image whose spec names alice (from key files) as creator and two stations."""
    from pht_airflow.keys import load_public_key

    creator = load_public_key(key_files["pub"])
    route = [
        StationInfo(s, parties[s].public.pem, parties[s].age.recipient)
        for s in ("station-a", "station-b")
    ]
    spec = make_spec(
        name="age-histogram",
        creator_id="alice",
        creator_key_id=creator.key_id,
        creator_recipient=key_files["age_pub"].read_text().strip(),
        route=route,
        mode="sequential",
        dataset="cohort",
    )
    ref = build_and_push(
        f"incoming/{spec.id}", "train", labels={TRAIN_LABEL: spec.to_canonical_json()}
    )
    return ref, spec


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_sign_verify_inspect(train: Any, key_files: dict[str, Path], tmp_path: Path) -> None:
    ref, spec = train
    tag_ref = f"{ref.registry}/{ref.repository}:train"
    result = _run(
        "sign",
        tag_ref,
        "--key",
        str(key_files["key"]),
        "--passphrase-file",
        str(key_files["passphrase"]),
    )
    assert result.exit_code == 0, result.output
    assert f"@{ref.digest} as creator" in result.output

    result = _run("verify", tag_ref, "--key", str(key_files["pub"]), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["digest"] == ref.digest
    assert [s["role"] for s in body["signers"]] == ["creator"]

    result = _run("inspect", tag_ref, "--key", str(key_files["pub"]), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["spec"] == spec.to_dict()
    assert body["digest"] == ref.digest
    assert body["signers"][0]["signer"] == "alice"

    result = _run("inspect", tag_ref)
    assert result.exit_code == 0, result.output
    assert "station-b" in result.output and spec.id in result.output


def test_verify_with_an_untrusted_key_exits_3(
    train: Any, key_files: dict[str, Path], parties: Any, tmp_path: Path
) -> None:
    ref, _ = train
    _run(
        "sign",
        str(ref),
        "--key",
        str(key_files["key"]),
        "--passphrase-file",
        str(key_files["passphrase"]),
    )
    other = tmp_path / "mallory.pub"
    other.write_text(parties["mallory"].public.pem)
    result = _run("verify", str(ref), "--key", str(other))
    assert result.exit_code == 3
    assert "[signature-trusted]" in result.output
    assert ref.digest in result.output


def test_sign_with_a_wrong_passphrase_changes_nothing(
    train: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref, _ = train
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    before = _run("verify", str(ref), "--key", str(key_files["pub"]), "--json")
    result = _run("sign", str(ref), "--key", str(key_files["key"]), "--passphrase-file", str(wrong))
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert "not it" not in result.output
    after = _run("verify", str(ref), "--key", str(key_files["pub"]), "--json")
    assert before.output == after.output


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("HTTP://x/y", "no URL scheme"),
        ("127.0.0.1:1/UPPER:train", "must be lowercase"),
        ("127.0.0.1:1/a@sha256:abc", "64 lowercase hex"),
    ],
)
def test_bad_reference_is_one_clear_line(reference: str, message: str, key_files: Any) -> None:
    result = _run("verify", reference, "--key", str(key_files["pub"]))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_train_is_not_found(registry: Any, key_files: Any) -> None:
    result = _run("verify", f"{registry.host}/nope/nothing:train", "--key", str(key_files["pub"]))
    assert result.exit_code == 1
    assert "404" in result.output or "not found" in result.output.lower()
