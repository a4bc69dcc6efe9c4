"""The ``leftovers`` check: the station's leftover sweep (:func:`station.sweep.sweep`).

Removes what finished, failed or killed hops of this station left behind (hop folders whose
lock is free, their sandbox containers, train images pulled by digest that no running hop
uses) and audits it, so the self-test, like every hop, starts from a clean engine and disk.
It fails only when the sweep cannot run (no engine, a work folder that cannot be read).
"""

from __future__ import annotations

from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from ..sweep import sweep
from .probe import _engine, _short


def check_leftovers(config: StationConfig, docker_client: Any = None) -> str:
    """Sweep this station's leftovers; say what was removed (names are in the audit log)."""
    with _engine(docker_client, "leftovers") as engine:
        try:
            swept = sweep(config, engine)
        except Exception as exc:  # noqa: BLE001 - docker, requests or OS errors alike
            raise SelfTestError(
                f"leftovers: the sweep of {config.work_dir} and the Docker engine failed "
                f"({type(exc).__name__}: {_short(exc)}); check that the station can write "
                "its work_dir and reach dockerd"
            ) from None
    if not swept:
        return "leftovers: no hop folder, sandbox container or pulled train image left behind"
    return (
        f"leftovers: removed {len(swept.folders)} hop folder(s), {len(swept.containers)} "
        f"sandbox container(s) and {len(swept.images)} pulled train image reference(s) left "
        "by hops that are not running (listed in the audit log's cleanup record)"
    )
