"""The result archive: a deterministic tar of an output folder, and safe extraction of one.

Implements the plaintext of the layer in PROTOCOL.md "A result": a deterministic tar of the
output folder (sorted names, mtime 0, uid/gid 0, no special files, no links). :func:`plan_tar`
lists what a folder holds and refuses what is not allowed before a byte is written,
:class:`TarStream` produces the archive on demand and :func:`tar_size` gives its exact length.

Reading is the mirror image: :class:`ArchiveReader` accepts exactly that format from a
stream, front to back, with bounded memory, and refuses every entry that breaks a rule (links,
special files, sparse files, duplicate names, a file and a folder of one name, NUL and control
characters, over-long or over-deep paths, oversized extended headers, sizes beyond the signed
length) before anything of it is written; :func:`safe_extract` writes what it accepts.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PhtError, UnsafeArchiveError

__all__ = [
    "DEFAULT_MAX_EXTRACT_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_NAME_BYTES",
    "MAX_NAME_TOTAL",
    "MAX_PATH_BYTES",
    "MAX_PAX_BYTES",
    "ArchiveMember",
    "ArchiveReader",
    "ExtractStats",
    "Progress",
    "TarEntry",
    "TarStream",
    "name_problem",
    "plan_tar",
    "safe_extract",
    "tar_bytes",
    "tar_size",
]

#: Extraction refuses archives whose files add up to more than this (override per call).
DEFAULT_MAX_EXTRACT_BYTES = 16 * 1024**3

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_READ = 1024 * 1024

Progress = Callable[[int], None]


# --- deterministic tar ------------------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    """One member of a result archive: a folder or a regular file, relative to the root."""

    arcname: str
    path: Path
    is_dir: bool
    size: int
    mode: int
    header: bytes = field(repr=False)


def _header(arcname: str, *, is_dir: bool, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(arcname)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX carries UTF-8 names of any length; with mtime 0 and ids 0 it adds no time records.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def plan_tar(root: Path) -> list[TarEntry]:
    """List what a result archive of ``root`` holds, refusing anything not allowed.

    Only folders and regular files are allowed; symbolic links (wherever they point),
    device files, FIFOs and sockets are refused with an error naming the path, and so is a
    name that breaks the rules a reader applies (:func:`name_problem`, :data:`MAX_ENTRIES`,
    :data:`MAX_NAME_TOTAL`), so a station never seals what cannot be opened. Nothing is
    followed, so nothing outside ``root`` can be reached. Modes are normalised to 0755 for
    folders and executable files and 0644 for other files.
    """
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise UnsafeArchiveError(f"cannot read output folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeArchiveError(f"{root} is not a folder")
    entries: list[TarEntry] = []
    totals = [0, 0]  # entries, name bytes

    def walk(folder: Path, prefix: str) -> None:
        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise UnsafeArchiveError(f"cannot list {prefix or '.'}: {exc.strerror}") from exc
        # Sort by UTF-8 bytes so the order does not depend on the locale.
        for name in sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape")):
            rel = f"{prefix}{name}"
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise UnsafeArchiveError(
                    f"{rel.encode('utf-8', 'surrogateescape')!r}: file name is not valid UTF-8"
                ) from None
            problem = name_problem(rel)
            if problem:
                raise UnsafeArchiveError(f"{_shown(rel)}: {problem}")
            totals[0] += 1
            totals[1] += len(rel.encode("utf-8"))
            if totals[0] > MAX_ENTRIES:
                raise UnsafeArchiveError(
                    f"{_shown(rel)}: a result holds at most {MAX_ENTRIES} files and folders"
                )
            if totals[1] > MAX_NAME_TOTAL:
                raise UnsafeArchiveError(
                    f"{_shown(rel)}: a result's names add up to at most {MAX_NAME_TOTAL} bytes"
                )
            path = folder / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeArchiveError(f"{rel}: symbolic links are not allowed in a result")
            if stat.S_ISDIR(st.st_mode):
                entries.append(
                    TarEntry(
                        rel, path, True, 0, 0o755, _header(rel, is_dir=True, size=0, mode=0o755)
                    )
                )
                walk(path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(
                    TarEntry(
                        rel,
                        path,
                        False,
                        st.st_size,
                        mode,
                        _header(rel, is_dir=False, size=st.st_size, mode=mode),
                    )
                )
            else:
                kind = (
                    "FIFO"
                    if stat.S_ISFIFO(st.st_mode)
                    else "socket"
                    if stat.S_ISSOCK(st.st_mode)
                    else "device file"
                )
                raise UnsafeArchiveError(f"{rel}: a {kind} is not allowed in a result")

    walk(root, "")
    return entries


def tar_size(entries: Sequence[TarEntry]) -> int:
    """The exact byte length of the archive :class:`TarStream` produces for ``entries``."""
    total = 0
    for e in entries:
        total += len(e.header)
        if not e.is_dir:
            total += -(-e.size // _BLOCK) * _BLOCK
    total += 2 * _BLOCK
    return -(-total // _RECORD) * _RECORD


class TarStream(io.RawIOBase):
    """A readable stream of the deterministic tar of a planned folder, made on demand.

    The same folder always gives the same bytes: sorted names, mtime 0, uid/gid 0, empty
    owner names, normalised modes, PAX headers, padded to a whole tar record.
    """

    def __init__(self, entries: Sequence[TarEntry], progress: Progress | None = None) -> None:
        super().__init__()
        self._chunks = self._generate(entries)
        self._pending = memoryview(b"")
        self._progress = progress
        self.produced = 0

    def readable(self) -> bool:
        return True

    def _generate(self, entries: Sequence[TarEntry]) -> Iterator[bytes]:
        written = 0
        for e in entries:
            yield e.header
            written += len(e.header)
            if e.is_dir:
                continue
            remaining = e.size
            with open(e.path, "rb") as f:
                while remaining > 0:
                    chunk = f.read(min(_READ, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
                if remaining != 0 or f.read(1):
                    raise UnsafeArchiveError(f"{e.arcname}: file changed size while it was sealed")
            pad = -e.size % _BLOCK
            if pad:
                yield bytes(pad)
            written += e.size + pad
        end = 2 * _BLOCK
        end += -(written + end) % _RECORD
        yield bytes(end)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.produced += n
        if self._progress is not None:
            self._progress(n)
        return n


def tar_bytes(root: Path) -> bytes:
    """The whole deterministic tar of ``root`` in memory (for tests and small folders)."""
    return TarStream(plan_tar(root)).read()


# --- the rules every entry name follows --------------------------------------------------

#: Longest name component, in UTF-8 bytes (Linux's NAME_MAX).
MAX_NAME_BYTES = 255
#: Longest entry path, in UTF-8 bytes, relative to the result folder.
MAX_PATH_BYTES = 1024
#: Deepest entry path, in components.
MAX_DEPTH = 64
#: Most entries (files and folders) in one result.
MAX_ENTRIES = 100_000
#: Most bytes of entry names in one result, all names together (bounds the reader's memory).
MAX_NAME_TOTAL = 16 * 1024 * 1024
#: Largest PAX extended header. The writer puts at most a path (≤ MAX_PATH_BYTES) and a size
#: there, about 1.1 KiB; anything near this limit is not a result archive.
MAX_PAX_BYTES = 8 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ZERO_BLOCK = bytes(_BLOCK)


def _shown(name: str) -> str:
    """``name`` as it may appear in a message: escaped (``repr``) and cut to a sane length."""
    text = repr(name)
    if len(text) > 160:
        size = len(name.encode("utf-8", "surrogateescape"))
        text = f"{text[:120]}… ({size} bytes)"
    return text


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as the path of a result entry, or None.

    The same rules hold when a folder is sealed (:func:`plan_tar`) and when an archive is
    read (:class:`ArchiveReader`), so a station never seals what a reader will refuse. A name
    is a relative path of ``/``-separated components, none empty, ``.`` or ``..``; it holds no
    NUL or other control character; no component is longer than :data:`MAX_NAME_BYTES`, the
    path is not longer than :data:`MAX_PATH_BYTES` nor deeper than :data:`MAX_DEPTH`.
    """
    if not name:
        return "an entry needs a name"
    if "\x00" in name:
        return "NUL bytes are not allowed in a name"
    if _CONTROL.search(name):
        return "control characters are not allowed in a name"
    if name.startswith("/"):
        return "absolute paths are not allowed in a result"
    parts = name.split("/")
    if ".." in parts:
        return "'..' is not allowed in a result path"
    if any(p in ("", ".") for p in parts):
        return "empty and '.' path components are not allowed in a result path"
    if len(parts) > MAX_DEPTH:
        return f"paths deeper than {MAX_DEPTH} levels are not allowed in a result"
    try:
        encoded = [p.encode("utf-8") for p in parts]
    except UnicodeEncodeError:
        return "a name must be valid UTF-8"
    if any(len(p) > MAX_NAME_BYTES for p in encoded):
        return f"name components longer than {MAX_NAME_BYTES} bytes are not allowed"
    if sum(len(p) for p in encoded) + len(parts) - 1 > MAX_PATH_BYTES:
        return f"paths longer than {MAX_PATH_BYTES} bytes are not allowed in a result"
    return None


# --- reading a result archive ------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveMember:
    """One entry of a result archive as :class:`ArchiveReader` accepted it."""

    name: str
    is_dir: bool
    size: int
    executable: bool


_LINK_TYPES = (tarfile.SYMTYPE, tarfile.LNKTYPE)
_SPECIAL_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


class ArchiveReader:
    """A strict, bounded reader of the result archive format, front to back, in one pass.

    The format is what :class:`TarStream` writes and nothing more: 512-byte ustar headers of
    folders and regular files, each optionally preceded by one PAX extended header holding
    ``path`` and/or ``size``, then zero blocks to the end. Header blocks are parsed by
    :meth:`tarfile.TarInfo.frombuf` (checksum, octal and base-256 fields, the ustar prefix);
    everything around them is done here, because :mod:`tarfile`'s stream reader reads an
    extended header, a GNU long name or a sparse map whole into memory before a caller can
    look at it, silently stops at a damaged header, and expands sparse files.

    Every entry is checked before :meth:`members` yields it, so nothing of a refused entry is
    ever written: the name rules (:func:`name_problem`), no duplicate names, every entry's
    folder an earlier folder entry of the archive (so a file and a folder never share a name
    and nothing is written through a file), at most :data:`MAX_ENTRIES` entries, extended
    headers at most :data:`MAX_PAX_BYTES`, file sizes that fit in what is left of the signed
    ``length`` and in ``max_bytes``. Links, device files, FIFOs, sparse files, GNU long-name
    and global headers, unknown entry types and unknown PAX keys are refused. When the
    entries end, the rest must be zeros and the stream must end at exactly ``length`` bytes.
    Each refusal is an :class:`UnsafeArchiveError` naming the entry (or its byte offset) and
    the rule. Memory is bounded by one read of 1 MiB plus the names seen so far.
    """

    def __init__(
        self,
        stream: io.RawIOBase | io.BufferedIOBase | Any,
        *,
        length: int | None = None,
        max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    ) -> None:
        self._stream = stream
        self._length = length
        self._max_bytes = max_bytes
        self.offset = 0
        self.file_bytes = 0
        self._left = 0  # data bytes of the last member not yet read
        self._pad = 0  # its padding
        self._kinds: dict[str, bool] = {}  # name -> is a folder
        self._name_bytes = 0

    # reading ----------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        if self._length is not None and self.offset + n > self._length:
            raise UnsafeArchiveError(
                f"byte {self.offset}: the archive runs past its signed length of "
                f"{self._length} bytes"
            )
        data = self._stream.read(n)
        if data is None or len(data) != n:
            parts = [data or b""]
            got = len(parts[0])
            while got < n:
                more = self._stream.read(n - got)
                if not more:
                    raise UnsafeArchiveError(
                        f"byte {self.offset + got}: the archive ends early (truncated)"
                    )
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += n
        return bytes(data)

    def _skip(self) -> None:
        while self._left:
            n = min(_READ, self._left)
            self._read(n)
            self._left -= n
        if self._pad:
            self._read(self._pad)
            self._pad = 0

    def _data(self) -> Iterator[bytes]:
        while self._left:
            chunk = self._read(min(_READ, self._left))
            self._left -= len(chunk)
            yield chunk

    def _finish(self) -> None:
        """After the first zero block: zeros up to the signed length, then the stream ends."""
        while self._length is None or self.offset < self._length:
            want = _READ if self._length is None else min(_READ, self._length - self.offset)
            at = self.offset
            chunk = self._stream.read(want)
            if not chunk:
                if self._length is None:
                    return
                raise UnsafeArchiveError(
                    f"byte {at}: the archive ends before its signed length of {self._length} bytes"
                )
            self.offset += len(chunk)
            if chunk.count(0) != len(chunk):
                raise UnsafeArchiveError(f"byte {at}: data after the end of the archive")
        if self._stream.read(1):
            raise UnsafeArchiveError(
                f"the archive is longer than its signed length of {self._length} bytes"
            )

    # headers ----------------------------------------------------------------------------

    def _header(self, block: bytes, at: int) -> tarfile.TarInfo:
        try:
            return tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except UnicodeDecodeError:
            raise UnsafeArchiveError(
                f"byte {at}: the entry's header holds a name that is not valid UTF-8"
            ) from None
        except (tarfile.TarError, ValueError, IndexError) as exc:
            raise UnsafeArchiveError(f"byte {at}: not a valid tar header ({exc})") from None

    def _pax(self, info: tarfile.TarInfo, at: int) -> dict[str, str]:
        where = f"the extended header at byte {at}"
        if not 0 <= info.size <= MAX_PAX_BYTES:
            raise UnsafeArchiveError(
                f"{where} ({_shown(info.name)}) is {info.size} bytes, over the limit of "
                f"{MAX_PAX_BYTES} bytes for a result"
            )
        data = self._read(info.size)
        self._read(-info.size % _BLOCK)
        records: dict[str, str] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos, pos + 12)
            digits = data[pos:space] if space > pos else b""
            if not digits.isdigit():
                raise UnsafeArchiveError(f"{where} is malformed: a record has no length")
            end = pos + int(digits)
            if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
                raise UnsafeArchiveError(f"{where} is malformed: a record's length is wrong")
            key_bytes, eq, value_bytes = data[space + 1 : end - 1].partition(b"=")
            try:
                key, value = key_bytes.decode("utf-8"), value_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise UnsafeArchiveError(f"{where} is malformed: not valid UTF-8") from None
            if not eq:
                raise UnsafeArchiveError(f"{where} is malformed: a record has no '='")
            if key.startswith("GNU.sparse."):
                raise UnsafeArchiveError(f"{where}: sparse files are not allowed in a result")
            if key == "linkpath":
                raise UnsafeArchiveError(f"{where}: links are not allowed in a result")
            if key not in ("path", "size"):
                raise UnsafeArchiveError(
                    f"{where}: the PAX key {_shown(key)} is not allowed in a result"
                )
            if key in records:
                raise UnsafeArchiveError(f"{where}: the PAX key {key!r} appears twice")
            records[key] = value
            pos = end
        return records

    def _refuse_type(self, info: tarfile.TarInfo, name: str) -> None:
        shown = _shown(name)
        if info.type in _LINK_TYPES:
            raise UnsafeArchiveError(
                f"{shown}: links are not allowed in a result (-> {_shown(info.linkname)})"
            )
        if info.type in _SPECIAL_TYPES:
            raise UnsafeArchiveError(f"{shown}: special files are not allowed in a result")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError(f"{shown}: sparse files are not allowed in a result")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            raise UnsafeArchiveError(
                f"{shown}: GNU long-name headers are not allowed in a result (it uses PAX)"
            )
        if info.type == tarfile.XGLTYPE:
            raise UnsafeArchiveError(
                f"{shown}: global extended headers are not allowed in a result"
            )
        if info.type == tarfile.XHDTYPE:
            raise UnsafeArchiveError(
                f"{shown}: an extended header must be followed by a file or folder entry"
            )
        raise UnsafeArchiveError(
            f"{shown}: entries of type {info.type!r} are not allowed in a result"
        )

    def _member(self, info: tarfile.TarInfo, pax: dict[str, str] | None) -> ArchiveMember:
        name = info.name
        if pax and "path" in pax:
            name = pax["path"]
            if info.type == tarfile.DIRTYPE and name.endswith("/"):
                name = name[:-1]
        if info.type not in (*_FILE_TYPES, tarfile.DIRTYPE):
            self._refuse_type(info, name)
        is_dir = info.type == tarfile.DIRTYPE
        shown = _shown(name)
        size = info.size
        if pax and "size" in pax:
            text = pax["size"]
            if not (text.isascii() and text.isdigit() and len(text) <= 20):
                raise UnsafeArchiveError(f"{shown}: its PAX size {_shown(text)} is not a size")
            size = int(text)
        if size < 0:
            raise UnsafeArchiveError(f"{shown}: a negative size is not allowed")
        if is_dir and size:
            raise UnsafeArchiveError(f"{shown}: a folder entry must not carry data")
        problem = name_problem(name)
        if problem:
            raise UnsafeArchiveError(f"{shown}: {problem}")
        seen = self._kinds.get(name)
        if seen is not None:
            what = "twice" if seen == is_dir else "as both a file and a folder"
            raise UnsafeArchiveError(f"{shown}: the name appears {what} in the archive")
        parent = name.rpartition("/")[0]
        if parent and self._kinds.get(parent) is not True:
            if parent in self._kinds:
                raise UnsafeArchiveError(
                    f"{shown}: its folder {_shown(parent)} is a file in this archive"
                )
            raise UnsafeArchiveError(
                f"{shown}: its folder {_shown(parent)} is not an earlier entry of the archive"
            )
        if len(self._kinds) >= MAX_ENTRIES:
            raise UnsafeArchiveError(
                f"{shown}: a result holds at most {MAX_ENTRIES} files and folders"
            )
        self._name_bytes += len(name.encode("utf-8"))
        if self._name_bytes > MAX_NAME_TOTAL:
            raise UnsafeArchiveError(
                f"{shown}: a result's names add up to at most {MAX_NAME_TOTAL} bytes"
            )
        padded = size + (-size % _BLOCK)
        if self._length is not None and self.offset + padded > self._length:
            raise UnsafeArchiveError(
                f"{shown}: its {size} bytes run past the archive's signed length of "
                f"{self._length} bytes"
            )
        if self.file_bytes + size > self._max_bytes:
            raise UnsafeArchiveError(
                f"{shown}: the result holds more than the extraction limit of "
                f"{self._max_bytes} bytes"
            )
        self.file_bytes += size
        self._kinds[name] = is_dir
        self._left, self._pad = size, padded - size
        return ArchiveMember(name, is_dir, size, bool(info.mode & 0o111))

    # the entries ------------------------------------------------------------------------

    def members(self) -> Iterator[tuple[ArchiveMember, Iterator[bytes]]]:
        """Yield each accepted entry with an iterator of its bytes (empty for a folder).

        An entry's bytes must be read before the next entry is asked for, or they are
        skipped. The generator ends only when the whole archive has been checked.
        """
        while True:
            self._skip()
            at = self.offset
            block = self._read(_BLOCK)
            if block == _ZERO_BLOCK:
                self._finish()
                return
            info = self._header(block, at)
            pax = None
            if info.type == tarfile.XHDTYPE:
                pax = self._pax(info, at)
                at = self.offset
                block = self._read(_BLOCK)
                if block == _ZERO_BLOCK:
                    raise UnsafeArchiveError(
                        f"byte {at}: the archive ends right after an extended header"
                    )
                info = self._header(block, at)
            yield self._member(info, pax), self._data()


# --- safe extraction --------------------------------------------------------------------


@dataclass
class ExtractStats:
    """What :func:`safe_extract` wrote."""

    files: int = 0
    folders: int = 0
    bytes: int = 0


def safe_extract(
    stream: io.RawIOBase | io.BufferedIOBase | Any,
    dest: Path,
    *,
    length: int | None = None,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: Progress | None = None,
) -> ExtractStats:
    """Extract a result archive stream into the existing, empty folder ``dest``.

    Reads with :class:`ArchiveReader` (every rule is checked before an entry is written;
    ``length`` is the signed plaintext length, when known). Folders are created one at a
    time (``mkdir``, never with parents, never over anything) and files with
    ``O_EXCL | O_NOFOLLOW``, so nothing already at ``dest`` is followed or overwritten.
    ``dest`` should be a private staging folder: an archive refused half-way has written its
    earlier entries there, and the caller removes it.
    """
    stats = ExtractStats()
    root = os.fspath(dest)
    reader = ArchiveReader(stream, length=length, max_bytes=max_bytes)
    for member, data in reader.members():
        target = os.path.join(root, member.name)
        try:
            if member.is_dir:
                os.mkdir(target, 0o755)
                stats.folders += 1
                continue
            fd = os.open(
                target,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o755 if member.executable else 0o644,
            )
            with os.fdopen(fd, "wb") as out:
                for chunk in data:
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except OSError as exc:
            raise PhtError(
                f"cannot write {_shown(member.name)} of the result into {dest}: {exc.strerror}"
            ) from None
        stats.files += 1
        stats.bytes += member.size
    return stats
