"""OCI and Docker media types, content descriptors and manifests.

Follows the OCI image spec (``descriptor.md``, ``manifest.md``, ``image-index.md``) and
the Docker image manifest v2 schema 2, which share the descriptor shape. Objects here are
valid by construction: a :class:`Manifest` always holds bytes whose SHA-256 is its digest
and that parse as a JSON object with well-formed descriptors.

The Docker engine reads the same bytes with Go's ``encoding/json``, which matches keys to
fields ignoring case. A manifest, descriptor or image config that spells one of its fields
in another case (``"Layers"``, ``"cmd"``; :func:`~pht_airflow.strictjson.check_fields`) is
refused, as is one that names a key twice: what a station checks and shows is what the engine
runs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .. import strictjson
from ..errors import InvalidManifestError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

MANIFEST_TYPES: tuple[str, ...] = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
"""The manifest and index media types we understand, in preference order (used as Accept)."""

INDEX_TYPES: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST)

#: The fields Go structs give a manifest or index (OCI and Docker schema 2), a descriptor and
#: a platform: spelt in another case, the engine would still read them.
MANIFEST_FIELDS = (
    "schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations",
    "manifests",
)  # fmt: skip
DESCRIPTOR_FIELDS = (
    "mediaType", "digest", "size", "urls", "annotations", "data", "artifactType", "platform",
)  # fmt: skip
PLATFORM_FIELDS = ("architecture", "os", "os.version", "os.features", "variant", "features")
#: The image config's fields (Docker's image and container config, the OCI image config).
IMAGE_CONFIG_FIELDS = (
    "id", "parent", "comment", "created", "container", "container_config", "docker_version",
    "author", "config", "architecture", "variant", "os", "os.version", "os.features", "size",
    "rootfs", "history",
)  # fmt: skip
CONTAINER_CONFIG_FIELDS = (
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
    "ExposedPorts", "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped",
    "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled", "MacAddress", "OnBuild",
    "Labels", "StopSignal", "StopTimeout", "Shell",
)  # fmt: skip
HEALTHCHECK_FIELDS = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")
ROOTFS_FIELDS = ("type", "diff_ids")
HISTORY_FIELDS = ("created", "author", "created_by", "comment", "empty_layer")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest manifest we read or write (distribution's own limit is 4 MiB)."""

# OCI image spec, descriptor.md "Digests": algorithm ":" encoded. We accept any registered
# algorithm name in a descriptor, but sha256 (the only one we can verify) must be 64 hex.
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest (``sha256:<hex>``) of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_sha256_digest(text: str) -> bool:
    """True if ``text`` is a well-formed ``sha256:`` digest (64 lowercase hex digits)."""
    return _SHA256_RE.fullmatch(text) is not None


def _check_digest(value: object, where: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise InvalidManifestError(f"{where}: digest {value!r} is not of the form algorithm:hex")
    if value.startswith("sha256:") and not _SHA256_RE.fullmatch(value):
        raise InvalidManifestError(f"{where}: sha256 digest {value!r} is not 64 lowercase hex")
    return value


def _check_annotations(value: object, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidManifestError(f"{where}: annotations must map strings to strings")
    return dict(value)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob or manifest is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The descriptor as OCI JSON (``mediaType``, ``digest``, ``size``, optional keys)."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations is not None:
            d["annotations"] = dict(self.annotations)
        if self.artifact_type is not None:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_dict(cls, d: object, *, where: str = "descriptor") -> Descriptor:
        """Parse OCI descriptor JSON; raise :class:`InvalidManifestError` naming the field."""
        if not isinstance(d, dict):
            raise InvalidManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
        try:
            strictjson.check_fields(d, DESCRIPTOR_FIELDS)
            if isinstance(d.get("platform"), dict):
                strictjson.check_fields(d["platform"], PLATFORM_FIELDS, "in platform")
        except strictjson.StrictJSONError as exc:
            raise InvalidManifestError(f"{where} is {exc}") from None
        media_type = d.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifestError(f"{where}: mediaType is missing or not a string")
        digest = _check_digest(d.get("digest"), where)
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifestError(f"{where}: size {size!r} is not a non-negative integer")
        artifact_type = d.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise InvalidManifestError(f"{where}: artifactType must be a string")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=_check_annotations(d.get("annotations"), where),
            artifact_type=artifact_type,
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest (or index) exactly as stored: its media type, digest and raw bytes.

    ``digest`` is the SHA-256 of ``raw`` as served; never re-serialise ``data`` to sign or
    push it, use ``raw``. Construction checks the digest and the JSON structure.
    """

    media_type: str
    digest: str
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(
                f"manifest {self.digest} is {len(self.raw)} bytes, over the 4 MiB limit"
            )
        actual = sha256_digest(self.raw)
        if self.digest != actual:
            raise InvalidManifestError(
                f"manifest bytes hash to {actual}, not to the stated digest {self.digest}"
            )
        data = self.data
        # Touch every structured field once so a malformed manifest fails here, not later.
        _ = (self.config, self.layers, self.subject, self.annotations, self.artifact_type)
        if self.media_type in INDEX_TYPES:
            _ = self.manifests
        declared = data.get("mediaType")
        if declared is not None and declared != self.media_type:
            raise InvalidManifestError(
                f"manifest {self.digest} declares mediaType {declared!r} "
                f"but was served as {self.media_type!r}"
            )

    @classmethod
    def from_raw(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        """Build a manifest from bytes; the media type defaults to the JSON ``mediaType``."""
        if media_type is None:
            try:
                data = strictjson.loads(raw)
            except strictjson.StrictJSONError as exc:
                raise InvalidManifestError(f"manifest is {exc}") from None
            media_type = data.get("mediaType") if isinstance(data, dict) else None
            if not isinstance(media_type, str):
                raise InvalidManifestError("manifest has no mediaType and none was given")
        return cls(media_type=media_type, digest=sha256_digest(raw), raw=raw)

    @property
    def data(self) -> dict[str, Any]:
        """The parsed JSON (a fresh copy on every access)."""
        try:
            data = strictjson.loads(self.raw)
            if isinstance(data, dict):
                strictjson.check_fields(data, MANIFEST_FIELDS)
        except strictjson.StrictJSONError as exc:
            raise InvalidManifestError(f"manifest {self.digest} is {exc}") from None
        if not isinstance(data, dict):
            raise InvalidManifestError(f"manifest {self.digest} is not a JSON object")
        return data

    def _descriptor_field(self, key: str) -> Descriptor | None:
        value = self.data.get(key)
        if value is None:
            return None
        return Descriptor.from_dict(value, where=f"manifest {self.digest} {key}")

    def _descriptor_list(self, key: str) -> list[Descriptor]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidManifestError(f"manifest {self.digest}: {key} is not a list")
        return [
            Descriptor.from_dict(v, where=f"manifest {self.digest} {key}[{i}]")
            for i, v in enumerate(value)
        ]

    @property
    def config(self) -> Descriptor | None:
        """The config descriptor (None for an index)."""
        return self._descriptor_field("config")

    @property
    def layers(self) -> list[Descriptor]:
        """The layer descriptors, in order ([] for an index)."""
        return self._descriptor_list("layers")

    @property
    def manifests(self) -> list[Descriptor]:
        """For an index or manifest list: the child manifest descriptors."""
        return self._descriptor_list("manifests")

    @property
    def subject(self) -> Descriptor | None:
        """The ``subject`` descriptor (the manifest this artifact refers to), if any."""
        return self._descriptor_field("subject")

    @property
    def annotations(self) -> dict[str, str]:
        """The manifest's annotations ({} if none)."""
        return _check_annotations(self.data.get("annotations"), f"manifest {self.digest}") or {}

    @property
    def artifact_type(self) -> str | None:
        """``artifactType`` if set (OCI 1.1 artifacts)."""
        value = self.data.get("artifactType")
        if value is not None and not isinstance(value, str):
            raise InvalidManifestError(f"manifest {self.digest}: artifactType must be a string")
        return value

    def descriptor(self) -> Descriptor:
        """A descriptor pointing at this manifest (for ``subject`` or an index)."""
        return Descriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=len(self.raw),
            artifact_type=self.artifact_type,
        )


def parse_image_config(raw: bytes) -> dict[str, Any]:
    """An image config blob parsed strictly, as the engine will read it: a JSON object with
    no key named twice and none of its fields (nor those of its ``config``,
    ``container_config``, health check, ``rootfs`` and ``history`` entries) spelt in another
    case. Raise :class:`~pht_airflow.strictjson.StrictJSONError` (its text completes "the
    image config is …")."""
    config = strictjson.loads(raw)
    if not isinstance(config, dict):
        raise strictjson.StrictJSONError("not a JSON object")
    strictjson.check_fields(config, IMAGE_CONFIG_FIELDS)
    for name in ("config", "container_config"):
        inner = config.get(name)
        if isinstance(inner, dict):
            strictjson.check_fields(inner, CONTAINER_CONFIG_FIELDS, f"in {name}")
            if isinstance(inner.get("Healthcheck"), dict):
                strictjson.check_fields(
                    inner["Healthcheck"], HEALTHCHECK_FIELDS, f"in {name}.Healthcheck"
                )
    if isinstance(config.get("rootfs"), dict):
        strictjson.check_fields(config["rootfs"], ROOTFS_FIELDS, "in rootfs")
    history = config.get("history")
    for i, entry in enumerate(history if isinstance(history, list) else []):
        if isinstance(entry, dict):
            strictjson.check_fields(entry, HISTORY_FIELDS, f"in history[{i}]")
    return config
