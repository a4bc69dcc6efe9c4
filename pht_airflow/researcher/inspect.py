"""Looking at a train in the registry before trusting it: pin the reference to a digest, read
the spec and who signed it, and show a reviewer the image itself (build history, entrypoint,
and the files in its layers).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidManifestError, VerificationError
from ..keys import PublicKey
from ..oci import Manifest, Reference, RegistryClient
from ..results import ChunkReader
from ..signing import Signer, verify
from ..spec import TrainSpec, read_spec


def pin_reference(client: RegistryClient, text: str) -> Reference:
    """Parse ``text`` and pin it to its manifest digest; every later step uses the digest.

    A reference that names a digest must resolve to that digest.
    """
    ref = Reference.parse(text)
    digest = client.resolve(ref.repository, ref.reference)
    if ref.digest and ref.digest != digest:
        raise VerificationError(
            f"{text} resolves to {digest}, not the digest it names",
            digest=ref.digest,
            check="digest",
        )
    return ref.with_digest(digest)


def check_signers(
    client: RegistryClient, train: Reference, keys: Sequence[PublicKey]
) -> tuple[list[Signer], str | None]:
    """Who among ``keys`` signed the pinned ``train``, without raising.

    Returns the verified signers and ``None``, or no signers and the reason none verified.
    With no keys nothing is checked: ``([], None)``.
    """
    if not keys:
        return [], None
    try:
        return verify(client, train, keys), None
    except VerificationError as exc:
        return [], str(exc)


@dataclass(frozen=True)
class TrainView:
    """A train as read from the registry: pinned reference, spec, and the signers checked."""

    reference: Reference
    spec: TrainSpec
    digest: str
    signers: list[Signer]
    signature_error: str | None


def read_train(
    client: RegistryClient,
    text: str,
    keys: Sequence[PublicKey] = (),
    *,
    check_expiry: bool = False,
) -> TrainView:
    """Pin ``text``, read its spec and check its signatures against ``keys`` (see
    :func:`check_signers`). An expired train is read unless ``check_expiry``."""
    pinned = pin_reference(client, text)
    spec, digest = read_spec(client, pinned, check_expiry=check_expiry)
    signers, problem = check_signers(client, pinned, keys)
    return TrainView(pinned, spec, digest, signers, problem)


@dataclass(frozen=True)
class ImageSummary:
    """What a reviewer reads of a train's image config.

    ``entrypoint`` and ``cmd`` are as the config states them (a list of strings, or absent);
    they are shown, never run.
    """

    manifest: Manifest
    history: list[str]
    entrypoint: object
    cmd: object


def describe_image(client: RegistryClient, train: Reference) -> ImageSummary:
    """Read the pinned ``train``'s manifest and config: its build steps and what it runs."""
    manifest = client.get_manifest(train.repository, train.reference)
    if manifest.config is None:
        raise InvalidManifestError(f"{train.name}@{manifest.digest} has no config")
    config = json.loads(client.get_blob(train.repository, manifest.config.digest))
    history = [str(step.get("created_by", "")) for step in config.get("history", [])]
    entry = config.get("config", {})
    return ImageSummary(manifest, history, entry.get("Entrypoint"), entry.get("Cmd"))


def image_files(
    client: RegistryClient, train: Reference, manifest: Manifest, limit: int
) -> list[str]:
    """List the files in an image's layers, sorted, at most ``limit`` and then a count of the
    rest. Streams each layer once; nothing is stored."""
    names: list[str] = []
    for layer in manifest.layers:
        stream = ChunkReader(client.open_blob(train.repository, layer.digest))
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                names.append(member.name + ("/" if member.isdir() else ""))
    names.sort()
    return names if len(names) <= limit else names[:limit] + [f"… {len(names) - limit} more"]
