"""Looking at a train in the registry before trusting it: pin the reference to a digest, read
the spec and who signed it, and show a reviewer the image itself (build history, entrypoint,
and the files in its layers).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidManifestError, PhtError, VerificationError
from ..keys import PublicKey
from ..oci import Manifest, Reference, RegistryClient
from ..protocol import TRAIN_LABEL
from ..results import ChunkReader
from ..signing import Signer, verify
from ..spec import MAX_CONFIG_BYTES, TrainSpec, read_spec


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
    where = f"{train.name}@{manifest.digest}"
    if manifest.config is None:
        raise InvalidManifestError(f"{where} has no config")
    if manifest.config.size > MAX_CONFIG_BYTES:
        raise InvalidManifestError(
            f"the image config of {where} is larger than {MAX_CONFIG_BYTES} bytes"
        )
    raw = client.get_blob(train.repository, manifest.config.digest, max_bytes=MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):  # also UnicodeDecodeError, nesting too deep
        raise InvalidManifestError(f"the image config of {where} is not JSON") from None
    if not isinstance(config, dict):
        raise InvalidManifestError(f"the image config of {where} is not a JSON object")
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


#: The largest extended header (PAX or GNU long name) a train layer may carry when its files
#: are listed. tarfile reads such a header whole into memory; real ones are a few hundred bytes.
MAX_LAYER_HEADER_BYTES = 64 * 1024
#: Longest file name kept for the listing (a PAX path may be longer; it is cut).
MAX_LISTED_NAME = 4096

_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, before tarfile reads it, an extended header larger than
    :data:`MAX_LAYER_HEADER_BYTES` and a GNU sparse member (whose extension blocks tarfile
    collects without bound). Hooks tarfile's per-member processing, where those reads happen."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_HEADERS and self.size > MAX_LAYER_HEADER_BYTES:
            raise _LayerRefused(
                f"an extended tar header of {self.size} bytes (at most "
                f"{MAX_LAYER_HEADER_BYTES} are read)"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _LayerRefused("a GNU sparse member")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


class _LayerRefused(Exception):
    """A layer the listing will not read (message says why); becomes InvalidManifestError."""


def image_files(
    client: RegistryClient, train: Reference, manifest: Manifest, limit: int
) -> list[str]:
    """List the files in an image's layers, sorted, at most ``limit`` and then a count of the
    rest. Streams each layer once; nothing is stored, at most ``2 * limit`` names are held
    (each cut to :data:`MAX_LISTED_NAME`), and an extended header over
    :data:`MAX_LAYER_HEADER_BYTES` or a GNU sparse member is refused before it is read.
    A layer that is not a readable tar raises :class:`~pht_airflow.errors.InvalidManifestError`.
    """
    names: list[str] = []
    total = 0
    for layer in manifest.layers:
        stream = ChunkReader(client.open_blob(train.repository, layer.digest))
        try:
            with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedTarInfo) as archive:
                for member in archive:
                    total += 1
                    names.append(member.name[:MAX_LISTED_NAME] + ("/" if member.isdir() else ""))
                    if len(names) > 2 * limit:
                        names.sort()
                        del names[limit:]
        except PhtError:
            raise
        except _LayerRefused as exc:
            raise InvalidManifestError(
                f"layer {layer.digest} of {train.name}@{manifest.digest} holds {exc}; "
                "refusing to list it"
            ) from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise InvalidManifestError(
                f"layer {layer.digest} of {train.name}@{manifest.digest} is not a readable "
                f"tar archive ({type(exc).__name__})"
            ) from None
    names.sort()
    del names[limit:]
    return names if total <= limit else names + [f"… {total - limit} more"]
