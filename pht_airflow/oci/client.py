"""A client for the OCI distribution API (``/v2/``), as served by Harbor and CNCF distribution.

What it does, and how:

- **Streaming uploads.** :meth:`RegistryClient.upload_blob` opens an upload session, sends
  the bytes as one chunked-transfer ``PATCH`` per ``patch_size`` (default: one), computing
  the SHA-256 while the bytes go out, and closes the session with ``PUT ?digest=``. The
  source is an iterable of byte chunks or a binary file object; it is read once and never
  held whole in memory.
- **Verified downloads.** :meth:`RegistryClient.open_blob` yields a blob's bytes and raises
  :class:`DigestMismatchError` at the end if they do not hash to the digest asked for.
  :meth:`get_blob` and :meth:`get_manifest` check the digest before returning anything.
- **Auth** (:mod:`.auth`): anonymous first, then Basic or the bearer-token challenge.
- **No cookie jar**: Harbor refuses a replayed session cookie with 403, so none is kept.
- **Transport**: https with certificate checks; plain http only for loopback hosts or when
  ``insecure=True``. Proxy and netrc settings from the environment are ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import (
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
)
from .auth import RegistryAuth, is_loopback_host, repository_scope
from .media import MANIFEST_TYPES, MAX_MANIFEST_BYTES, Descriptor, Manifest, sha256_digest
from .reference import Reference, check_digest, check_repository, is_digest

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
"""Bytes per read/write when streaming blobs."""

_PULL = ("pull",)
_PUSH = ("pull", "push")
_DELETE = ("delete",)

Progress = Callable[[int], None]
"""Called with the number of bytes just moved (for progress bars)."""


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def _error_detail(resp: requests.Response) -> str:
    """The registry's error codes and messages (OCI ``errors`` body), or the status text."""
    try:
        body = resp.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('code', '?')}: {e.get('message', '')}".strip()
                for e in errors
                if isinstance(e, dict)
            )[:500]
    except ValueError:
        pass
    return resp.reason or f"HTTP {resp.status_code}"


def _chunks(source: Iterable[bytes] | IO[bytes], chunk_size: int) -> Iterator[bytes]:
    if hasattr(source, "read"):
        reader = source.read
        while True:
            block = reader(chunk_size)
            if not block:
                return
            yield block
    else:
        for block in source:
            if block:
                yield bytes(block) if not isinstance(block, bytes) else block


class RegistryClient:
    """Talks to one registry. Use as a context manager, or call :meth:`close`.

    :param registry: ``host`` or ``host:port`` as in a reference.
    :param username: user or robot account; None for anonymous access.
    :param password: its password or secret (never logged).
    :param insecure: allow plain http (and an http token realm) for a non-loopback host.
    :param timeout: seconds to wait for the registry on connect and on each read.
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        timeout: float = 120.0,
    ) -> None:
        self.registry = registry
        self.insecure = insecure
        plain = insecure or is_loopback_host(registry)
        self.base_url = f"{'http' if plain else 'https'}://{registry}"
        self.timeout = timeout
        self._session = requests.Session()
        self._session.cookies.set_policy(_NoCookies())
        self._session.trust_env = False  # no proxies or ~/.netrc from the environment
        self._session.headers["User-Agent"] = "pht-airflow"
        self._auth = RegistryAuth(
            self._session,
            registry,
            username=username,
            password=password,
            insecure=insecure,
            timeout=timeout,
        )

    @classmethod
    def for_reference(
        cls,
        ref: Reference,
        *,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
    ) -> RegistryClient:
        """A client for the registry ``ref`` lives in."""
        return cls(ref.registry, username=username, password=password, insecure=insecure)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._session.close()

    # --- plumbing -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def _request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...],
        ok: tuple[int, ...] = (200,),
        replayable: bool = True,
        what: str,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request, answering one auth challenge; raise a typed error unless ``ok``."""
        url = self._url(path)
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            try:
                resp = self._session.request(
                    method, url, auth=self._auth.auth_for(scopes), **kwargs
                )
            except requests.RequestException as exc:
                raise RegistryError(
                    f"cannot reach registry {self.registry} ({what}): {type(exc).__name__}: "
                    f"{str(exc)[:200]}",
                    url=url,
                ) from exc
            if resp.status_code == 401 and attempt == 1:
                self._auth.handle_unauthorized(resp, scopes)
                resp.close()
                if not replayable:
                    raise RegistryAuthError(
                        f"registry {self.registry} asked for credentials in the middle of "
                        f"{what}; the streamed body cannot be sent twice",
                        status=401,
                        url=url,
                    )
                continue
            break
        if resp.status_code in ok:
            return resp
        detail = _error_detail(resp)
        resp.close()
        status = resp.status_code
        message = f"registry {self.registry}: {what} failed (HTTP {status}: {detail})"
        if status == 404:
            raise NotFoundError(message, status=status, url=url)
        if status in (401, 403):
            # Name who was refused (never the password), not just the bare status.
            message = (
                f"registry {self.registry} refused {self._auth.identity}: {what} failed "
                f"(HTTP {status}: {detail})"
            )
            raise RegistryAuthError(message, status=status, url=url)
        raise RegistryError(message, status=status, url=url)

    def ping(self) -> None:
        """Check that the registry speaks the distribution API and lets us in."""
        self._request("GET", "/v2/", scopes=(), what="the API version check").close()

    # --- manifests ----------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> str:
        """The manifest digest a tag (or digest) points at, without downloading layers."""
        check_repository(repository)
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        resp = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, _PULL),),
            headers=headers,
            what=f"resolving {repository}:{reference}",
        )
        digest = resp.headers.get("Docker-Content-Digest")
        resp.close()
        if digest and is_digest(digest):
            if is_digest(reference) and digest != reference:
                raise DigestMismatchError(
                    f"registry {self.registry} answered {digest} for {repository}@{reference}"
                )
            return digest
        return self.get_manifest(repository, reference).digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch a manifest; when ``reference`` is a digest, the bytes must hash to it."""
        check_repository(repository)
        resp = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, _PULL),),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            stream=True,
            what=f"fetching manifest {repository}:{reference}",
        )
        with resp:
            raw = resp.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(
                f"manifest {repository}:{reference} is larger than {MAX_MANIFEST_BYTES} bytes"
            )
        digest = sha256_digest(raw)
        if is_digest(reference) and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} from {self.registry} hashes to {digest}"
            )
        if media_type not in MANIFEST_TYPES:
            try:
                declared = json.loads(raw).get("mediaType")
            except (ValueError, AttributeError) as exc:
                raise InvalidManifestError(
                    f"manifest {repository}:{reference} is not a JSON object"
                ) from exc
            if declared not in MANIFEST_TYPES:
                raise InvalidManifestError(
                    f"manifest {repository}:{reference} has unsupported media type "
                    f"{media_type or declared!r}"
                )
            media_type = declared
        return Manifest(media_type=media_type, digest=digest, raw=raw)

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its own digest); return its digest."""
        check_repository(repository)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        digest = sha256_digest(raw)
        if is_digest(reference) and reference != digest:
            raise DigestMismatchError(f"manifest bytes hash to {digest}, not {reference}")
        resp = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, _PUSH),),
            ok=(200, 201),
            headers={"Content-Type": media_type},
            data=raw,
            what=f"pushing manifest {repository}:{reference}",
        )
        stated = resp.headers.get("Docker-Content-Digest")
        resp.close()
        if stated and stated != digest:
            raise DigestMismatchError(
                f"registry {self.registry} stored manifest {repository}:{reference} as {stated}, "
                f"but its bytes hash to {digest}"
            )
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (and with it every tag pointing at it)."""
        check_repository(repository)
        check_digest(digest)
        self._request(
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scopes=(repository_scope(repository, _DELETE),),
            ok=(202, 200),
            what=f"deleting manifest {repository}@{digest}",
        ).close()

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        """Every tag of a repository (following ``Link`` pagination); [] if it has none."""
        check_repository(repository)
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n={page_size}"
        while path:
            try:
                resp = self._request(
                    "GET",
                    path,
                    scopes=(repository_scope(repository, _PULL),),
                    what=f"listing tags of {repository}",
                )
            except NotFoundError:
                return tags
            with resp:
                try:
                    body = resp.json()
                except ValueError as exc:
                    raise RegistryError(
                        f"registry {self.registry} answered a tag list that is not JSON"
                    ) from exc
                link = resp.links.get("next", {}).get("url")
            page = body.get("tags") if isinstance(body, dict) else None
            tags.extend(t for t in page or [] if isinstance(t, str))
            if link:
                target = urljoin(self.base_url + "/", link)
                if urlsplit(target).netloc != urlsplit(self.base_url).netloc:
                    raise RegistryError(f"registry {self.registry} paginates to another host")
                path = target
            else:
                path = None
        return tags

    # --- blobs --------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob in ``repository``, or None if it is not there."""
        try:
            resp = self._request(
                "HEAD",
                f"/v2/{repository}/blobs/{digest}",
                scopes=(repository_scope(repository, _PULL),),
                what=f"checking blob {digest}",
            )
        except NotFoundError:
            return None
        resp.close()
        length = resp.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else 0

    def open_blob(
        self,
        repository: str,
        digest: str,
        *,
        chunk_size: int = CHUNK,
        progress: Progress | None = None,
    ) -> Iterator[bytes]:
        """Yield a blob's bytes as they arrive; the SHA-256 is checked after the last chunk.

        Raises :class:`DigestMismatchError` (after the data) if the bytes do not match, so
        a consumer must treat everything it received as untrusted until the iterator ends.
        """
        check_repository(repository)
        check_digest(digest)
        resp = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=(repository_scope(repository, _PULL),),
            stream=True,
            what=f"downloading blob {digest}",
        )
        hasher = hashlib.sha256()
        total = 0
        try:
            for block in resp.raw.stream(chunk_size, decode_content=False):
                hasher.update(block)
                total += len(block)
                if progress is not None:
                    progress(len(block))
                yield block
        except requests.RequestException as exc:
            raise RegistryError(
                f"download of blob {digest} from {self.registry} broke off after {total} bytes: "
                f"{type(exc).__name__}"
            ) from exc
        finally:
            resp.close()
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatchError(
                f"blob {repository}@{digest} from {self.registry} hashes to {actual} "
                f"({total} bytes): it was altered in storage or in transit"
            )

    def get_blob(self, repository: str, digest: str, *, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (a config, a signature payload), digest-checked, at most ``max_bytes``."""
        parts: list[bytes] = []
        size = 0
        for block in self.open_blob(repository, digest):
            size += len(block)
            if size > max_bytes:
                raise RegistryError(
                    f"blob {digest} in {repository} is larger than the {max_bytes} bytes allowed"
                )
            parts.append(block)
        return b"".join(parts)

    def download_blob(
        self, repository: str, digest: str, dest: IO[bytes], *, progress: Progress | None = None
    ) -> int:
        """Stream a blob into a binary file object; return the byte count (digest-checked)."""
        total = 0
        for block in self.open_blob(repository, digest, progress=progress):
            dest.write(block)
            total += len(block)
        return total

    def _start_upload(self, repository: str, query: str = "") -> str:
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/{query}",
            scopes=(repository_scope(repository, _PUSH),),
            ok=(202, 201),
            what=f"starting a blob upload to {repository}",
        )
        resp.close()
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.registry} started an upload without a Location")
        if resp.status_code == 201:
            return ""
        return urljoin(self.base_url + "/", location)

    def _with_query(self, location: str, extra: str) -> str:
        return location + ("&" if "?" in location else "?") + extra

    def upload_blob(
        self,
        repository: str,
        source: Iterable[bytes] | IO[bytes],
        *,
        media_type: str = "application/octet-stream",
        expected_digest: str | None = None,
        patch_size: int | None = None,
        chunk_size: int = CHUNK,
        progress: Progress | None = None,
    ) -> Descriptor:
        """Stream ``source`` into a new blob; return its descriptor.

        The digest is computed while the bytes go out. With ``patch_size`` the upload is
        split into several ``PATCH`` requests of at most that many bytes (for proxies that
        cap request bodies); otherwise one streamed ``PATCH`` carries everything.
        ``expected_digest``, if given, must match or the upload is cancelled.
        """
        check_repository(repository)
        if expected_digest is not None:
            check_digest(expected_digest)
        location = self._start_upload(repository)
        hasher = hashlib.sha256()
        total = 0
        blocks = _chunks(source, chunk_size)
        pending: list[bytes] = []  # at most one block carried over between PATCHes

        def body(limit: int | None) -> Iterator[bytes]:
            nonlocal total
            sent = 0
            while limit is None or sent < limit:
                if pending:
                    block = pending.pop()
                else:
                    block = next(blocks, b"")
                    if not block:
                        return
                if limit is not None and sent + len(block) > limit:
                    pending.append(block[limit - sent :])
                    block = block[: limit - sent]
                hasher.update(block)
                sent += len(block)
                total += len(block)
                if progress is not None:
                    progress(len(block))
                yield block

        try:
            while True:
                start = total
                resp = self._request(
                    "PATCH",
                    location,
                    scopes=(repository_scope(repository, _PUSH),),
                    ok=(202,),
                    replayable=False,
                    headers={"Content-Type": "application/octet-stream"},
                    data=body(patch_size),
                    what=f"uploading a blob to {repository}",
                )
                resp.close()
                location = urljoin(self.base_url + "/", resp.headers.get("Location", location))
                if patch_size is None or total - start < patch_size:
                    break
                if not pending:
                    peek = next(blocks, b"")
                    if not peek:
                        break
                    pending.append(peek)
            digest = "sha256:" + hasher.hexdigest()
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatchError(
                    f"uploaded bytes hash to {digest}, not the expected {expected_digest}"
                )
            resp = self._request(
                "PUT",
                self._with_query(location, f"digest={digest}"),
                scopes=(repository_scope(repository, _PUSH),),
                ok=(201,),
                headers={"Content-Length": "0"},
                what=f"completing the upload of {digest} to {repository}",
            )
            resp.close()
        except BaseException:
            self._cancel(location, repository)
            raise
        stated = resp.headers.get("Docker-Content-Digest")
        if stated and stated != digest:
            raise DigestMismatchError(
                f"registry {self.registry} stored the blob as {stated}, but we sent {digest}"
            )
        log.debug("uploaded %d bytes to %s as %s", total, repository, digest)
        return Descriptor(media_type=media_type, digest=digest, size=total)

    def _cancel(self, location: str, repository: str) -> None:
        # Best effort: the registry expires abandoned uploads anyway.
        with contextlib.suppress(requests.RequestException):
            self._session.delete(
                location,
                auth=self._auth.auth_for((repository_scope(repository, _PUSH),)),
                timeout=10,
            ).close()

    def upload_bytes(
        self, repository: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> Descriptor:
        """Push a small blob in one request (skipped if the registry already has it)."""
        digest = sha256_digest(data)
        desc = Descriptor(media_type=media_type, digest=digest, size=len(data))
        if self.blob_size(repository, digest) is not None:
            return desc
        location = self._start_upload(repository)
        resp = self._request(
            "PUT",
            self._with_query(location, f"digest={digest}"),
            scopes=(repository_scope(repository, _PUSH),),
            ok=(201,),
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            what=f"uploading blob {digest} to {repository}",
        )
        resp.close()
        return desc

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount: make ``digest`` from ``from_repository`` appear in
        ``repository`` without moving its bytes. False if the registry declined."""
        check_repository(repository)
        check_repository(from_repository)
        check_digest(digest)
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/?mount={digest}&from={from_repository}",
            scopes=(
                repository_scope(repository, _PUSH),
                repository_scope(from_repository, _PULL),
            ),
            ok=(201, 202),
            what=f"mounting {digest} from {from_repository} into {repository}",
        )
        resp.close()
        if resp.status_code == 201:
            return True
        location = resp.headers.get("Location")
        if location:  # the registry opened a normal upload instead: cancel it
            self._cancel(urljoin(self.base_url + "/", location), repository)
        return False

    def delete_blob(self, repository: str, digest: str) -> None:
        """Delete a blob link from a repository (for tests and cleanup)."""
        self._request(
            "DELETE",
            f"/v2/{repository}/blobs/{digest}",
            scopes=(repository_scope(repository, _DELETE),),
            ok=(202, 200),
            what=f"deleting blob {repository}@{digest}",
        ).close()
