"""Thin Airflow operators for a station's hop: arguments in, one library call, summary out.

Each operator loads the station config (``PHT_STATION_CONFIG`` unless ``config_path`` is
given) when it runs, calls one function of :mod:`pht_airflow.station.hop`, and returns a
JSON-safe summary as its XCom. A library error is pushed as the ``failure`` XCom (check,
digest, key id, message: no secrets) so the ``record`` task can audit it, and then fails
the task without retries: a verification failure does not get better by trying again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
)

from ..errors import PhtError, RegistryError
from ..station import hop
from ..station.config import StationConfig, load_config
from ..station.sandbox import LABEL
from ..text import safe_text
from .lookups import AIRFLOW_LOOKUPS

FAILURE_KEY = "failure"
#: The key of the XCom a hop task pushes as it starts: a task that started but left neither a
#: summary nor a ``failure`` XCom ended without reporting (killed, timed out or crashed).
STARTED_KEY = "started"
#: The key of the verify task's XCom that holds the approval card (subject and body).
CARD_KEY = "card"

# Characters Markdown gives a meaning to (links, images, emphasis, code, HTML, headings).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&:])")


def markdown_text(value: object, *, limit: int = 200) -> str:
    """Untrusted ``value`` as Markdown that renders it literally, on one line: control and
    format characters shown escaped (:func:`~pht_airflow.text.safe_text`), then every Markdown
    character backslash-escaped, so ``[x](http://…)`` or ``<img>`` shows as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", safe_text(value, limit=limit))


def approval_card(summary: dict[str, Any]) -> dict[str, str]:
    """The approval card for a verified train: a plain-text subject and a Markdown body.

    Everything in ``summary`` came from the train and the registry, so every value is made
    safe for its medium here; the DAG only places the two strings."""
    signers = summary.get("signers")
    signers = signers if isinstance(signers, list) else []
    signed = ", ".join(
        f"{markdown_text(s.get('signer') or '?')} "
        f"({markdown_text(s.get('role'), limit=20)}, key {markdown_text(s.get('key_id'))})"
        for s in signers
        if isinstance(s, dict)
    )
    checks = summary.get("checks_passed")
    checks = checks if isinstance(checks, list) else []
    passed = ", ".join(markdown_text(c, limit=80) for c in checks)
    hop, length = summary.get("hop"), summary.get("route_length")
    body = "\n\n".join(
        [
            f"Train {markdown_text(summary.get('train_name'))} "
            f"(id {markdown_text(summary.get('train_id'))}), "
            f"digest {markdown_text(summary.get('digest'))}.",
            f"Hop {markdown_text(hop)} of {markdown_text(length)} "
            f"({markdown_text(summary.get('mode'))}), data set "
            f"{markdown_text(summary.get('dataset'))}, expires "
            f"{markdown_text(summary.get('expires'))}.",
            f"Signed by: {signed or 'nobody'}.",
            f"Every check passed: {passed}.",
        ]
    )
    subject = f"Run train {safe_text(summary.get('train_name'), limit=120)} at this station?"
    return {"subject": subject, "body": body}


def _safe_log(emit: Callable[..., Any]) -> Callable[[str], None]:
    """A hop logger that writes each line as one line, control characters shown escaped."""
    return lambda line: emit("%s", safe_text(line, limit=4000))


def _config(path: str | None) -> StationConfig:
    return load_config(path or None, AIRFLOW_LOOKUPS)


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
            self.log.error("%s", message)
            if isinstance(exc, RegistryError) and exc.retryable:
                raise  # a network or server hiccup: let Airflow's retries have a go
            raise AirflowFailException(message) from None
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


class VerifyTrainOperator(_HopOperator):
    """The Verify step: every check before anything is pulled or run."""

    def __init__(self, *, rerun: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rerun = rerun

    template_fields: tuple[str, ...] = (*_HopOperator.template_fields, "rerun")

    def execute(self, context: Any) -> dict[str, Any]:
        rerun = self.rerun in (True, "True", "true", "1")
        summary: dict[str, Any] = self._guarded(
            context,
            lambda: hop.verify_step(
                _config(self.config_path),
                self.reference,
                rerun=rerun,
                logger=_safe_log(self.log.info),
            ),
        )
        return {**summary, CARD_KEY: approval_card(summary)}


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
    """The Execute step: decrypt input, sandbox, seal, push, sign, wipe, in one task.

    ``on_kill`` (Airflow calls it on SIGTERM, a task kill and ``execution_timeout``) stops and
    removes the running sandbox container and wipes the hop's private folder."""

    def __init__(self, *, verify_task_id: str = "verify", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verify_task_id = verify_task_id
        self._container: str | None = None
        self._work: Path | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        verified = context["ti"].xcom_pull(task_ids=self.verify_task_id)
        if not verified:
            raise AirflowFailException("the verify task left no summary")
        config = _config(self.config_path)
        self._container = hop.sandbox_name(config, str(verified["train_id"]), verified["hop"])
        return self._guarded(
            context,
            lambda: hop.execute_step(
                config, verified, logger=_safe_log(self.log.info), on_work=self._set_work
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


def _silent_end(
    ti: Any, verified: Any, verify_task_id: str, execute_task_id: str
) -> dict[str, Any] | None:
    """The failure of a task that started but ended without a summary or a failure XCom:
    killed (by a signal, the out-of-memory killer or a person), timed out before its handler
    ran, or its process crashed. ``None`` when no task did that (the hop did not run)."""
    for task_id in (execute_task_id,) if verified else (verify_task_id,):
        if ti.xcom_pull(task_ids=task_id, key=STARTED_KEY):
            return {
                "error": "TaskEnded",
                "message": f"the {task_id} task ended without reporting (killed, timed out "
                "or crashed; Airflow's task log says which signal)",
            }
    return None


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
            failure = _silent_end(ti, verified, self.verify_task_id, self.execute_task_id) or {
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
            logger=_safe_log(self.log.info),
        )
        summary = {
            "outcome": record["outcome"],
            "seq": record.get("seq"),
            "failed_check": record.get("failed_check"),
        }
        if record["outcome"] != "success":
            message = safe_text(failure.get("message") if failure else "", limit=4000)
            raise AirflowFailException(f"hop failed: {message}")
        return summary
