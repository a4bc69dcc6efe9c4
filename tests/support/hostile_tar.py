"""Hand-made result archives that break one rule each, for the reader's and the registry tests.

Every builder returns the whole plaintext (a tar) as bytes. ``CASES`` pairs each with the
rule the refusal must name; the registry tests seal them as signed results (a station can sign
anything) and the archive tests feed them to the reader directly.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator

BLOCK = tarfile.BLOCKSIZE


Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, data: bytes | None = b"x", *, kind: bytes = tarfile.REGTYPE,
           linkname: str = "", pax: dict[str, str] | None = None) -> Member:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if data is not None and kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
        data = None
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def folder(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, None, kind=tarfile.DIRTYPE)


def build(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT,
          global_pax: dict[str, str] | None = None) -> bytes:  # fmt: skip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_pax) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def pax_record(key: str, value: bytes) -> bytes:
    """One PAX record, ``"<length> key=value\\n"``, with its self-inclusive length."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax_header(data_size: int) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = data_size
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def raw_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def finish(body: bytes) -> bytes:
    """Add the end-of-archive blocks and pad to a whole record, as the writer does."""
    body += bytes(2 * BLOCK)
    return body + bytes(-len(body) % tarfile.RECORDSIZE)


def sparse_gnu() -> bytes:
    """An old-GNU sparse member: a few bytes on the wire that tar expands to 1 GiB."""
    header = bytearray(raw_header("huge.bin", 512, tarfile.GNUTYPE_SPARSE))
    header[483:495] = b"%011o\x00" % (1 << 30)  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return finish(bytes(header) + b"x" * 512)


def sparse_pax() -> bytes:
    """A PAX 1.0 sparse member declaring 1 GiB of holes in a 10 KiB archive."""
    return build(member("huge.bin", b"1\n0\n512\n" + bytes(1024), pax={
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "huge.bin",
        "GNU.sparse.realsize": str(1 << 30)}))  # fmt: skip


def large_pax(size: int = 64 * 1024) -> bytes:
    records = pax_record("comment", b"x" * size)
    body = pax_header(len(records)) + records + bytes(-len(records) % BLOCK)
    body += raw_header("after.txt", 1) + b"x" + bytes(BLOCK - 1)
    return finish(body)


def size_beyond_length() -> bytes:
    """A member whose header claims 1 GiB in an archive of a few KiB."""
    return finish(raw_header("big.bin", 1 << 30) + b"x" * BLOCK)


def trailing_garbage() -> bytes:
    good = build(member("a.txt"))
    return good[:-BLOCK] + b"\x01" * BLOCK


def bad_checksum() -> bytes:
    data = bytearray(build(member("a.txt"), member("b.txt")))
    data[2 * BLOCK + 10] ^= 0x01  # inside the second member's header (its name)
    return bytes(data)


def deep() -> bytes:
    parts = [folder("/".join(["d"] * i)) for i in range(1, 66)]
    return build(*parts)


def long_path() -> bytes:
    names = ["/".join([c * 250 for c in "abcde"[:i]]) for i in range(1, 6)]
    return build(*[folder(n) for n in names])


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "duplicate-name": (lambda: build(member("a.txt"), member("a.txt")),
                       r"'a.txt': the name appears twice"),
    "file-and-folder": (lambda: build(member("a"), folder("a")),
                        r"'a': the name appears as both a file and a folder"),
    "folder-and-file": (lambda: build(folder("a"), member("a")),
                        r"'a': the name appears as both a file and a folder"),
    "file-under-a-file": (lambda: build(member("a"), member("a/b")),
                          r"'a/b': its folder 'a' is a file in this archive"),
    "undeclared-folder": (lambda: build(member("x/y")),
                          r"'x/y': its folder 'x' is not an earlier entry"),
    "nul-in-name": (lambda: build(member("ok", pax={"path": "a\x00b"})),
                    r"'a\\x00b': NUL bytes are not allowed in a name"),
    "control-character": (lambda: build(member("a\nb.csv")),
                          r"'a\\nb.csv': control characters are not allowed"),
    "long-component": (lambda: build(member("n" * 300)),
                       r"name components longer than 255 bytes are not allowed"),
    "long-path": (long_path, r"paths longer than 1024 bytes are not allowed"),
    "deep-path": (deep, r"paths deeper than 64 levels are not allowed"),
    "sparse-gnu": (sparse_gnu, r"'huge.bin': sparse files are not allowed"),
    "sparse-pax": (sparse_pax, r"sparse files are not allowed"),
    "large-pax": (large_pax,
                  r"\(.\./\./@PaxHeader.\) is 65551 bytes, over the limit of 8192 bytes"),
    "unknown-pax-key": (lambda: build(member("a.txt", pax={"comment": "hi"})),
                        r"the PAX key 'comment' is not allowed"),
    "global-header": (lambda: build(member("a.txt"), global_pax={"comment": "hi"}),
                      r"global extended headers are not allowed"),
    "gnu-long-name": (lambda: build(member("g" * 120), fmt=tarfile.GNU_FORMAT),
                      r"GNU long-name headers are not allowed"),
    "symlink": (lambda: build(member("s", None, kind=tarfile.SYMTYPE, linkname="/etc/passwd")),
                r"'s': links are not allowed in a result \(-> '/etc/passwd'\)"),
    "hardlink": (lambda: build(member("h", None, kind=tarfile.LNKTYPE, linkname="/etc/shadow")),
                 r"'h': links are not allowed"),
    "device": (lambda: build(member("null", None, kind=tarfile.CHRTYPE)),
               r"'null': special files are not allowed"),
    "fifo": (lambda: build(member("pipe", None, kind=tarfile.FIFOTYPE)),
             r"'pipe': special files are not allowed"),
    "absolute": (lambda: build(member("/etc/cron.d/evil")),
                 r"absolute paths are not allowed"),
    "dotdot": (lambda: build(member("../escape.txt")), r"'\.\.' is not allowed"),
    "size-beyond-length": (size_beyond_length,
                           r"'big.bin': its 1073741824 bytes run past the archive's signed length"),
    "trailing-garbage": (trailing_garbage, r"data after the end of the archive"),
    "bad-checksum": (bad_checksum, r"byte 1024: not a valid tar header \(bad checksum\)"),
}  # fmt: skip


def large_pax_stream(size: int) -> tuple[Iterator[bytes], int]:
    """An archive whose first entry has a PAX header of about ``size`` bytes, made lazily.

    Returns the chunks and the archive's length. A reader that reads extended headers whole
    would hold all of it in memory.
    """
    # The record's length field counts its own digits: find the fixed point for this size.
    n = size + len(b" comment=\n")
    while len(str(n + len(str(n)))) != len(str(n)):
        n += 1
    total = n + len(str(n))
    pad = -total % BLOCK
    tail = raw_header("after.txt", 1) + b"x" + bytes(BLOCK - 1) + bytes(2 * BLOCK)
    length = BLOCK + total + pad + len(tail)
    tail += bytes(-length % tarfile.RECORDSIZE)
    length += -length % tarfile.RECORDSIZE

    def chunks() -> Iterator[bytes]:
        yield pax_header(total)
        yield str(total).encode() + b" comment="
        left = size
        while left:
            step = min(left, 1 << 20)
            yield b"x" * step
            left -= step
        yield b"\n" + bytes(pad)
        yield tail

    return chunks(), length
