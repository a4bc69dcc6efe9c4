"""Run attestations (``pht_airflow/attestation.py``): DSSE and in-toto shapes, the predicate
builder, and on the real registry the round trip and every rejection (missing, signed by
another key, naming another subject, tampered payload, malformed).

The attested "result" here is a small OCI manifest pushed to the session's registry: the
attestation only needs a manifest digest in a repository (sealing is covered in
``test_results_artifact.py``, which attests through ``seal``).
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pht_airflow.attestation import (
    DSSE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    attest,
    attestation_tag,
    hop_predicate,
    make_statement,
    open_envelope,
    pae,
    sign_envelope,
    summary,
    verify_attestation,
)
from pht_airflow.errors import PhtError, VerificationError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, Reference, sha256_digest

DIGEST = "sha256:" + "ab" * 32
TRAIN_DIGEST = "sha256:" + "cd" * 32


def _predicate(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "train": {"id": "t-1", "name": "counts", "digest": TRAIN_DIGEST},
        "station": "station-a",
        "hop": 0,
        "dataset": {"name": "cohort", "digest": "sha256:" + "ef" * 32},
        "sandbox": {"memory": "512m", "cpus": 1.0, "pids": 64, "timeout": 600, "gpus": None},
        "disclosure": {
            "verdict": "review",
            "files": [
                {
                    "path": "counts.csv",
                    "bytes": 12,
                    "kind": "table",
                    "verdict": "review",
                    "reasons": ["row 3, column 'n': a count below min_cell_count 10"],
                    "preview": "must not be carried",
                },
                {"path": "notes.txt", "bytes": 5, "kind": "text", "verdict": "pass", "reasons": []},
            ],
        },  # fmt: skip
        "approved_by": "dora",
        "released_by": "erik",
        "started": datetime(2026, 12, 5, 7, 0, 1, 500, tzinfo=UTC),
        "finished": "2026-12-05T08:00:02+01:00",
        "exit_code": 0,
    }
    fields.update(overrides)
    return hop_predicate(**fields)


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_KEYS = st.sampled_from(["payloadType", "payload", "signatures", "x"])

# --- formats --------------------------------------------------------------------------------


def test_pae_is_dsse_v1s_encoding() -> None:
    # The test vector of DSSE's protocol.md.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_attestation_tag_is_cosigns() -> None:
    assert attestation_tag(DIGEST) == "sha256-" + "ab" * 32 + ".att"


def test_envelope_and_statement_shape(parties: Any) -> None:
    key = parties["station-a"].key
    statement = make_statement("reg/station-a/t-1", DIGEST, _predicate())
    envelope = json.loads(sign_envelope(statement, key))
    assert set(envelope) == {"payloadType", "payload", "signatures"}
    assert envelope["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == key.key_id
    body = base64.b64decode(envelope["payload"])
    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    assert key.public.verify(signature, pae(PAYLOAD_TYPE, body))
    assert not key.public.verify(signature, body)  # the PAE is signed, not the bare payload
    decoded = json.loads(body)
    assert decoded["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert decoded["subject"] == [{"name": "reg/station-a/t-1", "digest": {"sha256": "ab" * 32}}]
    assert decoded["predicateType"] == PREDICATE_TYPE
    assert open_envelope(sign_envelope(statement, key), DIGEST, key.public) == decoded


def test_hop_predicate_normalises_and_keeps_only_documented_file_fields() -> None:
    p = _predicate()
    assert p["started"] == "2026-12-05T07:00:01Z"
    assert p["finished"] == "2026-12-05T07:00:02Z"
    assert p["disclosure"]["files"][0] == {
        "path": "counts.csv", "bytes": 12, "kind": "table", "verdict": "review",
        "reasons": ["row 3, column 'n': a count below min_cell_count 10"],
    }  # fmt: skip
    assert set(p) == {"train", "station", "hop", "dataset", "sandbox", "disclosure",
                      "approved_by", "released_by", "started", "finished", "exit_code"}  # fmt: skip
    assert p["disclosure"]["reasons"] == [] and p["disclosure"]["min_cell_count"] is None
    by_path = _predicate(disclosure={"verdict": "pass", "files": {"a.csv": {"verdict": "pass"}},
                                     "reasons": ["2 files"], "min_cell_count": 10,
                                     "policy": {"not": "carried"}})  # fmt: skip
    assert by_path["disclosure"]["files"][0]["path"] == "a.csv"
    assert set(by_path["disclosure"]) == {"verdict", "reasons", "min_cell_count", "files"}
    assert by_path["disclosure"]["min_cell_count"] == 10
    minimal = hop_predicate(train={"id": "t", "digest": TRAIN_DIGEST}, station="s", hop=2)
    assert minimal["dataset"] == {"name": None, "digest": None}
    assert minimal["disclosure"] is None and minimal["released_by"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train": {"id": "t", "digest": "latest"}}, "is not a sha256 digest"),
        ({"hop": -1}, "hop must be a non-negative integer"),
        ({"hop": True}, "hop must be a non-negative integer"),
        ({"exit_code": "0"}, "exit_code must be an integer"),
        ({"started": datetime(2026, 1, 1)}, "started must be timezone-aware"),
        ({"finished": "yesterday"}, "finished is not an RFC 3339 time"),
        ({"disclosure": {"verdict": "fine", "files": []}}, "disclosure.verdict must be one of"),
        ({"disclosure": {"verdict": "pass", "files": [{"path": 3}]}}, "disclosure.files[0].path"),
        ({"sandbox": {"limit": float("nan")}}, "sandbox.limit holds a number JSON cannot carry"),
        ({"sandbox": {"x": object()}}, "sandbox.x is of type object, not JSON data"),
        ({"approved_by": "x" * 5000}, "approved_by must be a string of at most 4096"),
    ],
)
def test_hop_predicate_refuses_bad_fields(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(PhtError) as info:
        _predicate(**overrides)
    assert message in str(info.value)


def test_summary_reads_the_predicate() -> None:
    shown = summary(make_statement("r", DIGEST, _predicate()))
    assert shown == {
        "station": "station-a",
        "hop": "0",
        "dataset": f"cohort (sha256:{'ef' * 32})",
        "verdict": "review (1 pass, 1 review)",
        "approved by": "dora",
        "released by": "erik",
        "exit code": "0",
        "ran": "2026-12-05T07:00:01Z -> 2026-12-05T07:00:02Z",
    }
    assert summary({"predicate": "junk"})["station"] == "-"


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=2048))
def test_open_envelope_refuses_arbitrary_bytes_cleanly(raw: bytes, parties: Any) -> None:
    with pytest.raises(VerificationError) as info:
        open_envelope(raw, DIGEST, parties["station-a"].public)
    assert info.value.check == "attestation"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    envelope=st.dictionaries(st.sampled_from(["payloadType", "payload", "signatures", "x"]), _json)
)
def test_open_envelope_refuses_arbitrary_json_cleanly(
    envelope: dict[str, Any], parties: Any
) -> None:
    with pytest.raises(VerificationError) as info:
        open_envelope(json.dumps(envelope).encode(), DIGEST, parties["station-a"].public)
    assert info.value.check == "attestation"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(statement=_json)
def test_a_signed_payload_that_is_not_a_statement_is_refused(statement: Any, parties: Any) -> None:
    # Signed by the right key, but not an in-toto statement about the digest.
    key = parties["station-a"].key
    with pytest.raises(VerificationError) as info:
        open_envelope(sign_envelope({"s": statement}, key), DIGEST, key.public)
    assert "is not an in-toto" in info.value.reason


# --- on the registry ------------------------------------------------------------------------


@pytest.fixture()
def result_ref(client: Any) -> Reference:
    """A fresh small OCI manifest (standing in for a result) in its own repository."""
    repository = f"station-test/att-{os.urandom(4).hex()}"
    config = client.upload_bytes(repository, b'{"n":"' + os.urandom(8).hex().encode() + b'"}',
                                 OCI_CONFIG)  # fmt: skip
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": config.to_dict(), "layers": []}).encode()  # fmt: skip
    digest = client.put_manifest(repository, sha256_digest(raw), raw, OCI_MANIFEST)
    return Reference(client.registry, repository, digest=digest)


@pytest.mark.registry
def test_round_trip(client: Any, result_ref: Reference, parties: Any) -> None:
    key = parties["station-a"].key
    made = attest(client, result_ref.repository, result_ref.digest, _predicate(), key)
    statement = verify_attestation(client, result_ref, key.public)
    assert statement == made.statement
    assert statement["predicate"] == _predicate()
    assert statement["subject"][0]["digest"] == {"sha256": result_ref.digest.split(":")[1]}
    manifest = client.get_manifest(result_ref.repository, attestation_tag(result_ref.digest))
    (layer,) = manifest.layers
    assert layer.media_type == DSSE_MEDIA_TYPE
    assert layer.annotations == {
        "predicateType": PREDICATE_TYPE, "dev.cosignproject.cosign/signature": ""
    }  # fmt: skip


@pytest.mark.registry
def test_attesting_again_keeps_the_first_and_another_key_appends(
    client: Any, result_ref: Reference, parties: Any
) -> None:
    a, b = parties["station-a"].key, parties["station-b"].key
    first = attest(client, result_ref.repository, result_ref.digest, _predicate(), a)
    again = attest(client, result_ref.repository, result_ref.digest, _predicate(hop=1), a)
    assert again.layer_digest == first.layer_digest and again.predicate["hop"] == 0
    attest(client, result_ref.repository, result_ref.digest, _predicate(), b)
    tag = attestation_tag(result_ref.digest)
    assert len(client.get_manifest(result_ref.repository, tag).layers) == 2
    assert verify_attestation(client, result_ref, a.public)["predicate"]["hop"] == 0
    assert verify_attestation(client, result_ref, b.public)["predicate"]["station"] == "station-a"


def _refused(client: Any, ref: Reference, key: Any) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_attestation(client, ref, key)
    assert info.value.check == "attestation"
    return info.value


@pytest.mark.registry
def test_a_result_without_attestation_is_refused(
    client: Any, result_ref: Reference, parties: Any
) -> None:
    error = _refused(client, result_ref, parties["station-a"].public)
    assert "has no attestation (no sha256-" in error.reason
    assert "the station did not attest this result" in error.reason


@pytest.mark.registry
def test_an_attestation_by_another_key_is_refused(
    client: Any, result_ref: Reference, parties: Any
) -> None:
    mallory = parties["mallory"].key
    attest(client, result_ref.repository, result_ref.digest, _predicate(), mallory)
    error = _refused(client, result_ref, parties["station-a"].public)
    assert f"signed by another key (it names key {mallory.key_id})" in error.reason
    assert f"not by the station's key {parties['station-a'].key.key_id}" in error.reason


def _push_envelope(client: Any, ref: Reference, envelope: bytes) -> None:
    """Publish ``envelope`` as the .att manifest's only layer (what a forger can write)."""
    blob = client.upload_bytes(ref.repository, envelope, DSSE_MEDIA_TYPE)
    config = client.upload_bytes(ref.repository, b"{}", OCI_CONFIG)
    layer = {**blob.to_dict(), "annotations": {"predicateType": PREDICATE_TYPE}}
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": config.to_dict(), "layers": [layer]}).encode()  # fmt: skip
    client.put_manifest(ref.repository, attestation_tag(ref.digest), raw, OCI_MANIFEST)


@pytest.mark.registry
def test_an_attestation_naming_another_subject_is_refused(
    client: Any, result_ref: Reference, parties: Any
) -> None:
    # The station's genuine attestation of another result, copied beside this one.
    key = parties["station-a"].key
    statement = make_statement(result_ref.name, DIGEST, _predicate())
    _push_envelope(client, result_ref, sign_envelope(statement, key))
    error = _refused(client, result_ref, key.public)
    assert f"names another subject ({DIGEST}), not {result_ref.digest}" in error.reason


@pytest.mark.registry
def test_a_tampered_payload_is_refused(client: Any, result_ref: Reference, parties: Any) -> None:
    key = parties["station-a"].key
    statement = make_statement(result_ref.name, result_ref.digest, _predicate())
    envelope = json.loads(sign_envelope(statement, key))
    forged = dict(statement, predicate=_predicate(released_by="nobody-looked"))
    envelope["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    _push_envelope(client, result_ref, json.dumps(envelope).encode())
    error = _refused(client, result_ref, key.public)
    assert f"claiming the station's key {key.key_id} does not verify" in error.reason
    assert "the payload or the signature was altered" in error.reason


@pytest.mark.registry
@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (b"not json", "the envelope is not valid JSON"),
        (b'{"payloadType": "text/plain", "payload": "", "signatures": []}',
         "payloadType is 'text/plain', not application/vnd.in-toto+json"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": []}).encode(),
         "the envelope's payload is not base64"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "", "signatures": []}).encode(),
         "the envelope has no signatures"),
    ],
    ids=["not-json", "payload-type", "base64", "no-signatures"],
)  # fmt: skip
def test_a_malformed_envelope_is_refused(
    envelope: bytes, message: str, client: Any, result_ref: Reference, parties: Any
) -> None:
    _push_envelope(client, result_ref, envelope)
    assert message in _refused(client, result_ref, parties["station-a"].public).reason


@pytest.mark.registry
def test_a_good_attestation_beside_a_bad_one_is_accepted_and_the_reason_ranks(
    client: Any, result_ref: Reference, parties: Any
) -> None:
    # Another key's attestation first; the subject mismatch by the right key is the reason.
    key = parties["station-a"].key
    attest(client, result_ref.repository, result_ref.digest, _predicate(), parties["mallory"].key)
    manifest = client.get_manifest(result_ref.repository, attestation_tag(result_ref.digest))
    wrong = sign_envelope(make_statement(result_ref.name, DIGEST, _predicate()), key)
    blob = client.upload_bytes(result_ref.repository, wrong, DSSE_MEDIA_TYPE)
    layers = [d.to_dict() for d in manifest.layers] + [blob.to_dict()]
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": manifest.config.to_dict(), "layers": layers}).encode()  # fmt: skip
    client.put_manifest(
        result_ref.repository, attestation_tag(result_ref.digest), raw, OCI_MANIFEST
    )
    error = _refused(client, result_ref, key.public)
    assert "attestation layer 1: the attestation names another subject" in error.reason
    assert len(error.details) == 2
    attest(client, result_ref.repository, result_ref.digest, _predicate(), key)
    assert verify_attestation(client, result_ref, key.public)["predicate"]["station"] == "station-a"
