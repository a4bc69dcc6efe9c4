"""Air-gapped transport: a train with its signatures and results as one OCI layout archive.

:func:`export_bundle` pins a train, and writes it, its cosign signature/attestation/SBOM
tags, every ``result-<k>`` claim whose subject is the train, and their cosign tags into an OCI
image layout tar (:mod:`pht_airflow.oci.layout`), each blob streamed from the registry into
the archive. The archive is written beside ``out`` and renamed into place only when complete.

:func:`import_bundle` treats the archive as hostile and verifies everything before a single
byte is pushed:

1. the layout itself (:meth:`LayoutReader.verify`: names, sizes, every blob's digest);
2. the train: its spec parses, it is signed by the creator key the spec names, which the
   importer trusts, and by at least ``required_approvals`` distinct trusted approver keys
   other than the creator's (the rules of a station's Verify step);
3. every result in the bundle: the chain rules of :func:`~pht_airflow.results.verify_chain`
   (subject, config, the route station's signature, the ``previous`` links), and every
   ``result-*`` tag must be one of the accepted results, so an extra or unsigned result is
   refused rather than carried along;
4. nothing else: every tag is the train, an accepted result, or a cosign tag of one of them.

Only then is it pushed into ``PROJECT/<train id>`` of the target registry: blobs (streamed from
the archive, digest-checked by the upload), manifests by digest, then the tags, the train's
last, so a station that watches its project sees a complete train.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PhtError, VerificationError
from ..keys import PublicKey
from ..oci import OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest, Reference, RegistryClient
from ..oci.layout import LayoutError, LayoutReader, LayoutRegistryView, LayoutWriter
from ..oci.media import INDEX_TYPES
from ..oci.reference import check_registry, check_repository
from ..protocol import COSIGN_TAG, RESULT_TAG_CLAIM, TRAIN_TAG
from ..results import AcceptedResult, find_results, verify_chain
from ..signing import Signer, signature_tag, verify
from ..spec import MAX_CONFIG_BYTES, TrainSpec, read_spec
from ..text import safe_text
from .inspect import pin_reference

__all__ = [
    "BundleError",
    "BundleTrust",
    "ExportSummary",
    "ImportSummary",
    "export_bundle",
    "import_bundle",
    "parse_target",
]

Progress = Callable[[int], None]
_COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
_TARGET = re.compile(r"([^/]+)/(.+)")


class BundleError(VerificationError):
    """A bundle that fails verification on import (nothing of it was pushed)."""


@dataclass(frozen=True)
class BundleTrust:
    """What the importer trusts: creator keys, approver keys, how many approvals it wants."""

    creators: Sequence[PublicKey]
    approvers: Sequence[PublicKey] = ()
    required_approvals: int = 1


@dataclass
class ExportSummary:
    train: str
    digest: str
    tags: list[str]
    bytes: int


@dataclass
class ImportSummary:
    reference: Reference
    train_id: str
    creator: Signer
    approvers: list[Signer]
    results: list[AcceptedResult]
    tags: list[str]
    pushed_blobs: int = 0
    reused_blobs: int = 0
    extra: list[str] = field(default_factory=list)


def _cosign_tags(digest: str) -> list[str]:
    base = signature_tag(digest)[: -len(".sig")]
    return [base + suffix for suffix in _COSIGN_SUFFIXES]


# --- export ---------------------------------------------------------------------------------


def _write_manifest(
    client: RegistryClient,
    repository: str,
    writer: LayoutWriter,
    manifest: Manifest,
    progress: Progress | None,
    depth: int = 0,
) -> None:
    if manifest.media_type in INDEX_TYPES:
        if depth > 3:
            raise PhtError(f"{repository}: image indexes nest too deep")
        for child in manifest.manifests:
            if not writer.has_blob(child.digest):
                sub = client.get_manifest(repository, child.digest)
                _write_manifest(client, repository, writer, sub, progress, depth + 1)
    else:
        for desc in [manifest.config, *manifest.layers]:
            if desc is None or writer.has_blob(desc.digest):
                continue
            writer.add_blob(
                desc.digest,
                desc.size,
                client.open_blob(repository, desc.digest, max_bytes=desc.size, progress=progress),
            )
    writer.add_manifest(manifest)


def _wrapper(client: RegistryClient, repository: str, train: Manifest) -> Manifest:
    """An OCI index holding only ``train`` (a Docker-typed manifest) with its platform.

    skopeo and other OCI-layout readers address only OCI-typed ``index.json`` entries by
    name; converting the train would change the digest its signatures are for, so the
    ``train`` tag names this wrapper instead, which import unwraps and never pushes.
    """
    platform: dict[str, str] = {}
    if train.config is not None and train.config.size <= MAX_CONFIG_BYTES:
        raw = client.get_blob(repository, train.config.digest, max_bytes=MAX_CONFIG_BYTES)
        with contextlib.suppress(ValueError, AttributeError, RecursionError):
            config = json.loads(raw)
            for key in ("architecture", "os"):
                if isinstance(config.get(key), str):
                    platform[key] = config[key]
    child = train.descriptor().to_dict()
    if len(platform) == 2:
        child["platform"] = platform
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}
    return Manifest.from_raw(json.dumps(index, sort_keys=True).encode(), OCI_INDEX)


def _unwrap(layout: LayoutReader) -> tuple[Descriptor, str | None]:
    """The train's descriptor, and the digest of the wrapper index around it, if any."""
    desc = layout.tags.get(TRAIN_TAG)
    if desc is None:
        raise _refuse(f"the bundle has no {TRAIN_TAG!r} tag")
    if desc.media_type not in INDEX_TYPES:
        return desc, None
    children = layout.manifest(desc.digest, desc.media_type).manifests
    if len(children) != 1:
        raise _refuse(
            f"the bundle's {TRAIN_TAG!r} tag names an index of {len(children)} manifests; "
            "a train is one image"
        )
    return children[0], desc.digest


def export_bundle(
    client: RegistryClient, text: str, out: Path, *, progress: Progress | None = None
) -> ExportSummary:
    """Write the train ``text`` with its signatures and results to the OCI archive ``out``."""
    train = pin_reference(client, text)
    assert train.digest is not None  # noqa: S101 - pinned
    repository = train.repository
    tags = set(client.list_tags(repository))
    wanted: list[tuple[str, str]] = [(TRAIN_TAG, train.digest)]
    attached = [train.digest]
    for tag in sorted(tags):
        if not RESULT_TAG_CLAIM.match(tag):
            continue
        manifest = client.get_manifest(repository, tag)
        if manifest.subject is not None and manifest.subject.digest == train.digest:
            wanted.append((tag, manifest.digest))
            attached.append(manifest.digest)
    for digest in attached:
        wanted.extend((t, "") for t in _cosign_tags(digest) if t in tags)
    out = Path(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = LayoutWriter(fh)
            for tag, digest in wanted:
                manifest = client.get_manifest(repository, digest or tag)
                if not writer.has_blob(manifest.digest):
                    _write_manifest(client, repository, writer, manifest, progress)
                if tag == TRAIN_TAG and manifest.media_type != OCI_MANIFEST:
                    manifest = _wrapper(client, repository, manifest)
                    writer.add_manifest(manifest)
                writer.tag(tag, manifest.descriptor())
            writer.close()
            size = fh.tell()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return ExportSummary(str(train), train.digest, [t for t, _ in wanted], size)


# --- import ---------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, str]:
    """``REGISTRY/PROJECT`` -> (registry, project), both validated."""
    m = _TARGET.fullmatch(text.strip())
    if not m:
        raise PhtError(f"--to must be REGISTRY/PROJECT, not {safe_text(text, limit=100)}")
    registry, project = m.groups()
    return check_registry(registry, text), check_repository(project, text)


def _refuse(
    reason: str,
    digest: str | None = None,
    key_id: str | None = None,
    details: Sequence[str] = (),
) -> BundleError:
    return BundleError(
        f"bundle refused: {reason}", digest=digest, key_id=key_id, check="bundle", details=details
    )


def _verify_train(
    view: RegistryClient, ref: Reference, spec: TrainSpec, trust: BundleTrust
) -> tuple[Signer, list[Signer]]:
    """The creator and approver rules of a station's Verify step, on the bundle."""
    keys = {k.key_id: k for k in [*trust.creators, *trust.approvers]}
    creator_ids = {k.key_id for k in trust.creators}
    try:
        signers = verify(view, ref, list(keys.values()))
    except VerificationError as exc:
        raise _refuse(f"the train's signatures: {exc}") from exc
    creator = next(
        (s for s in signers if s.key_id in creator_ids and s.key_id == spec.creator.key), None
    )
    if creator is None:
        why = (
            "the spec's creator key is not among the trusted creator keys"
            if spec.creator.key not in creator_ids
            else "the spec's creator has not signed it"
        )
        raise _refuse(f"no creator signature by a trusted key: {why}", ref.digest, spec.creator.key)
    approver_ids = {k.key_id for k in trust.approvers} - {creator.key_id}
    approvals: dict[str, Signer] = {}
    for s in signers:
        if s.key_id in approver_ids:
            approvals.setdefault(s.key_id, s)
    if len(approvals) < trust.required_approvals:
        raise _refuse(
            f"{len(approvals)} approval(s) by trusted approver keys, "
            f"{trust.required_approvals} required",
            ref.digest,
        )
    return creator, list(approvals.values())


def _verify_results(view: RegistryClient, ref: Reference, spec: TrainSpec) -> list[AcceptedResult]:
    candidates = find_results(view, ref)
    if not candidates:
        return []
    top = max(c.tag_hop for c in candidates)
    if top >= len(spec.route):
        raise _refuse(f"result tag for hop {top}, but the route has {len(spec.route)} hops")
    upto = top + 1 if spec.mode == "sequential" else None
    try:
        accepted = verify_chain(view, ref, spec, upto=upto, candidates=candidates)
    except VerificationError as exc:
        raise _refuse(f"the result chain: {exc}", details=exc.details) from exc
    good = {a.digest for a in accepted}
    for c in candidates:
        if c.manifest.digest not in good:
            raise _refuse(
                f"result tag {safe_text(c.tag, limit=140)} ({c.manifest.digest}) is not an "
                "accepted result of the chain (unsigned, or a second result for its hop)",
                c.manifest.digest,
            )
    return accepted


def _check_tags(layout: LayoutReader, train_digest: str, results: list[AcceptedResult]) -> None:
    result_digests = {a.digest for a in results}
    allowed = set()
    for digest in [train_digest, *result_digests]:
        allowed.update(_cosign_tags(digest))
    for tag, desc in layout.tags.items():
        if tag == TRAIN_TAG:
            continue
        if RESULT_TAG_CLAIM.match(tag) and desc.digest in result_digests:
            continue
        if COSIGN_TAG.fullmatch(tag) and tag in allowed:
            continue
        raise _refuse(
            f"tag {safe_text(tag, limit=140)} is neither the train, a verified result, "
            "nor a signature or attestation of one of them"
        )


def import_bundle(
    path: Path,
    client: RegistryClient,
    project: str,
    trust: BundleTrust,
    *,
    progress: Progress | None = None,
    on_verified: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Verify the bundle at ``path`` against ``trust``, then push it to ``project/<train id>``.

    Raises :class:`BundleError` (or another :class:`PhtError` for an unreadable archive)
    naming what failed; in that case nothing was pushed.
    """
    check_repository(project)
    with LayoutReader(path) as layout, LayoutRegistryView(layout, client.registry) as view:
        try:
            layout.verify()
        except LayoutError as exc:
            raise _refuse(str(exc)) from exc
        train_desc, wrapper = _unwrap(layout)
        probe = Reference(client.registry, f"{project}/bundle", digest=train_desc.digest)
        try:
            spec, _ = read_spec(view, probe, check_expiry=False)
        except PhtError as exc:
            raise _refuse(f"the train's spec: {exc}", train_desc.digest) from exc
        try:
            repository = check_repository(f"{project}/{spec.id}")
        except PhtError as exc:
            raise _refuse(f"the train id is not a repository name: {exc}") from exc
        ref = Reference(client.registry, repository, digest=train_desc.digest)
        creator, approvers = _verify_train(view, ref, spec, trust)
        results = _verify_results(view, ref, spec)
        _check_tags(layout, train_desc.digest, results)
        summary = ImportSummary(
            reference=Reference(client.registry, repository, tag=TRAIN_TAG),
            train_id=spec.id,
            creator=creator,
            approvers=approvers,
            results=results,
            tags=sorted(layout.tags),
        )
        if on_verified is not None:
            on_verified(summary)
        _push(layout, client, repository, summary, train_desc.digest, wrapper, progress)
    return summary


def _push(
    layout: LayoutReader,
    client: RegistryClient,
    repository: str,
    summary: ImportSummary,
    train_digest: str,
    wrapper: str | None,
    progress: Progress | None,
) -> None:
    manifests = [m for m in layout.manifests_in_order() if m.digest != wrapper]
    for manifest in manifests:
        for desc in layout.blobs_of(manifest):
            if client.blob_size(repository, desc.digest) is not None:
                summary.reused_blobs += 1
                continue
            client.upload_blob(
                repository,
                layout.open_blob(desc.digest),
                media_type=desc.media_type,
                expected_digest=desc.digest,
                progress=progress,
            )
            summary.pushed_blobs += 1
    # Manifests by digest: the train before what refers to it (results name it as subject).
    ordered = sorted(manifests, key=lambda m: m.digest != train_digest)
    for manifest in ordered:
        client.put_manifest(repository, manifest.digest, manifest.raw, manifest.media_type)
    # Tags: signatures and attestations, then results, the train last.
    names = sorted(layout.tags, key=lambda t: (t == TRAIN_TAG, bool(RESULT_TAG_CLAIM.match(t)), t))
    for tag in names:
        digest = train_digest if tag == TRAIN_TAG else layout.tags[tag].digest
        manifest = layout.manifest(digest)
        client.put_manifest(repository, tag, manifest.raw, manifest.media_type)
