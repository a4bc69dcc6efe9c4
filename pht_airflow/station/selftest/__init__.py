"""A station's self-test: is this machine ready to run trains safely?

Five checks, each a plain function that takes the :class:`StationConfig` (and a Docker
client where it needs the engine), returns a one-line message when it passes and raises
:class:`SelfTestError` with a one-line, actionable message when it fails. The
``pht_station_selftest`` DAG runs one task per check; ``run_all`` runs them in a row.

=============  ==============================================================================
``engine``     the Docker engine answers (ping, version) and the probe image is local
``registry``   ping, push a tiny blob and manifest to ``<project>/pht-selftest:<random>``,
               pull both back and compare, delete the manifest
``keys``       the signing key opens, matches ``keys.public_key`` and signs; the age identity
               opens and decrypts what was encrypted to it
``datasets``   every data set folder exists and the sandbox user can list and read it (in a
               probe container, with a mode-bits diagnosis on the host)
``sandbox``    a probe container under the station's limits: no network (it cannot reach a
               listener on the host's 127.0.0.1), read-only ``/`` and ``/pht/data``, writable
               ``/pht/output`` and ``/tmp``, ``noexec`` ``/tmp``, non-root uid and gid, no
               capabilities, ``no-new-privileges``
=============  ==============================================================================

The probe image is ``$PHT_SELFTEST_IMAGE`` (default ``pht-local/busybox:latest``, built by
``scripts/bootstrap.sh``); it needs a POSIX shell with ``id``, ``sed``, ``cut``, ``tr``,
``find``, ``head``, ``ls`` and ``nc`` or ``wget``. It is never pulled. Messages never
contain key material, passphrases, registry secrets or data set contents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import ConfigError, PhtError, RegistryError, SandboxError, SelfTestError
from ...oci import OCI_MANIFEST
from ..config import StationConfig
from ..hop import registry_client
from ..sandbox import Limits, run_train

IMAGE_ENV = "PHT_SELFTEST_IMAGE"
DEFAULT_IMAGE = "pht-local/busybox:latest"
#: The repository (inside the station's project) the registry check writes to.
REPOSITORY = "pht-selftest"
ARTIFACT_TYPE = "application/vnd.pht.selftest.v1"
CONFIG_MEDIA_TYPE = "application/vnd.pht.selftest.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.pht.selftest.v1.bin"
#: Every line the probe scripts print for us starts with this; the rest is ``key=value``.
MARKER = "PHT-SELFTEST"
#: The probe never needs long; the station's own wall-time limit applies if it is shorter.
PROBE_WALL_SECONDS = 120.0
#: Files per data set the probe opens (one byte each) to check they are readable.
PROBE_FILES = 1000
#: Entries per data set the host-side mode-bits scan looks at.
SCAN_ENTRIES = 10_000

Check = Callable[..., str]


def selftest_image(config: StationConfig | None = None) -> str:
    """The probe image: ``$PHT_SELFTEST_IMAGE``, else the default local busybox."""
    env = os.environ.get(IMAGE_ENV, "").strip()
    if env:
        return env
    extra = config.extra.get("selftest_image") if config is not None else None
    return str(extra) if extra else DEFAULT_IMAGE


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _engine(docker_client: Any, what: str) -> Iterator[Any]:
    """The caller's Docker client, or a new one from the environment (closed afterwards)."""
    if docker_client is not None:
        yield docker_client
        return
    try:
        import docker

        client = docker.from_env(timeout=120)
    except Exception as exc:  # noqa: BLE001 - DockerException, or no docker SDK at all
        raise SelfTestError(
            f"{what}: cannot reach the Docker engine ({type(exc).__name__}: {_short(exc)}); "
            "is dockerd running and DOCKER_HOST right?"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chained network error: ``Connection refused``, or a type."""
    reason = type(exc.__cause__ or exc).__name__
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror
        elif "timed out" in str(current).lower():
            reason = "timed out"
        current = current.__cause__ or current.__context__
    return reason


def _scrub(text: str, secret_values: list[bytes]) -> str:
    """Belt and braces: blank any secret value that found its way into a message."""
    for value in secret_values:
        try:
            plain = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if len(plain) >= 4:
            text = text.replace(plain, "***")
    return text


def _private_dir(config: StationConfig, prefix: str) -> Path:
    """A fresh folder under the station's work dir (the sandbox bind-mounts from there)."""
    try:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=config.work_dir))
    except OSError as exc:
        raise SelfTestError(
            f"cannot create a folder in work_dir {config.work_dir} ({exc.strerror}); "
            "the station needs it for every hop"
        ) from None


def _probe_limits(limits: Limits) -> Limits:
    return dataclasses.replace(limits, wall_seconds=min(limits.wall_seconds, PROBE_WALL_SECONDS))


def _run_probe(
    config: StationConfig,
    engine: Any,
    image: str,
    script: str,
    *,
    data_dir: Path,
    what: str,
) -> dict[str, str]:
    """Run ``script`` (sh -c) in the sandbox; return its ``MARKER key=value`` lines."""
    lines: list[str] = []
    work = _private_dir(config, "selftest-")
    try:
        output = work / "output"
        output.mkdir()
        try:
            run_train(
                engine,
                image,
                data_dir=data_dir,
                input_dir=None,
                output_dir=output,
                env={
                    "PHT_TRAIN_ID": "selftest",
                    "PHT_STATION_ID": config.station_id,
                    "PHT_HOP": "0",
                    "PHT_ROUTE_LENGTH": "1",
                    "PHT_DATASET": "selftest",
                },
                limits=_probe_limits(config.limits),
                log=lines.append,
                name=f"pht-selftest-{config.station_id}-{secrets.token_hex(4)}",
                command=["sh", "-c", script],
            )
        except SandboxError as exc:
            raise SelfTestError(f"{what}: the probe container failed: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith(MARKER + " ") and "=" in line:
            key, _, value = line[len(MARKER) + 1 :].partition("=")
            found[key.strip()] = value.strip()
    if found.get("done") != "1":
        raise SelfTestError(
            f"{what}: the probe in {image} did not finish its script (is it a shell image "
            f"like {DEFAULT_IMAGE}? set {IMAGE_ENV})"
        )
    return found


# --- engine ----------------------------------------------------------------------------------


def check_engine(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """The Docker engine answers, and the probe image is in it (it is never pulled)."""
    import docker.errors

    image = image or selftest_image(config)
    with _engine(docker_client, "engine") as engine:
        try:
            engine.ping()
            version = engine.version()
        except Exception as exc:  # noqa: BLE001 - requests or docker errors alike
            raise SelfTestError(
                f"engine: cannot reach the Docker engine ({type(exc).__name__}: {_short(exc)}); "
                "is dockerd running and DOCKER_HOST right?"
            ) from None
        try:
            img = engine.images.get(image)
        except docker.errors.ImageNotFound:
            raise SelfTestError(
                f"engine: the probe image {image} is not in the local Docker engine; build it "
                f"with scripts/bootstrap.sh or set {IMAGE_ENV} to a local shell image"
            ) from None
        except docker.errors.APIError as exc:
            raise SelfTestError(
                f"engine: the Docker engine could not inspect the probe image {image}: "
                f"{exc.explanation}"
            ) from None
    return (
        f"engine: Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
        f"answers; probe image {image} ({img.short_id}) is local"
    )


# --- registry --------------------------------------------------------------------------------


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def check_registry(config: StationConfig) -> str:
    """Push a tiny artifact to ``<project>/pht-selftest:<random tag>``, read it back, delete it.

    Steps, named in the failure message: credentials, ping, push blob, push config, push
    manifest, pull manifest, pull blob, delete manifest. A registry that refuses the delete
    (HTTP 401/403/405: no delete permission or deletes disabled) passes with a note, since a
    station never deletes anything while running trains.
    """
    host = config.registry.host
    repository = f"{config.registry.project}/{REPOSITORY}"
    tag = f"selftest-{secrets.token_hex(6)}"
    step = "credentials"
    payload = f"pht station self-test {config.station_id} {secrets.token_hex(16)}\n".encode()
    try:
        client = registry_client(config)
    except ConfigError as exc:
        raise SelfTestError(f"registry {host}: step 'credentials' failed: {exc}") from None
    note = ""
    try:
        with client:
            step = "ping"
            client.ping()
            step = "push blob"
            layer = client.upload_bytes(repository, payload, LAYER_MEDIA_TYPE)
            step = "push config"
            config_blob = _canonical({"station": config.station_id, "tag": tag})
            config_desc = client.upload_bytes(repository, config_blob, CONFIG_MEDIA_TYPE)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": config_desc.to_dict(),
                "layers": [layer.to_dict()],
                "annotations": {"org.pht.selftest": config.station_id},
            }
            raw = _canonical(manifest)
            step = "push manifest"
            digest = client.put_manifest(repository, tag, raw, OCI_MANIFEST)
            try:
                step = "pull manifest"
                pulled = client.get_manifest(repository, tag)
                if pulled.raw != raw or pulled.digest != digest:
                    raise SelfTestError(
                        f"registry {host}: step 'pull manifest' failed: {repository}:{tag} "
                        f"came back as {pulled.digest}, not the {digest} just pushed"
                    )
                step = "pull blob"
                if client.get_blob(repository, layer.digest) != payload:
                    raise SelfTestError(
                        f"registry {host}: step 'pull blob' failed: blob {layer.digest} came "
                        "back with other bytes than were pushed"
                    )
            except BaseException:
                with contextlib.suppress(PhtError):  # best effort: leave no probe behind
                    client.delete_manifest(repository, digest)
                raise
            step = "delete manifest"
            try:
                client.delete_manifest(repository, digest)
            except RegistryError as exc:
                if exc.status not in (401, 403, 405):
                    raise
                note = (
                    f"; could not delete the probe (HTTP {exc.status}), remove "
                    f"{repository}:{tag} by hand"
                )
    except SelfTestError:
        raise
    except RegistryError as exc:
        if exc.status is None and step == "ping":
            raise SelfTestError(
                f"cannot reach registry {host} (step 'ping'): {_root_cause(exc)}; is it "
                f"running, and is registry.host right in {config.source}?"
            ) from None
        raise SelfTestError(f"registry {host}: step '{step}' failed: {_short(exc, 400)}") from None
    except PhtError as exc:
        raise SelfTestError(f"registry {host}: step '{step}' failed: {_short(exc, 400)}") from None
    return (
        f"registry: pushed, pulled and compared {repository}:{tag} ({digest}) on {host} as "
        f"{client_identity(config)}{note}"
    )


def client_identity(config: StationConfig) -> str:
    """Who the station logs in as (no secret): the user name, the Connection, or anonymous."""
    reg = config.registry
    if reg.connection_id:
        return f"Airflow Connection {reg.connection_id!r}"
    return f"user {reg.username!r}" if reg.username else "anonymous"


# --- keys ------------------------------------------------------------------------------------


def check_keys(config: StationConfig) -> str:
    """The signing key opens, belongs to ``keys.public_key`` and signs; the age identity opens
    and decrypts a message encrypted to its recipient."""
    import pyrage

    refs = [config.signing_passphrase, config.age_passphrase]
    secret_values: list[bytes] = []
    for ref in refs:
        if ref is not None:
            with contextlib.suppress(PhtError, OSError, UnicodeDecodeError):
                secret_values.append(ref.read_bytes())

    def fail(what: str, exc: BaseException) -> SelfTestError:
        return SelfTestError(_scrub(f"keys: {what}: {_short(exc, 400)}", secret_values))

    challenge = secrets.token_bytes(32)
    try:
        key = config.load_signing_key()
    except PhtError as exc:
        raise fail("the station signing key does not open", exc) from None
    if not config.public_key.verify(key.sign(challenge), challenge):
        raise SelfTestError(
            f"keys: a signature by the station signing key ({config.signing_key.describe()}) "
            f"does not verify under keys.public_key ({config.public_key.key_id})"
        )
    try:
        identity = config.load_age_identity()
    except PhtError as exc:
        raise fail("the station age identity does not open", exc) from None
    try:
        sealed = pyrage.encrypt(challenge, [pyrage.x25519.Recipient.from_str(identity.recipient)])
        opened = pyrage.decrypt(sealed, [identity.identity])
    except Exception as exc:  # noqa: BLE001 - pyrage raises its own error types
        raise SelfTestError(
            f"keys: the age identity ({config.age_identity.describe()}) cannot decrypt a "
            f"message to its own recipient ({type(exc).__name__})"
        ) from None
    if opened != challenge:
        raise SelfTestError(
            f"keys: the age identity ({config.age_identity.describe()}) decrypted a message "
            "to other bytes"
        )
    return (
        f"keys: signing key {key.key_id} opens and matches keys.public_key; age identity "
        f"{identity.recipient} opens and decrypts"
    )


# --- data sets -------------------------------------------------------------------------------


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


def _describe_entry(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"


def scan_dataset(folder: Path, uid: int, gid: int) -> tuple[int, int, str | None]:
    """Mode-bits scan (on the host) of what ``uid:gid`` cannot read in ``folder``.

    Returns (entries looked at, entries not readable, a description of the first one). Only
    the folder itself and what is below it count: the sandbox bind-mounts the folder, so the
    folders above it on the host need not be open to the sandbox user. Links are skipped.
    ACLs, supplementary groups and user-namespace mappings are not seen here; the probe
    container is the real test.
    """
    looked = bad = 0
    first: str | None = None
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
        if not _can(st, uid, gid, 5 if is_dir else 4):
            bad += 1
            if first is None:
                what = "the folder itself" if rel == "." else f"{rel!r}"
                first = f"{what} ({_describe_entry(st)})"
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


_DATASET_SCRIPT = f"""
say() {{ echo "{MARKER} $1=$2"; }}
if ls -A /pht/data >/dev/null 2>&1; then say list ok; else say list denied; fi
say find-errors "$(find /pht/data 2>&1 >/dev/null | wc -l | tr -d ' ')"
say files "$(find /pht/data -type f 2>/dev/null | head -n {PROBE_FILES} | wc -l | tr -d ' ')"
say unreadable "$(find /pht/data -type f 2>/dev/null | head -n {PROBE_FILES} | \
  while IFS= read -r f; do head -c 1 "$f" >/dev/null 2>&1 || echo x; done | wc -l | tr -d ' ')"
say done 1
exit 0
"""


def check_datasets(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """Every data set folder exists, and the sandbox user can list it and read its files.

    Each folder is mounted at ``/pht/data`` in a probe container running as
    ``sandbox.user``, which lists it, walks it and opens (one byte of) up to
    :data:`PROBE_FILES` files. A failure is explained with a host-side mode-bits scan.
    """
    image = image or selftest_image(config)
    limits = config.limits
    who = f"the sandbox user {limits.uid}:{limits.gid}"
    if not config.datasets:
        raise SelfTestError("datasets: the station offers no data set")
    problems: list[str] = []
    reports: list[str] = []
    with _engine(docker_client, "datasets") as engine:
        for name, folder in sorted(config.datasets.items()):
            if not folder.is_dir():
                problems.append(f"data set {name!r}: the folder {folder} does not exist")
                continue
            found = _run_probe(
                config, engine, image, _DATASET_SCRIPT, data_dir=folder, what="datasets"
            )
            listed = found.get("list") == "ok"
            errors = int(found.get("find-errors", "0") or 0)
            unreadable = int(found.get("unreadable", "0") or 0)
            files = int(found.get("files", "0") or 0)
            if listed and errors == 0 and unreadable == 0:
                reports.append(f"{name} ({files}{'+' if files >= PROBE_FILES else ''} files)")
                continue
            _, bad, first = scan_dataset(folder, limits.uid, limits.gid)
            if not listed:
                why = "cannot list the folder"
            else:
                parts = []
                if errors:
                    parts.append(f"{errors} sub-folder(s) cannot be walked")
                if unreadable:
                    parts.append(f"{unreadable} of {files} file(s) tried cannot be read")
                why = " and ".join(parts)
            hint = f"; on the host, e.g. {first}" if bad and first else ""
            problems.append(
                f"data set {name!r} ({folder}): {who} {why}{hint}; make it readable, e.g. "
                f"chmod -R o+rX {folder} or give group {limits.gid} read access"
            )
    if problems:
        raise SelfTestError("datasets: " + "; ".join(problems))
    return f"datasets: {who} can list and read " + ", ".join(reports)


# --- sandbox ---------------------------------------------------------------------------------


def _sandbox_script(port: int) -> str:
    return f"""
say() {{ echo "{MARKER} $1=$2"; }}
say uid "$(id -u)"
say gid "$(id -g)"
T=; if command -v timeout >/dev/null 2>&1; then T="timeout 5"; fi
if command -v nc >/dev/null 2>&1; then
  if $T nc -w 2 127.0.0.1 {port} </dev/null >/dev/null 2>&1; then say net connected
  else say net blocked; fi
elif command -v wget >/dev/null 2>&1; then
  if $T wget -q -T 2 -O /dev/null http://127.0.0.1:{port}/ >/dev/null 2>&1
  then say net connected
  else say net blocked; fi
else say net untested; fi
say interfaces "$(sed -n '3,$p' /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
say mount-root "$(sed -n 's#^[^ ]* / [^ ]* \\([^, ]*\\).*#\\1#p' /proc/mounts | tail -n 1)"
say mount-data "$(sed -n 's#^[^ ]* /pht/data [^ ]* \\([^, ]*\\).*#\\1#p' /proc/mounts | tail -n 1)"
if (echo x > /pht-selftest-probe) 2>/dev/null; then say root-write allowed
  rm -f /pht-selftest-probe 2>/dev/null
else say root-write denied; fi
if (echo x > /pht/data/.pht-selftest-probe) 2>/dev/null; then say data-write allowed
  rm -f /pht/data/.pht-selftest-probe 2>/dev/null
else say data-write denied; fi
if (echo x > /pht/output/.pht-selftest-probe) 2>/dev/null; then say output-write allowed
  rm -f /pht/output/.pht-selftest-probe
else say output-write denied; fi
if (printf '#!/bin/sh\\nexit 0\\n' > /tmp/pht-selftest-probe) 2>/dev/null; then
  say tmp-write allowed
  chmod 700 /tmp/pht-selftest-probe 2>/dev/null
  if /tmp/pht-selftest-probe 2>/dev/null; then say tmp-exec allowed; else say tmp-exec denied; fi
  rm -f /tmp/pht-selftest-probe
else say tmp-write denied; say tmp-exec untested; fi
say cap-eff "$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
say no-new-privs "$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)"
say done 1
exit 0
"""


class _Listener:
    """A TCP listener on the host's 127.0.0.1 that accepts, counts and closes connections.

    Closing at once lets a probe that did get through (no network isolation) finish
    instead of waiting on an open connection until its wall time.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pht-selftest-net", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> int:
        """Stop listening; return how many connections arrived."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return self.connections


def sandbox_problems(found: dict[str, str], limits: Limits, reached_host: int) -> list[str]:
    """What is wrong with the sandbox, judged from the probe's report (empty: all well)."""
    problems: list[str] = []

    def expect(key: str, want: str, problem: str) -> None:
        got = found.get(key)
        if got is None:
            problems.append(f"the probe did not report {key}")
        elif got != want:
            problems.append(f"{problem} ({key}={got})")

    if reached_host:
        problems.append(
            f"network: the probe reached a listener on the host's 127.0.0.1 "
            f"({reached_host} connection(s)); the sandbox must have no network"
        )
    net = found.get("net")
    if net == "untested":
        problems.append("network: the probe image has neither nc nor wget, so it was not tested")
    else:
        expect("net", "blocked", "network: the probe connected to 127.0.0.1")
    interfaces = found.get("interfaces", "").split()
    if interfaces != ["lo"]:
        problems.append(
            f"network: the probe sees interfaces {', '.join(interfaces) or 'none'}, not only lo"
        )
    uid, gid = found.get("uid"), found.get("gid")
    if uid in (None, ""):
        problems.append("the probe did not report uid")
    elif uid == "0":
        problems.append("user: the probe runs as root (uid 0)")
    elif uid != str(limits.uid):
        problems.append(f"user: the probe runs as uid {uid}, not sandbox.user {limits.uid}")
    if gid in (None, ""):
        problems.append("the probe did not report gid")
    elif gid == "0":
        problems.append("user: the probe runs in the root group (gid 0)")
    elif gid != str(limits.gid):
        problems.append(f"user: the probe runs as gid {gid}, not sandbox.user {limits.gid}")
    expect("mount-root", "ro", "read-only root: / is not mounted read-only")
    expect("root-write", "denied", "read-only root: the probe could write /")
    expect("mount-data", "ro", "read-only data: /pht/data is not mounted read-only")
    expect("data-write", "denied", "read-only data: the probe could write /pht/data")
    expect("output-write", "allowed", "output: the probe could not write /pht/output")
    expect("tmp-write", "allowed", "tmp: the probe could not write /tmp")
    if found.get("tmp-exec") != "untested":  # untested: /tmp not writable, reported above
        expect("tmp-exec", "denied", "noexec tmp: the probe could run a program from /tmp")
    cap = found.get("cap-eff")
    if cap is None:
        problems.append("the probe did not report cap-eff")
    elif cap.strip("0") != "":
        problems.append(f"capabilities: the probe holds capabilities (CapEff {cap})")
    expect("no-new-privs", "1", "no-new-privileges: not set for the probe")
    return problems


def check_sandbox(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """Run the probe through :func:`run_train` under the station's limits and check isolation.

    The probe tries to connect to a listener this function opens on the host's 127.0.0.1
    (it must fail, and the listener must see no connection), lists its network interfaces
    (only ``lo``), tries to write ``/`` and ``/pht/data`` (must fail), ``/pht/output`` and
    ``/tmp`` (must work), runs a script from ``/tmp`` (must fail: ``noexec``), and reports
    its uid, gid, effective capabilities and ``NoNewPrivs``. The wall time is capped at
    :data:`PROBE_WALL_SECONDS`; every other limit is the station's.
    """
    image = image or selftest_image(config)
    limits = config.limits
    listener = _Listener()
    try:
        port = listener.port
        with _engine(docker_client, "sandbox") as engine:
            work = _private_dir(config, "selftest-data-")
            try:
                # Empty and open to all, so only the read-only mount can stop the probe
                # writing /pht/data. Removed right after.
                os.chmod(work, 0o777)  # noqa: S103
                found = _run_probe(
                    config, engine, image, _sandbox_script(port), data_dir=work, what="sandbox"
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        reached = listener.close()
    problems = sandbox_problems(found, limits, reached)
    if problems:
        raise SelfTestError("sandbox: " + "; ".join(problems))
    return (
        f"sandbox: {image} ran as {found['uid']}:{found['gid']} with no network (only lo), "
        "read-only / and /pht/data, writable /pht/output and noexec /tmp, no capabilities, "
        "no-new-privileges"
    )


# --- all of them -----------------------------------------------------------------------------

CHECKS: dict[str, Check] = {
    "engine": check_engine,
    "registry": check_registry,
    "keys": check_keys,
    "datasets": check_datasets,
    "sandbox": check_sandbox,
}
#: The checks that need the Docker engine (they take a ``docker_client``).
ENGINE_CHECKS = frozenset({"engine", "datasets", "sandbox"})


def run_check(name: str, config: StationConfig, docker_client: Any = None) -> str:
    """Run one check by name; return its pass message or raise :class:`SelfTestError`."""
    try:
        check = CHECKS[name]
    except KeyError:
        raise ValueError(f"no self-test check {name!r} (one of {', '.join(CHECKS)})") from None
    if name in ENGINE_CHECKS:
        return check(config, docker_client)
    return check(config)


def run_all(config: StationConfig, docker_client: Any = None) -> dict[str, str | SelfTestError]:
    """Every check, in order; each maps to its pass message or its :class:`SelfTestError`."""
    results: dict[str, str | SelfTestError] = {}
    for name in CHECKS:
        try:
            results[name] = run_check(name, config, docker_client)
        except SelfTestError as exc:
            results[name] = exc
    return results
