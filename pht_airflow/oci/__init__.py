"""The OCI side: references, media types and manifests, and a distribution API client."""

from .client import CHUNK, RegistryClient
from .media import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    parse_image_config,
    sha256_digest,
)
from .reference import Reference, is_digest

__all__ = [
    "CHUNK",
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "Manifest",
    "Reference",
    "RegistryClient",
    "is_digest",
    "parse_image_config",
    "sha256_digest",
]
