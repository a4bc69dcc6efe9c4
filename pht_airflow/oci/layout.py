"""OCI image layout archives: write one as a stream, read one as untrusted input.

The format is the OCI image spec's ``image-layout.md``: a tar holding ``oci-layout``
(``{"imageLayoutVersion": "1.0.0"}``), ``index.json`` (an image index whose descriptors name
their tag in the ``org.opencontainers.image.ref.name`` annotation) and every blob, manifests
included, as ``blobs/sha256/<hex>``. ``skopeo`` reads it as ``oci-archive:FILE:TAG``.

- :class:`LayoutWriter` writes a plain (uncompressed, ustar) tar front to back: each blob is
  copied from an iterator of chunks straight into the archive, its SHA-256 and length checked
  on the way, so memory stays at one chunk whatever the blob's size.
- :class:`LayoutReader` treats the archive as hostile. It walks the tar headers itself (no
  ``tarfile`` extraction): only ``oci-layout``, ``index.json``, ``blobs/``, ``blobs/sha256/``
  and ``blobs/sha256/<64 hex>`` regular files and folders are accepted, no links, no device
  files, no duplicates, extended headers at most 64 KiB, at most ``MAX_MEMBERS`` members;
  ``index.json`` and every manifest at most 4 MiB, at most ``MAX_MANIFESTS`` manifests
  reachable from the index; every blob's bytes must hash to its name and have the size its
  descriptor states (:meth:`LayoutReader.verify`). Reads go through ``os.pread`` in chunks.
  Every problem is a :class:`LayoutError` (a :class:`~pht_airflow.errors.PhtError`).
- :class:`LayoutRegistryView` presents a read archive as a read-only
  :class:`~.client.RegistryClient` of one repository, so the code that verifies trains,
  signatures and result chains in a registry runs unchanged on a bundle before anything of
  it is pushed anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from ..errors import NotFoundError, PhtError, RegistryError, ResponseTooLargeError
from ..text import safe_text
from .client import CHUNK, Progress, RegistryClient
from .media import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Manifest,
    is_sha256_digest,
)
from .reference import check_repository, is_digest

__all__ = [
    "LAYOUT_VERSION",
    "MAX_INDEX_BYTES",
    "MAX_MANIFESTS",
    "MAX_MEMBERS",
    "REF_NAME",
    "LayoutError",
    "LayoutReader",
    "LayoutRegistryView",
    "LayoutWriter",
]

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
MAX_MEMBERS = 100_000
"""At most this many tar members (headers) in an archive."""
MAX_INDEX_BYTES = MAX_MANIFEST_BYTES
"""``index.json`` is at most this large (4 MiB, as a manifest)."""
MAX_MANIFESTS = 10_000
"""At most this many manifests (tagged or children of an index) reachable from ``index.json``."""
MAX_PAX_BYTES = 64 * 1024
_LAYOUT_FILE_BYTES = 4096
_MAX_DEPTH = 4
_BLOCK = tarfile.BLOCKSIZE
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_FOLDERS = frozenset({"blobs", "blobs/sha256"})
_FILES = frozenset({"oci-layout", "index.json"})


class LayoutError(PhtError):
    """An OCI layout archive that breaks a rule (or could not be read or written)."""


def _shown(value: object) -> str:
    return safe_text(str(value), limit=120)


# --- writing --------------------------------------------------------------------------------


class _ChunkFile(io.RawIOBase):
    """An iterator of byte chunks read as a file (what ``tarfile.addfile`` copies from)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            block = next(self._chunks, None)
            if block is None:
                return 0
            self._pending = bytes(block)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class LayoutWriter:
    """Write an OCI image layout as a tar stream into ``fileobj`` (which it does not close).

    Add blobs (each once; repeats are skipped), manifests and tags, then :meth:`close`, which
    writes ``index.json`` and ends the archive. Members carry mtime 0, uid/gid 0, mode 0644.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT
        )
        self._blobs: set[str] = set()
        self._index: list[dict[str, Any]] = []
        self._tags: set[str] = set()
        self._closed = False
        self._broken = False
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            self._tar.addfile(info)
        self._add_file("oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def _add_file(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def has_blob(self, digest: str) -> bool:
        return digest in self._blobs

    def add_blob(self, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        """Copy a blob of ``size`` bytes from ``chunks``; they must hash to ``digest``."""
        if not is_sha256_digest(digest):
            raise LayoutError(f"cannot write blob {_shown(digest)}: only sha256 digests")
        if digest in self._blobs:
            return
        hasher = hashlib.sha256()
        count = 0

        def counted() -> Iterator[bytes]:
            nonlocal count
            for block in chunks:
                count += len(block)
                if count > size:
                    raise LayoutError(f"blob {digest} is larger than its stated {size} bytes")
                hasher.update(block)
                yield block

        stream = counted()
        info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
        info.size = size
        info.mode = 0o644
        if self._broken:
            raise LayoutError("an earlier blob failed; this archive is incomplete")
        self._broken = True  # until this blob is complete and checked
        try:
            self._tar.addfile(info, io.BufferedReader(_ChunkFile(stream)))
        except OSError as exc:  # tarfile: "unexpected end of data"
            raise LayoutError(
                f"blob {digest} ended after {count} of its stated {size} bytes"
            ) from exc
        for _ in stream:  # drain: runs the source's own end-of-stream checks too
            pass
        if count != size or "sha256:" + hasher.hexdigest() != digest:
            raise LayoutError(f"blob {digest} does not hash to its digest ({count} bytes)")
        self._broken = False
        self._blobs.add(digest)

    def add_bytes(self, data: bytes) -> str:
        """Add a small blob held in memory; return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.add_blob(digest, len(data), [data])
        return digest

    def add_manifest(self, manifest: Manifest) -> Descriptor:
        """Add a manifest's exact bytes as a blob; return its descriptor."""
        self.add_blob(manifest.digest, len(manifest.raw), [manifest.raw])
        return manifest.descriptor()

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Name ``descriptor`` (a manifest already added) ``name`` in ``index.json``."""
        if not _TAG.fullmatch(name):
            raise LayoutError(f"{_shown(name)} is not a valid tag")
        if name in self._tags:
            raise LayoutError(f"tag {name} is given twice")
        if descriptor.digest not in self._blobs:
            raise LayoutError(f"tag {name} names {descriptor.digest}, which was not added")
        entry = descriptor.to_dict()
        entry["annotations"] = {**(descriptor.annotations or {}), REF_NAME: name}
        self._index.append(entry)
        self._tags.add(name)

    def close(self) -> None:
        """Write ``index.json`` and end the archive (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._broken:
            self._tar.fileobj = io.BytesIO()  # drop the rest
            raise LayoutError("an earlier blob failed; this archive is incomplete")
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._index}
        self._add_file("index.json", json.dumps(index, sort_keys=True).encode())
        self._tar.close()


# --- reading --------------------------------------------------------------------------------


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended-header records (``"<len> key=value\\n"``)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos, pos + 20)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit():
            raise LayoutError("an extended (pax) header is malformed")
        length = int(length_text)
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
            raise LayoutError("an extended (pax) header is malformed")
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if not eq:
            raise LayoutError("an extended (pax) header record has no '='")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise LayoutError("an extended (pax) header is not UTF-8") from None
        pos += length
    return records


class LayoutReader:
    """An OCI layout archive opened for reading; see the module docstring for the rules.

    Opening scans the tar headers and reads ``oci-layout`` and ``index.json``; :meth:`verify`
    then checks every manifest reachable from the index and every blob's digest and size.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise LayoutError(f"cannot open bundle {_shown(path)}: {exc.strerror}") from None
        try:
            self._size = os.fstat(self._fd).st_size
            self._members: dict[str, tuple[int, int]] = {}
            self._scan()
            self._check_layout_file()
            self.tags: dict[str, Descriptor] = self._read_index()
            self._manifests: dict[str, Manifest] = {}
            self._verified = False
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> LayoutReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- tar headers --

    def _pread(self, n: int, at: int) -> bytes:
        try:
            return os.pread(self._fd, n, at)
        except OSError as exc:
            raise LayoutError(f"cannot read the bundle: {exc.strerror}") from None

    def _scan(self) -> None:
        pos = 0
        pax: dict[str, str] = {}
        count = 0
        while True:
            block = self._pread(_BLOCK, pos)
            if len(block) < _BLOCK:
                raise LayoutError("the bundle is truncated (no end-of-archive marker)")
            if block == b"\0" * _BLOCK:
                break
            count += 1
            if count > MAX_MEMBERS:
                raise LayoutError(f"the bundle has more than {MAX_MEMBERS} members")
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.HeaderError, ValueError) as exc:
                raise LayoutError(f"the bundle has an invalid tar header at byte {pos}") from exc
            size = info.size
            if "size" in pax:
                if not pax["size"].isdigit() or len(pax["size"]) > 18:
                    raise LayoutError("an extended header states an invalid size")
                size = int(pax["size"])
            data_at = pos + _BLOCK
            end = data_at + -(-size // _BLOCK) * _BLOCK
            if size < 0 or end > self._size:
                raise LayoutError(f"the bundle is truncated (a member at byte {pos})")
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                if size > MAX_PAX_BYTES:
                    raise LayoutError(f"an extended header is larger than {MAX_PAX_BYTES} bytes")
                records = _pax_records(self._pread(size, data_at))
                if info.type == tarfile.XHDTYPE:
                    pax = records
                pos = end
                continue
            name = pax.get("path", info.name)
            pax = {}
            self._member(name, info, data_at, size)
            pos = end

    def _member(self, raw_name: str, info: tarfile.TarInfo, at: int, size: int) -> None:
        name = raw_name[2:] if raw_name.startswith("./") else raw_name
        name = name.rstrip("/") if info.type == tarfile.DIRTYPE else name
        shown = _shown(raw_name)
        if info.type == tarfile.DIRTYPE:
            if name not in _FOLDERS and name not in ("", "."):
                raise LayoutError(f"bundle member {shown} is not part of an OCI image layout")
            return
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise LayoutError(
                f"bundle member {shown} is a link or special file; only files are allowed"
            )
        if name not in _FILES and not _BLOB_NAME.fullmatch(name):
            raise LayoutError(f"bundle member {shown} is not part of an OCI image layout")
        if name in self._members:
            raise LayoutError(f"bundle member {shown} appears twice")
        self._members[name] = (at, size)

    # -- the two fixed files --

    def _file(self, name: str, limit: int) -> bytes:
        where = self._members.get(name)
        if where is None:
            raise LayoutError(f"the bundle has no {name}: it is not an OCI image layout")
        at, size = where
        if size > limit:
            raise LayoutError(f"the bundle's {name} is larger than {limit} bytes")
        return self._pread(size, at)

    @staticmethod
    def _json(raw: bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise LayoutError(f"the bundle's {what} is not JSON") from None
        if not isinstance(data, dict):
            raise LayoutError(f"the bundle's {what} is not a JSON object")
        return data

    def _check_layout_file(self) -> None:
        data = self._json(self._file("oci-layout", _LAYOUT_FILE_BYTES), "oci-layout")
        version = data.get("imageLayoutVersion")
        if version != LAYOUT_VERSION:
            raise LayoutError(
                f"the bundle's imageLayoutVersion is {_shown(version)}, not {LAYOUT_VERSION}"
            )

    def _read_index(self) -> dict[str, Descriptor]:
        data = self._json(self._file("index.json", MAX_INDEX_BYTES), "index.json")
        if data.get("schemaVersion") != 2:
            raise LayoutError("the bundle's index.json does not have schemaVersion 2")
        media_type = data.get("mediaType", OCI_INDEX)
        if media_type != OCI_INDEX:
            raise LayoutError(f"the bundle's index.json has media type {_shown(media_type)}")
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise LayoutError("the bundle's index.json has no manifests list")
        if len(entries) > MAX_MANIFESTS:
            raise LayoutError(f"the bundle's index.json names more than {MAX_MANIFESTS} manifests")
        tags: dict[str, Descriptor] = {}
        for i, entry in enumerate(entries):
            try:
                desc = Descriptor.from_dict(entry, where=f"index.json manifests[{i}]")
            except RegistryError as exc:
                raise LayoutError(f"the bundle's {exc}") from None
            name = (desc.annotations or {}).get(REF_NAME)
            if name is None:
                continue  # untagged entries are allowed by the spec; nothing refers to them
            if not _TAG.fullmatch(name):
                raise LayoutError(f"the bundle's index.json names an invalid tag {_shown(name)}")
            if name in tags:
                raise LayoutError(f"the bundle's index.json names tag {name} twice")
            if desc.media_type not in MANIFEST_TYPES:
                raise LayoutError(
                    f"tag {name} has unsupported media type {_shown(desc.media_type)}"
                )
            tags[name] = desc
        return tags

    # -- blobs and manifests --

    def blob_size(self, digest: str) -> int | None:
        """The stored size of blob ``digest``, or None if the archive has no such blob."""
        if not is_sha256_digest(digest):
            return None
        where = self._members.get(f"blobs/sha256/{digest[7:]}")
        return None if where is None else where[1]

    def open_blob(self, digest: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield a blob's bytes; :class:`LayoutError` at the end if they do not hash to it."""
        size = self.blob_size(digest)
        if size is None:
            raise LayoutError(f"the bundle has no blob {_shown(digest)}")
        at = self._members[f"blobs/sha256/{digest[7:]}"][0]
        hasher = hashlib.sha256()
        done = 0
        while done < size:
            block = self._pread(min(chunk_size, size - done), at + done)
            if not block:
                raise LayoutError(f"blob {digest} ends early in the bundle")
            hasher.update(block)
            done += len(block)
            yield block
        if "sha256:" + hasher.hexdigest() != digest:
            raise LayoutError(f"blob {digest} in the bundle does not hash to its digest")

    def read_blob(self, digest: str, max_bytes: int) -> bytes:
        """A small blob, digest-checked, at most ``max_bytes``."""
        size = self.blob_size(digest)
        if size is not None and size > max_bytes:
            raise LayoutError(f"blob {digest} in the bundle is larger than {max_bytes} bytes")
        return b"".join(self.open_blob(digest))

    def manifest(self, digest: str, media_type: str | None = None) -> Manifest:
        """The manifest stored as blob ``digest`` (read once, then kept)."""
        known = self._manifests.get(digest)
        if known is not None:
            return known
        if len(self._manifests) >= MAX_MANIFESTS:
            raise LayoutError(f"the bundle holds more than {MAX_MANIFESTS} manifests")
        raw = self.read_blob(digest, MAX_MANIFEST_BYTES)
        try:
            manifest = Manifest.from_raw(raw, media_type)
        except RegistryError as exc:
            raise LayoutError(f"the bundle's manifest {digest}: {exc}") from None
        if manifest.media_type not in MANIFEST_TYPES:
            raise LayoutError(
                f"the bundle's manifest {digest} has unsupported media type "
                f"{_shown(manifest.media_type)}"
            )
        self._manifests[digest] = manifest
        return manifest

    def _walk(self, desc: Descriptor, depth: int, order: list[Manifest], seen: set[str]) -> None:
        if desc.digest in seen:
            return
        if depth > _MAX_DEPTH:
            raise LayoutError(f"the bundle nests image indexes deeper than {_MAX_DEPTH}")
        self._check_blob(desc, "manifest")
        manifest = self.manifest(desc.digest, desc.media_type)
        if manifest.media_type in INDEX_TYPES:
            for child in manifest.manifests:
                self._walk(child, depth + 1, order, seen)
        else:
            for blob in [manifest.config, *manifest.layers]:
                if blob is not None:
                    self._check_blob(blob, f"manifest {desc.digest}'s blob")
        if desc.digest not in seen:
            seen.add(desc.digest)
            order.append(manifest)

    def _check_blob(self, desc: Descriptor, what: str) -> None:
        size = self.blob_size(desc.digest)
        if size is None:
            raise LayoutError(f"the bundle lacks {what} {_shown(desc.digest)}")
        if size != desc.size:
            raise LayoutError(
                f"{what} {desc.digest} is {size} bytes in the bundle, but its descriptor "
                f"says {desc.size}"
            )

    def manifests_in_order(self) -> list[Manifest]:
        """Every manifest reachable from the tags, children before their index."""
        order: list[Manifest] = []
        seen: set[str] = set()
        for desc in self.tags.values():
            self._walk(desc, 0, order, seen)
        return order

    def blobs_of(self, manifest: Manifest) -> list[Descriptor]:
        """The config and layer descriptors of an image manifest ([] for an index)."""
        if manifest.media_type in INDEX_TYPES:
            return []
        return [d for d in [manifest.config, *manifest.layers] if d is not None]

    def verify(self) -> None:
        """Check every reachable manifest and the digest and size of every blob they name."""
        seen: set[str] = set()
        for manifest in self.manifests_in_order():
            for desc in self.blobs_of(manifest):
                if desc.digest in seen:
                    continue
                if not is_sha256_digest(desc.digest):
                    raise LayoutError(f"blob {_shown(desc.digest)} is not a sha256 digest")
                for _ in self.open_blob(desc.digest):
                    pass
                seen.add(desc.digest)
        self._verified = True


# --- a read-only registry view --------------------------------------------------------------


class LayoutRegistryView(RegistryClient):
    """A verified :class:`LayoutReader` as a read-only registry holding one repository.

    Every read method answers from the archive, whatever repository is asked for (a bundle
    holds one); anything else (pushes, deletes, mounts, pings) fails with a
    :class:`LayoutError` instead of reaching a network. ``registry`` is the name references
    will carry (where the content is headed, say); nothing connects to it.
    """

    def __init__(self, layout: LayoutReader, registry: str = "bundle.invalid") -> None:
        super().__init__(registry)
        self.layout = layout

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise LayoutError(f"a bundle is read-only and offline ({method} {path} is not possible)")

    def _find(self, reference: str) -> Descriptor:
        if is_digest(reference):
            size = self.layout.blob_size(reference)
            if size is None:
                raise NotFoundError(f"the bundle has no manifest {reference}")
            return Descriptor(media_type="", digest=reference, size=size)
        desc = self.layout.tags.get(reference)
        if desc is None:
            raise NotFoundError(f"the bundle has no tag {_shown(reference)}")
        return desc

    def resolve(self, repository: str, reference: str) -> str:
        check_repository(repository)
        return self.get_manifest(repository, reference).digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        check_repository(repository)
        desc = self._find(reference)
        return self.layout.manifest(desc.digest, desc.media_type or None)

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        check_repository(repository)
        return sorted(self.layout.tags)

    def list_catalog(self, page_size: int = 1000) -> list[str]:
        return []

    def blob_size(self, repository: str, digest: str) -> int | None:
        check_repository(repository)
        return self.layout.blob_size(digest)

    def open_blob(
        self,
        repository: str,
        digest: str,
        *,
        chunk_size: int = CHUNK,
        progress: Progress | None = None,
        max_bytes: int | None = None,
    ) -> Iterator[bytes]:
        check_repository(repository)
        size = self.layout.blob_size(digest)
        if size is None:
            raise NotFoundError(f"the bundle has no blob {_shown(digest)}")
        if max_bytes is not None and size > max_bytes:
            raise ResponseTooLargeError(
                f"blob {digest} in the bundle is larger than the {max_bytes} bytes allowed"
            )
        for block in self.layout.open_blob(digest, chunk_size):
            if progress is not None:
                progress(len(block))
            yield block
