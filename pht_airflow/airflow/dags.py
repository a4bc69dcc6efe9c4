"""The station's DAGs, built by functions so one Airflow deployment can host several stations.

A station deployment normally runs one station: ``$PHT_STATION_CONFIG`` names its config and
the DAG files in ``dags/`` define ``pht_run_train`` and ``pht_station_selftest``. With
``$PHT_STATION_CONFIG_DIR`` set instead, the deployment hosts every ``<station>.yaml`` in
that folder, with a pair of DAGs per station (``pht_run_train__<station>``,
``pht_station_selftest__<station>``) bound to its config, and the webhook plugin serves one
receiver per station. Tasks load their config when they run; the one thing read at parse
time is ``policy.task_timeout``, every hop task's ``execution_timeout`` (the person's approval
step excepted: it waits up to its own ``response_timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TriggerRule

from ..station.config import hosted_station_configs, policy_task_timeout
from ..station.selftest import CHECKS
from .expected import EXPECTED_FAILURE_POLICY
from .names import RUN_TRAIN, SELFTEST, dag_id_for
from .operators import (
    CARD_KEY,
    CheckOutputOperator,
    PersonsAnswerOperator,
    PreflightOperator,
    RecordHopOperator,
    RunTrainOperator,
    SealResultOperator,
    VerifyTrainOperator,
)
from .selftest_operators import StationSelfTestOperator

_TRAIN = "{{ params.train }}"
_VERIFIED = "ti.xcom_pull(task_ids='verify')"
_CHECKED = "ti.xcom_pull(task_ids='check_output')"


#: The longest a hop keeps retrying a registry or central-service outage at push time.
DEFAULT_RETRY_TOTAL = timedelta(minutes=15)
_FIRST_RETRY = timedelta(seconds=15)
_MAX_RETRY_DELAY = timedelta(minutes=5)


def retry_args(total: timedelta = DEFAULT_RETRY_TOTAL) -> dict[str, Any]:
    """Airflow retry settings: exponential backoff (15 s, 30 s, 60 s, … at most 5 min apart)
    with as many retries as fit in ``total`` (counting each wait at its shortest; Airflow adds
    up to as much again as jitter)."""
    retries, waited, delay = 0, 0.0, _FIRST_RETRY.total_seconds()
    while waited + delay <= total.total_seconds():
        waited += delay
        retries += 1
        delay = min(delay * 2, _MAX_RETRY_DELAY.total_seconds())
    return {
        "retries": retries,
        "retry_delay": _FIRST_RETRY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": _MAX_RETRY_DELAY,
    }


def run_train_dag(
    dag_id: str = RUN_TRAIN, config_path: str | None = None, doc_md: str | None = None
) -> DAG:
    """preflight → verify → approve → run → check_output → release → seal → record.

    ``approve`` and ``release`` are a person's answers (Approve/Reject with a reason), asked
    only when the policy (or, for ``release``, a disclosure check) says so: ``verify`` and
    ``check_output`` branch past them otherwise (no gate tasks: each task is a process).
    ``run`` runs the train once and leaves its output encrypted; ``seal`` pushes it and
    retries registry outages with backoff without running the train again. ``record`` runs whatever
    happened before it, so every outcome is audited. Every task but the two persons' steps
    has the station policy's ``task_timeout`` as its ``execution_timeout``.
    """
    station = f" ({Path(config_path).stem})" if config_path else ""
    task_timeout = policy_task_timeout(config_path)
    reason = {
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason",
            description="Why (recorded in the audit log and sent to the central service when "
            "you reject; optional when you approve).",
        )
    }
    with DAG(
        dag_id=dag_id,
        description=f"Verify, approve, run, check, release, seal a hop of a PHT train{station}",
        schedule=None,
        catchup=False,
        max_active_runs=4,
        is_paused_upon_creation=False,
        tags=["pht"],
        doc_md=doc_md,
        params={
            "train": Param(
                "",
                type="string",
                minLength=1,
                title="Train reference",
                description="The train in this station's project, e.g. "
                "harbor.example.org/station-a/3b1f…:train (a digest reference works too).",
            ),
            "rerun": Param(
                False,
                type="boolean",
                title="Run again",
                description="Run a train this station already completed (refused otherwise).",
            ),
        },
        default_args={
            "retries": 1,
            "retry_delay": timedelta(seconds=30),
            "execution_timeout": task_timeout,
            # An expected failure (already explained in the log) fails at once, no stack.
            "retry_policy": EXPECTED_FAILURE_POLICY,
        },
    ) as dag:
        preflight = PreflightOperator(task_id="preflight", retries=0, config_path=config_path)
        verify = VerifyTrainOperator(
            task_id="verify",
            reference=_TRAIN,
            rerun="{{ params.rerun }}",
            config_path=config_path,
        )
        approve = PersonsAnswerOperator(
            task_id="approve",
            # The card's text is made safe for display by the verify task (approval_card).
            subject=f"{{{{ {_VERIFIED}['{CARD_KEY}']['subject'] }}}}",
            body=f"{{{{ {_VERIFIED}['{CARD_KEY}']['body'] }}}}",
            params=reason,
            response_timeout=timedelta(days=7),
            execution_timeout=None,  # a person's answer: bounded by response_timeout
            retries=0,
        )
        run = RunTrainOperator(
            task_id="run",
            reference=_TRAIN,
            config_path=config_path,
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        )
        check = CheckOutputOperator(
            task_id="check_output", reference=_TRAIN, config_path=config_path, retries=0
        )
        release = PersonsAnswerOperator(
            task_id="release",
            subject=f"{{{{ {_CHECKED}['{CARD_KEY}']['subject'] }}}}",
            body=f"{{{{ {_CHECKED}['{CARD_KEY}']['body'] }}}}",
            params=reason,
            response_timeout=timedelta(days=7),
            execution_timeout=None,
            retries=0,
        )
        seal = SealResultOperator(
            task_id="seal",
            reference=_TRAIN,
            config_path=config_path,
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            **retry_args(),
        )
        record = RecordHopOperator(
            task_id="record",
            reference=_TRAIN,
            config_path=config_path,
            trigger_rule=TriggerRule.ALL_DONE,
            retries=3,
        )
        preflight >> verify >> approve >> run >> check >> release >> seal >> record
        verify >> run
        check >> seal
    return dag


def selftest_dag(
    dag_id: str = SELFTEST, config_path: str | None = None, doc_md: str | None = None
) -> DAG:
    """One task per self-test check, so one failure does not hide the others; each within the
    station policy's ``task_timeout``."""
    station = f" ({Path(config_path).stem})" if config_path else ""
    with DAG(
        dag_id=dag_id,
        description=f"Check the engine, registry, keys, data sets and sandbox{station}",
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["pht"],
        doc_md=doc_md,
        default_args={"retries": 0, "execution_timeout": policy_task_timeout(config_path)},
    ) as dag:
        for check in CHECKS:
            StationSelfTestOperator(task_id=check, check=check, config_path=config_path)
    return dag


def station_dags(
    base: str, build: Callable[[str, str | None, str | None], DAG], doc_md: str | None
) -> dict[str, DAG]:
    """The DAGs a DAG file defines: one per hosted station, or the single station's one."""
    hosted = hosted_station_configs()
    if not hosted:
        return {base: build(base, None, doc_md)}
    return {
        dag_id_for(name, base): build(dag_id_for(name, base), str(path), doc_md)
        for name, path in hosted.items()
    }
