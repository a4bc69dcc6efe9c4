"""An expected protocol failure fails its task without a Python stack (issue 11, Build 5).

Airflow 3.3's task runner logs every exception a task raises with its traceback ("Task failed
with exception"), ``AirflowFailException`` included, except ``SystemExit`` ("Task exited").
:class:`~pht_airflow.airflow.expected.ExpectedFailure` is such an exit, and
:data:`~pht_airflow.airflow.expected.EXPECTED_FAILURE_POLICY` (Airflow's ``retry_policy``)
keeps it from being retried. Shown with Airflow's own ``dag.test()`` on the station's
``pht_run_train``: a train reference in another project fails ``verify``; with each hop task
ending an expected failure with ``ExpectedFailure`` (and the policy), ``verify`` fails on its
first try although it has a retry, and the log has the plain-words lines and no stack; ended
with ``AirflowFailException`` instead, the same run's log has one.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from conftest import REPO
from support.stationkit import make_station

from pht_airflow.airflow.expected import EXPECTED_FAILURE_POLICY, ExpectedFailure
from pht_airflow.station.audit import AuditLog

pytestmark = [pytest.mark.airflow, pytest.mark.registry]

STACK = "Task failed with exception"


def test_an_expected_failure_is_a_system_exit_with_one_safe_line() -> None:
    exc = ExpectedFailure("verify refused the train:\x1b[2J creator\nsecond line")
    assert isinstance(exc, SystemExit)
    assert exc.code == str(exc) == "verify refused the train:\\x1b[2J creator\\nsecond line"
    (rule,) = EXPECTED_FAILURE_POLICY.rules
    assert rule.matches(exc)
    assert not rule.matches(AirflowFailException("not ours"))
    assert not rule.matches(SystemExit(1))


def _dag() -> Any:
    spec = importlib.util.spec_from_file_location(
        "pht_run_train_dag_expected", REPO / "dags" / "pht_run_train.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _raising(cls: type[Any], expected: bool) -> type[Any]:
    """``cls`` ending an expected failure with ExpectedFailure (``expected``) or with
    AirflowFailException (as the hop operators did), whichever of the two it raises."""

    class Refusing(cls):  # type: ignore[misc, valid-type]
        def execute(self, context: Any) -> Any:
            try:
                return super().execute(context)
            except (AirflowFailException, ExpectedFailure) as exc:
                if expected:
                    raise ExpectedFailure(str(exc)) from None
                raise AirflowFailException(str(exc)) from None

    Refusing.__name__ = cls.__name__
    return Refusing


@pytest.mark.parametrize("expected", [True, False], ids=["expected-failure", "as-today"])
def test_a_refused_train_fails_verify_without_a_stack(
    expected: bool,
    airflow_db: Path,
    registry: Any,
    parties: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    station = make_station(
        tmp_path / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )
    monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
    dag = _dag()
    verify = dag.get_task("verify")
    assert verify.retries >= 1  # a retry it must not take for an expected failure
    for task in dag.tasks:
        task.__class__ = _raising(type(task), expected)
        if expected:
            task.retry_policy = EXPECTED_FAILURE_POLICY
    train = f"{registry.host}/elsewhere/{uuid.uuid4()}:train"  # not station-a's project
    capfd.readouterr()
    run = dag.test(run_conf={"train": train, "rerun": False})
    log = capfd.readouterr().out
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert run.state == "failed", states
    assert states["verify"] == ("failed", 1), states
    record = AuditLog(station.audit_path).last()
    assert record is not None and record["outcome"] == "failure"
    assert record["failure"]["error"] == "WrongProjectError", record["failure"]
    if expected:
        assert STACK not in log and "Traceback" not in log, log[-4000:]
        assert "Task exited" in log
        assert "Retry policy decision" in log  # Airflow's own line: failed, not retried
    else:
        assert STACK in log  # the stack this module removes
