"""Failing a task for an expected protocol failure without a Python stack in its log.

Airflow 3.3's task runner (``airflow/sdk/execution_time/task_runner.py``,
``_run_task_and_map_outcome``) logs ``log.exception("Task failed with exception")`` — the
exception with its traceback — for every exception a task raises, ``AirflowFailException``
included. The one failure it logs without a stack is ``SystemExit``: ``log.error("Task exited",
exit_code=e.code)``, and then the task's retry policy decides (``_handle_current_task_failed``).

So an operator that has already logged an expected failure in plain words (the check, the
reason, the digest and key, what to do: :func:`~pht_airflow.station.explain.failure_lines`)
raises :class:`ExpectedFailure` (a ``SystemExit`` whose code is one line saying so), and the
task carries :data:`EXPECTED_FAILURE_POLICY` (Airflow's documented ``retry_policy``): an
expected failure fails the task at once, as ``AirflowFailException`` did, because trying a
refused train again does not help. Any other exception keeps Airflow's usual retries.
"""

from __future__ import annotations

from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from ..text import safe_text

__all__ = ["EXPECTED_FAILURE_POLICY", "ExpectedFailure"]


class ExpectedFailure(SystemExit):
    """An expected failure the task's log has explained: fails the task with one error line
    (``Task exited exit_code='<message>'``) instead of a Python stack. Raise it only after
    logging the explanation, and only from a task with :data:`EXPECTED_FAILURE_POLICY` (without
    it the task is retried like any other failure)."""

    def __init__(self, message: object) -> None:
        super().__init__(safe_text(message, limit=1000))

    def __str__(self) -> str:
        return str(self.code)


#: The tasks' ``retry_policy``: an :class:`ExpectedFailure` fails the task without retries
#: (like ``AirflowFailException``); every other exception gets the task's ``retries``.
EXPECTED_FAILURE_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=ExpectedFailure,
            action=RetryAction.FAIL,
            reason="an expected protocol failure: trying again does not help",
        )
    ]
)
