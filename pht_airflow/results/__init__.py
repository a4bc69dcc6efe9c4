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

Opening runs the same way backwards: blob chunks (digest verified while streaming) →
age decryption → a streaming tar reader → files, written into a private staging folder that
is renamed into place only after the whole blob verified, so a failure leaves nothing behind.
"""

from __future__ import annotations

from .archive import (
    DEFAULT_MAX_EXTRACT_BYTES,
    ExtractStats,
    Progress,
    TarEntry,
    TarStream,
    plan_tar,
    safe_extract,
    tar_bytes,
    tar_size,
)
from .artifact import SealedResult, fetch_results, open_result, seal
from .chain import (
    AcceptedResult,
    HopStatus,
    ResultCandidate,
    accept_hop,
    chain_status,
    check_result,
    find_results,
    verify_chain,
)
from .crypt import ChunkReader, decrypt_stream, encrypt_stream

__all__ = [
    "DEFAULT_MAX_EXTRACT_BYTES",
    "AcceptedResult",
    "ChunkReader",
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
    "decrypt_stream",
    "encrypt_stream",
    "fetch_results",
    "find_results",
    "open_result",
    "plan_tar",
    "safe_extract",
    "seal",
    "tar_bytes",
    "tar_size",
    "verify_chain",
]
