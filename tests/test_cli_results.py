"""``pht results fetch`` (``pht_airflow/cli/results.py``) against hostile results, end to end.

Real registry; the train is a tiny image signed by the researcher's key files; a result is
published as station-a would sign it. The refusal must be one clean line (no traceback, no
raw control characters), exit non-zero, and leave nothing in or beside the output folder.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PASSPHRASE
from support.hostile_tar import build, member

from pht_airflow.attestation import (
    DSSE_MEDIA_TYPE,
    attest,
    attestation_tag,
    hop_predicate,
    make_statement,
    sign_envelope,
)
from pht_airflow.cli import main
from pht_airflow.keys import load_age_identity, load_signing_key
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Reference, RegistryClient
from pht_airflow.protocol import RESULT_MEDIA_TYPE, TRAIN_LABEL
from pht_airflow.researcher.train import StationInfo, make_spec
from pht_airflow.results import encrypt_stream, push_result
from pht_airflow.signing import sign

pytestmark = [pytest.mark.registry, pytest.mark.docker]


@pytest.fixture()
def publish(build_and_push: Any, registry: Any, parties: Any, key_files: dict[str, Path]) -> Any:
    """A factory: a parallel train signed by the key files' creator, with ``plaintext``
    sealed as station-a's signed result-0 to the creator; returns the pinned reference."""
    creator = load_signing_key(key_files["key"], PASSPHRASE)
    recipient = load_age_identity(key_files["age"], PASSPHRASE).recipient

    def factory(plaintext: bytes, predicate: dict[str, Any] | None = None) -> str:
        spec = make_spec(
            name="hostile-cli", creator_id="alice", creator_key_id=creator.key_id,
            creator_recipient=recipient, recipients=[],
            route=[StationInfo("station-a", parties["station-a"].public.pem,
                               parties["station-a"].age.recipient)],
            mode="parallel", dataset="cohort",
        )  # fmt: skip
        ref = build_and_push(
            f"station-test/{spec.id}", "train", labels={TRAIN_LABEL: spec.to_canonical_json()}
        )
        with RegistryClient(registry.host) as client:
            sign(client, ref, creator, role="creator", signer="alice")
            manifest = client.get_manifest(ref.repository, ref.digest)
            layer = client.upload_blob(
                ref.repository,
                encrypt_stream(io.BytesIO(plaintext), [recipient]),
                media_type=RESULT_MEDIA_TYPE,
            )
            config = {
                "train": {"id": spec.id, "digest": ref.digest}, "hop": 0,
                "station": "station-a", "previous": None, "created": "2026-12-05T00:00:00Z",
                "recipients": [recipient], "plaintext_bytes": len(plaintext),
            }  # fmt: skip
            if predicate is not None:
                predicate = {**predicate, "train": {**predicate["train"], "id": spec.id,
                                                    "digest": ref.digest}}  # fmt: skip
            push_result(client, ref, manifest, layer, config, key=parties["station-a"].key,
                        predicate=predicate)  # fmt: skip
        return str(ref)

    return factory


def _fetch(ref: str, key_files: dict[str, Path], out: Path) -> Any:
    args = ["results", "fetch", ref, "--identity", str(key_files["age"]), "--out", str(out),
            "--passphrase-file", str(key_files["passphrase"])]  # fmt: skip
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_fetch_opens_a_good_result(
    publish: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref = publish(build(member("counts.csv", b"n\n3\n")))
    result = _fetch(ref, key_files, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "0-station-a" / "counts.csv").read_bytes() == b"n\n3\n"


@pytest.mark.parametrize(
    ("plaintext", "message"),
    [
        (build(member("a.csv"), member("a.csv")), "'a.csv': the name appears twice"),
        (build(member("\x1b[2Jclear.csv")), r"'\x1b[2Jclear.csv': control characters"),
    ],
    ids=["duplicate", "escape-sequence"],
)
def test_fetch_refuses_a_hostile_archive_in_one_clean_line(
    plaintext: bytes, message: str, publish: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref = publish(plaintext)
    work = tmp_path / "work"
    work.mkdir()
    result = _fetch(ref, key_files, work / "out")
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    assert os.listdir(work) == []


# --- run attestations -----------------------------------------------------------------------

PREDICATE = hop_predicate(
    train={"id": "-", "name": "hostile-cli", "digest": "sha256:" + "0" * 64},
    station="station-a",
    hop=0,
    dataset={"name": "cohort", "digest": "sha256:" + "ef" * 32},
    sandbox={"memory": "512m", "gpus": None},
    disclosure={"verdict": "review", "files": [
        {"path": "counts.csv", "bytes": 6, "kind": "table", "verdict": "review",
         "reasons": ["row 1, column 'n': a count below min_cell_count 10"]}]},
    approved_by="dora\x1b[2J",
    released_by="erik",
    started="2026-12-05T07:00:00Z",
    finished="2026-12-05T07:00:09Z",
    exit_code=0,
)  # fmt: skip


def test_fetch_prints_each_results_attestation_summary(
    publish: Any, key_files: dict[str, Path], tmp_path: Path
) -> None:
    ref = publish(build(member("counts.csv", b"n\n3\n")), PREDICATE)
    result = _fetch(ref, key_files, tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("hop 0 (station-a): run attestation verified")
    assert lines[start + 1 : start + 8] == [
        f"  dataset: cohort (sha256:{'ef' * 32})",
        "  verdict: review (1 review)",
        "  approved by: dora\\x1b[2J",  # the control character shown, not sent
        "  released by: erik",
        "  exit code: 0",
        "  ran: 2026-12-05T07:00:00Z -> 2026-12-05T07:00:09Z",
        f"hop 0 (station-a) -> {tmp_path / 'out' / '0-station-a'}",
    ]
    assert "\x1b" not in result.output


def _replace_attestation(ref: str, envelope: bytes | None, registry: Any) -> None:
    """Remove the result's .att manifest; put ``envelope`` there as its one layer if given."""
    train = Reference.parse(ref)
    with RegistryClient(registry.host) as client:
        digest = client.resolve(train.repository, "result-0")
        tag = attestation_tag(digest)
        client.delete_manifest(train.repository, client.resolve(train.repository, tag))
        if envelope is None:
            return
        blob = client.upload_bytes(train.repository, envelope, DSSE_MEDIA_TYPE)
        config = client.upload_bytes(train.repository, b"{}", OCI_CONFIG)
        layers = [blob.to_dict()]
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": config.to_dict(), "layers": layers}).encode()  # fmt: skip
        client.put_manifest(train.repository, tag, raw, OCI_MANIFEST)


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        ("missing", "has no attestation (no sha256-"),
        ("other-key", "signed by another key (it names key sha256:"),
        ("other-subject", "names another subject (sha256:" + "ab" * 32 + ")"),
    ],
)
def test_fetch_refuses_a_result_whose_attestation_does_not_hold(
    forgery: str, message: str, publish: Any, key_files: dict[str, Path], tmp_path: Path,
    registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref = publish(build(member("counts.csv", b"n\n3\n")), PREDICATE)
    station = parties["station-a"].key
    if forgery == "missing":
        envelope = None
    elif forgery == "other-key":
        envelope = sign_envelope(
            make_statement("x", _result_digest(ref, registry), PREDICATE), parties["mallory"].key
        )
    else:
        envelope = sign_envelope(make_statement("x", "sha256:" + "ab" * 32, PREDICATE), station)
    _replace_attestation(ref, envelope, registry)
    work = tmp_path / "work"
    work.mkdir()
    result = _fetch(ref, key_files, work / "out")
    assert result.exit_code == 3, result.output
    assert "[attestation]" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert os.listdir(work) == []


def _result_digest(ref: str, registry: Any) -> str:
    with RegistryClient(registry.host) as client:
        return client.resolve(Reference.parse(ref).repository, "result-0")


def _station_attests(ref: str, registry: Any, parties: Any, **changes: Any) -> None:
    """station-a adds a statement about result-0 (PREDICATE for this train, with changes)."""
    train = Reference.parse(ref)
    named = {**PREDICATE["train"], "id": "-", "digest": train.digest}
    predicate = {**PREDICATE, "train": named, **changes}
    with RegistryClient(registry.host) as client:
        attest(client, train.repository, _result_digest(ref, registry), predicate,
               parties["station-a"].key)  # fmt: skip


def test_a_forged_layer_beside_the_stations_attestation_does_not_hide_it(
    publish: Any, key_files: dict[str, Path], tmp_path: Path, registry: Any, parties: Any
) -> None:
    """cosign appends attestations: the station's is found among the layers."""
    ref = publish(build(member("counts.csv", b"n\n3\n")), PREDICATE)
    digest = _result_digest(ref, registry)
    _replace_attestation(ref, sign_envelope(make_statement("x", digest, PREDICATE),
                                            parties["mallory"].key), registry)  # fmt: skip
    _station_attests(ref, registry, parties)
    result = _fetch(ref, key_files, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "hop 0 (station-a): run attestation verified" in result.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hop": 1}, "the run attestation of hop 0 (station-a) names hop 1, not 0"),
        ({"station": "station-b"}, "names station 'station-b', not 'station-a'"),
        ({"train": {"digest": "sha256:" + "0" * 64}}, "names train 'sha256:000"),
    ],
    ids=["hop", "station", "train"],
)
def test_fetch_refuses_the_stations_attestation_of_another_hop_or_train(
    changes: dict[str, Any], message: str, publish: Any, key_files: dict[str, Path],
    tmp_path: Path, registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref = publish(build(member("counts.csv", b"n\n3\n")), PREDICATE)
    _replace_attestation(ref, None, registry)
    if "train" in changes:
        train = Reference.parse(ref)
        with RegistryClient(registry.host) as client:
            attest(client, train.repository, _result_digest(ref, registry),
                   {**PREDICATE, **changes}, parties["station-a"].key)  # fmt: skip
    else:
        _station_attests(ref, registry, parties, **changes)
    result = _fetch(ref, key_files, tmp_path / "out")
    assert result.exit_code == 3, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()
