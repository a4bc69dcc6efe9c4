"""Registry admin for a CNCF distribution registry (``docker-registry``).

:class:`PlainRegistryAdmin` works through :class:`~pht_airflow.oci.RegistryClient`. A
"project" is only a repository prefix there, a plain registry has no accounts to give a
robot, and its webhooks are its own config file's ``notifications`` section; those
operations say so (:class:`~pht_airflow.errors.NotSupportedError`). Copies use
cross-repository blob mounts, and fall back to a streamed copy (counted in the report) only
for blobs the registry refuses to mount.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

from ...attestation import attestation_tag
from ...errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    RegistryError,
)
from ...oci import RegistryClient
from ...oci.media import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Manifest
from ...oci.reference import check_digest, check_repository
from ...protocol import COSIGN_TAG, TRAIN_TAG
from ...signing import signature_tag
from .admin import (
    _MAX_PAGES,
    _PAGE_SIZE,
    CopyReport,
    Ensured,
    PayloadFormat,
    RobotAccount,
    _result_tags,
)

log = logging.getLogger(__name__)

_FOREIGN_LAYER = "foreign"
_MAX_INDEX_DEPTH = 4


class PlainRegistryAdmin:
    """Registry admin for a CNCF distribution registry (``docker-registry``).

    Projects are repository prefixes; accounts and webhooks live in the registry's own
    config (``auth`` and ``notifications``). Copies mount blobs across repositories.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"PlainRegistryAdmin({self.client.registry!r})"

    # --- projects, accounts, webhooks -----------------------------------------------

    def ensure_project(self, name: str) -> Ensured:
        """Nothing to create: on a plain registry a project is only a repository prefix."""
        check_repository(name)
        log.debug(
            "plain registry %s: project %s is a repository prefix", self.client.registry, name
        )
        return "not needed"

    def create_robot(self, project: str, name: str) -> RobotAccount:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: it has no "
            f"accounts, so there is no robot {name!r} for project {project!r} to create. Give "
            "each station credentials in the registry's own auth (htpasswd or a token "
            "service whose access rules limit it to its project)."
        )

    def find_robot(self, project: str, name: str) -> RobotAccount | None:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: it has no "
            f"accounts, so there is no robot {name!r} for project {project!r} to look up."
        )

    def robot_secret_works(self, project: str, robot_name: str, secret: str) -> bool:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: it has no "
            "robot accounts to check a secret against."
        )

    def delete_robot(self, project: str, name: str) -> str | None:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: it has no "
            "robot API, so nothing was revoked there. Remove the station's credentials from "
            "the registry's own auth yourself: its line in the htpasswd file (`auth: "
            "htpasswd: path:`), or its entries in the token service's access rules for "
            f"{project!r}/*, and restart or reload the registry or token service."
        )

    def ensure_webhook(
        self,
        project: str,
        endpoint_url: str,
        auth_header: str,
        payload_format: PayloadFormat = "Default",
    ) -> Ensured:
        raise NotSupportedError(
            f"registry {self.client.registry} is a plain distribution registry: webhooks are "
            "not managed through its API. Add the endpoint to the `notifications: endpoints:` "
            "section of the registry's config file (url, headers: {Authorization: [...]}) and "
            f"filter on the repository prefix {project!r}/ in the receiver; the payload is "
            "always distribution's event envelope, never Harbor's "
            f"{payload_format!r} format."
        )

    # --- copies ---------------------------------------------------------------------

    def copy_train(self, src_repository: str, dst_repository: str, train_digest: str) -> CopyReport:
        """Copy the train, its signatures, its results and theirs; mount, never re-upload.

        Raises :class:`NotFoundError` if ``train_digest`` is not in ``src_repository``, and
        :class:`ConflictError` if the destination already tags another manifest as
        ``train`` or as one of the results, or holds a ``.sig`` manifest with signatures
        the source's lacks (one that only gains signatures is replaced).
        """
        check_repository(src_repository)
        check_repository(dst_repository)
        check_digest(train_digest)
        if src_repository == dst_repository:
            raise ConfigError(f"cannot copy {src_repository} onto itself")
        client = self.client
        try:
            train = client.get_manifest(src_repository, train_digest)
        except NotFoundError as exc:
            raise NotFoundError(
                f"registry {client.registry}: train {train_digest} is not in "
                f"{src_repository}, nothing to copy to {dst_repository}",
                status=404,
                url=exc.url,
            ) from None
        report = CopyReport(src_repository, dst_repository, train_digest)
        plan: list[tuple[Manifest, str]] = [(train, TRAIN_TAG)]
        tags = set(client.list_tags(src_repository))
        plan.extend(self._signature(src_repository, train.digest, tags))
        for tag in _result_tags(tags):
            result = self._maybe_manifest(src_repository, tag)
            if result is None:
                continue
            if result.subject is None or result.subject.digest != train_digest:
                subject = result.subject.digest if result.subject else "none"
                log.debug("%s:%s is not a result of %s (subject %s)", src_repository, tag,
                          train_digest, subject)  # fmt: skip
                continue
            plan.append((result, tag))
            plan.extend(self._signature(src_repository, result.digest, tags))
        # The train's own tag goes last: a station starts its hop when ``train`` appears in
        # its project (the registry's webhook), so everything the hop verifies (signatures,
        # earlier results) must already be there by then.
        plan.append(plan.pop(0))
        seen: set[str] = set()
        for manifest, tag in plan:
            self._copy_tagged(src_repository, dst_repository, manifest, tag, report, seen)
        log.info("copied train %s", report)
        return report

    def _maybe_manifest(self, repository: str, reference: str) -> Manifest | None:
        try:
            return self.client.get_manifest(repository, reference)
        except NotFoundError:
            log.warning("%s:%s disappeared while copying; skipped", repository, reference)
            return None

    def _signature(
        self, repository: str, digest: str, tags: set[str]
    ) -> Iterator[tuple[Manifest, str]]:
        # The signatures and the run attestations (cosign's .sig and .att) travel together.
        for tag in (signature_tag(digest), attestation_tag(digest)):
            if tag in tags:
                manifest = self._maybe_manifest(repository, tag)
                if manifest is not None:
                    yield manifest, tag

    def _copy_tagged(
        self,
        src: str,
        dst: str,
        manifest: Manifest,
        tag: str,
        report: CopyReport,
        seen: set[str],
    ) -> None:
        client = self.client
        try:
            current: str | None = client.resolve(dst, tag)
        except NotFoundError:
            current = None
        report.tags.append(tag)
        if current == manifest.digest:
            report.manifests_present += 1
            return
        if current is not None:
            self._check_retag(dst, tag, current, manifest)
        self._copy_content(src, dst, manifest, report, seen, depth=0)
        client.put_manifest(dst, tag, manifest.raw, manifest.media_type)
        report.manifests += 1

    def _check_retag(self, dst: str, tag: str, current: str, new: Manifest) -> None:
        """A tag in ``dst`` points elsewhere: only a signature manifest that keeps every
        signature already there may replace it."""
        if COSIGN_TAG.fullmatch(tag):
            old = self.client.get_manifest(dst, current)
            kept = {(d.digest, tuple(sorted((d.annotations or {}).items()))) for d in new.layers}
            if all(
                (d.digest, tuple(sorted((d.annotations or {}).items()))) in kept for d in old.layers
            ):
                log.info("%s:%s gains signatures (%s -> %s)", dst, tag, current, new.digest)
                return
            raise ConflictError(
                f"registry {self.client.registry}: {dst}:{tag} holds signatures that "
                f"{new.digest} lacks; refusing to drop them (merge or delete it first)"
            )
        raise ConflictError(
            f"registry {self.client.registry}: {dst}:{tag} already points at {current}, not "
            f"at {new.digest}; refusing to replace it (delete the destination tag first if "
            "that is intended)"
        )

    def _copy_content(
        self,
        src: str,
        dst: str,
        manifest: Manifest,
        report: CopyReport,
        seen: set[str],
        depth: int,
    ) -> None:
        """Make everything ``manifest`` refers to exist in ``dst`` (children, blobs)."""
        if manifest.media_type in INDEX_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                raise RegistryError(f"index {manifest.digest} nests deeper than {depth} levels")
            for child in manifest.manifests:
                if child.digest in seen or child.media_type not in MANIFEST_TYPES:
                    continue
                seen.add(child.digest)
                try:
                    if self.client.resolve(dst, child.digest) == child.digest:
                        report.manifests_present += 1
                        continue
                except NotFoundError:
                    pass
                child_manifest = self.client.get_manifest(src, child.digest)
                self._copy_content(src, dst, child_manifest, report, seen, depth + 1)
                self.client.put_manifest(
                    dst, child.digest, child_manifest.raw, child_manifest.media_type
                )
                report.manifests += 1
            return
        for blob in [manifest.config, *manifest.layers]:
            if blob is None or blob.digest in seen:
                continue
            seen.add(blob.digest)
            if _FOREIGN_LAYER in blob.media_type:
                continue  # non-distributable layer: the registry never held its bytes
            self._copy_blob(src, dst, blob, report)

    def _copy_blob(self, src: str, dst: str, blob: Descriptor, report: CopyReport) -> None:
        client = self.client
        if client.mount_blob(dst, blob.digest, src):
            report.blobs_mounted += 1
            return
        log.info(
            "registry %s declined to mount %s from %s into %s; streaming its %d bytes",
            client.registry, blob.digest, src, dst, blob.size,
        )  # fmt: skip
        copied = client.upload_blob(
            dst,
            client.open_blob(src, blob.digest),
            media_type=blob.media_type,
            expected_digest=blob.digest,
        )
        report.blobs_streamed += 1
        report.bytes_streamed += copied.size

    # --- deletes and listing ----------------------------------------------------------

    def delete_repository(self, repository: str) -> None:
        """Delete every tagged manifest of ``repository`` (distribution has no repository
        delete; untagged leftovers and blobs go at the registry's next garbage collection)."""
        check_repository(repository)
        tags = self.client.list_tags(repository)
        if not tags:
            raise NotFoundError(
                f"registry {self.client.registry}: repository {repository} holds no tagged "
                "manifest",
                status=404,
            )
        digests: dict[str, None] = {}
        for tag in tags:
            try:
                digests[self.client.resolve(repository, tag)] = None
            except NotFoundError:
                continue
        for digest in digests:
            try:
                self.client.delete_manifest(repository, digest)
            except NotFoundError:
                continue
        log.info("deleted %d manifest(s) from %s", len(digests), repository)

    def delete_manifest(self, repository: str, digest: str) -> None:
        self.client.delete_manifest(repository, digest)

    def list_repositories(self, project: str) -> list[str]:
        """Repositories under ``project/`` that still hold a tag (from ``/v2/_catalog``)."""
        check_repository(project)
        prefix = project + "/"
        return [
            name
            for name in self._catalog()
            if name.startswith(prefix) and self.client.list_tags(name)
        ]

    def _catalog(self) -> list[str]:
        client = self.client
        names: list[str] = []
        path: str | None = f"/v2/_catalog?n={_PAGE_SIZE * 10}"
        base = client.base_url
        for _page in range(_MAX_PAGES):
            if path is None:
                break
            # The client has no public catalog call; its request plumbing handles auth.
            resp = client._request(
                "GET",
                path,
                scopes=("registry:catalog:*",),
                what="listing the repository catalog",
            )
            with resp:
                try:
                    body = resp.json()
                except ValueError as exc:
                    raise RegistryError(
                        f"registry {client.registry} answered a catalog that is not JSON"
                    ) from exc
                link = resp.links.get("next", {}).get("url")
            page = body.get("repositories") if isinstance(body, dict) else None
            names.extend(n for n in page or [] if isinstance(n, str))
            path = None
            if link:
                target = urljoin(base + "/", link)
                if urlsplit(target).netloc != urlsplit(base).netloc:
                    raise RegistryError(f"registry {client.registry} paginates to another host")
                path = target
        return names
