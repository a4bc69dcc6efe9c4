"""Sealed results: a deterministic tar of the output folder, age-encrypted, as an OCI artifact.

Implements PROTOCOL.md "A result" and "The chain", one concern per module:

- :mod:`.archive`: the deterministic tar (plan, stream, exact size) and safe extraction of a
  tar stream;
- :mod:`.crypt`: age encryption and decryption as streams, pumped through a worker thread, and
  :class:`ChunkReader` (an iterator of byte chunks read as a file);
- :mod:`.chain`: the ``result-<k>`` candidates of a train and the chain rules (check one,
  accept a hop, verify the chain, each hop's status);
- :mod:`.artifact`: sealing a result as a signed OCI artifact, opening one, fetching all.

Imports point one way: ``artifact`` uses ``archive``, ``crypt`` and ``chain``; ``crypt`` uses
``archive``; ``archive`` and ``chain`` use nothing else in this package.

Sealing is one pass over the data with memory independent of the result size:
folder → :class:`TarStream` (a deterministic tar produced on demand) → age encryption
(``pyrage.encrypt_io`` in a worker thread) → a bounded queue of ciphertext chunks →
``RegistryClient.upload_blob``, which computes the blob's SHA-256 while it streams.

Opening verifies before it decrypts: blob chunks are hashed into an unnamed temporary file
in a private staging folder; only when the digest matches the signed manifest is that file
decrypted (age, worker thread) into :class:`ArchiveReader`, a strict and bounded reader of
the result format, which checks every entry before it is written into the staging folder. The
staging folder is renamed into place only when everything passed, so a failure leaves nothing
behind. The signed ``plaintext_bytes`` (checked by :func:`parse_result_config`) bounds it all.
"""

from __future__ import annotations

from .archive import (
    DEFAULT_MAX_EXTRACT_BYTES,
    ArchiveMember,
    ArchiveReader,
    ExtractStats,
    Progress,
    TarEntry,
    TarStream,
    name_problem,
    plan_tar,
    safe_extract,
    tar_bytes,
    tar_size,
)
from .artifact import (
    EncryptedPayload,
    SealedResult,
    encrypt_output,
    fetch_results,
    open_result,
    push_result,
    seal,
)
from .chain import (
    AcceptedResult,
    HopStatus,
    ResultCandidate,
    accept_hop,
    chain_status,
    check_result,
    find_results,
    parse_result_config,
    plaintext_length,
    verify_chain,
)
from .crypt import ChunkReader, decrypt_file, decrypt_stream, encrypt_stream

__all__ = [
    "DEFAULT_MAX_EXTRACT_BYTES",
    "AcceptedResult",
    "ArchiveMember",
    "ArchiveReader",
    "ChunkReader",
    "EncryptedPayload",
    "ExtractStats",
    "HopStatus",
    "Progress",
    "ResultCandidate",
    "SealedResult",
    "TarEntry",
    "TarStream",
    "accept_hop",
    "chain_status",
    "check_result",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_output",
    "encrypt_stream",
    "fetch_results",
    "find_results",
    "name_problem",
    "open_result",
    "parse_result_config",
    "plaintext_length",
    "plan_tar",
    "push_result",
    "safe_extract",
    "seal",
    "tar_bytes",
    "tar_size",
    "verify_chain",
]
