"""The station's signed hop report (``pht_airflow.hopreport``): outcomes, versions, bounds.

Version 2 reports carry an outcome (failed, rejected, withheld) with who decided and why;
version 1 reports (no outcome) still read as failed. Every refusal is a
``VerificationError`` naming what is wrong; a person's decision without who, why, the digest
or the hop is refused on both sides.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pht_airflow.errors import PhtError, VerificationError
from pht_airflow.hopreport import (
    MAX_BY,
    MAX_MESSAGE,
    MAX_REASON,
    VERSION,
    ReportError,
    check_report,
    make_report,
    read_report,
    report_from_record,
)
from pht_airflow.spec import canonical_json

TRAIN = "3b1f2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
DIGEST = "sha256:" + "a" * 64
NOW = datetime(2026, 12, 5, 7, 0, 0, 123456, tzinfo=UTC)


def _report(parties: Any, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "train_id": TRAIN,
        "train_digest": DIGEST,
        "station": "station-a",
        "hop": 1,
        "audit_seq": 7,
        "key": parties["station-a"].key,
        "now": NOW,
    }
    args.update(changes)
    return make_report(**args)


def _signed(parties: Any, doc: dict[str, Any], who: str = "station-a") -> dict[str, Any]:
    """``doc`` signed as a station would, whatever it holds (to test the reader's checks)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    signature = parties[who].key.sign(canonical_json(body).encode())
    return {**body, "signature": base64.b64encode(signature).decode()}


def _version_1(parties: Any) -> dict[str, Any]:
    """A report as stations made it before outcomes (version 1)."""
    return _signed(parties, {
        "version": 1, "train_id": TRAIN, "train_digest": DIGEST, "station": "station-a",
        "hop": 1, "check": "creator", "error": "UntrustedCreatorError",
        "message": "not trusted", "audit_seq": 3, "time": "2026-12-05T07:00:00.000000Z",
        "key_id": parties["station-a"].key.key_id,
    })  # fmt: skip


def test_a_rejected_report_says_who_and_why(parties: Any) -> None:
    report = _report(parties, outcome="rejected", by="dr.jones", reason="not our cohort")
    assert report["version"] == VERSION == 2
    said = read_report(report, parties["station-a"].public)
    assert (said.outcome, said.by, said.reason) == ("rejected", "dr.jones", "not our cohort")
    assert (said.train_id, said.train_digest, said.hop, said.audit_seq) == (TRAIN, DIGEST, 1, 7)
    assert said.made == NOW.replace(tzinfo=None)
    assert said.message == "" and said.check is None
    assert check_report(report, parties["station-a"].public) == said.made


def test_a_withheld_report_says_who_and_why(parties: Any) -> None:
    report = _report(parties, outcome="withheld", by="release-officer",
                     reason="cell of 3 under 10", failure={"check": "disclosure"})  # fmt: skip
    said = read_report(report, parties["station-a"].public)
    assert (said.outcome, said.by, said.reason, said.check) == (
        "withheld", "release-officer", "cell of 3 under 10", "disclosure"
    )  # fmt: skip


def test_a_failure_is_version_2_with_outcome_failed(parties: Any) -> None:
    failure = {"check": "signed", "error": "VerificationError", "message": "x" * 900}
    report = _report(parties, failure=failure, train_digest=None, hop=None)
    assert (report["outcome"], report["reason"], report["by"]) == ("failed", None, None)
    assert len(report["message"]) == MAX_MESSAGE  # cut by the maker
    said = read_report(report, parties["station-a"].public)
    assert (said.outcome, said.check, said.hop) == ("failed", "signed", None)


def test_a_version_1_report_still_reads_as_failed(parties: Any) -> None:
    said = read_report(_version_1(parties), parties["station-a"].public)
    assert (said.version, said.outcome, said.reason, said.by) == (1, "failed", None, None)
    assert said.error == "UntrustedCreatorError"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _signed(p, {**_version_1(p), "outcome": "rejected"}),
         "unknown field(s) in the version 1 failure report: 'outcome'"),
        (lambda p: _signed(p, {k: v for k, v in _report(p).items() if k != "outcome"}),
         "the failure report has no 'outcome'"),
        (lambda p: _signed(p, {**_report(p), "version": 3}), "version 3 is not supported"),
        (lambda p: _signed(p, {**_report(p), "version": True}), "version True is not supported"),
        (lambda p: {k: v for k, v in _report(p).items() if k != "version"},
         "version (none) is not supported"),
        (lambda p: _signed(p, {**_report(p), "outcome": "approved"}),
         "outcome must be one of failed, rejected, withheld"),
        (lambda p: _signed(p, {**_report(p), "outcome": "rejected", "by": "x"}),
         "a rejected report must say the reason given ('reason')"),
        (lambda p: _signed(p, {**_report(p), "outcome": "withheld", "reason": "r", "by": " "}),
         "a withheld report must say who decided ('by')"),
        (lambda p: _signed(p, {**_report(p), "outcome": "rejected", "reason": "r", "by": "x",
                               "hop": None}),
         "a rejected report must name the verified train's digest and hop"),
        (lambda p: _signed(p, {**_report(p), "outcome": "rejected", "reason": "r" * 1001,
                               "by": "x"}),
         f"'reason' is longer than {MAX_REASON} characters"),
        (lambda p: _signed(p, {**_report(p), "station": "s" * 201}),
         "'station' is longer than 200 characters"),
        (lambda p: _signed(p, {**_report(p), "outcome": "rejected", "reason": "r", "by": "x"},
                           "mallory"),
         "does not verify with the station's key"),
    ],
    ids=["v1-with-outcome", "v2-without-outcome", "version-3", "version-bool", "no-version",
         "unknown-outcome", "rejected-no-reason", "withheld-blank-by", "rejected-no-hop",
         "reason-too-long", "station-too-long", "signed-by-another-key"],
)  # fmt: skip
def test_reports_that_do_not_hold_are_refused(parties: Any, make: Any, message: str) -> None:
    with pytest.raises(VerificationError, match="failure-report") as caught:
        read_report(make(parties), parties["station-a"].public)
    assert message in str(caught.value)


def test_a_rejection_cannot_be_downgraded_to_a_version_1_failure(parties: Any) -> None:
    """The signature covers the version and the outcome: dropping them does not verify."""
    report = _report(parties, outcome="rejected", by="dr.jones", reason="no")
    v1 = {k: v for k, v in report.items() if k not in ("outcome", "reason", "by")}
    with pytest.raises(VerificationError, match="does not verify"):
        read_report({**v1, "version": 1}, parties["station-a"].public)
    with pytest.raises(VerificationError, match="does not verify"):
        read_report({**report, "outcome": "withheld"}, parties["station-a"].public)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outcome": "rejected", "by": "dr.jones"}, "must say the reason given"),
        ({"outcome": "rejected", "reason": "no"}, "must say who decided"),
        ({"outcome": "withheld", "reason": "", "by": "x"}, "must say the reason given"),
        ({"outcome": "withheld", "reason": "r", "by": "x", "train_digest": None},
         "must name the verified train's digest and hop"),
        ({"outcome": "maybe"}, "must be one of failed, rejected, withheld"),
    ],
)  # fmt: skip
def test_make_report_refuses_a_decision_without_who_or_why(
    parties: Any, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ReportError, match=message) as caught:
        _report(parties, **changes)
    # A PhtError: a station's `except PhtError` around reporting catches it.
    assert isinstance(caught.value, PhtError) and isinstance(caught.value, ValueError)


def test_make_report_cuts_long_text_to_what_the_reader_accepts(parties: Any) -> None:
    report = _report(parties, outcome="rejected", by="b" * 5000, reason="r\x1b" * 5000)
    assert (len(report["by"]), len(report["reason"])) == (MAX_BY, MAX_REASON)
    # Control characters travel as written (whoever shows them escapes them).
    said = read_report(report, parties["station-a"].public)
    assert said.reason is not None and "\x1b" in said.reason


_FIELDS = ["version", "train_id", "train_digest", "station", "hop", "outcome", "reason", "by",
           "check", "error", "message", "audit_seq", "time", "key_id", "signature"]  # fmt: skip
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.none(), max_size=2),
    st.sampled_from(["failed", "rejected", "withheld", "", " "]),
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.dictionaries(st.sampled_from([*_FIELDS, "extra"]), _VALUES, min_size=1, max_size=4),
    drop=st.sets(st.sampled_from(_FIELDS), max_size=2),
)
def test_an_edited_rejection_is_refused_or_unchanged(
    parties: Any, edits: dict[str, Any], drop: set[str]
) -> None:  # fmt: skip
    """Any edit to a signed rejection is refused with a VerificationError, unless it left the
    signed content as it was."""
    seed = _report(parties, outcome="rejected", by="dr.jones", reason="not our cohort")
    doc = {k: v for k, v in {**seed, **edits}.items() if k not in drop}
    try:
        said = read_report(doc, parties["station-a"].public)
    except VerificationError as exc:
        assert str(exc).startswith("[failure-report] ")
        return
    assert {k: v for k, v in doc.items() if k != "signature"} == {
        k: v for k, v in seed.items() if k != "signature"
    }
    assert said.outcome == "rejected"


def _record(**changes: Any) -> dict[str, Any]:
    """A station audit record's fields that a report is made from."""
    record: dict[str, Any] = {
        "seq": 12, "train_id": TRAIN, "train_digest": DIGEST, "hop": 1, "outcome": "rejected",
        "decision": {"by": "dr.jones", "reason": "not our cohort"}, "failure": None,
    }  # fmt: skip
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (_record(), ("rejected", "dr.jones", "not our cohort", None, 12)),
        (_record(outcome="withheld", decision={"by": "officer", "reason": "small cells"}),
         ("withheld", "officer", "small cells", None, 12)),
        (_record(decision={"by": None, "reason": "  "}),
         ("rejected", "an unnamed person at the station", "no reason given", None, 12)),
        (_record(outcome="failure", decision=None,
                 failure={"check": "creator", "error": "UntrustedCreatorError",
                          "message": "not trusted"}),
         ("failed", None, None, "creator", 12)),
        (_record(outcome="failure", decision=None, failure=None, train_digest=None, hop=None,
                 seq=None),
         ("failed", None, None, None, None)),
    ],
    ids=["rejected", "withheld", "rejected-blank", "failure", "failure-before-the-spec"],
)  # fmt: skip
def test_a_report_from_an_audit_record(
    parties: Any, record: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    report = report_from_record(record, train_id=TRAIN, station="station-a",
                                key=parties["station-a"].key, now=NOW)  # fmt: skip
    said = read_report(report, parties["station-a"].public)
    assert (said.outcome, said.by, said.reason, said.check, said.audit_seq) == expected
    made = NOW.replace(tzinfo=None)
    assert (said.train_id, said.station, said.made) == (TRAIN, "station-a", made)


def test_a_decision_record_without_the_digest_is_not_made_into_a_report(parties: Any) -> None:
    with pytest.raises(ReportError, match="must name the verified train's digest and hop"):
        report_from_record(_record(train_digest=None), train_id=TRAIN, station="station-a",
                           key=parties["station-a"].key)  # fmt: skip
