"""pht_run_train: one hop of a Personal Health Train at this station.

verify → approval_gate → approve (a person, when the policy asks) → execute → record.
``record`` runs whatever happened before it, so failures are audited too. Trigger it from
the UI form, the REST API (conf ``{"train": "<registry>/<project>/<id>:train"}``) or the
registry webhook (the plugin creates one run per train digest).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, TriggerRule

from pht_airflow.airflow.operators import (
    ApprovalPolicyGate,
    ExecuteTrainOperator,
    RecordHopOperator,
    VerifyTrainOperator,
)

# The station config comes from PHT_STATION_CONFIG in the worker's environment, read when
# each task runs (so a config change needs no DAG re-parse).
TRAIN = "{{ params.train }}"

with DAG(
    dag_id="pht_run_train",
    description="Verify, approve, run and seal one hop of a PHT train",
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["pht"],
    doc_md=__doc__,
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
            description="Run a train this station already completed (it is refused otherwise).",
        ),
    },
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
) as dag:
    verify = VerifyTrainOperator(task_id="verify", reference=TRAIN, rerun="{{ params.rerun }}")
    gate = ApprovalPolicyGate(task_id="approval_gate", retries=0)
    approve = ApprovalOperator(
        task_id="approve",
        subject="Run train {{ ti.xcom_pull(task_ids='verify')['train_name'] }} at this station?",
        body=(
            "Train `{{ ti.xcom_pull(task_ids='verify')['train_id'] }}` "
            "(digest `{{ ti.xcom_pull(task_ids='verify')['digest'] }}`), hop "
            "{{ ti.xcom_pull(task_ids='verify')['hop'] }}, data set "
            "`{{ ti.xcom_pull(task_ids='verify')['dataset'] }}`. Every check passed: "
            "{{ ti.xcom_pull(task_ids='verify')['checks_passed'] | join(', ') }}."
        ),
        response_timeout=timedelta(days=7),
        retries=0,
    )
    execute = ExecuteTrainOperator(
        task_id="execute",
        reference=TRAIN,
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    )
    record = RecordHopOperator(
        task_id="record",
        reference=TRAIN,
        trigger_rule=TriggerRule.ALL_DONE,
        retries=3,
    )
    verify >> gate >> approve >> execute >> record
    verify >> execute
