"""The ``preflight`` check: the station's pre-flight (:mod:`pht_airflow.station.preflight`),
run in full (nothing remembered), exactly as the first task of every hop runs it."""

from __future__ import annotations

from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from ..preflight import run_preflight


def check_preflight(config: StationConfig, docker_client: Any = None) -> str:
    """Every pre-flight check, none taken from the cache; fails with each problem and what
    to do, one after another on one line."""
    report = run_preflight(config, docker_client=docker_client, cache=False)
    if not report.ok:
        problems = [f"{r.name}: {p.line()}" for r in report.failed for p in r.problems]
        raise SelfTestError("preflight: " + " | ".join(problems))
    return "preflight: " + ", ".join(r.name for r in report.results) + " passed"
