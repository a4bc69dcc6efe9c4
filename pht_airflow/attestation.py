"""Signed run attestations: what a station says about the hop that produced a result.

Proposed PROTOCOL.md section "A run attestation" (issue 12, Build item 4):

Every result a station delivers carries an **attestation**: an in-toto Statement v1 whose
subject is the result's manifest digest and whose predicate says how the result was made,
wrapped in a DSSE envelope signed with the station's key (the key its route entry names) and
stored the way ``cosign attest`` stores one: the manifest tagged ``sha256-<hex>.att`` in the
result's repository, an OCI image manifest whose layers are envelopes, each of media type
``application/vnd.dsse.envelope.v1+json`` with the annotations ``predicateType`` (the
statement's) and ``dev.cosignproject.cosign/signature: ""`` (the signature is inside the
envelope). Adding an attestation appends a layer. A station pushes its result by digest,
signs it, attests it, and only then tags it ``result-<k>``; the central service copies the
``.att`` manifest with the ``.sig`` wherever it copies the result.

Envelope (DSSE v1)::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": "<base64 of the statement's canonical JSON>",
     "signatures": [{"keyid": "sha256:<station key id>", "sig": "<base64 DER ECDSA>"}]}

The signature is ECDSA P-256 with SHA-256 over DSSE's pre-authentication encoding
``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (LEN: the byte length
in ASCII decimal), so the payload type is signed too. ``keyid`` is a hint; trust comes from the
key that verifies.

Statement::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<registry>/<project>/<train-id>",
                  "digest": {"sha256": "<hex of the result manifest digest>"}}],
     "predicateType": "https://pht-airflow.dev/attestations/hop-run/v1",
     "predicate": {…}}

The subject's name is informational (results are copied between projects); its digest is what
a verifier compares.

Predicate ``https://pht-airflow.dev/attestations/hop-run/v1`` (:func:`hop_predicate` builds
it; a field the sealing station did not know is ``null``):

==================  ===========================================================================
``train``           ``{"id", "name", "digest"}``: the train spec's id and name, and the train
                    image's manifest digest the hop ran
``station``         the station id (the route entry of this hop)
``hop``             the hop index ``k`` (0-based position on the route)
``dataset``         ``{"name", "digest"}``: the data set the train saw, and the digest of the
                    data as mounted at ``/pht/data`` (the station's data-view digest)
``sandbox``         the sandbox settings the container ran with: an object of the station's
                    limits (``memory``, ``cpus``, ``pids``, ``timeout``, ``max_output_bytes``,
                    ``user``, …) and ``gpus`` (``null`` or none when no accelerator was passed)
``disclosure``      ``{"verdict", "reasons", "min_cell_count", "files"}``: the station's
                    automatic disclosure check of the output: ``verdict`` is ``pass`` |
                    ``review`` | ``block`` (the worst file, or the output as a whole);
                    ``reasons`` those about the whole output; ``min_cell_count`` the
                    threshold the tables were checked against; ``files`` lists
                    ``{"path", "bytes", "kind", "verdict", "reasons"}`` per output file.
                    Reasons name positions and thresholds only, never values.
``approved_by``     who approved running the train at the station (an Airflow user), or
                    ``null`` when the station's policy did not ask for a person
``released_by``     who released the output after review (an Airflow user), or ``null`` when
                    it was released automatically (every file passed and the policy allows it)
``started``         when the train's container started (RFC 3339, UTC, ``…Z``)
``finished``        when it ended (same format)
``exit_code``       the container's exit code (0 for a delivered result)
==================  ===========================================================================

Verification (:func:`verify_attestation`) accepts a result only if an attestation layer is an
envelope of that payload type whose signature verifies under the station's key from the train
spec, whose statement is an in-toto v1 statement of the expected predicate type, and whose
subject digest is the result's digest. A result without one, or whose attestations are signed
by another key, name another subject, or do not parse, is refused with
``VerificationError(check="attestation")``. Everything read from the registry is bounded
(:data:`MAX_ENVELOPE_BYTES` per layer, :data:`MAX_LAYERS` layers).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import strictjson
from .errors import DigestMismatchError, NotFoundError, PhtError, RegistryError, VerificationError
from .keys import PublicKey, SigningKey
from .oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, Manifest, Reference, RegistryClient

__all__ = [
    "DSSE_MEDIA_TYPE",
    "MAX_ENVELOPE_BYTES",
    "MAX_LAYERS",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Attestation",
    "attest",
    "attestation_tag",
    "check_hop",
    "hop_predicate",
    "make_statement",
    "open_envelope",
    "pae",
    "sign_envelope",
    "summary",
    "verify_attestation",
]

log = logging.getLogger(__name__)

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://pht-airflow.dev/attestations/hop-run/v1"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_TYPE_ANNOTATION = "predicateType"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"

#: Largest envelope layer read from a registry, and the largest statement :func:`attest` signs
#: (base64 makes the envelope 4/3 of it, plus a signature).
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_STATEMENT_BYTES = 512 * 1024
#: The most attestation layers one ``.att`` manifest may have that a verifier looks at.
MAX_LAYERS = 64
#: The most signatures one envelope may carry.
MAX_SIGNATURES = 16
_PUT_ATTEMPTS = 5
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_VERDICTS = ("pass", "review", "block")
_MAX_TEXT = 4096
_MAX_ITEMS = 10_000
_MAX_DEPTH = 8


def attestation_tag(digest: str) -> str:
    """``sha256:abc…`` → ``sha256-abc….att`` (cosign's tag for the attestations of a digest)."""
    return f"sha256-{_sha256_hex(digest)}.att"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1's pre-authentication encoding: the bytes a signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256_hex(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise PhtError(f"{_shown(digest)} is not a sha256 digest")
    return digest[len("sha256:") :]


def make_statement(
    subject_name: str,
    digest: str,
    predicate: Mapping[str, Any],
    predicate_type: str = PREDICATE_TYPE,
) -> dict[str, Any]:
    """The in-toto Statement v1 about ``digest`` (a result manifest's sha256 digest)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": _sha256_hex(digest)}}],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def sign_envelope(statement: Mapping[str, Any], key: SigningKey) -> bytes:
    """The DSSE envelope (JSON bytes) of ``statement`` signed by ``key``."""
    try:
        payload = _canonical(statement)
    except (TypeError, ValueError) as exc:
        raise PhtError(f"the attestation statement is not JSON: {exc}") from None
    if len(payload) > MAX_STATEMENT_BYTES:
        raise PhtError(
            f"the attestation statement is {len(payload)} bytes, over {MAX_STATEMENT_BYTES}"
        )
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(signature).decode("ascii")}],
    }
    return _canonical(envelope)


# --- reading an envelope (untrusted) -----------------------------------------------------------


class _Problem(Exception):
    """Why one envelope was not accepted, with how telling that is (lower: more telling)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.message = message


# Ranks: a statement by the right key about the wrong thing says most; then an altered one.
_SUBJECT, _PREDICATE, _TAMPERED, _MALFORMED, _OTHER_KEY = range(5)


def _strict_json(raw: bytes, what: str) -> Any:
    try:
        return strictjson.loads(raw)
    except strictjson.StrictJSONError as exc:
        raise _Problem(_MALFORMED, f"the {what} is {exc}") from None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Problem(_MALFORMED, f"the envelope's {what} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Problem(_MALFORMED, f"the envelope's {what} is not base64") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def open_envelope(
    raw: bytes,
    digest: str,
    key: PublicKey,
    predicate_type: str = PREDICATE_TYPE,
) -> dict[str, Any]:
    """Check one DSSE envelope (untrusted bytes) and return its statement.

    In order: the envelope is a JSON object of ``payloadType`` (must be in-toto's),
    ``payload`` (base64) and ``signatures``; one signature verifies under ``key`` over the
    PAE; the payload is an in-toto v1 statement of ``predicate_type`` whose subject digests
    include ``digest``. Raises :class:`VerificationError` (``check="attestation"``).
    """
    try:
        return _open(raw, digest, key, predicate_type)
    except _Problem as problem:
        raise VerificationError(
            problem.message, digest=digest, key_id=key.key_id, check="attestation"
        ) from None


def _open(raw: bytes, digest: str, key: PublicKey, predicate_type: str) -> dict[str, Any]:
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise _Problem(_MALFORMED, f"the envelope is over {MAX_ENVELOPE_BYTES} bytes")
    envelope = _strict_json(raw, "envelope")
    if not isinstance(envelope, dict):
        raise _Problem(_MALFORMED, "the envelope is not a JSON object")
    payload_type = envelope.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise _Problem(
            _MALFORMED, f"the envelope's payloadType is {_shown(payload_type)}, not {PAYLOAD_TYPE}"
        )
    payload = _b64(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise _Problem(_MALFORMED, "the envelope has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise _Problem(_MALFORMED, f"the envelope has over {MAX_SIGNATURES} signatures")
    signed = pae(PAYLOAD_TYPE, payload)
    claimed: list[str] = []
    verified = False
    for entry in signatures:
        if not isinstance(entry, dict):
            raise _Problem(_MALFORMED, "an envelope signature is not an object")
        keyid = entry.get("keyid")
        if isinstance(keyid, str) and _DIGEST.fullmatch(keyid):
            claimed.append(keyid)
        if key.verify(_b64(entry.get("sig"), "signature"), signed):
            verified = True
            break
    if not verified:
        if key.key_id in claimed:
            raise _Problem(
                _TAMPERED,
                f"an attestation claiming the station's key {key.key_id} does not verify: the "
                "payload or the signature was altered",
            )
        named = f" (it names key {', '.join(claimed[:3])})" if claimed else ""
        raise _Problem(
            _OTHER_KEY,
            f"the attestation is signed by another key{named}, not by the station's key "
            f"{key.key_id}",
        )
    statement = _strict_json(payload, "attestation statement")
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise _Problem(_MALFORMED, f"the signed payload is not an in-toto {STATEMENT_TYPE}")
    if statement.get("predicateType") != predicate_type:
        raise _Problem(
            _PREDICATE,
            f"the attestation's predicateType is {_shown(statement.get('predicateType'))}, "
            f"not {predicate_type}",
        )
    if not isinstance(statement.get("predicate"), dict):
        raise _Problem(_MALFORMED, "the attestation's predicate is not an object")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise _Problem(_MALFORMED, "the attestation names no subject")
    named_digests: list[str] = []
    for subject in subjects[:MAX_SIGNATURES]:
        value = subject.get("digest") if isinstance(subject, dict) else None
        hexpart = value.get("sha256") if isinstance(value, dict) else None
        if isinstance(hexpart, str):
            named_digests.append(hexpart)
    if _sha256_hex(digest) not in named_digests:
        shown = ", ".join(f"sha256:{_shown(h)[1:-1]}" for h in named_digests[:3]) or "nothing"
        raise _Problem(_SUBJECT, f"the attestation names another subject ({shown}), not {digest}")
    return statement


# --- the registry side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attestation:
    """An attestation in place: its statement, the key that signed it and its layer."""

    statement: dict[str, Any]
    key_id: str
    layer_digest: str

    @property
    def predicate(self) -> dict[str, Any]:
        return dict(self.statement["predicate"])


def _att_manifest(client: RegistryClient, repository: str, digest: str) -> Manifest | None:
    try:
        return client.get_manifest(repository, attestation_tag(digest))
    except NotFoundError:
        return None


def _read_layer(
    client: RegistryClient,
    repository: str,
    digest: str,
    layer: Descriptor,
    key: PublicKey,
    predicate_type: str,
) -> dict[str, Any]:
    if layer.media_type != DSSE_MEDIA_TYPE:
        raise _Problem(
            _MALFORMED, f"layer {layer.digest} has media type {_shown(layer.media_type)}"
        )
    if layer.size > MAX_ENVELOPE_BYTES:
        raise _Problem(_MALFORMED, f"layer {layer.digest} is over {MAX_ENVELOPE_BYTES} bytes")
    try:
        raw = client.get_blob(repository, layer.digest, max_bytes=MAX_ENVELOPE_BYTES)
    except DigestMismatchError:
        raise _Problem(_MALFORMED, f"layer {layer.digest}: its bytes do not match it") from None
    except NotFoundError:
        raise _Problem(_MALFORMED, f"layer {layer.digest} is missing from the registry") from None
    return _open(raw, digest, key, predicate_type)


def _config_for(layers: Sequence[Descriptor]) -> bytes:
    # What cosign writes beside its layers: an image config listing them as diff_ids.
    config = {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
    }
    return _canonical(config)


def attest(
    client: RegistryClient,
    repository: str,
    result_digest: str,
    predicate: Mapping[str, Any],
    key: SigningKey,
    *,
    predicate_type: str = PREDICATE_TYPE,
) -> Attestation:
    """Sign a statement about ``result_digest`` and add it to its ``.att`` manifest.

    Idempotent: if an attestation of ``predicate_type`` about this digest by ``key`` is
    already there (a retried seal), it is returned and nothing is added, even if
    ``predicate`` differs: the first one stands. Safe against a concurrent writer: the
    manifest is re-read after the write and the append retried if it was replaced.
    """
    subject = f"{client.registry}/{repository}"
    statement = make_statement(subject, result_digest, predicate, predicate_type)
    envelope = sign_envelope(statement, key)
    tag = attestation_tag(result_digest)
    uploaded: Descriptor | None = None
    for _attempt in range(_PUT_ATTEMPTS):
        existing = _att_manifest(client, repository, result_digest)
        layers = list(existing.layers) if existing is not None else []
        for old in layers[:MAX_LAYERS]:
            try:
                found = _read_layer(client, repository, result_digest, old, key.public,
                                    predicate_type)  # fmt: skip
            except _Problem:
                continue
            log.info("%s already attested %s", key.key_id, result_digest)
            return Attestation(found, key.key_id, old.digest)
        if uploaded is None:
            blob = client.upload_bytes(repository, envelope, DSSE_MEDIA_TYPE)
            uploaded = Descriptor(
                media_type=DSSE_MEDIA_TYPE,
                digest=blob.digest,
                size=blob.size,
                annotations={PREDICATE_TYPE_ANNOTATION: predicate_type, SIGNATURE_ANNOTATION: ""},
            )
        new_layers = [*layers, uploaded]
        config = client.upload_bytes(repository, _config_for(new_layers), OCI_CONFIG)
        raw = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.to_dict(),
                "layers": [d.to_dict() for d in new_layers],
            }
        )
        client.put_manifest(repository, tag, raw, OCI_MANIFEST)
        after = _att_manifest(client, repository, result_digest)
        if after is not None and any(d.digest == uploaded.digest for d in after.layers):
            return Attestation(statement, key.key_id, uploaded.digest)
        log.warning("the attestation manifest of %s changed while attesting; retrying",
                    result_digest)  # fmt: skip
    raise RegistryError(
        f"could not add an attestation to {repository}@{result_digest}: the attestation "
        "manifest kept changing under concurrent writers"
    )


def verify_attestation(
    client: RegistryClient,
    result_ref: Reference,
    station_key: PublicKey,
    *,
    predicate_type: str = PREDICATE_TYPE,
) -> dict[str, Any]:
    """The statement of a valid attestation of ``result_ref`` (pinned) by ``station_key``.

    Reads the ``.att`` manifest and at most :data:`MAX_LAYERS` envelopes of at most
    :data:`MAX_ENVELOPE_BYTES` each; returns the first statement that passes
    :func:`open_envelope`. Raises :class:`VerificationError` with ``check="attestation"`` when
    there is none, naming the most telling reason: another subject, another predicate type,
    an altered payload, a malformed envelope, or another key.
    """
    digest = result_ref.digest
    if digest is None:
        raise ValueError(f"{result_ref} must be pinned to a digest before verifying")
    where = f"{result_ref.name}@{digest}"

    def fail(message: str, details: Sequence[str] = ()) -> VerificationError:
        return VerificationError(
            message, digest=digest, key_id=station_key.key_id, check="attestation",
            details=details,
        )  # fmt: skip

    manifest = _att_manifest(client, result_ref.repository, digest)
    if manifest is None or not manifest.layers:
        raise fail(
            f"{where} has no attestation (no {attestation_tag(digest)} tag): the station did not "
            "attest this result"
        )
    problems: list[_Problem] = []
    for index, layer in enumerate(manifest.layers[:MAX_LAYERS]):
        try:
            return _read_layer(client, result_ref.repository, digest, layer, station_key,
                               predicate_type)  # fmt: skip
        except _Problem as problem:
            problem.message = f"attestation layer {index}: {problem.message}"
            problems.append(problem)
    best = min(problems, key=lambda p: p.rank)
    raise fail(
        f"{where} has no valid attestation by the station's key: {best.message}",
        [p.message for p in problems],
    )


def check_hop(statement: Mapping[str, Any], *, station: str, hop: int, train_digest: str) -> None:
    """A verified hop-run statement must be about this hop: its predicate names ``station``,
    ``hop`` and the train digest (the signer's own words, so a mismatch is a station's bug or
    a reused statement). Raises :class:`VerificationError` (``check="attestation"``)."""
    p = statement.get("predicate")
    p = p if isinstance(p, Mapping) else {}
    train = p.get("train")
    named = train.get("digest") if isinstance(train, Mapping) else None
    problems = []
    if p.get("station") != station:
        problems.append(f"station {_shown(p.get('station'))}, not {station!r}")
    if p.get("hop") != hop or type(p.get("hop")) is not int:
        problems.append(f"hop {_shown(p.get('hop'))}, not {hop}")
    if named != train_digest:
        problems.append(f"train {_shown(named)}, not {train_digest}")
    if problems:
        raise VerificationError(
            f"the run attestation of hop {hop} ({station}) names " + "; ".join(problems),
            digest=train_digest,
            check="attestation",
        )


# --- the predicate --------------------------------------------------------------------------


def _time(value: datetime | str | None, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PhtError(f"hop_predicate: {name} must be timezone-aware")
        return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PhtError(
                f"hop_predicate: {name} is not an RFC 3339 time: {_shown(value)}"
            ) from None
        return _time(parsed, name)
    raise PhtError(f"hop_predicate: {name} must be a datetime or an RFC 3339 string")


def _text(value: Any, name: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise PhtError(f"hop_predicate: {name} must be a string of at most {_MAX_TEXT} characters")
    return value


def _json_safe(value: Any, name: str, depth: int = 0) -> Any:
    """A copy of ``value`` as plain JSON data (bounded), or :class:`PhtError`."""
    if depth > _MAX_DEPTH:
        raise PhtError(f"hop_predicate: {name} is nested too deeply")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise PhtError(f"hop_predicate: {name} holds a number JSON cannot carry")
        return value
    if isinstance(value, str):
        return _text(value, name)
    if isinstance(value, Mapping):
        if len(value) > _MAX_ITEMS:
            raise PhtError(f"hop_predicate: {name} has over {_MAX_ITEMS} entries")
        return {str(k): _json_safe(v, f"{name}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > _MAX_ITEMS:
            raise PhtError(f"hop_predicate: {name} has over {_MAX_ITEMS} entries")
        return [_json_safe(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise PhtError(f"hop_predicate: {name} is of type {type(value).__name__}, not JSON data")


def _verdict(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if value not in _VERDICTS:
        raise PhtError(f"hop_predicate: {name} must be one of {', '.join(_VERDICTS)}")
    return str(value)


def _disclosure(disclosure: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if disclosure is None:
        return None
    files = disclosure.get("files") or []
    if isinstance(files, Mapping):  # {path: {…}} as well as [{path, …}]
        files = [{"path": path, **dict(info)} for path, info in files.items()]
    if not isinstance(files, list | tuple) or len(files) > _MAX_ITEMS:
        raise PhtError("hop_predicate: disclosure.files must be a list of files")
    out = []
    for i, entry in enumerate(files):
        where = f"disclosure.files[{i}]"
        if not isinstance(entry, Mapping):
            raise PhtError(f"hop_predicate: {where} must be an object")
        size = entry.get("bytes")
        if size is not None and (type(size) is not int or size < 0):
            raise PhtError(f"hop_predicate: {where}.bytes must be a number of bytes")
        reasons = entry.get("reasons") or []
        if not isinstance(reasons, list | tuple):
            raise PhtError(f"hop_predicate: {where}.reasons must be a list of strings")
        # Only the documented fields: the attestation is readable by anyone who can pull
        # the result's repository, so nothing else a summary holds is carried along.
        out.append(
            {
                "path": _text(entry.get("path"), f"{where}.path", optional=False),
                "bytes": size,
                "kind": _text(entry.get("kind"), f"{where}.kind"),
                "verdict": _verdict(entry.get("verdict"), f"{where}.verdict"),
                "reasons": [_text(r, f"{where}.reasons", optional=False) for r in reasons],
            }
        )
    reasons = disclosure.get("reasons") or []
    if not isinstance(reasons, list | tuple) or len(reasons) > _MAX_ITEMS:
        raise PhtError("hop_predicate: disclosure.reasons must be a list of strings")
    threshold = disclosure.get("min_cell_count")
    if threshold is not None and (type(threshold) is not int or threshold < 0):
        raise PhtError("hop_predicate: disclosure.min_cell_count must be a whole number")
    return {
        "verdict": _verdict(disclosure.get("verdict"), "disclosure.verdict"),
        "reasons": [_text(r, "disclosure.reasons", optional=False) for r in reasons],
        "min_cell_count": threshold,
        "files": out,
    }


def hop_predicate(
    *,
    train: Mapping[str, Any],
    station: str,
    hop: int,
    dataset: Mapping[str, Any] | None = None,
    sandbox: Mapping[str, Any] | None = None,
    disclosure: Mapping[str, Any] | None = None,
    approved_by: str | None = None,
    released_by: str | None = None,
    started: datetime | str | None = None,
    finished: datetime | str | None = None,
    exit_code: int | None = None,
) -> dict[str, Any]:
    """The predicate of :data:`PREDICATE_TYPE`, checked and normalised (see the module doc).

    ``train`` is ``{"id", "name", "digest"}``; ``dataset`` ``{"name", "digest"}``;
    ``sandbox`` the limits the container ran with (JSON data, including ``gpus``);
    ``disclosure`` the disclosure report's summary (``DisclosureReport.summary()``: only
    ``verdict``, ``reasons``, ``min_cell_count`` and ``files`` are kept, files as a list or a
    mapping by path, of each only ``path``, ``bytes``, ``kind``, ``verdict`` and
    ``reasons``); times are timezone-aware datetimes or RFC 3339 text (stored as UTC ``…Z``).
    Raises :class:`PhtError` naming the field that is wrong.
    """
    digest = train.get("digest")
    if not isinstance(digest, str):
        raise PhtError("hop_predicate: train.digest must be the train's manifest digest")
    _sha256_hex(digest)
    if type(hop) is not int or hop < 0:
        raise PhtError("hop_predicate: hop must be a non-negative integer")
    if exit_code is not None and type(exit_code) is not int:
        raise PhtError("hop_predicate: exit_code must be an integer")
    data = dataset or {}
    return {
        "train": {
            "id": _text(train.get("id"), "train.id"),
            "name": _text(train.get("name"), "train.name"),
            "digest": digest,
        },
        "station": _text(station, "station", optional=False),
        "hop": hop,
        "dataset": {
            "name": _text(data.get("name"), "dataset.name"),
            "digest": _text(data.get("digest"), "dataset.digest"),
        },
        "sandbox": None if sandbox is None else _json_safe(dict(sandbox), "sandbox"),
        "disclosure": _disclosure(disclosure),
        "approved_by": _text(approved_by, "approved_by"),
        "released_by": _text(released_by, "released_by"),
        "started": _time(started, "started"),
        "finished": _time(finished, "finished"),
        "exit_code": exit_code,
    }


def summary(statement: Mapping[str, Any]) -> dict[str, str]:
    """A verified hop-run statement as short labelled text fields (for a person to read).

    The values are the signer's words, unescaped: render them with control characters
    stripped (``text.safe_text``). Missing or odd fields show as ``-``.
    """
    p = statement.get("predicate")
    p = p if isinstance(p, Mapping) else {}

    def get(obj: Any, *path: str) -> Any:
        for part in path:
            obj = obj.get(part) if isinstance(obj, Mapping) else None
        return obj

    def txt(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    files = get(p, "disclosure", "files")
    counts: dict[str, int] = {}
    if isinstance(files, list):
        for f in files:
            verdict = get(f, "verdict")
            counts[txt(verdict)] = counts.get(txt(verdict), 0) + 1
    verdict = txt(get(p, "disclosure", "verdict"))
    if counts:
        verdict += " (" + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + ")"
    return {
        "station": txt(get(p, "station")),
        "hop": txt(get(p, "hop")),
        "dataset": f"{txt(get(p, 'dataset', 'name'))} ({txt(get(p, 'dataset', 'digest'))})",
        "verdict": verdict,
        "approved by": txt(get(p, "approved_by")),
        "released by": txt(get(p, "released_by")),
        "exit code": txt(get(p, "exit_code")),
        "ran": f"{txt(get(p, 'started'))} -> {txt(get(p, 'finished'))}",
    }
