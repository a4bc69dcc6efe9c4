"""Looking at a train in the registry before trusting it: pin the reference to a digest, read
the spec and who signed it, and show a reviewer the image itself (build history, entrypoint,
and the files in its layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import VerificationError
from ..keys import PublicKey
from ..oci import Manifest, Reference, RegistryClient
from ..protocol import TRAIN_LABEL
from ..signing import Signer, verify
from ..spec import TrainSpec, read_spec
from ..traincode import (
    MAX_LAYER_HEADER_BYTES,
    MAX_LISTED_NAME,
    TrainCode,
    image_config,
    layer_members,
    read_train_code,
)

__all__ = [
    "MAX_LAYER_HEADER_BYTES",
    "MAX_LISTED_NAME",
    "ImageSummary",
    "TrainView",
    "check_signers",
    "describe_image",
    "image_files",
    "pin_reference",
    "read_train",
    "train_code",
]


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
    they are shown, never run. ``labels`` are the image's labels except the spec's own
    (shown as the spec). Every string here came from the registry: it is untrusted text, to
    be shown through :func:`pht_airflow.text.safe_text`.
    """

    manifest: Manifest
    history: list[str]
    entrypoint: object
    cmd: object
    labels: dict[str, str] = field(default_factory=dict)


def _step(step: object) -> str:
    """One build step as a reviewer reads it: the command, then its comment (a commit
    message, ``docker commit -m``) if it has one."""
    if not isinstance(step, dict):
        return str(step)
    text = str(step.get("created_by", ""))
    comment = step.get("comment")
    return f"{text}  # {comment}" if comment else text


def describe_image(client: RegistryClient, train: Reference) -> ImageSummary:
    """Read the pinned ``train``'s manifest and config: its build steps, what it runs and its
    labels. A config that is not the JSON object an image config is raises
    :class:`~pht_airflow.errors.InvalidManifestError`."""
    manifest = client.get_manifest(train.repository, train.reference)
    config = image_config(client, train, manifest)
    steps = config.get("history")
    history = [_step(step) for step in (steps if isinstance(steps, list) else [])]
    entry = config.get("config")
    entry = entry if isinstance(entry, dict) else {}
    labels = entry.get("Labels")
    shown = {
        str(k): str(v)
        for k, v in (labels.items() if isinstance(labels, dict) else ())
        if k != TRAIN_LABEL
    }
    return ImageSummary(manifest, history, entry.get("Entrypoint"), entry.get("Cmd"), shown)


def image_files(
    client: RegistryClient, train: Reference, manifest: Manifest, limit: int
) -> list[str]:
    """List the files in an image's layers, sorted, at most ``limit`` and then a count of the
    rest. Streams each layer once (:func:`~pht_airflow.traincode.layer_members`: bounded tar
    headers, the digest checked at the end); nothing is stored, at most ``2 * limit`` names
    are held (each cut to :data:`MAX_LISTED_NAME`). A layer that is not a readable tar
    raises :class:`~pht_airflow.errors.InvalidManifestError`.
    """
    names: list[str] = []
    total = 0
    for layer in manifest.layers:
        with layer_members(client, train, manifest, layer) as members:
            for member, _ in members:
                total += 1
                names.append(member.name[:MAX_LISTED_NAME] + ("/" if member.isdir() else ""))
                if len(names) > 2 * limit:
                    names.sort()
                    del names[limit:]
    names.sort()
    del names[limit:]
    return names if total <= limit else names + [f"… {total - limit} more"]


def train_code(
    client: RegistryClient, train: Reference, manifest: Manifest, **limits: int
) -> TrainCode:
    """What the pinned ``train`` adds on top of its base image (its own layers' files, its
    small text files inline): :func:`pht_airflow.traincode.read_train_code`."""
    return read_train_code(client, train, manifest, **limits)
