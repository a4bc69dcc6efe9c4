"""The thin operator behind the ``pht_station_selftest`` DAG: one self-test check per task.

It loads the station config (``PHT_STATION_CONFIG`` unless ``config_path`` is given) when it
runs, calls one check of :mod:`pht_airflow.station.selftest`, logs and returns the one-line
pass message, and fails the task without retries on any failure: a self-test that fails
needs a person to fix something, not another attempt.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from ..errors import PhtError
from ..station import selftest
from ..station.config import load_config
from .lookups import AIRFLOW_LOOKUPS


class StationSelfTestOperator(BaseOperator):
    """Runs the self-test check ``check`` (one of :data:`selftest.CHECKS`)."""

    template_fields: tuple[str, ...] = ("config_path",)
    ui_color = "#e8f4e8"

    def __init__(self, *, check: str, config_path: str | None = None, **kwargs: Any) -> None:
        if check not in selftest.CHECKS:
            raise ValueError(f"no self-test check {check!r} (one of {', '.join(selftest.CHECKS)})")
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.check = check
        self.config_path = config_path

    def execute(self, context: Any) -> dict[str, str]:
        try:
            config = load_config(self.config_path or None, AIRFLOW_LOOKUPS)
            message = selftest.run_check(self.check, config)
        except PhtError as exc:
            self.log.error("self-test %s failed: %s", self.check, exc)
            raise AirflowFailException(str(exc)) from None
        self.log.info("%s", message)
        return {"check": self.check, "message": message}
