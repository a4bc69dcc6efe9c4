"""Run a train container with the hardened settings of PROTOCOL.md's sandbox table.

:func:`run_train` starts the (already pulled) train image through the Docker SDK with:

=====================  ==================================================================
``/pht/data``          the data set, bind-mounted read-only
``/pht/input``         the previous hop's result, read-only (an empty private folder if none)
``/pht/output``        an empty folder, read-write, owned by the train's uid:gid
environment            only the ``PHT_*`` variables the caller passes (no proxy variables)
network                ``network_mode="none"``: a loopback interface only
resolver               ``/etc/resolv.conf`` is the station's empty :data:`RESOLV_CONF`
root file system       ``read_only=True``; ``/tmp`` a ``rw,noexec,nosuid,nodev`` tmpfs
IPC                    ``ipc_mode="none"``: own IPC namespace, no ``/dev/shm``
user                   ``Limits.user`` (65534:65534 by default); never uid or gid 0
privileges             ``cap_drop=["ALL"]``, ``no-new-privileges``, not privileged, no devices
GPUs                   none, unless ``Limits.gpus`` (``sandbox.gpus``) passes some through
                       as ``device_requests`` (what ``docker run --gpus`` does)
limits                 memory (no swap), CPUs, pids, wall time, output size and depth,
                       core dumps off
init                   ``init=True``: ``docker-init`` is PID 1 and reaps orphans
logs                   json-file, at most 10 MB kept by the engine; forwarded line by line
=====================  ==================================================================

The container is always removed (with its anonymous volumes and log) when
:func:`run_train` returns or raises, even on ``KeyboardInterrupt``.

Permissions: the train runs as ``Limits.user``, not as root, so the data set must be
readable by that user (for example ``chmod -R o+rX`` on the data set, or a group the uid
belongs to). :func:`run_train` never changes the data set's permissions. It chowns the
(empty) output folder to the train's uid:gid and makes it mode 0700, so only that user and
root on the host can read what the train writes. After the run every entry of the output
is reset (:func:`normalise_output`): folders 0700, files 0600 (0700 if executable), no
setuid, setgid or sticky bit, owned by the station when it runs as root; links, FIFOs,
sockets and devices are refused. The output cap counts allocated blocks (and a regular
file's apparent size, whichever is larger). A failed run's output is removed
(:func:`clear_output`), however deep.

Resolver: the engine would bind-mount a copy of the host's ``/etc/resolv.conf`` (its name
servers and search domains, which describe the station's network) into every container,
even with the network off. The sandbox mounts its own read-only file over it instead. The
engine's ``/etc/hosts`` (localhost entries only with no network) and ``/etc/hostname`` (the
container's id) show nothing of the host and are left as they are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    OutputTooLargeError,
    SandboxError,
    TrainExitError,
    TrainOOMError,
    TrainTimeoutError,
)
from ..results.archive import MAX_DEPTH
from ..text import safe_text

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: The label every sandbox container carries (tests and operators find leftovers by it).
LABEL = "org.pht.sandbox"
DATA_PATH = "/pht/data"
INPUT_PATH = "/pht/input"
OUTPUT_PATH = "/pht/output"
TMP_PATH = "/tmp"  # noqa: S108 - the container's own tmpfs, not the host's

#: Lines of train log forwarded to ``log`` before the rest is only counted.
MAX_LOG_LINES = 10_000
#: Characters of one log line forwarded; the rest of the line is dropped.
MAX_LINE_CHARS = 4_000
#: Entries in the output folder; more than this is refused like an over-size output.
MAX_OUTPUT_ENTRIES = 100_000
#: What the engine keeps of a container's log (json-file driver) while it runs.
ENGINE_LOG_MAX = "10m"
#: How long the log reader may take, after the train exited, to read what the engine still
#: holds (at most ENGINE_LOG_MAX); the stream ends by itself once it has. Generous on purpose:
#: 12,000 lines took more than 5 s on a 2-core machine under stress-ng (the old bound), and a
#: run must not lose its last lines because the station is busy.
LOG_DRAIN_SECONDS = 300.0
#: The IPC namespace: "none" gives a private namespace with no /dev/shm mounted, so
#: POSIX semaphores (``multiprocessing`` locks and pools) are unavailable to trains.
IPC_MODE = "none"

#: What the train sees as ``/etc/resolv.conf``: no name server of the host's, no search
#: domain (the network is off anyway; resolvers fall back to 127.0.0.1 and fail at once).
RESOLV_CONF = "# The PHT sandbox has no network and no name service.\n"

_MIN_MEMORY = 6 * MiB  # the Docker engine refuses smaller memory limits
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_ENV_RE = re.compile(r"^PHT_[A-Z0-9_]+$")
_USER_RE = re.compile(r"^(\d+)(?::(\d+))?$")
LogFn = Callable[[str], None]


def _positive(name: str, value: Any, kind: type | tuple[type, ...]) -> None:
    typed = isinstance(value, kind) and not isinstance(value, bool)
    if not typed or not value > 0:
        raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Limits:
    """A station's resource limits for one train run.

    ``user`` is ``"uid:gid"`` (numeric; ``"uid"`` alone means gid = uid) and must not be
    root: neither uid 0 nor gid 0. ``tmp_bytes`` sizes the ``/tmp`` tmpfs, which counts
    against ``memory_bytes``.
    """

    memory_bytes: int = 2 * GiB
    cpus: float = 1.0
    pids: int = 256
    wall_seconds: float = 3600
    output_bytes: int = 1 * GiB
    tmp_bytes: int = 64 * MiB
    user: str = "65534:65534"
    #: GPUs passed through (``sandbox.gpus``): 0 none (the default), :data:`ALL_GPUS` every
    #: GPU, a positive count, or a tuple of device ids (``"0"``, ``"GPU-<uuid>"``).
    gpus: int | tuple[str, ...] = 0

    def __post_init__(self) -> None:
        check_gpus(self.gpus)
        for name in ("memory_bytes", "pids", "output_bytes", "tmp_bytes"):
            _positive(name, getattr(self, name), int)
        for name in ("cpus", "wall_seconds"):
            _positive(name, getattr(self, name), (int, float))
        if self.memory_bytes < _MIN_MEMORY:
            raise ValueError(
                f"sandbox limit memory_bytes must be at least {_MIN_MEMORY} (6 MiB), "
                f"got {self.memory_bytes}"
            )
        if self.cpus < 0.01:
            raise ValueError(f"sandbox limit cpus must be at least 0.01, got {self.cpus!r}")
        if not isinstance(self.user, str):
            raise ValueError(f"sandbox user must be a string 'uid:gid', got {self.user!r}")
        user = self.user.strip()
        if user == "root" or user.split(":", 1)[0] in {"0", "root"}:
            raise ValueError(f"sandbox user must not be root, got {self.user!r}")
        match = _USER_RE.match(user)
        if match is None:
            raise ValueError(
                f"sandbox user must be a numeric 'uid:gid' such as '65534:65534', got {self.user!r}"
            )
        uid = int(match.group(1))
        gid = int(match.group(2)) if match.group(2) is not None else uid
        if uid == 0:
            raise ValueError(f"sandbox user must not be root, got {self.user!r}")
        if gid == 0:
            raise ValueError(f"sandbox user must not be in the root group, got {self.user!r}")
        object.__setattr__(self, "user", f"{uid}:{gid}")

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])


#: ``Limits.gpus`` for every GPU of the host (Docker's ``--gpus all``, a count of -1).
ALL_GPUS = -1
#: Most GPUs a count may ask for, and most device ids listed.
MAX_GPUS = 64
_GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_gpus(gpus: object) -> None:
    """Refuse a ``Limits.gpus`` value that is not 0, :data:`ALL_GPUS`, a count up to
    :data:`MAX_GPUS` or a tuple of up to that many distinct device ids."""
    if isinstance(gpus, bool):
        raise ValueError(f"sandbox gpus must be all, a count or device ids, got {gpus!r}")
    if isinstance(gpus, int):
        if gpus != ALL_GPUS and not 0 <= gpus <= MAX_GPUS:
            raise ValueError(f"sandbox gpus must be a count from 1 to {MAX_GPUS}, got {gpus}")
        return
    if not isinstance(gpus, tuple) or not gpus or len(gpus) > MAX_GPUS:
        raise ValueError(
            f"sandbox gpus must be all, a count or a list of 1 to {MAX_GPUS} device ids"
        )
    for device in gpus:
        if not isinstance(device, str) or not _GPU_ID_RE.match(device):
            raise ValueError(
                f"sandbox gpus: {safe_text(device, limit=60)!r} is not a device id such as 0 or "
                "GPU-<uuid>"
            )
    if len(set(gpus)) != len(gpus):
        raise ValueError("sandbox gpus lists a device id twice")


def describe_gpus(gpus: int | tuple[str, ...]) -> str:
    """``Limits.gpus`` as people read it: "no GPU", "all GPUs", "2 GPUs", "GPUs 0, 1"."""
    if gpus == ALL_GPUS:
        return "all GPUs of the host"
    if isinstance(gpus, tuple):
        return f"GPU{'s' if len(gpus) > 1 else ''} {', '.join(gpus)}"
    if gpus == 0:
        return "no GPU"
    return f"{gpus} GPU{'s' if gpus > 1 else ''}"


def device_requests(gpus: int | tuple[str, ...]) -> list[Any]:
    """The Docker SDK's ``device_requests`` for ``Limits.gpus`` (none for 0): what
    ``docker run --gpus`` asks the engine for (a GPU-capable runtime must be installed)."""
    from docker.types import DeviceRequest

    if isinstance(gpus, tuple):
        return [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]
    if gpus == 0:
        return []
    return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]


@dataclass(frozen=True)
class SandboxResult:
    """What a successful run produced: its exit code, duration and output size (no data)."""

    exit_code: int
    duration_seconds: float
    output_bytes: int
    output_files: int
    container_name: str
    image: str
    log_lines: int


# --- helpers -------------------------------------------------------------------------------


def _describe(n: float) -> str:
    """Bytes for people: ``5242880`` → ``'5.0 MiB (5242880 bytes)'``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({int(n)} bytes)"
    return f"{int(n)} bytes"


@dataclass
class _Usage:
    bytes: int = 0
    files: int = 0
    entries: int = 0
    too_deep: bool = False


#: Folder levels below ``/pht/output`` a result may have (the archive's own limit).
MAX_OUTPUT_DEPTH = MAX_DEPTH
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GONE = (FileNotFoundError, NotADirectoryError)  # an entry removed or replaced mid-walk


class _TooDeep(Exception):
    """The tree goes deeper than :data:`MAX_OUTPUT_DEPTH` (raised out of :func:`_walk`)."""


def _same(fd: int, st: os.stat_result) -> bool:
    got = os.fstat(fd)
    return (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino)


def _walk(root: Path) -> Iterator[tuple[int, str, os.stat_result]]:
    """Every entry under ``root`` as ``(folder fd, name, lstat)``, depth first.

    Only directory file descriptors and single names are used, never a path string below
    ``root``, so paths longer than ``PATH_MAX`` are reached like any other. No link is
    followed. There is no recursion, and at most two descriptors per level are open, since
    a folder deeper than :data:`MAX_OUTPUT_DEPTH` raises :class:`_TooDeep` before it is
    listed. Entries that vanish or change type while we walk are skipped; any other error
    (a folder the station may not read) is raised as ``OSError``.
    """
    first = os.open(root, _DIR_FLAGS)
    stack: list[tuple[int, Iterator[os.DirEntry[str]], int]] = []
    try:
        stack.append((first, os.scandir(first), 1))
    except OSError:
        os.close(first)
        raise
    try:
        while stack:
            fd, entries, depth = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                entries.close()  # type: ignore[attr-defined]
                os.close(fd)
                continue
            if depth > MAX_OUTPUT_DEPTH:
                raise _TooDeep
            try:
                st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
            except _GONE:
                continue
            yield fd, entry.name, st
            if not stat.S_ISDIR(st.st_mode):
                continue
            try:
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except _GONE:
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # replaced by a link since the stat
                    continue
                raise
            try:
                if not _same(child, st):
                    os.close(child)
                    continue
                stack.append((child, os.scandir(child), depth + 1))
            except BaseException:
                os.close(child)
                raise
    finally:
        for fd, entries, _ in stack:
            entries.close()  # type: ignore[attr-defined]
            os.close(fd)


def measure_output(root: Path, stop_after_bytes: int | None = None) -> _Usage:
    """Disk space taken under ``root``: every entry, never following a link.

    Each entry counts the blocks it has allocated (``st_blocks * 512``), and a regular
    file at least its apparent size, so neither space reserved past the end of a file
    (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``) nor a sparse file (which becomes its full
    size when sealed) escapes the cap. Links, devices, FIFOs and sockets are counted as
    entries with their blocks (the run refuses them afterwards). Paths longer than
    ``PATH_MAX`` are measured (see :func:`_walk`); a tree deeper than
    :data:`MAX_OUTPUT_DEPTH` sets ``too_deep``. Stops early once ``stop_after_bytes`` or
    :data:`MAX_OUTPUT_ENTRIES` is exceeded. Raises :class:`SandboxError` when an entry
    cannot be read (never skipped silently).
    """
    usage = _Usage()
    try:
        for _, _, st in _walk(root):
            usage.entries += 1
            allocated = st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                usage.files += 1
                usage.bytes += max(st.st_size, allocated)
            else:
                usage.bytes += allocated
            if usage.entries > MAX_OUTPUT_ENTRIES or (
                stop_after_bytes is not None and usage.bytes > stop_after_bytes
            ):
                break
    except _TooDeep:
        usage.too_deep = True
    except OSError as exc:
        raise SandboxError(
            f"the station could not measure the train's output in {root}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    return usage


def _station_owner() -> tuple[int, int] | None:
    """Who should own the output after the run: the station itself, when it may chown."""
    return (os.geteuid(), os.getegid()) if os.geteuid() == 0 else None


def _reset(fd: int, mode: int, owner: tuple[int, int] | None) -> bool:
    """Give an opened entry ``mode`` (and ``owner``); False when the station may not."""
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except PermissionError:
        return False
    return True


_UNSAFE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH | stat.S_IWGRP


def normalise_output(root: Path, image: str) -> None:
    """Reset what the train set on its output, and refuse what a result may not hold.

    The output folder and every folder below it become mode 0700, regular files 0700 when
    the train made them executable and 0600 otherwise: no setuid, setgid or sticky bit, and
    nothing writable by group or others, whatever the train set. A station running as
    root also takes ownership of everything (the train's uid owns nothing afterwards). A
    station that is not root cannot change what the train's uid owns: an entry that keeps
    one of those bits is refused instead. Links, FIFOs, sockets and device files are
    refused, as sealing does (a result holds only folders and regular files). Raises
    :class:`SandboxError` naming the entry.
    """
    owner = _station_owner()
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        _reset(root_fd, 0o700, owner)
    finally:
        os.close(root_fd)
    try:
        for parent, name, st in _walk(root):
            shown = safe_text(name, limit=200)
            if stat.S_ISDIR(st.st_mode):
                flags, mode = _DIR_FLAGS, 0o700
            elif stat.S_ISREG(st.st_mode):
                flags, mode = _FILE_FLAGS, 0o700 if st.st_mode & 0o111 else 0o600
            else:
                kind = (
                    "symbolic link"
                    if stat.S_ISLNK(st.st_mode)
                    else "FIFO"
                    if stat.S_ISFIFO(st.st_mode)
                    else "socket"
                    if stat.S_ISSOCK(st.st_mode)
                    else "device file"
                )
                raise SandboxError(
                    f"train {image} left a {kind} ({shown}) in {OUTPUT_PATH}; a result holds "
                    "only folders and regular files",
                    image=image,
                )
            try:
                fd = os.open(name, flags, dir_fd=parent)
            except PermissionError:
                fd = -1
            try:
                done = fd >= 0 and _same(fd, st) and _reset(fd, mode, owner)
            finally:
                if fd >= 0:
                    os.close(fd)
            if not done and st.st_mode & _UNSAFE_BITS:
                raise SandboxError(
                    f"train {image} set mode {stat.S_IMODE(st.st_mode):04o} on {shown} in "
                    f"{OUTPUT_PATH} and the station may not reset it; run the station as "
                    "root so it can take over the train's output",
                    image=image,
                )
    except _TooDeep:
        raise SandboxError(
            f"train {image} wrote folders more than {MAX_OUTPUT_DEPTH} levels deep to "
            f"{OUTPUT_PATH}, the deepest a result may be",
            image=image,
        ) from None
    except OSError as exc:
        raise SandboxError(
            f"the station could not reset the permissions of the train's output in {root}: "
            f"{exc.strerror or type(exc).__name__}",
            image=image,
        ) from None


def clear_output(root: Path) -> None:
    """Remove everything below ``root`` (not ``root`` itself), whatever its depth.

    Goes down one folder at a time and back up through ``..`` (checked against the folder
    it came from), holding two descriptors at most and building no path, so trees deeper
    than ``shutil.rmtree`` can handle (recursion, one descriptor per level) or with paths
    longer than ``PATH_MAX`` are removed too. Never follows a link.
    """
    fd = os.open(root, _DIR_FLAGS)
    names: list[str] = []
    parents: list[tuple[int, int]] = []
    try:
        while True:
            child: str | None = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            child = entry.name
                            break
                        os.unlink(entry.name, dir_fd=fd)
                    except FileNotFoundError:
                        continue
            if child is not None:
                here = os.fstat(fd)
                down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                with contextlib.suppress(PermissionError):
                    os.fchmod(down, 0o700)  # a folder the train made unwritable
                parents.append((here.st_dev, here.st_ino))
                names.append(child)
                os.close(fd)
                fd = down
                continue
            if not names:
                return
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            got = os.fstat(up)
            os.close(fd)
            fd = up
            if (got.st_dev, got.st_ino) != parents.pop():
                raise SandboxError(f"the output folder {root} changed while it was removed")
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)


def _clean_line(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + " ... [line truncated]"
    # Control, bidi and format characters shown escaped (a tab stays a tab).
    return "\t".join(safe_text(part, limit=None) for part in text.split("\t"))


@dataclass
class _LogPump:
    """Reads the container's log stream in a thread and forwards whole lines."""

    stream: Iterable[bytes]
    forward: LogFn
    lines: int = 0
    forwarded: int = 0
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="pht-sandbox-log", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _emit(self, raw: bytes) -> None:
        self.lines += 1
        if self.forwarded < MAX_LOG_LINES:
            self.forwarded += 1
            text = _clean_line(raw)
        elif self.forwarded == MAX_LOG_LINES:
            self.forwarded += 1
            text = f"... log truncated after {MAX_LOG_LINES} lines"
        else:
            return
        try:
            self.forward(text)
        except Exception:  # noqa: BLE001 - a broken logger must not stop the run
            log.exception("sandbox log callback failed")

    def _run(self) -> None:
        buffer = b""
        limit = MAX_LINE_CHARS * 4  # bytes; enough for MAX_LINE_CHARS characters of UTF-8
        skipping = False  # inside an over-long line already forwarded truncated
        try:
            for chunk in self.stream:
                buffer += chunk
                while True:
                    cut = buffer.find(b"\n")
                    if cut < 0:
                        if len(buffer) > limit:
                            if not skipping:
                                self._emit(buffer)
                                skipping = True
                            buffer = b""
                        break
                    line, buffer = buffer[:cut], buffer[cut + 1 :]
                    if skipping:
                        skipping = False
                    else:
                        self._emit(line)
        except Exception as exc:  # noqa: BLE001 - the stream ends when the container goes
            log.debug("sandbox log stream ended: %s", type(exc).__name__)
        if buffer and not skipping:
            self._emit(buffer)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def _forward_to_logging(line: str) -> None:
    log.info("train: %s", line)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _check_dirs(data_dir: Path, input_dir: Path | None, output_dir: Path) -> None:
    for what, path in (("data", data_dir), ("input", input_dir)):
        if path is not None and not path.is_dir():
            raise SandboxError(f"the {what} folder {path} does not exist or is not a folder")
    try:
        st = output_dir.lstat()
    except FileNotFoundError:
        raise SandboxError(f"the output folder {output_dir} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"the output folder {output_dir} is not a folder (or is a link)")
    if any(output_dir.iterdir()):
        raise SandboxError(f"the output folder {output_dir} is not empty; refusing to run")
    out = output_dir.resolve()
    for what, path in (("data", data_dir), ("input", input_dir)):
        if path is not None:
            other = path.resolve()
            if _inside(out, other) or _inside(other, out):
                raise SandboxError(
                    f"the output folder {out} overlaps the {what} folder {other}; refusing to run"
                )


def _prepare_output(output_dir: Path, limits: Limits) -> None:
    """Let the train's user (and nobody else but root) write the output folder."""
    try:
        os.chown(output_dir, limits.uid, limits.gid)
        os.chmod(output_dir, 0o700)
    except PermissionError:
        # Not root (a docker-group user or rootless engine): the folder must be writable
        # by a uid we cannot give it to, so open this one (empty) folder up instead.
        os.chmod(output_dir, 0o777)  # noqa: S103 - only the empty output folder


def _remove_leftover(docker_client: Any, name: str) -> None:
    import docker.errors

    try:
        old = docker_client.containers.get(name)
    except docker.errors.NotFound:
        return
    if old.labels.get(LABEL) != "1":
        raise SandboxError(
            f"a container named {name!r} exists and is not a sandbox container; refusing to "
            "remove it"
        )
    log.warning("removing the leftover sandbox container %s", name)
    old.remove(force=True, v=True)


def _check_image(docker_client: Any, image: str) -> None:
    """The image must be local (never pulled here) and declare no volumes we don't cover."""
    import docker.errors

    try:
        img = docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        raise SandboxError(
            f"train image {image} is not in the local Docker engine; the station pulls it "
            "by digest before running it",
            image=image,
        ) from None
    except docker.errors.APIError as exc:
        raise SandboxError(
            f"the Docker engine could not inspect train image {image}: {exc.explanation}",
            image=image,
        ) from None
    volumes = (img.attrs.get("Config") or {}).get("Volumes") or {}
    covered = {DATA_PATH, INPUT_PATH, OUTPUT_PATH, TMP_PATH}
    extra = sorted(v.rstrip("/") or "/" for v in volumes if v.rstrip("/") not in covered)
    if extra:
        raise SandboxError(
            f"train image {image} declares VOLUME {', '.join(extra)}; the sandbox allows no "
            "writable volumes besides /pht/output and /tmp",
            image=image,
        )


def container_settings(
    image: str,
    *,
    name: str,
    data_dir: Path,
    input_dir: Path,
    output_dir: Path,
    env: Mapping[str, str],
    limits: Limits,
    command: Sequence[str] | None = None,
    resolv_conf: Path | None = None,
) -> dict[str, Any]:
    """The keyword arguments for ``docker_client.containers.create``: the whole sandbox.

    ``resolv_conf`` (a file of the station's, see :data:`RESOLV_CONF`) is bind-mounted
    read-only over ``/etc/resolv.conf``: otherwise the engine copies the host's resolver
    configuration (its name servers and search domains) into the container.
    """
    from docker.types import LogConfig, Ulimit

    labels = {LABEL: "1", "org.pht.sandbox.image": image}
    for var, label in (
        ("PHT_TRAIN_ID", "train-id"),
        ("PHT_HOP", "hop"),
        ("PHT_STATION_ID", "station"),
    ):
        if var in env:
            labels[f"org.pht.sandbox.{label}"] = env[var]
    # The leftover sweep (station.sweep) finds the hop's work folder, and its lock, by this.
    labels["org.pht.sandbox.output"] = str(output_dir)
    volumes = {
        str(data_dir): {"bind": DATA_PATH, "mode": "ro"},
        str(input_dir): {"bind": INPUT_PATH, "mode": "ro"},
        str(output_dir): {"bind": OUTPUT_PATH, "mode": "rw"},
    }
    if resolv_conf is not None:
        volumes[str(resolv_conf)] = {"bind": "/etc/resolv.conf", "mode": "ro"}
    return {
        "image": image,
        "command": list(command) if command is not None else None,
        "name": name,
        "detach": True,
        "labels": labels,
        "environment": dict(env),
        "use_config_proxy": False,  # no HTTP_PROXY & co. from ~/.docker/config.json
        "user": limits.user,
        "network_mode": "none",
        "ipc_mode": IPC_MODE,
        "read_only": True,
        # uid/gid: runc keeps the mode of the image's /tmp (0755 in some images), so the
        # tmpfs must belong to the train's user for it to be writable.
        "tmpfs": {
            TMP_PATH: f"rw,noexec,nosuid,nodev,size={limits.tmp_bytes},mode=1777,"
            f"uid={limits.uid},gid={limits.gid}"
        },
        "volumes": volumes,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,  # equal to mem_limit: no swap
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "ulimits": [Ulimit(name="core", soft=0, hard=0)],
        "init": True,
        "healthcheck": {"test": ["NONE"]},
        "log_config": LogConfig(
            type=LogConfig.types.JSON, config={"max-size": ENGINE_LOG_MAX, "max-file": "1"}
        ),
        # No device unless the station's config passes GPUs through (sandbox.gpus).
        "device_requests": device_requests(limits.gpus),
    }


# --- the run -------------------------------------------------------------------------------


def run_train(
    docker_client: Any,
    image: str,
    *,
    data_dir: Path,
    input_dir: Path | None,
    output_dir: Path,
    env: Mapping[str, str],
    limits: Limits,
    log: LogFn | None = None,
    name: str | None = None,
    poll_seconds: float = 0.5,
    command: Sequence[str] | None = None,
) -> SandboxResult:
    """Run ``image`` (a local image reference) in the sandbox and wait for it.

    ``output_dir`` must exist and be empty; everything the train writes to ``/pht/output``
    lands there. ``input_dir`` ``None`` mounts an empty private folder (removed afterwards).
    ``env`` holds only ``PHT_*`` variables. ``log`` receives the train's log lines as they
    come (from a worker thread), each cut at :data:`MAX_LINE_CHARS`, at most
    :data:`MAX_LOG_LINES` of them; without it they go to this module's logger. ``command``
    overrides the image's command (for probes and tests). ``name`` names the container; a
    leftover sandbox container of that name (from a crash) is removed first.

    Raises :class:`TrainTimeoutError` (wall time), :class:`OutputTooLargeError` (output cap
    in allocated bytes, entries or depth, checked every ``poll_seconds`` and at the end),
    :class:`TrainOOMError` (memory), :class:`TrainExitError` (non-zero exit) and
    :class:`SandboxError` for anything else (missing image, bad folders, engine errors, a
    link or special file in the output). The container is removed in every case. After a
    successful run the output's modes and owner are reset (:func:`normalise_output`); once
    the train has started, a failed run leaves ``output_dir`` empty (:func:`clear_output`).
    """
    import docker.errors
    import requests

    data_dir = Path(data_dir).absolute()
    output_dir = Path(output_dir).absolute()
    input_dir = Path(input_dir).absolute() if input_dir is not None else None
    bad = sorted(k for k in env if not _ENV_RE.match(k))
    if bad:
        raise ValueError(f"only PHT_* variables may be passed to a train, got {bad}")
    if any("\x00" in v for v in env.values()):
        raise ValueError("train environment values must not contain NUL characters")
    if name is None:
        name = f"pht-sandbox-{uuid.uuid4().hex[:12]}"
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid container name {name!r}")
    if poll_seconds <= 0:
        raise ValueError("poll_seconds must be positive")
    _check_dirs(data_dir, input_dir, output_dir)
    _check_image(docker_client, image)
    forward = log if log is not None else _forward_to_logging

    private = Path(tempfile.mkdtemp(prefix="pht-sandbox-"))  # removed in `finally`
    container: Any = None
    creating = False  # from here on a container of this name is ours to remove
    pump: _LogPump | None = None
    failed = True
    try:
        _remove_leftover(docker_client, name)
        resolv_conf = private / "resolv.conf"
        resolv_conf.write_text(RESOLV_CONF)
        os.chmod(resolv_conf, 0o444)  # noqa: S103 - no secret; the train's user reads it
        if input_dir is None:
            input_dir = private / "input"
            input_dir.mkdir()
            os.chmod(input_dir, 0o555)  # noqa: S103 - empty; the train's user lists it
        _prepare_output(output_dir, limits)
        settings = container_settings(
            image,
            name=name,
            data_dir=data_dir,
            input_dir=input_dir,
            output_dir=output_dir,
            env=env,
            limits=limits,
            command=command,
            resolv_conf=resolv_conf,
        )
        try:
            creating = True
            container = docker_client.containers.create(**settings)
            container.start()
        except docker.errors.APIError as exc:
            raise SandboxError(
                f"the Docker engine could not start train image {image}: {exc.explanation}",
                image=image,
            ) from None
        started = time.monotonic()
        pump = _LogPump(container.logs(stream=True, follow=True), forward)
        pump.start()

        while True:
            elapsed = time.monotonic() - started
            usage = measure_output(output_dir, stop_after_bytes=limits.output_bytes)
            _check_output(usage, limits, image, container)
            if elapsed > limits.wall_seconds:
                _kill(container)
                raise TrainTimeoutError(
                    f"train {image} exceeded its wall-time limit of {limits.wall_seconds:g} s "
                    f"(killed after {elapsed:.1f} s)",
                    image=image,
                    limit_seconds=limits.wall_seconds,
                    elapsed=elapsed,
                )
            wait_for = max(0.05, min(poll_seconds, limits.wall_seconds - elapsed + 0.05))
            try:
                outcome = container.wait(timeout=wait_for)
                break
            except requests.exceptions.RequestException:
                container.reload()  # a timed-out wait; this raises if the engine is gone

        duration = time.monotonic() - started
        container.reload()
        state = container.attrs.get("State") or {}
        exit_code = int(outcome.get("StatusCode", state.get("ExitCode", -1)))
        # The stream ends once the engine has sent the exited container's whole log.
        pump.join(timeout=LOG_DRAIN_SECONDS)
        if pump.thread.is_alive():
            logging.getLogger(__name__).warning(
                "the train's log was still being read %.0f s after it exited; its last lines "
                "are missing from the task log",
                LOG_DRAIN_SECONDS,
            )
        if state.get("OOMKilled"):
            raise TrainOOMError(
                f"train {image} ran out of memory: its limit is {_describe(limits.memory_bytes)} "
                f"and it was killed (exit code {exit_code})",
                image=image,
                limit_bytes=limits.memory_bytes,
            )
        if exit_code != 0:
            raise TrainExitError(
                f"train {image} exited with code {exit_code} after {duration:.1f} s",
                image=image,
                exit_code=exit_code,
            )
        usage = measure_output(output_dir)
        _check_output(usage, limits, image, None)
        normalise_output(output_dir, image)
        failed = False
        return SandboxResult(
            exit_code=exit_code,
            duration_seconds=duration,
            output_bytes=usage.bytes,
            output_files=usage.files,
            container_name=name,
            image=image,
            log_lines=pump.lines,
        )
    except docker.errors.APIError as exc:
        raise SandboxError(
            f"the Docker engine failed while running train image {image}: {exc.explanation}",
            image=image,
        ) from None
    except requests.exceptions.RequestException as exc:
        raise SandboxError(
            f"lost the Docker engine while running train image {image}: {type(exc).__name__}",
            image=image,
        ) from None
    finally:
        removed = _remove(docker_client, container, name) if creating else True
        if pump is not None:
            # A failed run's reader ends once its container is removed; a successful run's
            # reader has already ended above, so this returns at once.
            pump.join(timeout=5)
        shutil.rmtree(private, ignore_errors=True)
        if failed and creating:
            # Nothing of a failed run is sealed, and a hostile tree (too deep for
            # shutil.rmtree, paths past PATH_MAX) must not outlive it.
            try:
                clear_output(output_dir)
            except Exception as exc:  # noqa: BLE001 - the run's own error is the one to raise
                logging.getLogger(__name__).error(
                    "could not empty the output folder %s: %s", output_dir, exc
                )
        if not removed and not failed:
            raise SandboxError(
                f"the sandbox container {name} of train image {image} could not be removed; "
                "remove it by hand (docker rm -f)",
                image=image,
            )


def _check_output(usage: _Usage, limits: Limits, image: str, container: Any) -> None:
    over = usage.bytes > limits.output_bytes or usage.entries > MAX_OUTPUT_ENTRIES
    if not over and not usage.too_deep:
        return
    if container is not None:
        _kill(container)
    if usage.too_deep:
        message = (
            f"train {image} wrote folders more than {MAX_OUTPUT_DEPTH} levels deep to "
            f"{OUTPUT_PATH}, the deepest a result may be"
        )
    elif usage.entries > MAX_OUTPUT_ENTRIES:
        message = (
            f"train {image} wrote more than {MAX_OUTPUT_ENTRIES} files and folders to "
            f"{OUTPUT_PATH}, the most a result may hold"
        )
    else:
        message = (
            f"train {image} wrote at least {_describe(usage.bytes)} to {OUTPUT_PATH}, over the "
            f"station's output limit of {_describe(limits.output_bytes)}"
        )
    raise OutputTooLargeError(
        message, image=image, limit_bytes=limits.output_bytes, measured_bytes=usage.bytes
    )


def _kill(container: Any) -> None:
    import docker.errors

    # Already exited (409) or gone: the removal that follows takes care of it.
    with contextlib.suppress(docker.errors.APIError):
        container.kill()


def _remove(docker_client: Any, container: Any, name: str) -> bool:
    """Remove the container (by object, else by name); True when it is gone."""
    import docker.errors

    for attempt in range(3):
        try:
            target = container or docker_client.containers.get(name)
            target.remove(force=True, v=True)
            return True
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc):
                time.sleep(0.2)
                continue
            log.error("could not remove sandbox container %s: %s", name, exc.explanation)
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:  # noqa: BLE001 - e.g. the engine went away mid-run
            log.error("could not remove sandbox container %s: %s", name, exc)
            time.sleep(0.2 * (attempt + 1))
    return False
