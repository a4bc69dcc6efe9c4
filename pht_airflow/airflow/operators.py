"""Thin Airflow operators for a station's hop: arguments in, one library call, summary out.

Each operator loads the station config (``PHT_STATION_CONFIG`` unless ``config_path`` is
given) when it runs, calls one function of :mod:`pht_airflow.station.hop`, and returns a
JSON-safe summary as its XCom. A library error is pushed as the ``failure`` XCom (check,
digest, key id, message: no secrets) so the ``record`` task can audit it, and then fails
the task without retries: a verification failure does not get better by trying again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from ..errors import PhtError, RegistryError
from ..station import hop
from ..station.config import StationConfig, load_config
from .lookups import AIRFLOW_LOOKUPS

FAILURE_KEY = "failure"


def _config(path: str | None) -> StationConfig:
    return load_config(path or None, AIRFLOW_LOOKUPS)


class _HopOperator(BaseOperator):
    template_fields: tuple[str, ...] = ("reference", "config_path")

    def __init__(self, *, reference: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.config_path = config_path

    def _guarded(self, context: Any, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except PhtError as exc:
            context["ti"].xcom_push(key=FAILURE_KEY, value=hop.failure_summary(exc))
            self.log.error("%s", exc)
            if isinstance(exc, RegistryError) and exc.retryable:
                raise  # a network or server hiccup: let Airflow's retries have a go
            raise AirflowFailException(str(exc)) from None


class VerifyTrainOperator(_HopOperator):
    """The Verify step: every check before anything is pulled or run."""

    def __init__(self, *, rerun: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rerun = rerun

    template_fields: tuple[str, ...] = (*_HopOperator.template_fields, "rerun")

    def execute(self, context: Any) -> dict[str, Any]:
        rerun = self.rerun in (True, "True", "true", "1")
        return self._guarded(
            context,
            lambda: hop.verify_step(
                _config(self.config_path), self.reference, rerun=rerun, logger=self.log.info
            ),
        )


class ApprovalPolicyGate(BaseOperator):
    """Skips the human approval step when the station's policy does not ask for it."""

    template_fields = ("config_path",)

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Any) -> bool:
        required = _config(self.config_path).policy.require_approval
        if not required:
            raise AirflowSkipException("policy.require_approval is false: no approval needed")
        return True


class ExecuteTrainOperator(_HopOperator):
    """The Execute step: decrypt input, sandbox, seal, push, sign, wipe, in one task."""

    def __init__(self, *, verify_task_id: str = "verify", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verify_task_id = verify_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        verified = context["ti"].xcom_pull(task_ids=self.verify_task_id)
        if not verified:
            raise AirflowFailException("the verify task left no summary")
        return self._guarded(
            context,
            lambda: hop.execute_step(_config(self.config_path), verified, logger=self.log.info),
        )


class RecordHopOperator(_HopOperator):
    """The Record step: appends the hop to the audit log, whatever happened before."""

    def __init__(
        self,
        *,
        verify_task_id: str = "verify",
        approve_task_id: str = "approve",
        execute_task_id: str = "execute",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.verify_task_id = verify_task_id
        self.approve_task_id = approve_task_id
        self.execute_task_id = execute_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        verified = ti.xcom_pull(task_ids=self.verify_task_id)
        executed = ti.xcom_pull(task_ids=self.execute_task_id)
        failure = ti.xcom_pull(task_ids=self.verify_task_id, key=FAILURE_KEY) or ti.xcom_pull(
            task_ids=self.execute_task_id, key=FAILURE_KEY
        )
        approval = ti.xcom_pull(task_ids=self.approve_task_id)
        approved_by = None
        if isinstance(approval, dict):
            user = approval.get("responded_by_user") or approval.get("responded_by")
            approved_by = (user or {}).get("name") if isinstance(user, dict) else user
        if not executed and not failure:
            failure = {
                "error": "NotRun",
                "message": "the hop did not run (rejected, skipped or an upstream task failed)",
            }
        record = hop.record_step(
            _config(self.config_path),
            reference=self.reference,
            verified=verified,
            executed=executed,
            failure=failure,
            approved_by=approved_by,
            run_id=context["run_id"],
            logger=self.log.info,
        )
        summary = {
            "outcome": record["outcome"],
            "seq": record.get("seq"),
            "failed_check": record.get("failed_check"),
        }
        if record["outcome"] != "success":
            raise AirflowFailException(f"hop failed: {failure.get('message') if failure else ''}")
        return summary
