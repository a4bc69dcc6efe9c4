"""Scan files, SQLite databases, registry storage and images for secrets (issue 14).

A :class:`Secrets` holds named needles (``"station-a's age identity"`` -> bytes). The scan
reads every byte of every file under the folders given; a gzip file (a registry layer) is
also read decompressed, a tar (``docker image save``) entry by entry, and a SQLite database
both as a file and table by table (every value as text, a zlib-compressed one also
decompressed). A find is reported as ``<file>: <name of the secret>``, never the secret.
"""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 8 << 20
#: Any age secret key, whoever's: bech32, case-insensitive.
AGE_SECRET = re.compile(rb"AGE-SECRET-KEY-1[0-9A-Z]{20,}", re.IGNORECASE)
#: Any private key PEM header (an encrypted one too).
PEM_PRIVATE = re.compile(rb"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----")


@dataclass
class Secrets:
    needles: dict[str, bytes] = field(default_factory=dict)
    #: Also report any age secret key or private key PEM header, not only the named ones
    #: (off for image layers: a base image may ship test keys of its own).
    generic: bool = True

    def add(self, name: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        if len(data) < 12:
            raise ValueError(f"{name} is too short to scan for without false finds")
        self.needles[name] = data

    def add_pem(self, name: str, pem: str | bytes) -> None:
        """An encrypted PEM's body lines (all but the first, which holds algorithm ids and
        parameters common to many keys)."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "-----" not in ln]
        for i, line in enumerate(lines[1:], 1):
            if len(line) >= 24:
                self.add(f"{name} (PEM line {i})", line)

    def add_ec_private(self, name: str, private: Any) -> None:
        """A P-256 private key (cryptography's): its scalar as bytes and hex, and the base64
        of its unencrypted PKCS#8 PEM where only the scalar is encoded (PEM line 2)."""
        from cryptography.hazmat.primitives import serialization

        scalar = private.private_numbers().private_value.to_bytes(32, "big")
        self.add(f"{name} (raw)", scalar)
        self.add(f"{name} (hex)", scalar.hex())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        lines = [ln for ln in pem.splitlines() if "-----" not in ln]
        self.add(f"{name} (unencrypted PEM)", lines[1][:24])

    @property
    def longest(self) -> int:
        return max((len(v) for v in self.needles.values()), default=0)

    def found_in(self, data: bytes) -> set[str]:
        found = {name for name, needle in self.needles.items() if needle in data}
        if not self.generic:
            return found
        if AGE_SECRET.search(data):
            found.add("an age secret key (AGE-SECRET-KEY-1…)")
        if PEM_PRIVATE.search(data):
            found.add("a private key PEM")
        return found


def _chunks(stream: io.BufferedIOBase | io.RawIOBase | object, overlap: int) -> Iterator[bytes]:
    """Chunks of a binary stream, each starting with the previous one's last ``overlap``."""
    tail = b""
    read = stream.read  # type: ignore[attr-defined]
    while True:
        data = read(CHUNK)
        if not data:
            return
        yield tail + data
        tail = (tail + data)[-overlap:]


def _scan_stream(stream: object, secrets: Secrets) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(stream, max(secrets.longest, 64)):
        found |= secrets.found_in(chunk)
    return found


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    inflate = zlib.decompressobj(wbits=47)
    with path.open("rb") as f:
        while data := f.read(CHUNK):
            yield inflate.decompress(data)
            while inflate.unconsumed_tail:
                yield inflate.decompress(inflate.unconsumed_tail)
            if inflate.eof:
                return


def scan_file(path: Path, secrets: Secrets) -> set[str]:
    """The names of the secrets in ``path``: its bytes, decompressed if gzip, a tar's entries,
    a SQLite database's tables."""
    with path.open("rb") as f:
        found = _scan_stream(f, secrets)
        f.seek(0)
        head = f.read(16)
    if head[:2] == b"\x1f\x8b":
        tail = b""
        overlap = max(secrets.longest, 64)
        with contextlib.suppress(zlib.error, EOFError):
            for data in _gunzip_chunks(path):
                found |= secrets.found_in(tail + data)
                tail = (tail + data)[-overlap:]
    if head.startswith(b"SQLite format 3"):
        found |= scan_sqlite(path, secrets)
    if tarfile.is_tarfile(path):
        found |= _scan_tar(path, secrets)
    return found


def _scan_tar(path: Path, secrets: Secrets) -> set[str]:
    found: set[str] = set()
    with contextlib.suppress(tarfile.TarError, OSError), tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            extracted = tar.extractfile(member)
            if extracted is None:
                continue
            data = extracted.read(CHUNK)
            found |= secrets.found_in(data)
            if data[:2] == b"\x1f\x8b":
                with contextlib.suppress(zlib.error, EOFError):
                    found |= secrets.found_in(zlib.decompress(data, wbits=47))
            if len(data) == CHUNK:  # a large entry: the rest, streamed
                found |= _scan_stream(extracted, secrets)
    return found


def scan_sqlite(path: Path, secrets: Secrets) -> set[str]:
    """Every value of every table of a SQLite database (read-only), as text; a value that is
    zlib-compressed is decompressed too."""
    found: set[str] = set()
    # A writer (Airflow's scheduler) may hold the lock for a moment: wait for it.
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=120)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            for row in db.execute(f"SELECT * FROM {quoted}"):  # noqa: S608 - names from the db
                for value in row:
                    if value is None:
                        continue
                    data = value if isinstance(value, bytes) else str(value).encode()
                    found |= {f"{n} (table {table})" for n in secrets.found_in(data)}
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            inflated = zlib.decompress(value)
                            found |= {
                                f"{n} (table {table}, decompressed)"
                                for n in secrets.found_in(inflated)
                            }
    finally:
        db.close()
    return found


def scan_tree(roots: Iterable[Path], secrets: Secrets, skip: Iterable[Path] = ()) -> list[str]:
    """``"<file>: <secret name>"`` for every find in every regular file under ``roots``
    (a root may be a file), except under ``skip``."""
    skipped = [p.resolve() for p in skip]
    findings = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for path in files:
            if path.is_symlink() or not path.is_file():
                continue
            resolved = path.resolve()
            if any(resolved == s or s in resolved.parents for s in skipped):
                continue
            try:
                names = scan_file(path, secrets)
            except FileNotFoundError:
                continue  # removed while the scan ran (a journal, a temporary file)
            except OSError as exc:
                findings.append(f"{path}: unreadable ({exc.strerror})")
                continue
            findings.extend(f"{path}: {name}" for name in sorted(names))
    return findings


def party_secrets(needles: Secrets, name: str, party: Any, key_file: Path | None = None) -> None:
    """A party's signing key, age identity and (a station's) passphrase-encrypted key file."""
    needles.add_ec_private(f"{name}'s signing key", party.key._private)
    needles.add(f"{name}'s age identity", party.age.secret_text())
    if key_file is not None:
        needles.add_pem(f"{name}'s encrypted key file", key_file.read_text())


def assert_scan_finds(needles: Secrets, name: str) -> None:
    """The scan finds the secret ``name`` in a file planted with it (a scan that cannot find
    anything would pass every check)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        planted = Path(folder) / "planted.log"
        planted.write_bytes(b"x " + needles.needles[name] + b" y\n")
        assert scan_tree([Path(folder)], needles) == [f"{planted}: {name}"]


def scan_deployment(
    needles: Secrets,
    *,
    airflow_home: Path,
    log_dir: Path,
    stations: Iterable[Path],
    registry_storage: Path,
    extra: Iterable[Path] = (),
    docker_client: Any = None,
    registry_host: str = "",
) -> tuple[list[str], int]:
    """Scan a test deployment: every Airflow log (task logs and the components' logs in
    ``log_dir``) and its SQLite database; each station's folder but its keys and data
    (work folders, audit log); ``extra`` (the central service's database and log);
    registry storage (every blob and manifest, layers decompressed; named secrets only, as
    a base image may ship test keys of its own); and every image on the engine from
    ``registry_host`` (``docker image save``). Returns the finds and how many images were
    scanned."""
    import tempfile

    roots = [p for p in stations]
    places = [
        airflow_home / "logs",
        *sorted(log_dir.glob("airflow-*.log")),
        *sorted(airflow_home.glob("airflow.db*")),
        *extra,
        *roots,
    ]
    skip = [p for r in roots for p in (r / "keys", r / "data")]
    findings = scan_tree([p for p in places if p.exists()], needles, skip=skip)
    named = Secrets(needles.needles, generic=False)
    findings += scan_tree([registry_storage], named)
    images = []
    if docker_client is not None and registry_host:
        images = [
            image.id
            for image in docker_client.images.list()
            if any(registry_host in t for t in image.tags)
        ]
    for image_id in images:
        with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
            for chunk in docker_client.images.get(image_id).save():
                tar.write(chunk)
            tar.flush()
            findings += [
                f"image {image_id}: {f.split(': ', 1)[1]}"
                for f in scan_tree([Path(tar.name)], named)
            ]
    return findings, len(images)
