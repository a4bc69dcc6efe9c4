"""A result as an OCI artifact: sealing one, opening one, fetching a train's results.

Implements PROTOCOL.md "A result": the encrypted archive as the one layer, the config, a
manifest whose subject is the train, the station's signature, pushed by digest and only then
tagged ``result-<k>``. :func:`open_result` downloads the encrypted blob and verifies its
digest before it decrypts a byte, then extracts into a private staging folder that is renamed
into place only at the end;
:func:`fetch_results` first verifies "The chain" (:mod:`.chain`), then opens every result
addressed to the caller.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..attestation import attest, check_hop, hop_predicate, verify_attestation
from ..errors import DigestMismatchError, PhtError, UnsafeArchiveError
from ..keys import AgeIdentity, SigningKey, public_key_from_pem
from ..oci import OCI_MANIFEST, Descriptor, Manifest, Reference, RegistryClient, sha256_digest
from ..protocol import (
    HOP_ANNOTATION,
    RESULT_ARTIFACT_TYPE,
    RESULT_CONFIG_MEDIA_TYPE,
    RESULT_MEDIA_TYPE,
    STATION_ANNOTATION,
    result_tag,
)
from ..signing import sign
from ..spec import TrainSpec
from .archive import (
    _READ,
    DEFAULT_MAX_EXTRACT_BYTES,
    ExtractStats,
    Progress,
    TarEntry,
    TarStream,
    plan_tar,
    safe_extract,
    tar_size,
)
from .chain import AcceptedResult, plaintext_length, verify_chain
from .crypt import ChunkReader, decrypt_file, encrypt_stream

__all__ = [
    "EncryptedPayload",
    "SealedResult",
    "encrypt_output",
    "fetch_results",
    "open_result",
    "push_result",
    "seal",
]


# --- sealing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedResult:
    """A result artifact as pushed: where it is and what it says."""

    reference: Reference
    digest: str
    layer: Descriptor
    config: dict[str, Any]

    @property
    def recipients(self) -> list[str]:
        return list(self.config["recipients"])


@dataclass(frozen=True)
class EncryptedPayload:
    """A result's layer made ahead of sealing: the output's archive encrypted to ``recipients``
    (see :func:`encrypt_output`), kept in ``path`` until :func:`seal` pushes it."""

    path: Path
    sha256: str
    plaintext_bytes: int
    recipients: tuple[str, ...]


def encrypt_output(entries: Sequence[TarEntry], recipients: Sequence[str], sink: IO[bytes]) -> str:
    """Write the archive of ``entries`` (from :func:`plan_tar`, which refuses an unsafe
    output) encrypted to ``recipients`` into ``sink``: the bytes :func:`seal` would push.
    Returns their sha256 (hex)."""
    digest = hashlib.sha256()
    for chunk in encrypt_stream(TarStream(list(entries)), list(recipients)):
        digest.update(chunk)
        sink.write(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(
    client: RegistryClient,
    train: Reference,
    train_manifest: Manifest,
    spec: TrainSpec,
    *,
    hop: int,
    output_dir: Path | None = None,
    key: SigningKey,
    previous: str | None,
    recipients: Sequence[str] | None = None,
    progress: Progress | None = None,
    created: str | None = None,
    predicate: Mapping[str, Any] | None = None,
    journal: Path | None = None,
    payload: EncryptedPayload | None = None,
) -> SealedResult:
    """Seal ``output_dir`` (or push ``payload``, its archive already encrypted to the hop's
    recipients) as the result of ``hop``, beside the train, signed and attested.

    ``train`` must be pinned to the train's digest and name the repository the result goes
    to (the train's repository in this station's project). ``recipients`` defaults to the
    protocol's rule (:meth:`TrainSpec.recipients_for_hop`). The archive is planned (and
    refused if unsafe) before a single byte is uploaded. ``predicate`` is the run
    attestation's predicate (build it with :func:`pht_airflow.attestation.hop_predicate`);
    without one the attestation records what seal knows: the train, the station, the hop
    and the data set's name, every other field null.

    ``journal`` (a file only this hop uses) makes a retry after a kill push the same result:
    the manifest is written there before it is pushed, and a seal that finds it (and the
    manifest's blobs in the registry) finishes pushing that manifest (sign, attest, tag, each
    idempotent) instead of encrypting a new one. Age encryption is randomised, so without it
    a seal killed between pushing the manifest and tagging it would leave an untagged result
    a retry cannot see, and push a second one.
    """
    if journal is not None:
        resumed = _resume(client, train, train_manifest, journal, key=key, predicate=predicate)
        if resumed is not None:
            return resumed
    if train.digest is None or train.digest != train_manifest.digest:
        raise PhtError("seal needs the train reference pinned to the train manifest's digest")
    if not 0 <= hop < len(spec.route):
        raise PhtError(f"hop {hop} is not on the route (0..{len(spec.route) - 1})")
    station = spec.route[hop].station
    recipients = list(recipients if recipients is not None else spec.recipients_for_hop(hop))
    if payload is not None:
        if list(payload.recipients) != recipients:
            raise PhtError(
                "the encrypted output was made for other recipients than this hop's; "
                "run the hop again"
            )
        plaintext_bytes = payload.plaintext_bytes
        with open(payload.path, "rb") as fh:
            # The digest made when the output was encrypted: bytes changed on disk since
            # then cancel the upload.
            layer = client.upload_blob(
                train.repository,
                fh,
                media_type=RESULT_MEDIA_TYPE,
                expected_digest=f"sha256:{payload.sha256}",
            )
    elif output_dir is not None:
        entries = plan_tar(output_dir)
        plaintext_bytes = tar_size(entries)
        ciphertext = encrypt_stream(TarStream(entries, progress=progress), recipients)
        layer = client.upload_blob(train.repository, ciphertext, media_type=RESULT_MEDIA_TYPE)
    else:
        raise PhtError("seal needs the output folder or its encrypted payload")
    config = {
        "train": {"id": spec.id, "digest": train.digest},
        "hop": hop,
        "station": station,
        "previous": previous,
        "created": created or _now(),
        "recipients": recipients,
        "plaintext_bytes": plaintext_bytes,
    }
    if predicate is None:
        predicate = hop_predicate(
            train={"id": spec.id, "name": spec.name, "digest": train.digest},
            station=station,
            hop=hop,
            dataset={"name": spec.dataset, "digest": None},
        )
    return push_result(
        client, train, train_manifest, layer, config, key=key, predicate=predicate, journal=journal
    )


_MAX_JOURNAL = 1024 * 1024


def _resume(
    client: RegistryClient,
    train: Reference,
    train_manifest: Manifest,
    journal: Path,
    *,
    key: SigningKey,
    predicate: Mapping[str, Any] | None,
) -> SealedResult | None:
    """Finish the result an earlier attempt wrote to ``journal``, if its blobs are there."""
    try:
        with open(journal, "rb") as fh:
            raw_journal = fh.read(_MAX_JOURNAL + 1)
        entry = json.loads(raw_journal)
        raw = entry["manifest"].encode()
        config = entry["config"]
        layer = Descriptor.from_dict(entry["layer"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PhtError):
        return None
    if len(raw_journal) > _MAX_JOURNAL or entry.get("repository") != train.repository:
        return None
    manifest = json.loads(raw)
    if (manifest.get("subject") or {}).get("digest") != train_manifest.digest:
        return None
    if client.blob_size(train.repository, layer.digest) != layer.size:
        return None  # the first attempt's upload did not finish: seal anew
    return _finish(client, train, raw, layer, config, key=key, predicate=predicate)


def push_result(
    client: RegistryClient,
    train: Reference,
    train_manifest: Manifest,
    layer: Descriptor,
    config: dict[str, Any],
    *,
    key: SigningKey,
    predicate: Mapping[str, Any] | None = None,
    journal: Path | None = None,
) -> SealedResult:
    """Push a result artifact whose layer is already uploaded: config, manifest, signature,
    attestation, and only then the ``result-<hop>`` tag. ``config`` is pushed as given
    (:func:`seal` makes it; tests use this to publish hostile results a station could sign);
    without a ``predicate`` the attestation names the config's train, station and hop.
    """
    hop, station = config["hop"], config["station"]
    config_desc = client.upload_bytes(
        train.repository, _canonical(config), RESULT_CONFIG_MEDIA_TYPE
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": RESULT_ARTIFACT_TYPE,
        "config": config_desc.to_dict(),
        "layers": [layer.to_dict()],
        "subject": train_manifest.descriptor().to_dict(),
        "annotations": {
            HOP_ANNOTATION: str(hop),
            STATION_ANNOTATION: station,
            "org.opencontainers.image.created": config["created"],
        },
    }
    raw = _canonical(manifest)
    if journal is not None:  # before the push: a retry finishes this manifest (see seal)
        entry = {
            "repository": train.repository,
            "manifest": raw.decode(),
            "config": config,
            "layer": layer.to_dict(),
        }
        tmp = journal.with_name(f".{journal.name}.tmp")
        tmp.write_bytes(_canonical(entry))
        os.chmod(tmp, 0o600)
        os.replace(tmp, journal)
    return _finish(client, train, raw, layer, config, key=key, predicate=predicate)


def _finish(
    client: RegistryClient,
    train: Reference,
    raw: bytes,
    layer: Descriptor,
    config: dict[str, Any],
    *,
    key: SigningKey,
    predicate: Mapping[str, Any] | None,
) -> SealedResult:
    hop, station = config["hop"], config["station"]
    # Pushed by digest, signed, attested, and only then tagged: the registry announces the
    # tag push, and by then the signature and the attestation are there for whoever the
    # announcement wakes (the router copies both with the result).
    digest = client.put_manifest(train.repository, sha256_digest(raw), raw, OCI_MANIFEST)
    ref = Reference(train.registry, train.repository, digest=digest)
    sign(client, ref, key, role="station", signer=station)
    if predicate is None:
        predicate = {"train": config.get("train"), "station": station, "hop": hop}
    attest(client, train.repository, digest, predicate, key)
    client.put_manifest(train.repository, result_tag(hop), raw, OCI_MANIFEST)
    return SealedResult(reference=ref, digest=digest, layer=layer, config=config)


# --- opening ----------------------------------------------------------------------------

#: Room for the age header: the intro, the MAC and one stanza of about 100 bytes per
#: recipient (generous: a header this size would have thousands of recipients).
_AGE_HEADER_ALLOWANCE = 256 * 1024


def _max_ciphertext(plaintext_bytes: int) -> int:
    """The most bytes an age encryption of ``plaintext_bytes`` can take (header allowance).

    age's payload is a 16-byte nonce and 64 KiB chunks with a 16-byte tag each (at least one
    chunk), so a layer larger than this cannot hold the signed plaintext length.
    """
    chunks = max(1, -(-plaintext_bytes // (64 * 1024)))
    return _AGE_HEADER_ALLOWANCE + 16 + plaintext_bytes + 16 * chunks


def _download_verified(
    client: RegistryClient,
    result: AcceptedResult | SealedResult,
    sink: IO[bytes],
    progress: Progress | None,
) -> None:
    """Stream the result's blob into ``sink``; return only once its digest has verified.

    At most the descriptor's (signed) size is written; :meth:`RegistryClient.open_blob`
    raises :class:`DigestMismatchError` after the last chunk if the bytes are not the
    signed ones.
    """
    layer = result.layer
    written = 0
    for chunk in client.open_blob(result.reference.repository, layer.digest):
        written += len(chunk)
        if written > layer.size:
            raise DigestMismatchError(
                f"blob {result.reference.repository}@{layer.digest} from {client.registry} "
                f"is longer than the {layer.size} bytes the signed manifest names"
            )
        sink.write(chunk)
        if progress is not None:
            progress(len(chunk))
    if written != layer.size:
        raise DigestMismatchError(
            f"blob {result.reference.repository}@{layer.digest} from {client.registry} is "
            f"{written} bytes, not the {layer.size} bytes the signed manifest names"
        )
    sink.flush()


def open_result(
    client: RegistryClient,
    result: AcceptedResult | SealedResult,
    identity: AgeIdentity,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
) -> ExtractStats:
    """Download, verify, decrypt and safely extract a result into ``dest`` (must not exist).

    Verify before decrypt: the encrypted blob is first downloaded into an unnamed temporary
    file inside a private (0700) staging folder beside ``dest``, hashed as it streams, and
    only when its digest matches the signed manifest is it decrypted, read by
    :class:`~.archive.ArchiveReader` and extracted into that staging folder. Nothing a
    registry swapped in (any valid age file to the same recipient would decrypt) is ever
    decrypted or parsed, and no plaintext byte is written before the verification. The
    signed ``plaintext_bytes`` bounds extraction: the archive must be exactly that long, and
    the layer no longer than an age encryption of it (so the temporary ciphertext is bounded
    too). The staging folder becomes ``dest`` by one rename only when everything succeeded;
    on any failure it is removed, with the temporary file, and ``dest`` is not created.
    Memory stays at about a few MiB of buffers whatever the result's size.

    The researcher (``pht results fetch``, via :func:`fetch_results`) and a station opening
    the previous hop's result both come through here.
    """
    if dest.exists():
        raise PhtError(f"{dest} already exists; choose a new folder for the result")
    length = plaintext_length(result.config)
    if length > max_bytes:
        raise UnsafeArchiveError(
            f"the result declares {length} bytes, over the extraction limit of {max_bytes}"
        )
    if result.layer.size > _max_ciphertext(length):
        raise UnsafeArchiveError(
            f"the result's layer is {result.layer.size} bytes, more than an age encryption of "
            f"its signed {length} plaintext bytes can take"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        with tempfile.TemporaryFile(dir=staging, buffering=_READ) as blob:
            _download_verified(client, result, blob, progress)
            blob.seek(0)
            chunks = decrypt_file(blob, identity)
            try:
                stats = safe_extract(
                    io.BufferedReader(ChunkReader(chunks), _READ),
                    staging,
                    length=length,
                    max_bytes=max_bytes,
                )
            finally:
                chunks.close()  # stops the decryption thread before the file closes
        os.chmod(staging, 0o755)  # noqa: S103 - the opened result, for its reader
        os.rename(staging, dest)
        return stats
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def fetch_results(
    client: RegistryClient,
    train: Reference,
    spec: TrainSpec,
    identity: AgeIdentity,
    out_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
    on_result: Callable[[AcceptedResult], None] | None = None,
    on_attestation: Callable[[AcceptedResult, dict[str, Any]], None] | None = None,
) -> list[tuple[AcceptedResult, Path]]:
    """Verify the chain and every result's attestation, then open every result addressed
    to ``identity`` into ``out_dir``.

    Writes ``out_dir/<hop>-<station>/…``. Every accepted result must carry a run attestation
    signed by its station's key from the train spec and naming it as subject
    (:func:`pht_airflow.attestation.verify_attestation`); all are checked before a byte is
    downloaded, and ``on_attestation`` is told each verified statement. All or nothing:
    results are opened into a private staging folder that becomes ``out_dir`` only when
    every one verified and decrypted. The caller verifies the train's own signatures first
    (``train`` must be pinned).
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PhtError(f"{out_dir} is not empty; fetch into a new or empty folder")
    if train.digest is None:
        raise PhtError("fetch_results needs the train reference pinned to its digest")
    accepted = verify_chain(client, train, spec)
    mine = [r for r in accepted if identity.recipient in r.recipients]
    if not mine:
        raise PhtError(
            f"no verified result of train {spec.id} is addressed to {identity.recipient} "
            f"({len(accepted)} verified result(s) in total)"
        )
    statements = []
    for r in accepted:
        statement = verify_attestation(
            client, r.reference, public_key_from_pem(spec.route[r.hop].key)
        )
        check_hop(statement, station=r.station, hop=r.hop, train_digest=train.digest)
        statements.append((r, statement))
    if on_attestation is not None:
        for result, statement in statements:
            on_attestation(result, statement)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        placed = []
        for result in mine:
            if on_result is not None:
                on_result(result)
            name = f"{result.hop}-{result.station}"
            open_result(
                client, result, identity, staging / name, max_bytes=max_bytes, progress=progress
            )
            placed.append((result, out_dir / name))
        if out_dir.exists():
            out_dir.rmdir()
        os.chmod(staging, 0o755)  # noqa: S103 - the opened result, for its reader
        os.rename(staging, out_dir)
        return placed
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
