"""cosign-compatible key-pair signatures of manifest digests (PROTOCOL.md "Signatures").

Layout, as cosign writes it: the manifest tagged ``sha256-<hex>.sig`` in the artifact's own
repository is an OCI image manifest whose layers are signatures. Each layer is the "simple
signing" payload (media type :data:`SIMPLESIGNING`) with the base64 DER ECDSA signature in
the annotation :data:`SIGNATURE_ANNOTATION`. Adding a signature appends a layer; earlier
layers are kept, so ``cosign verify --key`` and Harbor see every signer.

Verification accepts a layer only if its bytes hash to its digest, the signature verifies
under one of the given keys, and the payload's ``docker-manifest-digest`` is the digest being
verified. The payload's ``docker-reference`` is not compared: trains are copied between
station projects, which changes the repository but not the digest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import (
    DigestMismatchError,
    InvalidSignatureError,
    MalformedSignatureError,
    NotFoundError,
    RegistryError,
    SignatureDigestMismatchError,
    UnsignedError,
    UntrustedSignatureError,
    VerificationError,
)
from .keys import PublicKey, SigningKey
from .oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, Manifest, Reference, RegistryClient

log = logging.getLogger(__name__)

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
ROLES = ("creator", "approver", "station")
MAX_PAYLOAD_BYTES = 64 * 1024
_KEY_ID = re.compile(r"sha256:[0-9a-f]{64}")
_PUT_ATTEMPTS = 5


def signature_tag(digest: str) -> str:
    """``sha256:abc…`` → ``sha256-abc….sig`` (cosign's tag for the signatures of a digest)."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}.sig"


def make_payload(
    docker_reference: str, digest: str, optional: dict[str, str] | None = None
) -> bytes:
    """The simple-signing payload bytes (compact JSON, keys sorted, as cosign's Go emits)."""
    body: dict[str, Any] = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": optional or None,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class Signer:
    """A signature that verified: who signed (key id), and what they said about themselves."""

    key_id: str
    role: str | None
    signer: str | None
    layer_digest: str
    optional: dict[str, Any] = field(default_factory=dict)


def _get_ci(mapping: Any, key: str) -> Any:
    """``mapping[key]`` with the key compared case-insensitively (as Go's json does)."""
    if not isinstance(mapping, dict):
        return None
    for k, v in mapping.items():
        if isinstance(k, str) and k.lower() == key.lower():
            return v
    return None


def verify_payload(
    payload: bytes, signature_b64: str, digest: str, keys: Sequence[PublicKey]
) -> tuple[PublicKey, dict[str, Any]]:
    """Check one signature: returns the key that signed and the decoded payload.

    Raises, in this order of checks: :class:`MalformedSignatureError` (not base64 DER, or
    not a simple-signing payload), :class:`UntrustedSignatureError` (no given key verifies
    it; :class:`InvalidSignatureError` if it names a given key but does not verify),
    :class:`SignatureDigestMismatchError` (it signs another digest).
    """
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
        decode_dss_signature(signature)
    except (binascii.Error, ValueError, AttributeError):
        raise MalformedSignatureError(
            "the signature annotation is not a base64 DER ECDSA signature", digest=digest
        ) from None
    signed_by = next((k for k in keys if k.verify(signature, payload)), None)
    if signed_by is None:
        claimed = None
        with contextlib.suppress(ValueError, AttributeError, RecursionError):
            claimed = _get_ci(json.loads(payload).get("optional"), "org.pht.key")
        if isinstance(claimed, str) and not _KEY_ID.fullmatch(claimed):
            claimed = None  # not a key id: nothing worth naming (and never echoed raw)
        trusted = {k.key_id for k in keys}
        if isinstance(claimed, str) and claimed in trusted:
            raise InvalidSignatureError(
                f"a signature claiming key {claimed} does not verify: the payload or the "
                "signature was altered",
                digest=digest,
                key_id=claimed,
            )
        raise UntrustedSignatureError(
            "the signature does not verify under any trusted key"
            + (f" (it names key {claimed})" if isinstance(claimed, str) else ""),
            digest=digest,
            key_id=claimed if isinstance(claimed, str) else None,
        )
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        raise MalformedSignatureError(
            "the signed payload is not JSON", digest=digest, key_id=signed_by.key_id
        ) from None
    critical = _get_ci(body, "critical")
    if _get_ci(critical, "type") != PAYLOAD_TYPE:
        raise MalformedSignatureError(
            f"the signed payload is not a {PAYLOAD_TYPE!r}", digest=digest, key_id=signed_by.key_id
        )
    signed_digest = _get_ci(_get_ci(critical, "image"), "docker-manifest-digest")
    if not isinstance(signed_digest, str) or signed_digest != digest:
        raise SignatureDigestMismatchError(
            f"the signature by {signed_by.key_id} is for {signed_digest}, not for {digest}",
            digest=digest,
            key_id=signed_by.key_id,
        )
    return signed_by, body


def _signature_manifest(client: RegistryClient, ref: Reference) -> Manifest | None:
    assert ref.digest is not None  # noqa: S101 - callers pin first
    try:
        return client.get_manifest(ref.repository, signature_tag(ref.digest))
    except NotFoundError:
        return None


def _config_for(layers: Sequence[Descriptor]) -> bytes:
    # What cosign writes: an image config whose diff_ids are the (uncompressed) layers.
    config = {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
    }
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def _pinned(ref: Reference) -> Reference:
    if ref.digest is None:
        raise ValueError(f"{ref} must be pinned to a digest before signing or verifying")
    return ref


def sign(
    client: RegistryClient,
    ref: Reference,
    key: SigningKey,
    *,
    role: str,
    signer: str | None = None,
) -> Signer:
    """Add ``key``'s signature of ``ref.digest`` to its ``.sig`` manifest (appending a layer).

    Idempotent: if ``key`` already signed this digest with this role, nothing is added.
    Safe against a concurrent signer: the manifest is re-read after the write and the
    append retried if another writer replaced it.
    """
    ref = _pinned(ref)
    assert ref.digest is not None  # noqa: S101
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    optional = {"org.pht.role": role, "org.pht.key": key.key_id}
    if signer:
        optional["org.pht.signer"] = signer
    payload = make_payload(ref.name, ref.digest, optional)
    signature = base64.b64encode(key.sign(payload)).decode("ascii")
    layer = client.upload_bytes(ref.repository, payload, SIMPLESIGNING)
    layer = Descriptor(
        media_type=SIMPLESIGNING,
        digest=layer.digest,
        size=layer.size,
        annotations={SIGNATURE_ANNOTATION: signature},
    )
    tag = signature_tag(ref.digest)
    for _attempt in range(_PUT_ATTEMPTS):
        existing = _signature_manifest(client, ref)
        layers = existing.layers if existing is not None else []
        for found in _valid_signers(client, ref, layers, [key.public]):
            if found.role == role:
                log.info("%s already signed %s as %s", key.key_id, ref.digest, role)
                return found
        new_layers = [*layers, layer]
        config = client.upload_bytes(ref.repository, _config_for(new_layers), OCI_CONFIG)
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.to_dict(),
                "layers": [d.to_dict() for d in new_layers],
            },
            separators=(",", ":"),
        ).encode()
        client.put_manifest(ref.repository, tag, raw, OCI_MANIFEST)
        after = _signature_manifest(client, ref)
        if after is not None and any(
            d.digest == layer.digest and d.annotations == layer.annotations for d in after.layers
        ):
            return Signer(
                key_id=key.key_id,
                role=role,
                signer=signer,
                layer_digest=layer.digest,
                optional=dict(optional),
            )
        log.warning("the signature manifest of %s changed while signing; retrying", ref.digest)
    raise RegistryError(
        f"could not add a signature to {ref.name}@{ref.digest}: the signature manifest kept "
        "changing under concurrent writers"
    )


def _valid_signers(
    client: RegistryClient,
    ref: Reference,
    layers: Iterable[Descriptor],
    keys: Sequence[PublicKey],
    problems: list[VerificationError] | None = None,
) -> list[Signer]:
    assert ref.digest is not None  # noqa: S101
    signers: list[Signer] = []
    for index, layer in enumerate(layers):
        where = f"signature layer {index} ({layer.digest})"
        try:
            if layer.media_type != SIMPLESIGNING:
                raise MalformedSignatureError(
                    f"{where} has media type {layer.media_type!r}", digest=ref.digest
                )
            annotation = (layer.annotations or {}).get(SIGNATURE_ANNOTATION)
            if not annotation:
                raise MalformedSignatureError(
                    f"{where} has no {SIGNATURE_ANNOTATION} annotation", digest=ref.digest
                )
            if layer.size > MAX_PAYLOAD_BYTES:
                raise MalformedSignatureError(f"{where} is too large", digest=ref.digest)
            try:
                payload = client.get_blob(ref.repository, layer.digest, max_bytes=MAX_PAYLOAD_BYTES)
            except DigestMismatchError:
                raise MalformedSignatureError(
                    f"{where}: the payload bytes do not match the layer digest",
                    digest=ref.digest,
                    check="signature-digest",
                ) from None
            except NotFoundError:
                raise MalformedSignatureError(
                    f"{where}: the payload blob is missing from the registry", digest=ref.digest
                ) from None
            key, body = verify_payload(payload, annotation, ref.digest, keys)
        except VerificationError as exc:
            if problems is not None:
                problems.append(exc)
            continue
        optional = _get_ci(body, "optional")
        optional = optional if isinstance(optional, dict) else {}
        role = optional.get("org.pht.role")
        name = optional.get("org.pht.signer")
        signers.append(
            Signer(
                key_id=key.key_id,
                role=role if isinstance(role, str) else None,
                signer=name if isinstance(name, str) else None,
                layer_digest=layer.digest,
                optional=optional,
            )
        )
    return signers


_PRIORITY: tuple[type[VerificationError], ...] = (
    SignatureDigestMismatchError,
    MalformedSignatureError,
    InvalidSignatureError,
    UntrustedSignatureError,
)


def verify(client: RegistryClient, ref: Reference, keys: Sequence[PublicKey]) -> list[Signer]:
    """Every valid signature of ``ref.digest`` by one of ``keys`` (one entry per layer).

    Broken or unrelated layers are ignored when at least one signature verifies. When none
    does, raises the most telling error: :class:`UnsignedError` (no signature at all),
    :class:`SignatureDigestMismatchError` (a trusted key signed another digest),
    :class:`MalformedSignatureError`, or :class:`UntrustedSignatureError`.
    """
    ref = _pinned(ref)
    assert ref.digest is not None  # noqa: S101
    if not keys:
        raise ValueError("verify needs at least one public key")
    manifest = _signature_manifest(client, ref)
    if manifest is None or not manifest.layers:
        raise UnsignedError(
            f"{ref.name}@{ref.digest} has no signatures (no {signature_tag(ref.digest)} tag)",
            digest=ref.digest,
        )
    problems: list[VerificationError] = []
    signers = _valid_signers(client, ref, manifest.layers, keys, problems)
    if signers:
        for p in problems:
            log.debug("ignored a signature layer of %s: %s", ref.digest, p)
        return signers
    for kind in _PRIORITY:
        for p in problems:
            if isinstance(p, kind):
                details = [str(q) for q in problems]
                raise type(p)(
                    f"{ref.name}@{ref.digest}: no valid signature by a trusted key; {p.reason}",
                    digest=ref.digest,
                    key_id=p.key_id,
                    check=p.check,
                    details=details,
                )
    raise UntrustedSignatureError(  # pragma: no cover - problems is never empty here
        f"{ref.name}@{ref.digest}: no valid signature by a trusted key", digest=ref.digest
    )


def signers_with_role(signers: Iterable[Signer], role: str) -> list[Signer]:
    """The signers that call themselves ``role`` (informational; trust comes from keys)."""
    return [s for s in signers if s.role == role]
