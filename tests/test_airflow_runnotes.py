"""Run notes (issue 11): a hop run's note names the train and says how the hop ended.

:func:`~pht_airflow.airflow.runnotes.hop_note` reads the XComs the hop's operators leave; the
listener the station plugin registers writes it as the run's note when the run ends (in the
scheduler). The module's second half shows it on the real, running Airflow through REST API
v2: a delivered hop, a rejected one (who and why) and a failed verification, each run's note
in ``GET /api/v2/dags/pht_run_train/dagRuns/<id>`` and in the run list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.airflowstack import (
    DAG_ID,
    AirflowStack,
    airflow_stack,
    answer,
    audit_record,
    run_url,
    trigger,
    wait_for_end,
    wait_for_person,
)
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.airflow import runnotes
from pht_airflow.airflow.plugin import PhtStationPlugin
from pht_airflow.airflow.runnotes import NOTE_LIMIT, hop_note, is_hop_dag, start_note
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.signing import sign

TRAIN_ID = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
DIGEST = "sha256:" + "ab" * 32
RESULT = "sha256:" + "cd" * 32
REF = f"registry.example/station-a/{TRAIN_ID}:train"
VERIFIED = {
    "reference": REF,
    "digest": DIGEST,
    "train_id": TRAIN_ID,
    "train_name": "age-histogram",
    "hop": 1,
    "route_length": 3,
}
HEAD = "age-histogram (train 1a2b3c4d\u2026, hop 2 of 3)"


def _answer(option: str, reason: str | None, user: str = "alice") -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_by_user": {"id": user, "name": user},
    }


# --- what a note says (the XComs the hop's operators leave) --------------------------------


def test_a_rejected_hop_says_who_and_why() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("approve", "answer"): _answer("Reject", "data set too small"),
            ("record", "return_value"): {"outcome": "rejected", "seq": 4},
        }
    )
    assert note == f"{HEAD}: rejected by alice: data set too small"


def test_a_rejection_without_a_reason_says_so() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("approve", "answer"): _answer("Reject", None),
            ("record", "return_value"): {"outcome": "rejected"},
        }
    )
    assert note == f"{HEAD}: rejected by alice (no reason given)"


def test_a_withheld_output_says_who_and_why() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("approve", "return_value"): _answer("Approve", None),
            ("release", "answer"): _answer("Reject", "a cell below 10", user="bob"),
            ("record", "return_value"): {"outcome": "withheld"},
        }
    )
    assert note == f"{HEAD}: output withheld by bob: a cell below 10"


def test_a_delivered_hop_names_the_result_and_its_recipients() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("approve", "return_value"): _answer("Approve", "read the script"),
            ("seal", "return_value"): {"result_digest": RESULT, "recipients": ["age1x", "age1y"]},
            ("record", "return_value"): {"outcome": "success"},
        }
    )
    assert note == (
        f"{HEAD}: approved by alice: read the script; delivered result {RESULT} to 2 recipients"
    )


def test_an_approval_and_a_release_without_a_reason_just_name_who() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("approve", "return_value"): _answer("Approve", None),
            ("release", "return_value"): _answer("Approve", None, user="bob"),
            ("seal", "return_value"): {"result_digest": RESULT, "recipients": ["age1x"]},
            ("record", "return_value"): {"outcome": "success"},
        }
    )
    assert note == (
        f"{HEAD}: approved by alice; released by bob; delivered result {RESULT} to 1 recipient"
    )


def test_a_result_found_again_by_run_counts_as_delivered() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("run", "return_value"): {"result_digest": RESULT, "recipients": ["age1x"]},
            ("record", "return_value"): {"outcome": "success"},
        }
    )
    assert note == f"{HEAD}: delivered result {RESULT} to 1 recipient"


def test_a_verification_failure_names_the_task_the_check_and_the_reason() -> None:
    note = hop_note(
        {
            ("verify", "failure"): {
                "error": "UntrustedCreatorError",
                "message": f"[creator] no creator signature by a trusted key digest={DIGEST} "
                "key=ed25519:abcd\nsecond line",
                "check": "creator",
                "digest": DIGEST,
            }
        },
        reference=REF,
        states={"verify": "failed", "record": "failed"},
        run_state="failed",
    )
    assert note == (
        f"train {REF}: failed in verify: creator: the creator's signature is not from a "
        "trusted creator (no creator signature by a trusted key)"
    )


def test_the_first_failing_step_is_named() -> None:
    note = hop_note(
        {
            ("verify", "return_value"): VERIFIED,
            ("run", "failure"): {"error": "TrainExitError", "message": "the train exited with 3"},
            ("seal", "failure"): {"error": "PolicyError", "message": "a later consequence"},
        },
        states={"run": "failed", "seal": "failed"},
        run_state="failed",
    )
    assert note == f"{HEAD}: failed in run: the train exited with 3"


def test_a_failed_task_without_a_failure_xcom_is_named() -> None:
    note = hop_note(
        {("verify", "return_value"): VERIFIED},
        states={"verify": "success", "run": "failed", "record": "failed"},
        run_state="failed",
    )
    assert note == f"{HEAD}: failed in run (its task log says why)"


def test_a_persons_reason_and_a_trains_name_are_shown_escaped_and_bounded() -> None:
    hostile = {**VERIFIED, "train_name": "evil\x1b[2J\u202ename"}
    note = hop_note(
        {
            ("verify", "return_value"): hostile,
            ("approve", "answer"): _answer("Reject", "no\r\nway\x07 " + "x" * 5000),
            ("record", "return_value"): {"outcome": "rejected"},
        }
    )
    assert note.startswith("evil\\x1b\\[2J\\u202ename (train 1a2b3c4d\u2026, hop 2 of 3): ")
    assert "rejected by alice: no\\nway\\x07 xxx" in note
    assert len(note) <= NOTE_LIMIT + 1 and note.endswith("\u2026")
    assert note.isprintable()


def test_markdown_in_a_name_or_a_reason_shows_as_written() -> None:
    """Airflow renders a note as Markdown: a train's name or a person's reason cannot make a
    link, an image (a request to another host), HTML or a code span; a backslash before one
    is kept literal. What Markdown leaves alone is not escaped (``age_histogram``)."""
    sneaky = {**VERIFIED, "train_name": "age_histogram ![x](http://tracker.example/p.png)"}
    note = hop_note(
        {
            ("verify", "return_value"): sneaky,
            ("approve", "answer"): _answer("Reject", "see <img src=x> `rm` *now* \\[here](y)"),
            ("record", "return_value"): {"outcome": "rejected"},
        }
    )
    assert note == (
        "age_histogram !\\[x\\](http://tracker.example/p.png) (train 1a2b3c4d\u2026, hop 2 of 3): "
        "rejected by alice: see \\<img src=x\\> \\`rm\\` \\*now\\* \\\\\\[here\\](y)"
    )


def test_nothing_but_the_verified_facts_reaches_a_note() -> None:
    """The note is built from named fields only: a value elsewhere in an XCom (an output
    value, a secret) never reaches it."""
    secret = "Zebrafinch-secret-7731"  # stands for any value that is not a named field
    note = hop_note(
        {
            ("verify", "return_value"): {**VERIFIED, "extra": secret},
            ("run", "return_value"): {"rest_key": secret, "data": {"rows": secret}},
            ("check_output", "return_value"): {"files": [{"path": secret}]},
            ("seal", "return_value"): {"result_digest": RESULT, "recipients": [secret]},
            ("record", "return_value"): {"outcome": "success", "failed_check": secret},
        }
    )
    assert secret not in note
    assert note.endswith(f"delivered result {RESULT} to 1 recipient")


def test_a_started_run_names_its_reference() -> None:
    assert start_note(REF) == f"train {REF}: started"
    assert start_note(None) == "train (no reference): started"


def test_only_hop_dags_get_notes() -> None:
    assert is_hop_dag("pht_run_train")
    assert is_hop_dag("pht_run_train__bonn")
    assert not is_hop_dag("pht_station_selftest")
    assert not is_hop_dag("pht_run_trainer")


def test_a_listener_that_cannot_write_a_note_logs_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run the listener cannot read (here: not a DagRun at all) costs a log line, never an
    exception in the scheduler's loop."""

    class Broken:
        dag_id = "pht_run_train"
        run_id = "manual__broken"

    with caplog.at_level("ERROR", logger=runnotes.__name__):
        assert runnotes.on_dag_run_success(dag_run=Broken(), msg="success") is None
        assert runnotes.on_dag_run_failed(dag_run=Broken(), msg="task_failure") is None
    assert caplog.text.count("could not write the note of run manual__broken") == 2


def test_the_station_plugin_registers_the_listener() -> None:
    assert runnotes in PhtStationPlugin.listeners


# --- on the real, running Airflow ----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: Any, parties: Any, docker_client: Any
) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("airflow-runnotes")
    station = make_station(
        root / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
        overrides={"policy": {"require_approval": True}},
    )
    with airflow_stack(root, station) as stack:
        yield stack


def _train(
    docker_client: Any, registry: Any, parties: Any, creator: str = "alice"
) -> tuple[Reference, Any]:
    """A one-hop train for station-a named age-histogram, created by ``creator`` and approved
    by reviewer."""
    who = parties[creator]
    spec = make_train_spec(
        parties,
        ["station-a"],
        name="age-histogram",
        creator_id=creator,
        creator_key_id=who.key.key_id,
        creator_recipient=who.age.recipient,
    )
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    with RegistryClient(registry.host) as client:
        pinned = ref.with_digest(digest)
        if creator == "alice":
            sign_train(client, pinned, parties, "alice", "reviewer")
        else:
            sign(client, pinned, who.key, role="creator", signer=creator)
            sign_train(client, pinned, parties, "reviewer")
    return ref, spec


def _note(http: Any, run_id: str) -> str:
    resp = http.get(run_url(run_id))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["note"])


def _listed_notes(http: Any) -> dict[str, str | None]:
    resp = http.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    assert resp.status_code == 200, resp.text
    return {r["dag_run_id"]: r["note"] for r in resp.json()["dag_runs"]}


@pytest.mark.airflow
@pytest.mark.docker
@pytest.mark.registry
def test_run_notes_on_a_real_airflow(
    stack: AirflowStack, docker_client: Any, registry: Any, parties: Any
) -> None:
    """Rejected (who and why), delivered (approver, result digest, recipients) and a failed
    verification (the check and the reason): each run's note, and the run list shows them; a
    person's own note is kept."""
    rejected_ref, rejected = _train(docker_client, registry, parties)
    delivered_ref, delivered = _train(docker_client, registry, parties)
    untrusted_ref, _ = _train(docker_client, registry, parties, creator="mallory")
    with stack.client() as http:
        reject_run = trigger(http, rejected_ref)
        wait_for_person(stack, http, reject_run, "approve")
        # While the run waits for a person, its note names the reference it runs (Airflow
        # has no server-side hook when verify ends: the name comes when the run ends).
        assert _note(http, reject_run) == f"train {rejected_ref}: started"
        answer(http, reject_run, "approve", "Reject", "cohort too small\x1b[2J")
        assert wait_for_end(stack, http, reject_run)["state"] == "success"
        rejected_note = _note(http, reject_run)

        # Cleared, the run starts again: the earlier outcome gives way to the start note
        # until the run ends again.
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
            json={"dry_run": False, "dag_run_id": reject_run, "only_failed": False},
        )
        assert resp.status_code == 200, resp.text
        # Its second try: the first try's lines (parked, then answered) are in the log too.
        wait_for_person(stack, http, reject_run, "approve", try_number=2)
        assert _note(http, reject_run) == f"train {rejected_ref}: started"
        answer(http, reject_run, "approve", "Reject", "cohort too small\x1b[2J")
        assert wait_for_end(stack, http, reject_run)["state"] == "success"
        assert _note(http, reject_run) == rejected_note

        deliver_run = trigger(http, delivered_ref)
        wait_for_person(stack, http, deliver_run, "approve")
        answer(http, deliver_run, "approve", "Approve", "read the script")
        assert wait_for_end(stack, http, deliver_run)["state"] == "success"

        failed_run = trigger(http, untrusted_ref)
        assert wait_for_end(stack, http, failed_run)["state"] == "failed"

        # A note a person gives when triggering is theirs: the listener leaves it.
        persons = "checking mallory's train for the ethics board"
        resp = http.post(
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            json={
                "logical_date": None,
                "conf": {"train": str(untrusted_ref), "rerun": False},
                "note": persons,
            },
        )
        assert resp.status_code == 200, resp.text
        persons_run = str(resp.json()["dag_run_id"])
        assert wait_for_end(stack, http, persons_run)["state"] == "failed"
        assert _note(http, persons_run) == persons

        notes = {run: _note(http, run) for run in (reject_run, deliver_run, failed_run)}
        listed = _listed_notes(http)

    head = "age-histogram (train {id}\u2026, hop 1 of 1)"
    assert notes[reject_run] == (
        f"{head.format(id=rejected.id[:8])}: rejected by admin: cohort too small\\x1b\\[2J"
    )
    sealed = audit_record(stack.station, deliver_run)
    result, recipients = sealed["result_digest"], sealed["recipients"]
    count = len(recipients)
    assert notes[deliver_run] == (
        f"{head.format(id=delivered.id[:8])}: approved by admin: read the script; "
        f"delivered result {result} to {count} recipient{'' if count == 1 else 's'}"
    )
    assert notes[failed_run] == (
        f"train {untrusted_ref}: failed in verify: creator: the creator's signature is not "
        "from a trusted creator (no creator signature by a trusted key: the spec's creator key "
        "is not in trusted_creators)"
    )
    for run_id, note in notes.items():
        assert listed[run_id] == note
