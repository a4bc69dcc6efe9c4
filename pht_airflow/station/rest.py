"""Where a hop's output rests between its tasks: encrypted, never in plaintext.

The hop runs as separate tasks (``run`` → ``check_output`` → ``release`` → ``seal`` →
``record``, :mod:`.hop`) so a failed push retries only the push. The plaintext output exists
only inside the ``run`` task, which checks it (the disclosure verdicts), then keeps it in
``work_dir`` (mode 0600; the key from :func:`run_key`) as:

- ``rest-<key>.age``: the tar of the output folder (the same archive a result carries)
  encrypted to the station's own recipient, for the person who reviews a release (the station
  dashboard decrypts it) and for a check under a changed policy;
- ``rest-<key>.payload.age``: the same archive encrypted to the hop's recipients, exactly the
  layer ``seal`` pushes (absent when the output is blocked), so no task after ``run`` opens
  the station's age identity (with a passphrase that is a scrypt run of 1-4 s each);
- ``rest-<key>.json``: facts about the run (exit code, times, what data the train saw, the
  disclosure verdicts and the ciphertexts' digests; never values).

A task that needs the plaintext again decrypts the station's copy into a private hop folder
(``work_dir/hop-…``, swept like any other if the task is killed) and wipes it when done
(:func:`opened_output`).

Workers that share ``work_dir`` (and the station's age identity) can pick up any task of a
hop; nothing of the output passes through Airflow's database, XComs or logs.

A resting output is written once (temporary name, then renamed with its facts last), so its
presence means the train finished and passed the sandbox's checks: a retried ``run`` task
finds it and does not run the train again. ``record`` removes it when the hop ends;
:func:`sweep_rest` removes any whose hop ended without that (killed), once it is older than
the longest a hop may wait (:data:`MAX_REST_AGE`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import PhtError
from ..results.archive import TarEntry, plan_tar, safe_extract, tar_size
from ..results.artifact import EncryptedPayload, encrypt_output
from ..results.crypt import ChunkReader, decrypt_file
from .config import StationConfig
from .sweep import HOP_PREFIX, open_work, wipe_folder

#: Resting outputs are files ``rest-<key>.age`` (and ``.json``) in ``work_dir``.
REST_PREFIX = "rest-"
#: A resting output older than this belongs to no running hop (a release may wait 7 days).
MAX_REST_AGE = timedelta(days=8)
_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,120}$")
_MAX_FACTS = 256 * 1024


def run_key(train_id: str, hop: int, run_id: str) -> str:
    """The name of a run's resting output: train, hop and a digest of the Airflow run id."""
    tag = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    safe_id = re.sub(r"[^a-z0-9-]", "-", train_id.lower())[:64].strip("-") or "train"
    return f"{safe_id}-{int(hop)}-{tag}"


def _paths(config: StationConfig, key: str) -> tuple[Path, Path]:
    if not _KEY.match(key):
        raise PhtError(f"not a resting output key: {key!r}")
    folder = config.work_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"{REST_PREFIX}{key}.age", folder / f"{REST_PREFIX}{key}.json"


def _write_new(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _payload_path(config: StationConfig, key: str) -> Path:
    cipher_path, _ = _paths(config, key)
    return cipher_path.with_name(f"{REST_PREFIX}{key}.payload.age")


def _encrypt_into(path: Path, entries: list[TarEntry], recipients: list[str]) -> str:
    """:func:`encrypt_output` into ``path`` (0600; a temporary name until complete)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            made = encrypt_output(entries, recipients, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return made


def store_output(
    config: StationConfig,
    key: str,
    output_dir: Path,
    facts: dict[str, Any],
    *,
    recipient: str | None = None,
    payload_recipients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Encrypt ``output_dir`` to the station's own recipient and keep it under ``key``.

    ``recipient`` is the station's own (default :meth:`StationConfig.own_recipient`). With
    ``payload_recipients`` (the hop's recipients) the same archive is also encrypted to them
    (``rest-<key>.payload.age``): exactly the layer ``seal`` pushes, so sealing decrypts
    nothing. Returns ``facts`` with ``plaintext_bytes``, ``files`` and the ciphertexts'
    digests added (the JSON-safe summary the ``run`` task passes on; no content)."""
    cipher_path, facts_path = _paths(config, key)
    recipient = recipient or config.own_recipient()
    entries = plan_tar(output_dir)  # once: both copies are archives of the same plan
    digest = _encrypt_into(cipher_path, entries, [recipient])
    stored = {
        **facts,
        "rest_key": key,
        "plaintext_bytes": tar_size(entries),
        "files": sum(1 for e in entries if not e.is_dir),
        "ciphertext_sha256": digest,
    }
    if payload_recipients is not None:
        recipients = list(payload_recipients)
        sha = _encrypt_into(_payload_path(config, key), entries, recipients)
        stored["payload"] = {"sha256": sha, "recipients": recipients}
    _write_new(facts_path, json.dumps(stored, sort_keys=True).encode())
    return stored


def stored_payload(config: StationConfig, key: str) -> EncryptedPayload | None:
    """The result payload ``run`` made for ``key`` (see :func:`store_output`), or None."""
    facts = load_facts(config, key)
    info = (facts or {}).get("payload")
    path = _payload_path(config, key)
    if not isinstance(info, dict) or not path.is_file():
        return None
    try:
        return EncryptedPayload(
            path=path,
            sha256=str(info["sha256"]),
            plaintext_bytes=int((facts or {})["plaintext_bytes"]),
            recipients=tuple(str(r) for r in info["recipients"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def load_facts(config: StationConfig, key: str) -> dict[str, Any] | None:
    """The facts of a resting output stored under ``key``, or None if there is none."""
    cipher_path, facts_path = _paths(config, key)
    try:
        with open(facts_path, "rb") as fh:
            raw = fh.read(_MAX_FACTS + 1)
    except FileNotFoundError:
        return None
    if len(raw) > _MAX_FACTS or not cipher_path.is_file():
        return None
    try:
        facts = json.loads(raw)
    except ValueError:
        return None
    return facts if isinstance(facts, dict) else None


@contextlib.contextmanager
def opened_output(config: StationConfig, key: str, train_id: str) -> Iterator[Path]:
    """The resting output decrypted into a private hop folder, wiped on leaving.

    The ciphertext's digest is checked against its facts before anything is decrypted.
    """
    facts = load_facts(config, key)
    if facts is None:
        raise PhtError(
            f"the train's output for {key} is not in {config.work_dir} "
            "(the run task did not finish, or the hop already ended); run the hop again"
        )
    cipher_path, _ = _paths(config, key)
    identity = config.load_age_identity()
    work, lock = open_work(config, f"{HOP_PREFIX}{train_id[:64]}-")
    try:
        with open(cipher_path, "rb") as fh:
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1024 * 1024), b""):
                digest.update(block)
            if digest.hexdigest() != facts.get("ciphertext_sha256"):
                raise PhtError(f"the resting output {cipher_path} was changed on disk")
            fh.seek(0)
            folder = work / "output"
            folder.mkdir(mode=0o700)
            plain = decrypt_file(fh, identity)
            try:
                safe_extract(
                    io.BufferedReader(ChunkReader(plain), 1024 * 1024),
                    folder,
                    length=int(facts.get("plaintext_bytes") or 0) or None,
                    max_bytes=max(config.limits.output_bytes * 2, 1 << 20),
                )
            finally:
                plain.close()
        yield folder
    finally:
        wipe_folder(work)
        os.close(lock)


def seal_journal(config: StationConfig, key: str) -> Path:
    """Where ``seal`` notes the result manifest it is about to push (no content: the
    manifest, the result config and the layer's descriptor), so a retry pushes the same one."""
    cipher_path, _ = _paths(config, key)
    return cipher_path.with_name(f"{REST_PREFIX}{key}.seal.json")


def drop_output(config: StationConfig, key: str) -> bool:
    """Remove a resting output (its facts first) and its seal journal; True if there was one."""
    cipher_path, facts_path = _paths(config, key)
    found = False
    with contextlib.suppress(FileNotFoundError):
        seal_journal(config, key).unlink()
    for path in (facts_path, cipher_path, _payload_path(config, key)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            found = True
    return found


def sweep_rest(config: StationConfig, *, now: float | None = None) -> list[str]:
    """Remove resting outputs (and half-written ones) older than :data:`MAX_REST_AGE`."""
    folder = config.work_dir
    if not folder.is_dir():
        return []
    limit = (now if now is not None else time.time()) - MAX_REST_AGE.total_seconds()
    removed = []
    for path in [*folder.glob(f"{REST_PREFIX}*"), *folder.glob(f".{REST_PREFIX}*.tmp")]:
        try:
            if path.lstat().st_mtime < limit:
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:
            continue
    return removed
