"""Thin Airflow operators for a station's hop: arguments in, one library call, summary out.

Each operator loads the station config (``PHT_STATION_CONFIG`` unless ``config_path`` is
given) when it runs, calls one function of :mod:`pht_airflow.station.hop`, and returns a
JSON-safe summary as its XCom. A library error is pushed as the ``failure`` XCom (check,
digest, key id, message: no secrets) so the ``record`` task can audit it, and then fails
the task without retries: a verification failure does not get better by trying again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.branch import BranchMixIn
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowTaskTimeout,
    DownstreamTasksSkipped,
)

from ..errors import PhtError, RegistryError
from ..station import active, hop, rest
from ..station.config import StationConfig, load_config
from ..station.explain import failure_lines
from ..station.sandbox import LABEL
from ..text import safe_text
from .card import approval_card, markdown_text
from .expected import ExpectedFailure
from .lookups import AIRFLOW_LOOKUPS

FAILURE_KEY = "failure"
#: The key of the XCom a hop task pushes as it starts: a task that started but left neither a
#: summary nor a ``failure`` XCom ended without reporting (killed, timed out or crashed).
STARTED_KEY = "started"
#: The key of the verify task's XCom that holds the approval card (subject and body).
CARD_KEY = "card"


@dataclass(frozen=True)
class HopTasks:
    """The task ids of the hop DAG (:func:`~pht_airflow.airflow.dags.run_train_dag`): the
    operators read each other's XComs by them."""

    preflight: str = "preflight"
    verify: str = "verify"
    approve: str = "approve"
    run: str = "run"
    check: str = "check_output"
    release: str = "release"
    seal: str = "seal"


TASKS = HopTasks()


def _facts_of(summary: dict[str, Any]) -> dict[str, Any]:
    """Card facts from the verified summary alone (no approval asked: the card is not shown)."""
    return {
        "train": {
            "name": summary.get("train_name"),
            "id": summary.get("train_id"),
            "digest": summary.get("digest"),
            "expires": summary.get("expires"),
        },
    }


def _safe_log(emit: Callable[..., Any]) -> Callable[[str], None]:
    """A hop logger that writes each line as one line, control characters shown escaped."""
    return lambda line: emit("%s", safe_text(line, limit=4000))


def _config(path: str | None) -> StationConfig:
    return load_config(path or None, AIRFLOW_LOOKUPS)


def log_failure(logger: Any, exc: BaseException, config_path: str | None) -> None:
    """Log ``exc`` as :func:`~pht_airflow.station.explain.failure_lines` (one error line each)."""
    try:
        config: StationConfig | None = _config(config_path)
    except PhtError:
        config = None
    for line in failure_lines(exc, config):
        logger.error("%s", line)


class _HopOperator(BaseOperator):
    template_fields: tuple[str, ...] = ("reference", "config_path")

    def __init__(self, *, reference: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.config_path = config_path

    def _guarded(self, context: Any, call: Callable[[], Any]) -> Any:
        ti = context["ti"]
        ti.xcom_push(key=STARTED_KEY, value=self.task_id)
        try:
            return call()
        except PhtError as exc:
            ti.xcom_push(key=FAILURE_KEY, value=self._killed_summary() or hop.failure_summary(exc))
            message = safe_text(exc, limit=4000)
            self._explain(exc)
            if isinstance(exc, RegistryError) and exc.retryable:
                raise  # a network or server hiccup: let Airflow's retries have a go
            raise ExpectedFailure(message) from None  # explained above: no Python stack
        except AirflowTaskTimeout:
            limit = self.execution_timeout
            ti.xcom_push(
                key=FAILURE_KEY,
                value={
                    "error": "TaskTimeout",
                    "message": f"the {self.task_id} task timed out after {limit} "
                    "(policy.task_timeout) and was stopped",
                },
            )
            raise
        except Exception as exc:  # not ours: audit its type and message, let retries have a go
            summary = hop.failure_summary(exc)
            summary["message"] = safe_text(
                f"{summary['message']} (during {self.task_id})", limit=1000
            )
            ti.xcom_push(key=FAILURE_KEY, value=self._killed_summary() or summary)
            raise

    def _explain(self, exc: BaseException) -> None:
        """Log an expected failure as plain lines: the check and the reason first, then the
        digest and key (named from the trust store), then what to do (station.explain)."""
        log_failure(self.log, exc, self.config_path)

    def _killed_summary(self) -> dict[str, Any] | None:
        """After ``on_kill`` (SIGTERM) the step's own error is a consequence: say what it was."""
        if not getattr(self, "_killed", False):
            return None
        return {
            "error": "TaskKilled",
            "message": f"the {self.task_id} task was stopped by a termination signal (SIGTERM: "
            f"marked failed or stopped by a person or the scheduler) during {self.task_id}",
        }

    def on_kill(self) -> None:
        self._killed = True


class _BranchingHopOperator(_HopOperator, BranchMixIn):
    """A hop step that decides which of its direct downstream steps run (no gate task)."""

    def _branch(self, context: Any, follow: list[str], result: dict[str, Any]) -> dict[str, Any]:
        """Return ``result`` and go on to ``follow`` only, skipping the other direct
        downstream tasks. The skip ends ``execute`` with ``DownstreamTasksSkipped``, so the
        result is pushed as the return value first."""
        context["ti"].xcom_push(key="return_value", value=result)
        self.do_branch(context, follow)
        return result


class VerifyTrainOperator(_BranchingHopOperator):
    """The Verify step: every check before anything is pulled or run. Verified, it goes on to
    ``approve`` when ``policy.require_approval`` asks for a person, else straight to ``run``
    (``approve`` is skipped; no separate gate task costs a task process per hop)."""

    def __init__(self, *, rerun: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rerun = rerun

    template_fields: tuple[str, ...] = (*_HopOperator.template_fields, "rerun")

    def execute(self, context: Any) -> dict[str, Any]:
        rerun = self.rerun in (True, "True", "true", "1")
        config = _config(self.config_path)

        def verify() -> dict[str, Any]:
            done = hop.verify_step(
                config,
                self.reference,
                rerun=rerun,
                logger=_safe_log(self.log.info),
                card=config.policy.require_approval,  # the card reads the train's own layers
            )
            # One active run per train here: a second trigger says which run has it.
            active.claim(config, str(done["digest"]), str(context["run_id"]), self._active(context))
            return done

        summary: dict[str, Any] = self._guarded(context, verify)
        facts = summary.pop("card_facts", None) or _facts_of(summary)
        result = {**summary, CARD_KEY: approval_card(facts)}
        if config.policy.require_approval:
            return self._branch(context, [TASKS.approve, TASKS.run], result)
        self.log.info("policy.require_approval is false: no approval needed")
        return self._branch(context, [TASKS.run], result)

    def _active(self, context: Any) -> Callable[[str], bool]:
        ti, dag_id = context["ti"], self.dag_id

        def is_active(run_id: str) -> bool:
            try:
                state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
            except Exception as exc:  # noqa: BLE001 - a run that is gone holds nothing
                self.log.info("run %s holds no claim (%s)", run_id, type(exc).__name__)
                return False
            return str(state) in ("queued", "running", "DagRunState.QUEUED", "DagRunState.RUNNING")

        return is_active


class PreflightOperator(BaseOperator):
    """Pre-flight: the station's keys, data sets and registry account work, before anything
    else (cached per config version). A station that fails it runs and reports nothing."""

    template_fields = ("config_path",)

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Any) -> dict[str, Any]:
        from ..station.preflight import preflight

        try:
            report = preflight(_config(self.config_path))
        except PhtError as exc:
            summary = hop.failure_summary(exc)
            summary["station_fault"] = True  # the station's problem: nothing goes to central
            context["ti"].xcom_push(key=FAILURE_KEY, value=summary)
            log_failure(self.log, exc, self.config_path)
            raise ExpectedFailure(safe_text(exc, limit=4000)) from None
        done = getattr(report, "summary", None)
        return done() if callable(done) else {"ok": True}


def _run_key(context: Any, verified: dict[str, Any]) -> str:
    return rest.run_key(str(verified["train_id"]), int(verified["hop"]), str(context["run_id"]))


def _user_name(answer: Any) -> str | None:
    """The name of the person who answered a HITL step, from its XCom."""
    if not isinstance(answer, dict):
        return None
    user = answer.get("responded_by_user") or answer.get("responded_by")
    name = (user or {}).get("name") if isinstance(user, dict) else user
    return safe_text(name, limit=200) if name else None


def _decision(answer: Any) -> tuple[bool | None, str | None, str | None]:
    """(approved?, by whom, reason) of a HITL Approve/Reject answer; ``None`` if no answer."""
    if not isinstance(answer, dict) or not answer.get("chosen_options"):
        return None, None, None
    chosen = answer.get("chosen_options") or []
    params = answer.get("params_input") or {}
    reason = params.get("reason") if isinstance(params, dict) else None
    approved = "Approve" in chosen
    return approved, _user_name(answer), safe_text(reason, limit=500) if reason else None


#: The XCom key under which a person's step keeps its answer (:class:`PersonsAnswerOperator`).
ANSWER_KEY = "answer"


class PersonsAnswerOperator(ApprovalOperator):
    """Airflow's ApprovalOperator (Approve/Reject) that keeps a Reject's answer as an XCom.

    On Reject the ApprovalOperator skips its downstream tasks by raising
    ``DownstreamTasksSkipped``, so its return value (the options chosen, the reason, who
    answered) is never pushed and the ``record`` task cannot tell a rejection from a hop that
    did not run. The validated answer is pushed under :data:`ANSWER_KEY` before the skip."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        try:
            return super().execute_complete(context=context, event=event)
        except DownstreamTasksSkipped:
            context["ti"].xcom_push(
                key=ANSWER_KEY,
                value={
                    "chosen_options": list(event.get("chosen_options") or []),
                    "params_input": dict(event.get("params_input") or {}),
                    "responded_by_user": event.get("responded_by_user"),
                },
            )
            raise


def _answer(ti: Any, task_id: str) -> Any:
    """A person's step's answer: its return value (Approve) or its :data:`ANSWER_KEY` XCom."""
    return ti.xcom_pull(task_ids=task_id, key=ANSWER_KEY) or ti.xcom_pull(task_ids=task_id)


class RunTrainOperator(_HopOperator):
    """The Run step: decrypt input, run the train in the sandbox, keep its output encrypted to
    the station (:mod:`pht_airflow.station.rest`). A retry does not run the train again once
    its output rests.

    ``on_kill`` (Airflow calls it on SIGTERM, a task kill and ``execution_timeout``) stops and
    removes the running sandbox container and wipes the hop's private folder."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._container: str | None = None
        self._work: Path | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        verified = context["ti"].xcom_pull(task_ids=TASKS.verify)
        if not verified:
            raise AirflowFailException("the verify task left no summary")
        config = _config(self.config_path)
        self._container = hop.sandbox_name(config, str(verified["train_id"]), verified["hop"])
        return self._guarded(
            context,
            lambda: hop.run_step(
                config,
                verified,
                run_key=_run_key(context, verified),
                logger=_safe_log(self.log.info),
                on_work=self._set_work,
            ),
        )

    def _set_work(self, work: Path) -> None:
        self._work = work

    def on_kill(self) -> None:
        import docker

        super().on_kill()
        if self._container is not None:
            try:
                engine = docker.from_env(timeout=60)
                try:
                    container = engine.containers.get(self._container)
                    if (container.labels or {}).get(LABEL):  # only a sandbox of ours
                        container.remove(force=True)
                        self.log.warning("removed the sandbox container %s", self._container)
                finally:
                    engine.close()
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                self.log.error(
                    "could not remove the sandbox container %s: %s", self._container, exc
                )
        if self._work is not None:
            hop.wipe_work(self._work)
            self.log.warning("wiped the hop folder %s", self._work)


class CheckOutputOperator(_BranchingHopOperator):
    """The disclosure checks on the resting output: verdicts (no content) as the XCom; a
    ``block`` fails the hop with its reasons. It goes on to ``release`` (a person) when the
    policy or a verdict asks for it, else straight to ``seal`` (``release`` is skipped)."""

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        verified = ti.xcom_pull(task_ids=TASKS.verify)
        ran = ti.xcom_pull(task_ids=TASKS.run)
        if not verified or not ran:
            raise AirflowFailException("the verify or run task left no summary")
        config = _config(self.config_path)
        summary: dict[str, Any] = self._guarded(
            context,
            lambda: hop.check_step(config, verified, ran, logger=_safe_log(self.log.info)),
        )
        result = {**summary, CARD_KEY: release_card(summary, review_path(config, ran))}
        if summary.get("release_needed"):
            return self._branch(context, [TASKS.release, TASKS.seal], result)
        self.log.info("the output passed every check: released automatically")
        return self._branch(context, [TASKS.seal], result)


def review_path(config: StationConfig, ran: Any) -> str | None:
    """The station dashboard's review page of a run's resting output (path on the API server)."""
    key = ran.get("rest_key") if isinstance(ran, dict) else None
    return f"/pht-dashboard/stations/{config.station_id}/releases/{key}" if key else None


def release_card(checked: Any, review_url: str | None = None) -> dict[str, str]:
    """The release step's card: the verdict and each file's verdict and reasons (no content;
    the tables themselves are shown on the station dashboard's review page)."""
    checked = checked if isinstance(checked, dict) else {}
    files = checked.get("files")
    files = files if isinstance(files, list) else []
    lines = []
    for item in files[:200]:
        if not isinstance(item, dict):
            continue
        reasons = item.get("reasons")
        reasons = reasons if isinstance(reasons, list) else []
        why = "; ".join(markdown_text(r, limit=300) for r in reasons[:10])
        lines.append(
            f"- {markdown_text(item.get('path'))} ({markdown_text(item.get('bytes'))} bytes): "
            f"**{markdown_text(item.get('verdict'), limit=20)}**{' - ' + why if why else ''}"
        )
    body = [
        f"Disclosure verdict: **{markdown_text(checked.get('verdict'), limit=20)}**.",
        "\n".join(lines) or "No files.",
    ]
    if review_url:
        body.append(f"Review the tables before deciding: [{review_url}]({review_url})")
    body.append("Approve seals and sends the output; Reject (give a reason) sends nothing.")
    return {"subject": "Release this train's output?", "body": "\n\n".join(body)}


class SealResultOperator(_HopOperator):
    """The Seal step: seal the resting output for its recipients, push, sign, attest.

    Idempotent (a result an earlier attempt pushed is found, not pushed again), so Airflow's
    retries with backoff ride out a registry outage without running the train again."""

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        verified = ti.xcom_pull(task_ids=TASKS.verify)
        ran = ti.xcom_pull(task_ids=TASKS.run)
        checked = ti.xcom_pull(task_ids=TASKS.check)
        if not verified or not ran:
            raise AirflowFailException("the verify or run task left no summary")
        approved_by = _user_name(_answer(ti, TASKS.approve))
        released, released_by, _ = _decision(_answer(ti, TASKS.release))
        config = _config(self.config_path)
        return self._guarded(
            context,
            lambda: hop.seal_step(
                config,
                verified,
                ran,
                checked,
                approved_by=approved_by,
                released_by=released_by if released else None,
                logger=_safe_log(self.log.info),
            ),
        )


def _silent_end(ti: Any, task_ids: list[str]) -> dict[str, Any] | None:
    """The failure of a task that started but ended without a summary or a failure XCom:
    killed (by a signal, the out-of-memory killer or a person), timed out before its handler
    ran, or its process crashed. ``None`` when no task did that (the hop did not run)."""
    for task_id in reversed(task_ids):
        if ti.xcom_pull(task_ids=task_id, key=STARTED_KEY) and not ti.xcom_pull(task_ids=task_id):
            return {
                "error": "TaskEnded",
                "message": f"the {task_id} task ended without reporting (killed, timed out "
                "or crashed; Airflow's task log says which signal)",
            }
    return None


class RecordHopOperator(_HopOperator):
    """The Record step: appends the hop to the audit log, whatever happened before, removes
    the resting output, and tells the central service of a final outcome that is not a
    success (a failure that is the train's, a rejection, a withheld output)."""

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        steps = [TASKS.verify, TASKS.run, TASKS.check, TASKS.seal]
        failure = ti.xcom_pull(task_ids=TASKS.preflight, key=FAILURE_KEY)
        verified = ti.xcom_pull(task_ids=TASKS.verify)
        ran = ti.xcom_pull(task_ids=TASKS.run)
        checked = ti.xcom_pull(task_ids=TASKS.check)
        sealed = ti.xcom_pull(task_ids=TASKS.seal)
        for task_id in steps:
            failure = failure or ti.xcom_pull(task_ids=task_id, key=FAILURE_KEY)
        approval = _answer(ti, TASKS.approve)
        approved, approver, approve_reason = _decision(approval)
        released, releaser, release_reason = _decision(_answer(ti, TASKS.release))
        decision = None
        if approved is False:
            decision = {"outcome": "rejected", "by": approver, "reason": approve_reason}
        elif released is False:
            decision = {"outcome": "withheld", "by": releaser, "reason": release_reason}
        executed = sealed or (ran if isinstance(ran, dict) and ran.get("result_digest") else None)
        if not executed and not failure and decision is None:
            failure = _silent_end(ti, steps) or {
                "error": "NotRun",
                "message": "the hop did not run (skipped or an upstream task failed)",
                "station_fault": True,
            }
        config = _config(self.config_path)
        try:
            record = hop.record_step(
                config,
                reference=self.reference,
                verified=verified,
                executed=executed,
                failure=failure,
                approved_by=approver if approved else None,
                run_id=context["run_id"],
                logger=_safe_log(self.log.info),
                data=(ran or {}).get("data") if isinstance(ran, dict) else None,
                decision=decision,
                released_by=releaser if released else None,
                disclosure=_disclosure(checked),
            )
        finally:
            if hop.end_step(
                config, ran if isinstance(ran, dict) else None, logger=_safe_log(self.log.info)
            ):
                self.log.info("removed the hop's resting output")
            if isinstance(verified, dict):
                active.give_back(config, verified.get("digest"), str(context["run_id"]))
        summary = {
            "outcome": record["outcome"],
            "seq": record.get("seq"),
            "failed_check": record.get("failed_check"),
        }
        if record["outcome"] in ("rejected", "withheld"):
            what = "rejected by" if record["outcome"] == "rejected" else "withheld by"
            self.log.info(
                "%s",
                safe_text(
                    f"hop {record['outcome']}: {what} {decision and decision['by']}: "
                    f"{decision and decision['reason']}",
                    limit=1000,
                ),
            )
        elif record["outcome"] != "success":
            message = safe_text(failure.get("message") if failure else "", limit=4000)
            raise ExpectedFailure(f"hop failed: {message}")
        return summary


def _disclosure(checked: Any) -> dict[str, Any] | None:
    if not isinstance(checked, dict) or "verdict" not in checked:
        return None
    return {"verdict": checked.get("verdict"), "files": checked.get("files") or []}
