"""Collecting a train's results: check that the train is the creator's, verify every result
and the chain, and decrypt and extract what is addressed to the researcher (all or nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import VerificationError
from ..keys import AgeIdentity, PublicKey
from ..oci import RegistryClient
from ..results import DEFAULT_MAX_EXTRACT_BYTES, AcceptedResult, fetch_results
from ..signing import verify
from ..spec import read_spec
from .inspect import pin_reference


def collect_results(
    client: RegistryClient,
    text: str,
    creator_keys: Sequence[PublicKey],
    identity: AgeIdentity,
    out_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Callable[[int], None] | None = None,
    on_result: Callable[[AcceptedResult], None] | None = None,
    on_attestation: Callable[[AcceptedResult, dict[str, Any]], None] | None = None,
) -> list[tuple[AcceptedResult, Path]]:
    """Fetch the results of the train ``text`` addressed to ``identity`` into ``out_dir``.

    The train is pinned and must be signed by the creator key its spec names, which must be
    among ``creator_keys``; then every result and the chain are verified and the results
    addressed to ``identity`` are opened into ``out_dir/<hop>-<station>/…`` (see
    :func:`~pht_airflow.results.fetch_results`). A verification failure writes nothing.
    ``progress`` is told the bytes read, ``on_result`` each result as it starts, and
    ``on_attestation`` each result's verified run attestation (its in-toto statement).
    """
    pinned = pin_reference(client, text)
    spec, digest = read_spec(client, pinned, check_expiry=False)
    signers = verify(client, pinned, creator_keys)
    if not any(s.key_id == spec.creator.key for s in signers):
        raise VerificationError(
            "the train is not signed by the creator key its spec names",
            digest=digest,
            key_id=spec.creator.key,
            check="creator",
        )
    return fetch_results(
        client,
        pinned,
        spec,
        identity,
        out_dir,
        max_bytes=max_bytes,
        progress=progress,
        on_result=on_result,
        on_attestation=on_attestation,
    )
