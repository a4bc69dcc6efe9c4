"""DAG ids, importable without Airflow (the demo and tools outside Airflow use them)."""

from __future__ import annotations

RUN_TRAIN = "pht_run_train"
SELFTEST = "pht_station_selftest"


def dag_id_for(station: str | None, base: str = RUN_TRAIN) -> str:
    """``base`` for a single-station deployment, ``base__<station>`` for a hosted station."""
    return f"{base}__{station}" if station else base
