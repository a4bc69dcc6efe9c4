"""Station pre-flight: is this station's configuration usable, before anything runs?

The first task of every hop (and ``pht station check``) calls :func:`preflight`. It fails
with one :class:`~pht_airflow.errors.PreflightError` listing every problem with what to do,
so a station mistake is found before a train is pulled, approved or run, and is never
reported to the central service as the train's fault. The checks, in order:

============  ===============================================================================
``folders``   ``work_dir`` exists (or can be made) and is writable; so is the audit log's folder
``keys``      each key file is the right kind (a ``.pub`` given as ``keys.signing_key`` or an
              ``.age.pub`` given as ``keys.age_identity`` is named as such); the signing key
              opens with its passphrase and belongs to ``keys.public_key``; the age identity
              opens with its passphrase
``datasets``  every ``folder`` data set exists and the sandbox user (``sandbox.user``, no
              supplementary groups) can list and read it by its mode bits and owners, and
              every ``sql`` data set's database opens a read-only transaction and describes
              its tables (no row read), every ``file`` data set can be opened by the station
``registry``  the registry answers and lets the station's credentials list a repository of
              its own project (``<project>/pht-preflight``; one bounded request or two)
``engine``    the Docker engine answers a ping (no container is started)
============  ===============================================================================

Cost and cache. A check that passed is remembered in ``work_dir/.pht-preflight-<station>.json``
(mode 0600, no secret in it: check names and times) under a *config version*: the SHA-256 of
the config file's bytes and of the inode, size, mode, owner and times of every file the checks
read (key and passphrase files, file data sets) and the inode, mode and owner of every data
set folder and of ``work_dir``. While the version is the same a passed check is trusted for:

- ``folders`` and ``keys``: until the version changes, except that ``keys`` is re-checked
  every 10 minutes when a key or passphrase comes from an environment variable or an Airflow
  Variable (their values are not part of the version: a hash of a passphrase is not stored);
- ``datasets``, ``registry`` and ``engine``: 10 minutes (:data:`TTL_SECONDS`): a database
  grant, a file's mode deep inside a data set folder, the robot account or the engine can
  change without the config changing.

A failed check is never remembered: the next pre-flight runs it again, so a fix counts at
once. ``cache=False`` (``pht station check --no-cache``) runs everything.

The mode-bits test of a folder is what can be judged without starting a container: ACLs and
user-namespace mappings are not seen (an entry carrying a POSIX ACL is not counted against
it). The ``pht_station_selftest`` DAG runs the same checks and then the real test, a probe
container reading the folder as the sandbox user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
    KeyFileError,
    PassphraseError,
    PhtError,
    PreflightError,
    RegistryAuthError,
    RegistryError,
)
from ..keys import KEY_KINDS, MAX_KEY_FILE_BYTES, AgeIdentity, SigningKey, key_kind
from ..text import safe_text
from .config import StationConfig
from .data import DataSet
from .secrets import SecretRef

__all__ = [
    "CACHE_PREFIX",
    "CHECKS",
    "PROBE_REPOSITORY",
    "SCAN_ENTRIES",
    "TTL_SECONDS",
    "CheckResult",
    "PreflightReport",
    "Problem",
    "check_datasets",
    "check_engine",
    "check_folders",
    "check_keys",
    "check_registry",
    "config_version",
    "dataset_problem",
    "open_keys",
    "preflight",
    "run_preflight",
    "scan_dataset",
]

CHECKS = ("folders", "keys", "datasets", "registry", "engine")
#: Seconds a passed check is trusted when its inputs can change without the config changing.
TTL_SECONDS = 600.0
#: The repository (inside the station's project) whose tags the registry check lists.
PROBE_REPOSITORY = "pht-preflight"
#: The cache file's name in ``work_dir`` is this + the station id + ``.json``.
CACHE_PREFIX = ".pht-preflight-"
#: Entries per data set folder the mode-bits scan looks at.
SCAN_ENTRIES = 10_000
#: Seconds for the registry check in all (connect, token exchange, listing).
REGISTRY_DEADLINE = 30.0
_CACHE_VERSION = 1
_MAX_CACHE_BYTES = 64 * 1024
_ACL_XATTR = "system.posix_acl_access"


@dataclass(frozen=True)
class Problem:
    """One thing wrong: what was found (``text``) and what to do about it (``fix``)."""

    text: str
    fix: str
    #: True when waiting may fix it (a registry or engine that does not answer, a 5xx).
    transient: bool = False

    def line(self) -> str:
        return f"{self.text}; {self.fix}"


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: a one-line summary when it passed, its problems when it failed."""

    name: str
    ok: bool
    summary: str = ""
    problems: tuple[Problem, ...] = ()
    cached: bool = False


@dataclass(frozen=True)
class PreflightReport:
    """Every check's result for one station, under one config version."""

    station_id: str
    version: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    @property
    def retryable(self) -> bool:
        """True when every problem is one that waiting may fix (the registry or the engine
        did not answer): the hop's pre-flight task may retry; otherwise a person must act."""
        problems = [p for r in self.failed for p in r.problems]
        return bool(problems) and all(p.transient for p in problems)

    def lines(self) -> list[str]:
        """One line per check (``✓ name: summary`` or ``✗ name: problem``), each failure
        followed by ``  → what to do`` lines; control characters shown escaped."""
        out: list[str] = []
        for r in self.results:
            if r.ok:
                note = " (remembered)" if r.cached else ""
                out.append(f"✓ {r.name}: {safe_text(r.summary, limit=1000)}{note}")
                continue
            for p in r.problems:
                out.append(f"✗ {r.name}: {safe_text(p.text, limit=2000)}")
                out.append(f"  → {safe_text(p.fix, limit=1000)}")
        return out

    def message(self) -> str:
        """The text of the :class:`PreflightError`: every failed check with what to do."""
        failed = self.failed
        problems = [(r.name, p) for r in failed for p in r.problems]
        head = (
            f"station {self.station_id} failed pre-flight ({len(failed)} of "
            f"{len(self.results)} checks, {len(problems)} problem(s)); nothing ran and nothing "
            "was reported to the central service:"
        )
        body = [
            f"  - {name}: {safe_text(p.text, limit=2000)}\n    what to do: "
            f"{safe_text(p.fix, limit=1000)}"
            for name, p in problems
        ]
        return "\n".join([head, *body])

    def summary(self) -> dict[str, Any]:
        """JSON-safe, for XCom and logs: the config version and each check's outcome."""
        return {
            "station": self.station_id,
            "version": self.version,
            "ok": self.ok,
            "retryable": self.retryable,
            "checks": {
                r.name: {
                    "ok": r.ok,
                    "cached": r.cached,
                    "summary": r.summary,
                    "problems": [p.line() for p in r.problems],
                }
                for r in self.results
            },
        }


class _Failed(PhtError):
    """A check's problems, raised from inside it (internal)."""

    def __init__(self, *problems: Problem) -> None:
        self.problems = problems
        super().__init__("; ".join(p.line() for p in problems))


# --- folders ------------------------------------------------------------------------------


def check_folders(config: StationConfig) -> str:
    """``work_dir`` and the audit log's folder exist (``work_dir`` is made if missing) and the
    station can write them."""
    problems: list[Problem] = []
    folders = [("work_dir", config.work_dir), ("audit_log's folder", config.audit_log.parent)]
    for what, folder in folders:
        try:
            if what == "work_dir":
                folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                raise FileNotFoundError(2, "no such folder")
        except OSError as exc:
            problems.append(
                Problem(
                    f"{what} {folder} cannot be used ({exc.strerror or type(exc).__name__})",
                    f"create it and let the user running Airflow (uid {os.getuid()}) write it",
                )
            )
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(
                Problem(
                    f"{what} {folder} is not writable by uid {os.getuid()}",
                    f"give the user running Airflow write access (e.g. chown {os.getuid()} "
                    f"{folder})",
                )
            )
    if problems:
        raise _Failed(*problems)
    return f"work_dir {config.work_dir} and audit log folder {config.audit_log.parent} writable"


# --- keys ---------------------------------------------------------------------------------


_SIGNING_FIX = {
    "public": (
        "this is the public half: give the private key file NAME.key written by `pht keys "
        "generate` as keys.signing_key (the NAME.pub belongs in keys.public_key)"
    ),
    "age-identity": (
        "this is an age key: it belongs in keys.age_identity; give the signing key NAME.key "
        "as keys.signing_key"
    ),
    "age-encrypted": (
        "this is an age key: it belongs in keys.age_identity; give the signing key NAME.key "
        "as keys.signing_key"
    ),
    "age-recipient": (
        "this is an age recipient: give the signing key NAME.key as keys.signing_key"
    ),
}
_AGE_FIX = {
    "age-recipient": (
        "this is the public half (NAME.age.pub): give the identity file NAME.age written by "
        "`pht keys generate` as keys.age_identity (the recipient goes to the central directory)"
    ),
    "private": (
        "this is a signing key: it belongs in keys.signing_key; give the age identity NAME.age "
        "as keys.age_identity"
    ),
    "public": ("this is a signing public key: give the age identity NAME.age as keys.age_identity"),
}


def _read_key(ref: SecretRef, field_name: str) -> bytes:
    """The key's bytes from its reference, bounded; a :class:`_Failed` names the field."""
    if ref.kind == "file":
        with contextlib.suppress(OSError):
            if os.stat(ref.name).st_size > MAX_KEY_FILE_BYTES:
                raise _Failed(
                    Problem(
                        f"{field_name} ({ref.describe()}) is larger than {MAX_KEY_FILE_BYTES} "
                        "bytes: not a key file",
                        f"point {field_name} at the key file written by `pht keys generate`",
                    )
                )
    try:
        data = ref.read_bytes()
    except ConfigError as exc:
        raise _Failed(
            Problem(str(exc), f"make {field_name} name a file, variable or Variable that exists")
        ) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise _Failed(
            Problem(
                f"{field_name} ({ref.describe()}) is larger than {MAX_KEY_FILE_BYTES} bytes",
                f"point {field_name} at the key file written by `pht keys generate`",
            )
        )
    return data


def _passphrase(ref: SecretRef | None, field_name: str) -> bytes | None:
    if ref is None:
        return None
    try:
        return ref.read_text().encode("utf-8")
    except ConfigError as exc:
        raise _Failed(
            Problem(str(exc), f"make {field_name} name a file, variable or Variable that exists")
        ) from None
    except UnicodeDecodeError:
        raise _Failed(
            Problem(
                f"{field_name} ({ref.describe()}) is not UTF-8 text",
                f"write the passphrase as one line of text in {field_name}",
            )
        ) from None


def _open_signing_key(config: StationConfig) -> SigningKey:
    from ..keys import signing_key_from_pem

    ref = config.signing_key
    what = f"keys.signing_key ({ref.describe()})"
    data = _read_key(ref, "keys.signing_key")
    kind = key_kind(data)
    if kind != "private":
        raise _Failed(
            Problem(
                f"{what} is {KEY_KINDS[kind]}, not a signing private key (NAME.key)",
                _SIGNING_FIX.get(kind, "give the signing private key NAME.key"),
            )
        )
    passphrase = _passphrase(config.signing_passphrase, "keys.signing_passphrase")
    try:
        key = signing_key_from_pem(data, passphrase, f"the station signing key ({ref.describe()})")
    except PassphraseError as exc:
        fix = (
            "set keys.signing_passphrase to this key's passphrase"
            if config.signing_passphrase is None
            else f"put this key's passphrase in keys.signing_passphrase "
            f"({config.signing_passphrase.describe()}), or give the key it belongs to"
        )
        raise _Failed(Problem(f"the station signing key does not open: {exc}", fix)) from None
    except KeyFileError as exc:
        raise _Failed(
            Problem(
                f"the station signing key does not open: {exc}",
                "restore the key file from its backup (or make a new key pair and register "
                "its public key with the central service)",
            )
        ) from None
    if key.key_id != config.public_key.key_id:
        raise _Failed(
            Problem(
                f"the station signing key ({ref.describe()}, key {key.key_id}) does not belong "
                f"to keys.public_key ({config.public_key.key_id})",
                "give keys.public_key and keys.signing_key from the same key pair (NAME.pub "
                "and NAME.key)",
            )
        )
    return key


def _open_age_identity(config: StationConfig) -> AgeIdentity:
    from ..keys import age_identity_from_bytes

    ref = config.age_identity
    what = f"keys.age_identity ({ref.describe()})"
    data = _read_key(ref, "keys.age_identity")
    kind = key_kind(data)
    if kind not in ("age-identity", "age-encrypted"):
        raise _Failed(
            Problem(
                f"{what} is {KEY_KINDS[kind]}, not an age identity (NAME.age)",
                _AGE_FIX.get(kind, "give the age identity NAME.age as keys.age_identity"),
            )
        )
    passphrase = _passphrase(config.age_passphrase, "keys.age_passphrase")
    try:
        identity = age_identity_from_bytes(
            data, passphrase, f"the station age identity ({ref.describe()})"
        )
    except PassphraseError as exc:
        fix = (
            "set keys.age_passphrase to this identity's passphrase"
            if config.age_passphrase is None
            else f"put this identity's passphrase in keys.age_passphrase "
            f"({config.age_passphrase.describe()})"
        )
        raise _Failed(Problem(f"the station age identity does not open: {exc}", fix)) from None
    except KeyFileError as exc:
        raise _Failed(
            Problem(
                f"the station age identity does not open: {exc}",
                "restore the identity file from its backup",
            )
        ) from None
    if config.age_recipient is not None and identity.recipient != config.age_recipient:
        raise _Failed(
            Problem(
                f"{what} is the identity of {identity.recipient}, not of keys.age_recipient "
                f"({config.age_recipient})",
                "give the identity's own recipient (its NAME.age.pub) as keys.age_recipient",
            )
        )
    return identity


def open_keys(
    config: StationConfig,
) -> tuple[SigningKey | None, AgeIdentity | None, list[Problem]]:
    """Open the signing key and the age identity as a hop would; return each (or None) and
    every problem found. Messages name the references, never a key or a passphrase."""
    problems: list[Problem] = []
    key = identity = None
    try:
        key = _open_signing_key(config)
    except _Failed as exc:
        problems.extend(exc.problems)
    try:
        identity = _open_age_identity(config)
    except _Failed as exc:
        problems.extend(exc.problems)
    return key, identity, problems


def check_keys(config: StationConfig) -> str:
    """The key files are the right kind and open; the signing key is ``keys.public_key``'s."""
    key, identity, problems = open_keys(config)
    if problems:
        raise _Failed(*problems)
    assert key is not None and identity is not None  # noqa: S101 - no problem means both
    return (
        f"signing key {key.key_id} opens and matches keys.public_key; age identity "
        f"{identity.recipient} opens"
    )


# --- data sets ----------------------------------------------------------------------------


def _can(st: os.stat_result, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid:gid`` (no supplementary groups, no capabilities) has ``need`` (rwx bits
    as 4/2/1) on a file with this stat, by its mode bits and ownership."""
    if st.st_uid == uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & need == need


def _has_acl(path: Path) -> bool:
    try:
        return _ACL_XATTR in os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False


def scan_dataset(folder: Path, uid: int, gid: int) -> tuple[int, int, str | None]:
    """Mode-bits scan (on the host) of what ``uid:gid`` cannot read in ``folder``.

    Returns (entries looked at, entries not readable, a description of the first one). Only
    the folder itself and what is below it count: the sandbox bind-mounts the folder, so the
    folders above it on the host need not be open to the sandbox user. The folder itself is
    followed if it is a link (as the bind mount does); links inside it are skipped, and so is
    an entry carrying a POSIX ACL (not judged here). At most :data:`SCAN_ENTRIES` entries.
    Supplementary groups and user-namespace mappings are not seen: the self-test's probe
    container is the real test.
    """
    looked = bad = 0
    first: str | None = None
    # The engine follows a link given as the folder itself when it bind-mounts it; so do we.
    with contextlib.suppress(OSError, RuntimeError):
        folder = folder.resolve()
    stack: list[tuple[Path, str]] = [(folder, ".")]
    while stack and looked < SCAN_ENTRIES:
        path, rel = stack.pop()
        try:
            st = path.lstat()
        except OSError:
            continue
        looked += 1
        if stat.S_ISLNK(st.st_mode):
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if not _can(st, uid, gid, 5 if is_dir else 4) and not _has_acl(path):
            bad += 1
            if first is None:
                what = "the folder itself" if rel == "." else f"{rel!r}"
                mode = f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"
                first = f"{what} ({mode})"
            continue
        if is_dir:
            try:
                children = sorted(os.listdir(path), reverse=True)
            except OSError:
                continue
            stack.extend(
                (path / name, name if rel == "." else f"{rel}/{name}") for name in children
            )
    return looked, bad, first


def _folder_problem(config: StationConfig, dataset: DataSet) -> Problem | None:
    assert dataset.path is not None  # noqa: S101 - a folder data set has its path
    folder = dataset.path
    limits = config.limits
    who = f"the sandbox user {limits.uid}:{limits.gid}"
    if not folder.is_dir():
        return Problem(
            f"data set {dataset.name!r}: the folder {folder} does not exist",
            f"create it or correct datasets.{dataset.name} in {config.source}",
        )
    looked, bad, first = scan_dataset(folder, limits.uid, limits.gid)
    if not bad:
        return None
    return Problem(
        f"data set {dataset.name!r} ({folder}): {who} cannot read {bad} of {looked} "
        f"entr{'y' if looked == 1 else 'ies'} looked at, e.g. {first}; a train would see "
        "no data or part of it",
        f"make it readable, e.g. chmod -R o+rX {folder}, or give group {limits.gid} read "
        "access (sandbox.user is uid:gid, without supplementary groups)",
    )


def dataset_problem(dataset: DataSet, *, thorough: bool = False) -> Problem | None:
    """Why a ``sql`` or ``file`` data set cannot be read, or ``None``.

    ``sql``: a read-only transaction opens and every table or query is described (``LIMIT
    0``: no rows read). ``file``: the station can open it (``thorough``: it is read whole as
    Parquet or CSV, as the self-test does). The extracted view is made readable by the
    sandbox user by the station itself, so only the station's own access counts here.
    """
    from .data import describe
    from .data.extract import ReadOnlySession

    try:
        if dataset.kind == "sql":
            with ReadOnlySession(dataset) as session:
                for table in dataset.targets:
                    session.columns(table)
        elif thorough:
            describe(dataset)
        else:
            assert dataset.path is not None  # noqa: S101 - a file data set has its path
            with dataset.path.open("rb") as f:
                head = f.read(4)
            if dataset.path.suffix.lower() == ".parquet" and head != b"PAR1":
                return Problem(
                    f"data set {dataset.name!r}: {dataset.path} is not a Parquet file",
                    "replace it with the Parquet file, or name a .csv file",
                )
    except OSError as exc:
        return Problem(
            f"data set {dataset.name!r}: the station cannot read {dataset.path} "
            f"({exc.strerror or type(exc).__name__})",
            f"make it readable by the user running Airflow (uid {os.getuid()})",
        )
    except PhtError as exc:  # its message names the data set
        text = str(exc)
        if f"data set {dataset.name!r}" not in text:
            text = f"data set {dataset.name!r}: {text}"
        fix = (
            f"check the Airflow Connection {dataset.connection!r}, that the database answers "
            "and that its role may SELECT every table listed"
            if dataset.kind == "sql"
            else "fix the file, or correct the data set's path"
        )
        return Problem(text, fix)
    return None


def check_datasets(config: StationConfig) -> str:
    """Every data set can be read: folders by the sandbox user, databases and files by the
    station (see :func:`dataset_problem`)."""
    if not config.datasets:
        raise _Failed(
            Problem(
                "the station offers no data set",
                f"add one under datasets: in {config.source}",
            )
        )
    problems: list[Problem] = []
    names: list[str] = []
    for name, dataset in sorted(config.datasets.items()):
        found = (
            _folder_problem(config, dataset) if dataset.mounted_as_is else dataset_problem(dataset)
        )
        if found is None:
            names.append(f"{name} ({dataset.kind})")
        else:
            problems.append(found)
    if problems:
        raise _Failed(*problems)
    limits = config.limits
    return f"readable (folders by the sandbox user {limits.uid}:{limits.gid}): " + ", ".join(names)


# --- registry and engine -------------------------------------------------------------------


def check_registry(config: StationConfig) -> str:
    """The registry answers and lets the station's credentials list a repository of its own
    project (bounded by :data:`REGISTRY_DEADLINE`); nothing is written."""
    from ..oci import RegistryClient
    from .selftest.probe import _root_cause, _short
    from .selftest.registry import client_identity

    reg = config.registry
    host = reg.host
    identity = client_identity(config)
    try:
        username, password = reg.credentials()
    except (ConfigError, UnicodeDecodeError) as exc:
        raise _Failed(
            Problem(
                f"the registry credentials cannot be read: {_short(exc, 400)}",
                "set the Airflow Connection named by registry.connection_id, or "
                "registry.username and registry.password",
            )
        ) from None
    repository = f"{reg.project}/{PROBE_REPOSITORY}"
    try:
        with RegistryClient(
            host,
            username=username,
            password=password,
            insecure=reg.insecure,
            timeout=REGISTRY_DEADLINE / 2,
            deadline=REGISTRY_DEADLINE,
        ) as client:
            client.ping()
            client.list_tags(repository)
    except RegistryAuthError as exc:
        raise _Failed(
            Problem(
                f"registry {host} refused the station's credentials ({identity}) "
                f"(HTTP {exc.status})",
                f"check the robot account's name and secret ({identity}) and that it may pull "
                f"and push in project {reg.project}",
            )
        ) from None
    except RegistryError as exc:
        if exc.status is None:
            raise _Failed(
                Problem(
                    f"cannot reach registry {host}: {_root_cause(exc)}",
                    f"check that the registry is running and registry.host in {config.source} "
                    "is right; runs wait here until it answers",
                    transient=True,
                )
            ) from None
        raise _Failed(
            Problem(
                f"registry {host} failed listing {repository}: {_short(exc, 400)}",
                "retry later if the registry is having an outage; otherwise check "
                "registry.project and the robot account's permissions",
                transient=exc.retryable,
            )
        ) from None
    return f"{host} lets {identity} list {repository}"


def check_engine(config: StationConfig, docker_client: Any = None) -> str:
    """The Docker engine answers a ping (no container, no image pulled)."""
    from .selftest.probe import _short

    try:
        if docker_client is not None:
            docker_client.ping()
            return "the Docker engine answers"
        import docker

        client = docker.from_env(timeout=30)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - DockerException, requests errors alike
        raise _Failed(
            Problem(
                f"cannot reach the Docker engine ({type(exc).__name__}: {_short(exc)})",
                "start dockerd, or set DOCKER_HOST for the user running Airflow",
                transient=True,
            )
        ) from None
    return "the Docker engine answers"


# --- the cache ----------------------------------------------------------------------------


def _secret_refs(config: StationConfig) -> list[tuple[str, SecretRef | None]]:
    return [
        ("keys.signing_key", config.signing_key),
        ("keys.signing_passphrase", config.signing_passphrase),
        ("keys.age_identity", config.age_identity),
        ("keys.age_passphrase", config.age_passphrase),
        ("registry.password", config.registry.password),
    ]


def _stat_line(label: str, path: Path, folder: bool) -> bytes:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{label} {path} missing {exc.errno}\n".encode()
    parts = [st.st_ino, st.st_mode, st.st_uid, st.st_gid]
    if not folder:  # a folder's times change with every file added inside (work_dir: each hop)
        parts += [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return f"{label} {path} {' '.join(map(str, parts))}\n".encode()


def config_version(config: StationConfig) -> str:
    """``sha256:`` over the config file and the identity of every file and folder the checks
    read (see the module docstring): what a remembered check is valid for."""
    h = hashlib.sha256(b"pht-preflight 1\n")
    try:
        with config.source.open("rb") as f:
            h.update(f.read(4 * 1024 * 1024))
    except OSError as exc:
        h.update(f"config unreadable {exc.errno}".encode())
    h.update(f"\nuid {os.getuid()}\n".encode())
    for label, ref in _secret_refs(config):
        if ref is not None and ref.kind == "file":
            h.update(_stat_line(label, Path(ref.name), folder=False))
    for name, dataset in sorted(config.datasets.items()):
        if dataset.path is not None:
            h.update(_stat_line(f"datasets.{name}", dataset.path, dataset.mounted_as_is))
    h.update(_stat_line("work_dir", config.work_dir, folder=True))
    return "sha256:" + h.hexdigest()


def _ttl(config: StationConfig, name: str) -> float | None:
    """Seconds a passed check stays trusted under one version (None: while it lasts)."""
    if name == "folders":
        return None
    if name == "keys":
        refs = [ref for label, ref in _secret_refs(config) if label.startswith("keys.")]
        return None if all(r is None or r.kind == "file" for r in refs) else TTL_SECONDS
    return TTL_SECONDS


def _cache_path(config: StationConfig) -> Path:
    return config.work_dir / f"{CACHE_PREFIX}{config.station_id}.json"


def _load_cache(path: Path, version: str) -> dict[str, tuple[float, str]]:
    """Passed checks (when, and their summary) if the cache is for ``version``; else none."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CACHE_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _MAX_CACHE_BYTES else None
    except (OSError, ValueError, RecursionError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != _CACHE_VERSION
        or data.get("version") != version
        or not isinstance(data.get("passed"), dict)
    ):
        return {}
    found: dict[str, tuple[float, str]] = {}
    for name, entry in data["passed"].items():
        if name not in CHECKS or not isinstance(entry, dict):
            continue
        at, summary = entry.get("at"), entry.get("summary")
        if isinstance(at, int | float) and not isinstance(at, bool) and isinstance(summary, str):
            found[name] = (float(at), summary)
    return found


def _save_cache(path: Path, version: str, passed: dict[str, tuple[float, str]]) -> None:
    """Write the cache atomically with mode 0600; a station that cannot write it just runs
    every check next time (the ``folders`` check reports an unwritable ``work_dir``)."""
    entries = {name: {"at": at, "summary": summary} for name, (at, summary) in passed.items()}
    body = json.dumps({"format": _CACHE_VERSION, "version": version, "passed": entries})
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


# --- running them --------------------------------------------------------------------------


def _checks(docker_client: Any) -> Iterator[tuple[str, Callable[[StationConfig], str]]]:
    yield "folders", check_folders
    yield "keys", check_keys
    yield "datasets", check_datasets
    yield "registry", check_registry
    yield "engine", lambda config: check_engine(config, docker_client)


def run_preflight(
    config: StationConfig,
    *,
    docker_client: Any = None,
    cache: bool = True,
    now: Callable[[], float] = time.time,
) -> PreflightReport:
    """Run every check (or trust a remembered pass) and return the report; never raises for
    a failed check (:func:`preflight` does)."""
    with contextlib.suppress(OSError):  # before the version: it looks at work_dir too
        config.work_dir.mkdir(parents=True, exist_ok=True)
    version = config_version(config)
    path = _cache_path(config)
    remembered = _load_cache(path, version) if cache else {}
    results: list[CheckResult] = []
    passed: dict[str, tuple[float, str]] = {}
    for name, check in _checks(docker_client):
        ttl = _ttl(config, name)
        moment = now()
        if name in remembered:
            at, summary = remembered[name]
            if at <= moment and (ttl is None or moment - at < ttl):
                results.append(CheckResult(name, True, summary, (), cached=True))
                passed[name] = (at, summary)
                continue
        try:
            summary = check(config)
        except _Failed as exc:
            results.append(CheckResult(name, False, "", tuple(exc.problems)))
            continue
        results.append(CheckResult(name, True, summary))
        passed[name] = (moment, summary)
    if passed != remembered and any(r.ok for r in results):
        _save_cache(path, version, passed)
    return PreflightReport(config.station_id, version, tuple(results))


def preflight(
    config: StationConfig, *, docker_client: Any = None, cache: bool = True
) -> PreflightReport:
    """Check the station before anything runs (see the module docstring); return the report,
    or raise :class:`~pht_airflow.errors.PreflightError` listing every failed check with what
    to do (``.report`` holds the :class:`PreflightReport`)."""
    report = run_preflight(config, docker_client=docker_client, cache=cache)
    if not report.ok:
        raise PreflightError(report.message(), report=report)
    return report
