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
- **Bounded** (:mod:`.transport`): every body is read with a limit on decoded bytes for its
  kind (manifest 4 MiB, a tag-list or catalog page 4 MiB, an error body 64 KiB, a token
  answer 256 KiB) and at most ``MAX_TAGS`` tags over ``MAX_PAGES`` pages; past a limit,
  :class:`~pht_airflow.errors.ResponseTooLargeError`. Every operation (each public method,
  its token exchange and pages included) has a total ``deadline``; a blob transfer gets
  ``deadline`` seconds plus one second per ``min_blob_rate`` bytes moved, so it may go on as
  long as it averages at least ``min_blob_rate`` (minus the head start). Past it:
  :class:`~pht_airflow.errors.DeadlineExceededError`. ``timeout`` stays the per-read bound.
- **Transport**: https with certificate checks; plain http only for loopback hosts or when
  ``insecure=True``. Proxy and netrc settings from the environment are ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import logging
import re
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
    ResponseTooLargeError,
)
from . import transport
from .auth import RegistryAuth, is_loopback_host, repository_scope
from .media import MANIFEST_TYPES, MAX_MANIFEST_BYTES, Descriptor, Manifest, sha256_digest
from .reference import Reference, check_digest, check_repository, is_digest
from .transport import ERROR_BODY_LIMIT, LIST_LIMIT, MANIFEST_LIMIT, Deadline

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
"""Bytes per read/write when streaming blobs."""

_PULL = ("pull",)
_PUSH = ("pull", "push")
_DELETE = ("delete",)

Progress = Callable[[int], None]
"""Called with the number of bytes just moved (for progress bars)."""

DEADLINE = 300.0
"""Default total seconds for one registry operation (and the head start of a blob transfer)."""
MIN_BLOB_RATE = 256 * 1024
"""Default minimum average bytes per second a blob transfer must keep up after the head start."""
MAX_TAGS = 100_000
"""At most this many tags in one listing."""
MAX_PAGES = 1000
"""At most this many pages in one listing."""

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def _error_detail(resp: requests.Response, deadline: Deadline | None = None) -> str:
    """The registry's error codes and messages (OCI ``errors`` body), or the status text.

    Reads at most ``ERROR_BODY_LIMIT`` decoded bytes of the body; a longer body is not parsed.
    """
    raw, complete = transport.read_prefix(resp, ERROR_BODY_LIMIT, deadline)
    if not complete:
        return (
            f"{resp.reason or 'error'}; the error body is larger than the limit of "
            f"{ERROR_BODY_LIMIT // 1024} KiB and was not read further"
        )
    try:
        body = json.loads(raw)
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('code', '?')}: {e.get('message', '')}".strip()
                for e in errors
                if isinstance(e, dict)
            )[:500]
    except (ValueError, RecursionError):
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
    :param deadline: total seconds for one operation (a manifest, a tag listing with all its
        pages, a token exchange, a push of a small blob). Past it, the connection is cut and
        :class:`~pht_airflow.errors.DeadlineExceededError` raised.
    :param min_blob_rate: blob transfers (:meth:`open_blob`, :meth:`upload_blob`) get
        ``deadline`` seconds plus one second per ``min_blob_rate`` bytes moved: a minimum
        average throughput after a head start, since a fixed deadline cannot fit every size.
        The consumer's pace counts: a stream copied into a slow upload moves as slowly.
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        timeout: float = 120.0,
        deadline: float = DEADLINE,
        min_blob_rate: float = MIN_BLOB_RATE,
    ) -> None:
        if deadline <= 0 or min_blob_rate <= 0:
            raise ValueError("deadline and min_blob_rate must be positive")
        self.registry = registry
        self.insecure = insecure
        plain = insecure or is_loopback_host(registry)
        self.base_url = f"{'http' if plain else 'https'}://{registry}"
        self.timeout = timeout
        self.deadline = deadline
        self.min_blob_rate = min_blob_rate
        self._session = transport.make_session()
        self._session.cookies.set_policy(_NoCookies())
        self._auth = RegistryAuth(
            self._session,
            registry,
            username=username,
            password=password,
            insecure=insecure,
            timeout=timeout,
            deadline=deadline,
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

    def _operation(self, what: str, *, blob: bool = False) -> Deadline:
        """A deadline for one operation (use with ``with``): blobs get the throughput rule."""
        return Deadline(self.deadline, what, min_rate=self.min_blob_rate if blob else None)

    def _request(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...],
        ok: tuple[int, ...] = (200,),
        replayable: bool = True,
        what: str,
        stream: bool = False,
        limit: int = LIST_LIMIT,
        deadline: Deadline | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request, answering one auth challenge; raise a typed error unless ``ok``.

        Counts against ``deadline`` (an operation of the caller's), or a deadline of its own.
        Unless ``stream``, the body is read here, at most ``limit`` decoded bytes, and kept
        on the response (``.json()`` reads it); with ``stream`` the caller reads it with its
        ``deadline``, which it must then give.
        """
        if deadline is None:
            if stream:
                raise ValueError("a streamed request needs the caller's deadline")
            with self._operation(what) as own:
                return self._request(
                    method,
                    path,
                    scopes=scopes,
                    ok=ok,
                    replayable=replayable,
                    what=what,
                    limit=limit,
                    deadline=own,
                    **kwargs,
                )
        url = self._url(path)
        for attempt in (1, 2):
            deadline.check()
            try:
                with deadline.active():
                    resp = self._session.request(
                        method,
                        url,
                        auth=self._auth.auth_for(scopes),
                        stream=True,
                        timeout=deadline.timeout(self.timeout),
                        **kwargs,
                    )
            except transport.TRANSPORT_ERRORS as exc:
                if deadline.is_over():
                    raise deadline.error() from None
                raise RegistryError(
                    f"cannot reach registry {self.registry} ({what}): {type(exc).__name__}: "
                    f"{str(exc)[:200]}",
                    url=url,
                ) from exc
            if resp.status_code == 401 and attempt == 1:
                transport.read_prefix(resp, ERROR_BODY_LIMIT, deadline)  # keeps the connection
                with deadline.active():
                    self._auth.handle_unauthorized(resp, scopes)
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
            if stream:
                return resp
            return transport.ensure_loaded(
                resp, limit, f"the answer of registry {self.registry} to {what}", deadline
            )
        detail = _error_detail(resp, deadline)
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
        what = f"fetching manifest {repository}:{reference}"
        with self._operation(what) as deadline:
            resp = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scopes=(repository_scope(repository, _PULL),),
                headers={"Accept": ", ".join(MANIFEST_TYPES)},
                what=what,
                limit=MANIFEST_LIMIT,
                deadline=deadline,
            )
        raw = resp.content
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = sha256_digest(raw)
        if is_digest(reference) and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} from {self.registry} hashes to {digest}"
            )
        if media_type not in MANIFEST_TYPES:
            try:
                declared = json.loads(raw).get("mediaType")
            except (ValueError, AttributeError, RecursionError) as exc:
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
        """Every tag of a repository (following ``Link`` pagination); [] if it has none.

        One operation under one deadline; at most ``MAX_PAGES`` pages of ``LIST_LIMIT``
        decoded bytes and ``MAX_TAGS`` tags, and no page twice.
        """
        check_repository(repository)
        what = f"listing tags of {repository}"
        with self._operation(what) as deadline:
            try:
                return self._paged(
                    f"/v2/{repository}/tags/list?n={page_size}",
                    "tags",
                    scopes=(repository_scope(repository, _PULL),),
                    what=what,
                    deadline=deadline,
                )
            except NotFoundError:
                return []

    def _paged(
        self, path: str, key: str, *, scopes: tuple[str, ...], what: str, deadline: Deadline
    ) -> list[str]:
        """The strings under ``key`` over every ``Link`` page of a registry list endpoint."""
        items: list[str] = []
        seen: set[str] = set()
        next_path: str | None = path
        while next_path:
            if len(seen) >= MAX_PAGES:
                raise ResponseTooLargeError(
                    f"registry {self.registry}: {what} goes on for more than {MAX_PAGES} pages"
                )
            seen.add(self._url(next_path))
            resp = self._request("GET", next_path, scopes=scopes, what=what, deadline=deadline)
            try:
                body = json.loads(resp.content)
            except (ValueError, RecursionError) as exc:
                raise RegistryError(
                    f"registry {self.registry} answered {what} with a body that is not JSON"
                ) from exc
            link = resp.links.get("next", {}).get("url")
            page = body.get(key) if isinstance(body, dict) else None
            if isinstance(page, list):
                items.extend(t for t in page if isinstance(t, str))
            if len(items) > MAX_TAGS:
                raise ResponseTooLargeError(
                    f"registry {self.registry}: {what} holds more than {MAX_TAGS} entries"
                )
            next_path = None
            if link:
                target = urljoin(self.base_url + "/", link)
                if urlsplit(target).netloc != urlsplit(self.base_url).netloc:
                    raise RegistryError(f"registry {self.registry} paginates to another host")
                if target in seen:
                    raise RegistryError(f"registry {self.registry} paginates in a loop ({what})")
                next_path = target
        return items

    def list_catalog(self, page_size: int = 1000) -> list[str]:
        """Every repository name in the registry's ``/v2/_catalog`` (paged, bounded like
        :meth:`list_tags`). Harbor and many registries restrict the catalog to admins."""
        what = "listing the repository catalog"
        with self._operation(what) as deadline:
            return self._paged(
                f"/v2/_catalog?n={page_size}",
                "repositories",
                scopes=("registry:catalog:*",),
                what=what,
                deadline=deadline,
            )

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
        length = (resp.headers.get("Content-Length") or "").strip()
        if not length:
            return 0
        if not _CONTENT_LENGTH.fullmatch(length):
            raise RegistryError(
                f"registry {self.registry} answered blob {digest} with an invalid "
                f"Content-Length ({length[:40]!r})"
            )
        return int(length)

    def open_blob(
        self,
        repository: str,
        digest: str,
        *,
        chunk_size: int = CHUNK,
        progress: Progress | None = None,
        max_bytes: int | None = None,
    ) -> Iterator[bytes]:
        """Yield a blob's bytes as they arrive; the SHA-256 is checked after the last chunk.

        Raises :class:`DigestMismatchError` (after the data) if the bytes do not match, so
        a consumer must treat everything it received as untrusted until the iterator ends.
        With ``max_bytes`` (a descriptor's size, say), a blob stated or streamed larger is
        refused with :class:`ResponseTooLargeError` before a byte past it is yielded.
        """
        check_repository(repository)
        check_digest(digest)
        what = f"downloading blob {digest}"
        hasher = hashlib.sha256()
        total = 0
        with self._operation(what, blob=True) as deadline:
            resp = self._request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scopes=(repository_scope(repository, _PULL),),
                stream=True,
                what=what,
                deadline=deadline,
            )
            try:
                if max_bytes is not None:
                    self._check_blob_length(resp, digest, max_bytes)
                for block in resp.raw.stream(chunk_size, decode_content=False):
                    if max_bytes is not None and total + len(block) > max_bytes:
                        raise self._blob_too_large(digest, max_bytes)
                    hasher.update(block)
                    total += len(block)
                    deadline.add(len(block))
                    if progress is not None:
                        progress(len(block))
                    yield block
            except transport.TRANSPORT_ERRORS as exc:
                if deadline.is_over():
                    raise deadline.error() from None
                raise RegistryError(
                    f"download of blob {digest} from {self.registry} broke off after {total} "
                    f"bytes: {type(exc).__name__}"
                ) from exc
            finally:
                resp.close()
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatchError(
                f"blob {repository}@{digest} from {self.registry} hashes to {actual} "
                f"({total} bytes): it was altered in storage or in transit"
            )

    def _blob_too_large(self, digest: str, max_bytes: int) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"blob {digest} from registry {self.registry} is larger than the {max_bytes} "
            "bytes allowed"
        )

    def _check_blob_length(self, resp: requests.Response, digest: str, max_bytes: int) -> None:
        length = (resp.headers.get("Content-Length") or "").strip()
        if _CONTENT_LENGTH.fullmatch(length) and int(length) > max_bytes:
            resp.close()
            raise self._blob_too_large(digest, max_bytes)

    def get_blob(self, repository: str, digest: str, *, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (a config, a signature payload), digest-checked, at most ``max_bytes``."""
        return b"".join(self.open_blob(repository, digest, max_bytes=max_bytes))

    def download_blob(
        self,
        repository: str,
        digest: str,
        dest: IO[bytes],
        *,
        progress: Progress | None = None,
        max_bytes: int | None = None,
    ) -> int:
        """Stream a blob into a binary file object; return the byte count (digest-checked).
        With ``max_bytes``, nothing past it is written (see :meth:`open_blob`)."""
        total = 0
        for block in self.open_blob(repository, digest, progress=progress, max_bytes=max_bytes):
            dest.write(block)
            total += len(block)
        return total

    def _start_upload(self, repository: str, deadline: Deadline | None = None) -> str:
        resp = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=(repository_scope(repository, _PUSH),),
            ok=(202, 201),
            what=f"starting a blob upload to {repository}",
            deadline=deadline,
        )
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
        with self._operation(f"uploading a blob to {repository}", blob=True) as deadline:
            return self._upload_blob(
                repository,
                _chunks(source, chunk_size),
                media_type=media_type,
                expected_digest=expected_digest,
                patch_size=patch_size,
                progress=progress,
                deadline=deadline,
            )

    def _upload_blob(
        self,
        repository: str,
        blocks: Iterator[bytes],
        *,
        media_type: str,
        expected_digest: str | None,
        patch_size: int | None,
        progress: Progress | None,
        deadline: Deadline,
    ) -> Descriptor:
        location = self._start_upload(repository, deadline)
        hasher = hashlib.sha256()
        total = 0
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
                deadline.add(len(block))
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
                    deadline=deadline,
                )
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
                deadline=deadline,
            )
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
        with (
            contextlib.suppress(RegistryError, *transport.TRANSPORT_ERRORS),
            Deadline(10.0, f"cancelling an upload to {repository}") as deadline,
            deadline.active(),
        ):
            resp = self._session.delete(
                location,
                auth=self._auth.auth_for((repository_scope(repository, _PUSH),)),
                stream=True,
                timeout=deadline.timeout(10.0),
            )
            transport.read_prefix(resp, ERROR_BODY_LIMIT, deadline)

    def upload_bytes(
        self, repository: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> Descriptor:
        """Push a small blob in one request (skipped if the registry already has it)."""
        digest = sha256_digest(data)
        desc = Descriptor(media_type=media_type, digest=digest, size=len(data))
        if self.blob_size(repository, digest) is not None:
            return desc
        what = f"uploading blob {digest} to {repository}"
        with self._operation(what, blob=True) as deadline:
            deadline.add(len(data))  # the throughput rule's time for the bytes to send
            location = self._start_upload(repository, deadline)
            self._request(
                "PUT",
                self._with_query(location, f"digest={digest}"),
                scopes=(repository_scope(repository, _PUSH),),
                ok=(201,),
                headers={"Content-Type": "application/octet-stream"},
                data=data,
                what=what,
                deadline=deadline,
            )
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
