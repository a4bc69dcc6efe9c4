"""One active run per train at a station.

Five manual triggers of one train would otherwise make five runs, four of them waiting for
an approval that the first one already asks for. After a train is verified, its run claims
the train at this station with a marker file in ``work_dir`` (``active-<digest>.json``,
naming the run); a second run of the same train fails its verify step with a message naming
the run that has it, unless that run is no longer active (the orchestrator says so: a
marker left by a killed run is taken over). ``record`` gives the claim back when the hop
ends, whatever its outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import PolicyError
from .config import StationConfig

PREFIX = "active-"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_MAX = 4096


class DuplicateRunError(PolicyError):
    """The train already has an active run at this station (a station-side mistake)."""


def _marker(config: StationConfig, digest: str) -> Path:
    m = _DIGEST.match(digest)
    if m is None:
        raise PolicyError(f"not a train digest: {digest[:80]!r}")
    config.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return config.work_dir / f"{PREFIX}{m.group(1)}.json"


def _holder(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX)
        holder = json.loads(raw).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return holder if isinstance(holder, str) else None


def claim(
    config: StationConfig, digest: str, run_id: str, is_active: Callable[[str], bool]
) -> None:
    """Claim ``digest`` for ``run_id``; raise :class:`DuplicateRunError` if an active run has it.

    ``is_active(run_id)`` asks the orchestrator whether another run is still queued or running.
    """
    path = _marker(config, digest)
    body = json.dumps({"run_id": run_id}).encode()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            holder = _holder(path)
            if holder == run_id:
                return  # this run's own claim (a retried verify)
            if holder is not None and is_active(holder):
                raise DuplicateRunError(
                    f"train {digest} already has an active run at this station ({holder}); "
                    "answer or stop that run instead of starting another"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a claim left by a run that ended without giving it back
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        return
    raise DuplicateRunError(f"train {digest} is being claimed by several runs at once; try again")


def give_back(config: StationConfig, digest: str | None, run_id: str) -> bool:
    """Remove ``run_id``'s claim on ``digest`` (never another run's); True if it held one."""
    if not digest or _DIGEST.match(digest) is None:
        return False
    path = _marker(config, digest)
    if _holder(path) != run_id:
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False
