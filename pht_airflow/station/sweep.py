"""Leftover sweeps: what finished, failed or killed hops of this station left behind.

A hop removes its work folder, sandbox container and pulled train image when it ends, but a
killed task (SIGKILL, a lost worker) ends without doing so, and nothing guarantees the same
hop runs again. :func:`sweep` removes such leftovers whatever hop left them; it runs at the
start of every hop (``hop.execute_step``) and in the self-test (``pht station selftest``).

How a running hop is told apart from a dead one: every hop holds ``flock`` on its work folder
(``work_dir/hop-*``) for as long as it runs (:func:`open_work`). A folder whose lock is free
belongs to no running hop. A sandbox container names its work folder and station in its
labels (``org.pht.sandbox.output``, ``org.pht.sandbox.station``); it is a leftover, whatever
its state, if its folder's lock is free (or the folder is gone), and left alone otherwise.
A hop writes the train image it is about to pull into its locked folder
(:data:`IMAGE_MARKER`) before pulling, so the image of a running hop is never removed.
Only this station's containers (by the station label) and only digest references under
this station's registry project are touched; an image that also has a tag in the project
(built or tagged locally, not pulled by a hop) stays.

Everything runs under the guard lock on ``work_dir`` that :func:`open_work` also takes, so
a folder is never seen between its creation and its lock. Each sweep that removed anything
writes one ``cleanup`` audit record listing names and ids only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..text import safe_text
from .audit import AuditLog
from .config import StationConfig
from .data import wipe
from .sandbox import LABEL, clear_output

log = logging.getLogger(__name__)

Log = Callable[[str], None]

#: The hop folders in ``work_dir`` (decrypted input, output, extracted data).
HOP_PREFIX = "hop-"
#: The file in a hop folder naming the train image the hop pulls (``repository@digest``).
IMAGE_MARKER = ".train-image"
#: Labels a sandbox container carries so a sweep can find its station and work folder.
STATION_LABEL = f"{LABEL}.station"
OUTPUT_LABEL = f"{LABEL}.output"


@dataclass
class Swept:
    """What one sweep removed (names and ids only)."""

    folders: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.folders or self.containers or self.images)

    def record(self) -> dict[str, list[str]]:
        return {"folders": self.folders, "containers": self.containers, "images": self.images}


def _say(logger: Log | None, message: str) -> None:
    message = safe_text(message, limit=4000)
    if logger is not None:
        logger(message)
    else:
        log.info("%s", message)


def wipe_folder(path: Path) -> None:
    """Remove a hop folder; files are unlinked (the sandbox made them as another uid)."""
    wipe(path / "data")  # extracted data is read-only: make its folders writable first
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # a tree deeper than rmtree can walk, or odd modes left by the train
        with contextlib.suppress(OSError):
            clear_output(path)
            path.rmdir()
    if path.exists():  # pragma: no cover - only on a permission oddity
        log.error("could not wipe %s", path)


@contextlib.contextmanager
def _guard(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _locked(folder: Path) -> bool:
    """True if a running hop holds ``folder``'s lock."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _hop_folders(root: Path) -> list[Path]:
    return [p for p in sorted(root.glob(f"{HOP_PREFIX}*")) if p.is_dir() and not p.is_symlink()]


def _image_refs(image: dict[str, Any], prefix: str) -> list[str]:
    """The digest references under ``prefix`` of a pulled (untagged in the project) image."""
    if any(t.startswith(prefix) for t in image.get("RepoTags") or []):
        return []  # built or tagged here, not pulled by a hop
    return [d for d in image.get("RepoDigests") or [] if d.startswith(prefix)]


def _sweep_locked(config: StationConfig, engine: Any, swept: Swept) -> None:
    import docker.errors

    root = config.work_dir
    api = engine.api
    prefix = f"{config.registry.host}/{config.registry.project}/"
    # Images are listed before the folders are read: a hop writes its marker before pulling,
    # so an image pulled after this listing is not a candidate, and one pulled before it has
    # its marker in place when the folders are read below.
    candidates = [ref for image in api.images() for ref in _image_refs(image, prefix)]
    running_folders = {p for p in _hop_folders(root) if _locked(p)}
    in_use: set[str] = set()
    for folder in running_folders:
        with contextlib.suppress(OSError):
            in_use.add((folder / IMAGE_MARKER).read_text()[:1000].strip())

    containers = api.containers(all=True, filters={"label": f"{STATION_LABEL}={config.station_id}"})
    for c in containers:
        labels = c.get("Labels") or {}
        if labels.get(LABEL) != "1" or labels.get(STATION_LABEL) != config.station_id:
            continue
        folder = Path(labels.get(OUTPUT_LABEL) or "/").parent
        ours = folder.parent == root and folder.name.startswith(HOP_PREFIX)
        if not ours:
            continue  # another station's folder layout: never guess
        if folder in running_folders:
            # A running hop's container, whatever its state (created, running, exited):
            # the hop removes it itself.
            in_use.add(str(labels.get(f"{LABEL}.image") or ""))
            continue
        name = ((c.get("Names") or ["?"])[0]).lstrip("/")
        try:
            api.remove_container(c["Id"], force=True, v=True)
        except docker.errors.NotFound:
            continue  # its hop removed it meanwhile
        except docker.errors.APIError as exc:
            log.warning("could not remove the leftover container %s: %s", name, exc)
            continue
        swept.containers.append(f"{name} ({c['Id'][:12]})")

    for ref in candidates:
        if ref in in_use:
            continue
        try:
            api.remove_image(ref, noprune=False)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:  # used by a container (another station's)
            log.info("left the image %s: %s", ref, exc)
            continue
        swept.images.append(ref)

    for folder in _hop_folders(root):
        if folder in running_folders or _locked(folder):
            continue
        wipe_folder(folder)
        swept.folders.append(folder.name)


def sweep(config: StationConfig, engine: Any = None, *, logger: Log | None = None) -> Swept:
    """Remove this station's leftovers of hops that are not running; audit what went.

    ``engine`` is a Docker client (``docker.from_env()`` when None). Returns what was removed.
    """
    import docker

    own = engine is None
    client = docker.from_env(timeout=120) if own else engine
    swept = Swept()
    try:
        with _guard(config.work_dir):
            _sweep_locked(config, client, swept)
    finally:
        if own:
            client.close()
    if swept:
        AuditLog(config.audit_log).append(
            {
                "event": "cleanup",
                "station": config.station_id,
                "removed": swept.record(),
                "reason": "leftovers of hops that are not running (finished, failed or killed)",
            }
        )
        _say(
            logger,
            f"sweep: removed {len(swept.folders)} hop folder(s), {len(swept.containers)} "
            f"container(s), {len(swept.images)} train image reference(s)",
        )
    return swept


def open_work(config: StationConfig, prefix: str, image: str | None = None) -> tuple[Path, int]:
    """A new private hop folder, locked by this process until the returned fd is closed.

    Created under the guard lock, so a sweep never sees it unlocked. ``image`` (the train
    image the hop is about to pull) is written into it, so a sweep keeps that image.
    """
    root = config.work_dir
    with _guard(root):
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        lock = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.chmod(work, 0o700)
        if image is not None:
            (work / IMAGE_MARKER).write_text(image + "\n")
    return work, lock
