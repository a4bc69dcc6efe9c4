"""Run notes: every hop run's note names the train and says how the hop ended.

A run's id (``pht__sha256_…`` or ``manual__<time>``) does not say which train it runs; its
note does, on the run's page in the Airflow UI and as ``note`` in REST API v2 (the run list
``GET /api/v2/dags/<dag>/dagRuns`` included). This module writes the note of each
``pht_run_train`` run (and each hosted station's ``pht_run_train__<station>``) from the
hop's own XComs, for example::

    age-histogram (train 1a2b3c4d…, hop 2 of 3): rejected by alice: data set too small
    age-histogram (train 1a2b3c4d…, hop 2 of 3): output withheld by bob: a cell below 5
    age-histogram (train 1a2b3c4d…, hop 2 of 3): approved by alice; delivered result
        sha256:… to 2 recipients
    train harbor.example.org/station-a/1a2b…:train: failed in verify: creator: the creator's
        signature is not from a trusted creator

Tasks cannot set a note (they have no database access, and Airflow 3's execution API has no
call for it), so the note is written by an Airflow *listener* the station plugin registers
(``PhtStationPlugin.listeners``). Its dag-run hooks run where the run's state changes, with
the run in a database session: in the scheduler when a run starts and when it ends (and in
the API server when a person marks a run success or failed). Airflow 3.3 has no hook that
runs server-side when a task (such as ``verify``) finishes — its task hooks run in the task's
own process, which has no database access — so the train's name appears once the run ends;
while it runs the note names the train reference it was triggered for.

What a note holds: the train's name and id, the hop, the outcome, who decided and why (a
person's reason as they typed it, bounded), the result's digest and its number of
recipients, or the task that failed and the first line of its reason. Never output values or
secrets: the XComs read here carry neither (the operators' summaries hold verdicts, digests
and redacted messages). Every string is passed through :func:`~pht_airflow.text.safe_text`,
and what Markdown would act on is escaped (Airflow renders a note as Markdown).
A note a person wrote (a note with a user) is left as it is. A failure here is logged and
never fails the run or the scheduler's loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from airflow.listeners import hookimpl

from ..station.explain import HINTS
from ..text import safe_text
from .names import RUN_TRAIN
from .operators import ANSWER_KEY, FAILURE_KEY, TASKS

log = logging.getLogger(__name__)

__all__ = [
    "NOTE_LIMIT",
    "hop_note",
    "is_hop_dag",
    "note_for_run",
    "on_dag_run_failed",
    "on_dag_run_running",
    "on_dag_run_success",
    "start_note",
]

#: The longest note before its Markdown escapes, in characters (Airflow's column holds 1000).
NOTE_LIMIT = 480  # escaped for Markdown, at most twice as long
_RECORD = "record"
#: The hop's steps whose failure XCom names the cause, in the order they run.
_STEPS = (TASKS.preflight, TASKS.verify, TASKS.run, TASKS.check, TASKS.seal)
_READ = (*_STEPS, TASKS.approve, TASKS.release, _RECORD)
_ORDER = (
    TASKS.preflight,
    TASKS.verify,
    TASKS.approve,
    TASKS.run,
    TASKS.check,
    TASKS.release,
    TASKS.seal,
    _RECORD,
)


def is_hop_dag(dag_id: str) -> bool:
    """True for the hop DAG of a station (``pht_run_train`` or ``pht_run_train__<station>``)."""
    return dag_id == RUN_TRAIN or dag_id.startswith(f"{RUN_TRAIN}__")


def _text(value: Any, limit: int = 200) -> str:
    return safe_text(value, limit=limit)


def _train(verified: Any, reference: Any) -> str:
    """``name (train 1a2b3c4d…, hop 2 of 3)`` from the verified summary, else the reference."""
    if isinstance(verified, Mapping) and verified.get("train_id"):
        name = verified.get("train_name")
        train_id = _text(verified.get("train_id"), 64)
        short = train_id if len(train_id) <= 12 else f"{train_id[:8]}\u2026"
        hop, length = verified.get("hop"), verified.get("route_length")
        where = ""
        if isinstance(hop, int) and not isinstance(hop, bool):
            where = f", hop {hop + 1}" + (f" of {length}" if isinstance(length, int) else "")
        head = _text(name, 80) if name else "train"
        return f"{head} (train {short}{where})"
    if reference:
        return f"train {_text(reference, 160)}"
    return "train (no reference)"


def _person(answer: Any) -> tuple[bool | None, str, str | None]:
    """(approved?, who, reason) of a person's Approve/Reject answer (HITL XCom)."""
    if not isinstance(answer, Mapping) or not answer.get("chosen_options"):
        return None, "", None
    chosen = answer.get("chosen_options")
    approved = isinstance(chosen, list) and "Approve" in chosen
    user = answer.get("responded_by_user") or answer.get("responded_by")
    name = user.get("name") or user.get("id") if isinstance(user, Mapping) else user
    params = answer.get("params_input")
    reason = params.get("reason") if isinstance(params, Mapping) else None
    return approved, _text(name, 80) if name else "someone", _text(reason, 200) if reason else None


def _decided(what: str, who: str, reason: str | None, *, required: bool = True) -> str:
    """``rejected by alice: <reason>``; a refusal without a reason says so (an approval's
    reason is optional, so its absence goes unsaid)."""
    if reason:
        return f"{what} by {who}: {reason}"
    return f"{what} by {who} (no reason given)" if required else f"{what} by {who}"


def _first_line(message: Any) -> str:
    text = str(message or "").strip()
    return text.splitlines()[0] if text else ""


#: The digest and key a VerificationError's message ends with (``… digest=sha256:… key=…``).
_TAIL = re.compile(r"(\s+digest=\S+)?(\s+key=\S+)?$")


def _reason_of(check: str, message: str) -> str:
    """A VerificationError's reason from its message ``[check] reason digest=… key=…`` (the
    note names the train already; the task log names the digest and the key)."""
    prefix = f"[{check}] "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return _TAIL.sub("", message).strip()


def _failure(task_id: str, failure: Mapping[str, Any]) -> str:
    """``failed in <task>: <check>: <the reason in plain words>`` (or the message's first line)."""
    check = failure.get("check")
    if isinstance(check, str) and check in HINTS:
        plain = HINTS[check][0]
        detail = failure.get("reason") or _reason_of(check, _first_line(failure.get("message")))
        why = f"{check}: {plain}" + (f" ({detail})" if detail else "")
    else:
        why = _first_line(failure.get("message")) or str(failure.get("error") or "no reason given")
    return f"failed in {task_id}: {_text(why, 300)}"


def _delivered(sealed: Mapping[str, Any]) -> str:
    digest = _text(sealed.get("result_digest"), 80)
    recipients = sealed.get("recipients")
    count = len(recipients) if isinstance(recipients, list) else 0
    return f"delivered result {digest} to {count} recipient{'' if count == 1 else 's'}"


def hop_note(
    xcoms: Mapping[tuple[str, str], Any],
    *,
    reference: Any = None,
    states: Mapping[str, str] | None = None,
    run_state: str | None = None,
) -> str:
    """The note of an ended hop run, from its XComs (``(task_id, key)`` to value; the return
    value's key is ``return_value``), its train reference (the run's conf) and its tasks'
    states. Pure: the listener reads the XComs, this says what they mean."""
    states = states or {}
    verified = xcoms.get((TASKS.verify, "return_value"))
    record = xcoms.get((_RECORD, "return_value"))
    outcome = record.get("outcome") if isinstance(record, Mapping) else None
    approved, approver, approve_reason = _person(
        xcoms.get((TASKS.approve, ANSWER_KEY)) or xcoms.get((TASKS.approve, "return_value"))
    )
    released, releaser, release_reason = _person(
        xcoms.get((TASKS.release, ANSWER_KEY)) or xcoms.get((TASKS.release, "return_value"))
    )
    failure = next(
        (
            (task_id, xcoms[(task_id, FAILURE_KEY)])
            for task_id in _STEPS
            if isinstance(xcoms.get((task_id, FAILURE_KEY)), Mapping)
        ),
        None,
    )
    sealed = xcoms.get((TASKS.seal, "return_value"))
    ran = xcoms.get((TASKS.run, "return_value"))
    if not isinstance(sealed, Mapping) and isinstance(ran, Mapping) and ran.get("result_digest"):
        sealed = ran  # a result an earlier run of this hop pushed, found again by run
    if outcome == "rejected" or (outcome is None and failure is None and approved is False):
        what = _decided("rejected", approver, approve_reason)
    elif outcome == "withheld" or (outcome is None and failure is None and released is False):
        what = "output " + _decided("withheld", releaser, release_reason)
    elif outcome == "success" or (
        outcome is None and not failure and isinstance(sealed, Mapping) and run_state != "failed"
    ):
        parts = []
        if approved:
            parts.append(_decided("approved", approver, approve_reason, required=False))
        if released:
            parts.append(_decided("released", releaser, release_reason, required=False))
        if isinstance(sealed, Mapping) and sealed.get("result_digest"):
            parts.append(_delivered(sealed))
        else:
            parts.append("delivered")
        what = "; ".join(parts)
    elif failure is not None:
        what = _failure(*failure)
    else:
        failed = [t for t in _ORDER if states.get(t) == "failed"]
        if failed:
            what = f"failed in {failed[0]} (its task log says why)"
        else:
            what = f"ended {_text(run_state or 'without an outcome', 40)}"
    return _markdown_safe(safe_text(f"{_train(verified, reference)}: {what}", limit=NOTE_LIMIT))


def start_note(reference: Any) -> str:
    """The note of a run that has just started: the reference it was triggered for."""
    return _markdown_safe(safe_text(f"{_train(None, reference)}: started", limit=NOTE_LIMIT))


#: A backslash Markdown would read as an escape (one before ASCII punctuation).
_ESCAPING_BACKSLASH = re.compile(r"\\(?=[!-/:-@\[-`{-~])")
#: What makes Markdown active: links and images, raw HTML, code spans, emphasis.
_ACTIVE = re.compile(r"([\[\]<>`*])")


def _markdown_safe(text: str) -> str:
    """``text`` as Markdown that shows as written (Airflow renders a note as Markdown): no link,
    image, HTML or code span a train's name or a person's reason could smuggle in. Only what
    Markdown would act on is escaped, so the note reads plainly through REST too (``\\x1b``
    from :func:`~pht_airflow.text.safe_text` stays as it is)."""
    return _ACTIVE.sub(r"\\\1", _ESCAPING_BACKSLASH.sub(r"\\\\", text))


def _reference(dag_run: Any) -> Any:
    conf = getattr(dag_run, "conf", None)
    return conf.get("train") if isinstance(conf, Mapping) else None


def _xcoms(dag_run: Any, session: Any) -> dict[tuple[str, str], Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_run_id == dag_run.id,
            XComModel.map_index == -1,
            XComModel.task_id.in_(_READ),
        )
    )
    return {(row.task_id, row.key): XComModel.deserialize_value(row) for row in rows}


def _states(dag_run: Any, session: Any) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_run.dag_id,
            TaskInstance.run_id == dag_run.run_id,
            TaskInstance.map_index == -1,
        )
    )
    return {str(task_id): str(state) for task_id, state in rows if state is not None}


def note_for_run(dag_run: Any, session: Any) -> str:
    """The note for an ended hop run, read from the database through ``session``."""
    with session.no_autoflush:
        return hop_note(
            _xcoms(dag_run, session),
            reference=_reference(dag_run),
            states=_states(dag_run, session),
            run_state=str(getattr(dag_run.state, "value", dag_run.state)),
        )


def _persons_note(dag_run: Any) -> bool:
    """True if a person wrote the run's note (Airflow keeps their user id with it)."""
    existing = dag_run.dag_run_note
    return existing is not None and existing.user_id is not None and bool(existing.content)


def _write(dag_run: Any, ended: bool) -> None:
    from sqlalchemy.orm import object_session

    if not is_hop_dag(str(dag_run.dag_id)):
        return
    session = object_session(dag_run)
    if session is None:
        log.warning("run %s is not in a database session; its note is left as it is", dag_run)
        return
    if _persons_note(dag_run):
        log.info("run %s has a note a person wrote; it is left as it is", dag_run.run_id)
        return
    if not ended:
        # Also replaces the outcome of an earlier try of a cleared run, and the webhook's
        # "registry push of …" (the run's triggering user still says it came from a push).
        dag_run.note = start_note(_reference(dag_run))
        return
    # Written in the caller's session (the scheduler's, which commits it with the run's state):
    # a session of our own would wait on the run's row the caller holds locked.
    dag_run.note = note_for_run(dag_run, session)
    log.info("run %s note: %s", dag_run.run_id, dag_run.note)


def _guarded(dag_run: Any, ended: bool) -> None:
    try:
        _write(dag_run, ended)
    except Exception:  # noqa: BLE001 - a note is never worth a run or the scheduler's loop
        log.exception("could not write the note of run %s", getattr(dag_run, "run_id", "?"))


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    """A hop run started (or started again, cleared): its note names the train reference."""
    _guarded(dag_run, ended=False)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    """A hop run ended green (delivered, rejected or withheld): say which, by whom, why."""
    _guarded(dag_run, ended=True)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    """A hop run failed: say in which task and why (the first line of the reason)."""
    _guarded(dag_run, ended=True)
