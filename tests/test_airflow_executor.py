"""TaskLogOnlyLocalExecutor on a real, running Airflow (scheduler, API server, DAG processor).

A one-task DAG runs a train through the real sandbox; the train's output must be in the
task's log file and nowhere in the scheduler's log (stock LocalExecutor copies every task
line to the scheduler's standard output).
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.dev.localairflow import start_airflow
from pht_airflow.errors import ServiceError

pytestmark = [pytest.mark.airflow, pytest.mark.docker]

DAG_ID = "pht_log_probe"
DAG = """
import logging
import tempfile
from pathlib import Path

import docker
import pendulum
from airflow.sdk import dag, task

from pht_airflow.station.sandbox import Limits, run_train


@dag(dag_id="{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
def probe():
    @task
    def train():
        log = logging.getLogger("airflow.task.operators.probe")
        with tempfile.TemporaryDirectory() as tmp:
            data, output = Path(tmp, "data"), Path(tmp, "output")
            data.mkdir()
            output.mkdir()
            run_train(
                docker.from_env(), "pht-local/busybox:latest", data_dir=data, input_dir=None,
                output_dir=output, env={{}}, limits=Limits(memory_bytes=64 << 20, wall_seconds=60),
                log=log.info, command=["echo", "{marker}"],
            )
        log.info("task line {marker}-task")

    train()


probe()
"""


def test_train_output_reaches_the_task_log_and_not_the_scheduler_log(
    tmp_path: Path, docker_client: Any
) -> None:
    marker = f"train-says-{uuid.uuid4().hex}"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(textwrap.dedent(DAG.format(dag_id=DAG_ID, marker=marker)))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
    }
    try:
        airflow = start_airflow(tmp_path / "home", env=env, log_dir=tmp_path)
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        airflow.wait_for_dag(DAG_ID)
        with airflow.client() as http:
            resp = http.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
            assert resp.status_code == 200, resp.text
            run_id = resp.json()["dag_run_id"]

        def finished() -> str | None:
            (run,) = [r for r in airflow.runs(DAG_ID) if r["dag_run_id"] == run_id]
            return run["state"] if run["state"] in ("success", "failed") else None

        assert airflow.wait("the probe run", finished, timeout=300) == "success", (
            airflow.diagnostics(dag_id=DAG_ID)
        )
        task_logs = sorted((tmp_path / "home" / "logs").glob(f"dag_id={DAG_ID}/**/*.log"))
        assert task_logs, airflow.diagnostics(dag_id=DAG_ID)
        task_log = "".join(p.read_text(errors="replace") for p in task_logs)
        assert marker in task_log  # the train's own line
        assert f"{marker}-task" in task_log
    finally:
        airflow.stop()
    scheduler_log = (tmp_path / "airflow-scheduler.log").read_text(errors="replace")
    assert "Worker starting up" in scheduler_log  # the executor's worker ran and logs here
    assert marker not in scheduler_log
