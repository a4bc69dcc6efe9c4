"""A LocalExecutor whose tasks log to their task log only, not also to the scheduler's output.

Airflow's ``LocalExecutor`` runs each task under a supervisor in one of its worker processes
(forked from the scheduler) and passes ``subprocess_logs_to_stdout=True``: every line the
task logs is written to the task's log file *and* to the supervisor's logger, which is the
scheduler's standard output. So a train's output, forwarded line by line into the task log
by the sandbox, also ended up in the scheduler's log file (``airflow-scheduler.log`` in the
demo), with every other task line. The flag is fixed in Airflow's worker function, with no
setting to turn it off.

:class:`TaskLogOnlyLocalExecutor` is the same executor; only its worker processes run each
workload with ``subprocess_logs_to_stdout=False``, so task lines reach the task log file
alone (the UI and the API read them from there). The scheduler's own lines, and the
supervisor's (task started, exit code), still go to the scheduler's output. Use it with
``AIRFLOW__CORE__EXECUTOR=pht_airflow.airflow.executor.TaskLogOnlyLocalExecutor``.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import Any

from airflow.executors import local_executor
from airflow.executors.base_executor import BaseExecutor

PATH = "pht_airflow.airflow.executor.TaskLogOnlyLocalExecutor"


def _task_log_only(run_workload: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["subprocess_logs_to_stdout"] = False
    return run_workload(*args, **kwargs)


def _run_worker(**kwargs: Any) -> None:
    """Airflow's worker loop, in a worker process that runs workloads with task logs only."""
    # This process is the executor's own worker: the change stays inside it.
    original = BaseExecutor.run_workload
    BaseExecutor.run_workload = staticmethod(  # type: ignore[method-assign]
        functools.partial(_task_log_only, original)
    )
    local_executor._run_worker(**kwargs)


class TaskLogOnlyLocalExecutor(local_executor.LocalExecutor):
    """``LocalExecutor`` whose task logs are not copied to the scheduler's standard output."""

    def _spawn_worker(self) -> None:
        process = multiprocessing.Process(
            target=_run_worker,
            kwargs={
                "logger_name": self.log.name,
                "input": self.activity_queue,
                "output": self.result_queue,
                "unread_messages": self._unread_messages,
                "team_conf": self.conf,
            },
        )
        process.start()
        assert process.pid is not None  # noqa: S101 - set by start()
        self.workers[process.pid] = process
