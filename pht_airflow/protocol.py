"""The protocol's names and patterns, defined once (``shared/design/PROTOCOL.md``).

Every tag, media type, label, annotation and id rule that two parts of the system must agree
on lives here; the station, the central service and the CLI import it rather than spell it
again. Names that belong to one standard (OCI media types, cosign's payload type) live with the
code for that standard (``oci.media``, ``signing``).
"""

from __future__ import annotations

import re

# --- ids ------------------------------------------------------------------------------------

#: A station id: a DNS label (lower-case letters, digits, inner hyphens; 1-63 characters), so
#: that ``station-<id>`` is a valid registry project and a valid Airflow DAG-id suffix.
STATION_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def station_project(station_id: str) -> str:
    """The registry project a station owns unless the directory names another."""
    return f"station-{station_id}"


# --- projects and tags ----------------------------------------------------------------------

#: Where researchers push trains to submit them, and where finished trains wait.
INCOMING_PROJECT = "pht-incoming"
OUTBOX_PROJECT = "pht-outbox"

#: The tag of a train's image in every project it visits (the central service tags it last).
TRAIN_TAG = "train"

#: The tag a station gives its result: exactly ``result-<k>``. The router routes only these.
RESULT_TAG = re.compile(r"^result-(\d+)$")

#: Any tag that claims to hold hop ``k``'s result: ``result-<k>`` with an optional suffix.
#: Readers of the chain look at all of them, so a second valid result for one hop, however it
#: is tagged, is found and refused instead of silently ignored; copies carry all of them along.
RESULT_TAG_CLAIM = re.compile(r"^result-(\d+)(?:[-._][A-Za-z0-9_.-]*)?$")

#: cosign's tags for what it attaches to a digest: signatures, attestations, SBOMs.
COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(?:sig|att|sbom)")
#: cosign's signature tag only (``signing.signature_tag`` makes one from a digest).
SIGNATURE_TAG = re.compile(r"^sha256-[0-9a-f]{64}\.sig$")


def result_tag(hop: int) -> str:
    """The tag of hop ``hop``'s result."""
    return f"result-{hop}"


#: The tag the central service puts on a train in a station's project when hop ``k`` is
#: retried on request (``pht train retry ID --hop K``), the ``n``-th time: ``retry-<k>-<n>``,
#: pointing at the train's digest. A station starts one run per retry tag (webhook or
#: polling), and that run may repeat a hop the station completed before, once.
RETRY_TAG = re.compile(r"^retry-(\d{1,6})-(\d{1,6})$")


def retry_tag(hop: int, n: int) -> str:
    """The tag of the ``n``-th retry (from 1) of hop ``hop``."""
    return f"retry-{hop}-{n}"


# --- media types, labels and annotations ----------------------------------------------------

#: A sealed result: its encrypted layer, its config and its manifest's artifact type.
RESULT_MEDIA_TYPE = "application/vnd.pht.result.v1.tar+age"
RESULT_CONFIG_MEDIA_TYPE = "application/vnd.pht.result.config.v1+json"
RESULT_ARTIFACT_TYPE = "application/vnd.pht.result.v1"

#: The image label that carries a train's spec.
TRAIN_LABEL = "org.pht.train"

#: Annotations on a result manifest.
HOP_ANNOTATION = "org.pht.hop"
STATION_ANNOTATION = "org.pht.station"

#: Image labels that say which of a train's layers are its base image's (set by ``pht train
#: build``; part of the signed image config). ``org.pht.base.layers`` is how many of the
#: manifest's first layers the base image holds, ``org.pht.base.top-layer`` the diff id of the
#: last of them (a station checks it against the config's ``rootfs.diff_ids``). The OCI names
#: say which image it was (the digest only when the engine knows the base's manifest digest).
BASE_NAME_LABEL = "org.opencontainers.image.base.name"
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"
BASE_LAYERS_LABEL = "org.pht.base.layers"
BASE_TOP_LAYER_LABEL = "org.pht.base.top-layer"
