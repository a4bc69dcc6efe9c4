"""cosign-compatible signatures: the real cosign vector, and sign/verify on a real registry.

The registry tests push images built from ``pht-local/busybox`` through the real Docker
engine into the real distribution registry, sign them, and then tamper with what is stored
the way an attacker with registry write access could.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.errors import (
    InvalidSignatureError,
    MalformedSignatureError,
    SignatureDigestMismatchError,
    UnsignedError,
    UntrustedSignatureError,
    VerificationError,
)
from pht_airflow.keys import load_public_key
from pht_airflow.oci import OCI_MANIFEST, Descriptor, Reference, RegistryClient
from pht_airflow.signing import (
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING,
    make_payload,
    sign,
    signature_tag,
    verify,
    verify_payload,
)

COSIGN_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"


# --- the real cosign vector ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vector(cosign_vector: Path) -> dict[str, Any]:
    sig = json.loads((cosign_vector / "signature.json").read_text())
    return {
        "key": load_public_key(cosign_vector / "cosign.pub"),
        "payload": base64.b64decode(sig["payload"]),
        "signature": sig["annotations"][SIGNATURE_ANNOTATION],
        "mime": sig["mimeType"],
        "manifest": (cosign_vector / "manifest.json").read_bytes(),
    }


def test_cosign_vector_verifies(vector: dict[str, Any]) -> None:
    digest = "sha256:" + hashlib.sha256(vector["manifest"]).hexdigest()
    assert digest == COSIGN_DIGEST
    assert vector["mime"] == SIMPLESIGNING
    key, body = verify_payload(vector["payload"], vector["signature"], digest, [vector["key"]])
    assert key.key_id == vector["key"].key_id
    assert body["critical"]["image"]["docker-manifest-digest"] == COSIGN_DIGEST
    assert body["optional"] is None


def test_cosign_vector_every_payload_byte_matters(vector: dict[str, Any]) -> None:
    payload: bytes = vector["payload"]
    for i in range(len(payload)):
        mutated = payload[:i] + bytes([payload[i] ^ 0x01]) + payload[i + 1 :]
        with pytest.raises(VerificationError):
            verify_payload(mutated, vector["signature"], COSIGN_DIGEST, [vector["key"]])


def test_cosign_vector_every_signature_byte_matters(vector: dict[str, Any]) -> None:
    der = base64.b64decode(vector["signature"])
    for i in range(len(der)):
        mutated = der[:i] + bytes([der[i] ^ 0x01]) + der[i + 1 :]
        with pytest.raises((UntrustedSignatureError, MalformedSignatureError)):
            verify_payload(
                vector["payload"],
                base64.b64encode(mutated).decode(),
                COSIGN_DIGEST,
                [vector["key"]],
            )


def test_cosign_vector_every_digest_character_matters(vector: dict[str, Any]) -> None:
    hexpart = COSIGN_DIGEST[7:]
    for i in range(len(hexpart)):
        other = "0" if hexpart[i] != "0" else "1"
        digest = "sha256:" + hexpart[:i] + other + hexpart[i + 1 :]
        with pytest.raises(SignatureDigestMismatchError, match="not for sha256:"):
            verify_payload(vector["payload"], vector["signature"], digest, [vector["key"]])


def test_cosign_vector_rejects_another_key(vector: dict[str, Any], parties: Any) -> None:
    with pytest.raises(UntrustedSignatureError, match="does not verify under any trusted key"):
        verify_payload(
            vector["payload"], vector["signature"], COSIGN_DIGEST, [parties["alice"].public]
        )


def test_truncated_signature_is_malformed(vector: dict[str, Any]) -> None:
    der = base64.b64decode(vector["signature"])
    truncated = base64.b64encode(der[:-5]).decode()
    with pytest.raises(MalformedSignatureError, match="not a base64 DER"):
        verify_payload(vector["payload"], truncated, COSIGN_DIGEST, [vector["key"]])
    with pytest.raises(MalformedSignatureError):
        verify_payload(vector["payload"], "not base64!", COSIGN_DIGEST, [vector["key"]])


def test_our_payload_has_cosign_shape() -> None:
    payload = json.loads(make_payload("r.example/p/t", COSIGN_DIGEST, {"org.pht.role": "creator"}))
    assert payload["critical"] == {
        "identity": {"docker-reference": "r.example/p/t"},
        "image": {"docker-manifest-digest": COSIGN_DIGEST},
        "type": "cosign container image signature",
    }
    assert payload["optional"] == {"org.pht.role": "creator"}
    assert signature_tag(COSIGN_DIGEST) == "sha256-" + COSIGN_DIGEST[7:] + ".sig"


# --- sign and verify on the real registry -----------------------------------------------------


def _sig_manifest(client: RegistryClient, ref: Reference) -> dict[str, Any]:
    assert ref.digest
    return client.get_manifest(ref.repository, signature_tag(ref.digest)).data


def _put_sig_layers(client: RegistryClient, ref: Reference, layers: list[dict[str, Any]]) -> None:
    """Overwrite the ``.sig`` manifest of ``ref`` with ``layers`` (what an attacker could do)."""
    assert ref.digest
    config = client.upload_bytes(ref.repository, b"{}", "application/vnd.oci.image.config.v1+json")
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": layers,
        }
    ).encode()
    client.put_manifest(ref.repository, signature_tag(ref.digest), raw, OCI_MANIFEST)


@pytest.fixture()
def client(registry: Any) -> Any:
    with RegistryClient(registry.host) as c:
        yield c


@pytest.mark.registry
@pytest.mark.docker
def test_sign_twice_and_verify_both(build_and_push: Any, client: Any, parties: Any) -> None:
    alice, reviewer = parties["alice"], parties["reviewer"]
    ref = build_and_push("proj/signed", "train")
    with pytest.raises(UnsignedError, match="has no signatures"):
        verify(client, ref, [alice.public])

    sign(client, ref, alice.key, role="creator", signer="alice")
    sign(client, ref, reviewer.key, role="approver", signer="reviewer")
    signers = verify(client, ref, [alice.public, reviewer.public])
    assert {(s.key_id, s.role, s.signer) for s in signers} == {
        (alice.key.key_id, "creator", "alice"),
        (reviewer.key.key_id, "approver", "reviewer"),
    }
    # Only the trusted subset is returned; the other signature is ignored, not an error.
    assert [s.key_id for s in verify(client, ref, [reviewer.public])] == [reviewer.key.key_id]
    # Signing again with the same key and role adds nothing (a retried task stays clean).
    sign(client, ref, alice.key, role="creator", signer="alice")
    layers = _sig_manifest(client, ref)["layers"]
    assert len(layers) == 2
    assert all(layer["mediaType"] == SIMPLESIGNING for layer in layers)


@pytest.mark.registry
@pytest.mark.docker
def test_different_image_under_the_same_tag_is_unsigned(
    build_and_push: Any, client: Any, parties: Any
) -> None:
    alice = parties["alice"]
    original = build_and_push("proj/swapped", "train")
    sign(client, original, alice.key, role="creator")
    replacement = build_and_push("proj/swapped", "train")  # same tag, other image
    resolved = client.resolve("proj/swapped", "train")
    assert resolved == replacement.digest != original.digest
    with pytest.raises(UnsignedError) as info:
        verify(client, original.with_digest(resolved), [alice.public])
    assert info.value.digest == resolved
    assert info.value.check == "signed"
    # The original digest keeps its signature: the identity is the digest, not the tag.
    assert verify(client, original, [alice.public])[0].key_id == alice.key.key_id


@pytest.mark.registry
@pytest.mark.docker
def test_signature_by_untrusted_key(build_and_push: Any, client: Any, parties: Any) -> None:
    ref = build_and_push("proj/untrusted", "train")
    sign(client, ref, parties["mallory"].key, role="creator", signer="alice")
    with pytest.raises(UntrustedSignatureError) as info:
        verify(client, ref, [parties["alice"].public])
    assert info.value.check == "signature-trusted"
    assert info.value.digest == ref.digest
    assert info.value.key_id == parties["mallory"].key.key_id


@pytest.mark.registry
@pytest.mark.docker
def test_signature_layer_copied_from_another_digest(
    build_and_push: Any, client: Any, parties: Any
) -> None:
    alice = parties["alice"]
    signed = build_and_push("proj/copied", "a")
    target = build_and_push("proj/copied", "b")
    sign(client, signed, alice.key, role="creator")
    layers = _sig_manifest(client, signed)["layers"]
    _put_sig_layers(client, target, layers)
    with pytest.raises(SignatureDigestMismatchError) as info:
        verify(client, target, [alice.public])
    assert info.value.check == "signature-digest"
    assert info.value.key_id == alice.key.key_id
    assert signed.digest in str(info.value)


@pytest.mark.registry
@pytest.mark.docker
def test_modified_payload(build_and_push: Any, client: Any, parties: Any) -> None:
    alice = parties["alice"]
    ref = build_and_push("proj/payload", "train")
    sign(client, ref, alice.key, role="approver")
    layer = _sig_manifest(client, ref)["layers"][0]
    payload = json.loads(client.get_blob(ref.repository, layer["digest"]))
    payload["optional"]["org.pht.role"] = "creator"  # promote itself
    forged = client.upload_bytes(
        ref.repository, json.dumps(payload, separators=(",", ":")).encode(), SIMPLESIGNING
    )
    _put_sig_layers(client, ref, [{**layer, "digest": forged.digest, "size": forged.size}])
    with pytest.raises(InvalidSignatureError) as info:
        verify(client, ref, [alice.public])
    assert info.value.check == "signature-valid"
    assert "altered" in str(info.value)


@pytest.mark.registry
@pytest.mark.docker
def test_truncated_signature_annotation(build_and_push: Any, client: Any, parties: Any) -> None:
    alice = parties["alice"]
    ref = build_and_push("proj/truncated", "train")
    sign(client, ref, alice.key, role="creator")
    layer = _sig_manifest(client, ref)["layers"][0]
    der = base64.b64decode(layer["annotations"][SIGNATURE_ANNOTATION])
    layer["annotations"][SIGNATURE_ANNOTATION] = base64.b64encode(der[: len(der) // 2]).decode()
    _put_sig_layers(client, ref, [layer])
    with pytest.raises(MalformedSignatureError) as info:
        verify(client, ref, [alice.public])
    assert info.value.check == "signature-format"


@pytest.mark.registry
@pytest.mark.docker
def test_broken_layers_are_ignored_beside_a_valid_one(
    build_and_push: Any, client: Any, parties: Any
) -> None:
    alice = parties["alice"]
    ref = build_and_push("proj/mixed", "train")
    sign(client, ref, alice.key, role="creator")
    good = _sig_manifest(client, ref)["layers"][0]
    junk = client.upload_bytes(ref.repository, b"junk", SIMPLESIGNING)
    broken = Descriptor(
        SIMPLESIGNING, junk.digest, junk.size, annotations={SIGNATURE_ANNOTATION: "AAAA"}
    )
    unrelated = {"mediaType": "text/plain", "digest": junk.digest, "size": junk.size}
    _put_sig_layers(client, ref, [broken.to_dict(), unrelated, good])
    signers = verify(client, ref, [alice.public])
    assert [s.layer_digest for s in signers] == [good["digest"]]
    # A new signature appends and keeps every earlier layer, even the broken ones.
    sign(client, ref, parties["reviewer"].key, role="approver")
    assert len(_sig_manifest(client, ref)["layers"]) == 4


@pytest.mark.registry
@pytest.mark.docker
def test_a_nested_payload_layer_does_not_hide_a_valid_one(
    build_and_push: Any, client: Any, parties: Any
) -> None:
    """Anyone who can push may add a layer; a payload nested too deeply for a JSON parser
    (signed by a key nobody trusts) is skipped, not a crash that hides the valid layer."""
    alice = parties["alice"]
    ref = build_and_push("proj/nested", "train")
    sign(client, ref, alice.key, role="creator")
    good = _sig_manifest(client, ref)["layers"][0]
    payload = b"[" * 60_000
    blob = client.upload_bytes(ref.repository, payload, SIMPLESIGNING)
    signature = base64.b64encode(parties["mallory"].key.sign(payload)).decode()
    nested = Descriptor(
        SIMPLESIGNING, blob.digest, blob.size, annotations={SIGNATURE_ANNOTATION: signature}
    )
    _put_sig_layers(client, ref, [nested.to_dict(), good])
    assert [s.layer_digest for s in verify(client, ref, [alice.public])] == [good["digest"]]
