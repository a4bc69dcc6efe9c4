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

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, TriggerRule

from ..station.config import hosted_station_configs, policy_task_timeout
from ..station.selftest import CHECKS
from .names import RUN_TRAIN, SELFTEST, dag_id_for
from .operators import (
    CARD_KEY,
    ApprovalPolicyGate,
    ExecuteTrainOperator,
    RecordHopOperator,
    VerifyTrainOperator,
)
from .selftest_operators import StationSelfTestOperator

_TRAIN = "{{ params.train }}"
_VERIFIED = "ti.xcom_pull(task_ids='verify')"


def run_train_dag(
    dag_id: str = RUN_TRAIN, config_path: str | None = None, doc_md: str | None = None
) -> DAG:
    """verify → approval_gate → approve (a person, when the policy asks) → execute → record.

    ``record`` runs whatever happened before it, so failures are audited too. Every task but
    ``approve`` has the station policy's ``task_timeout`` as its ``execution_timeout``.
    """
    station = f" ({Path(config_path).stem})" if config_path else ""
    task_timeout = policy_task_timeout(config_path)
    with DAG(
        dag_id=dag_id,
        description=f"Verify, approve, run and seal one hop of a PHT train{station}",
        schedule=None,
        catchup=False,
        max_active_runs=4,
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
        },
    ) as dag:
        verify = VerifyTrainOperator(
            task_id="verify",
            reference=_TRAIN,
            rerun="{{ params.rerun }}",
            config_path=config_path,
        )
        gate = ApprovalPolicyGate(task_id="approval_gate", retries=0, config_path=config_path)
        approve = ApprovalOperator(
            task_id="approve",
            # The card's text is made safe for display by the verify task (approval_card).
            subject=f"{{{{ {_VERIFIED}['{CARD_KEY}']['subject'] }}}}",
            body=f"{{{{ {_VERIFIED}['{CARD_KEY}']['body'] }}}}",
            response_timeout=timedelta(days=7),
            execution_timeout=None,  # a person's answer: bounded by response_timeout
            retries=0,
        )
        execute = ExecuteTrainOperator(
            task_id="execute",
            reference=_TRAIN,
            config_path=config_path,
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        )
        record = RecordHopOperator(
            task_id="record",
            reference=_TRAIN,
            config_path=config_path,
            trigger_rule=TriggerRule.ALL_DONE,
            retries=3,
        )
        verify >> gate >> approve >> execute >> record
        verify >> execute
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
