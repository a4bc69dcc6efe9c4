"""The station's audit log: format, concurrent appends, and every kind of tampering.

Each tamper test works on its own copy of a ten-record log (and its head file) and asserts
that the error names the right line.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pht_airflow.errors import AuditLogError, PhtError
from pht_airflow.keys import AgeIdentity, SigningKey
from pht_airflow.station.audit import (
    ZERO_HASH,
    AuditLog,
    audit_verify_main,
    head_path,
    hop_record,
    verify_log,
)

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
DIGEST = "sha256:" + "ab" * 32
STATION = "station-a"


def _hop(i: int, *, outcome: str = "success", digest: str | None = None) -> dict:
    return hop_record(
        train_id=f"train-{i}",
        train_digest=digest or "sha256:" + f"{i:02x}" * 32,
        station=STATION,
        outcome=outcome,  # type: ignore[arg-type]
        hop=0,
        signers=[
            {"key_id": "sha256:" + "1" * 64, "role": "creator"},
            {"key_id": "sha256:" + "2" * 64, "role": "approver"},
        ],
        checks_passed=["resolve", "spec", "creator", "approvals"],
        failed_check=None if outcome == "success" else "route",
        approved_by="alice",
        dataset="cohort-2024",
        limits={"memory_bytes": 512 * 2**20, "cpus": 1.0, "pids": 64, "wall_seconds": 600},
        exit_code=0 if outcome == "success" else None,
        duration_seconds=1.25,
        result_digest="sha256:" + "cd" * 32 if outcome == "success" else None,
        recipients=["age1qqqq", "age1pppp"],
    )


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _error(path: Path) -> AuditLogError:
    with pytest.raises(AuditLogError) as info:
        verify_log(path)
    ok, message = audit_verify_main(str(path))
    assert not ok
    assert message == str(info.value)
    assert "\n" not in message
    return info.value


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "audit.jsonl"
    log = AuditLog(path)
    for i in range(10):
        log.append(_hop(i))
    return path


@pytest.fixture
def copy(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the ten-record log and its head file."""
    path = tmp_path / "audit.jsonl"
    shutil.copyfile(pristine, path)
    shutil.copyfile(head_path(pristine), head_path(path))
    assert verify_log(path) == 10
    return path


# --- format ------------------------------------------------------------------------------


def test_records_are_canonical_chained_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    written = [log.append(_hop(i)) for i in range(5)]
    lines = _lines(path)
    assert len(lines) == 5
    prev = ZERO_HASH
    for i, (line, rec) in enumerate(zip(lines, written, strict=True)):
        obj = json.loads(line)
        assert obj == rec
        assert line == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        assert obj["seq"] == i
        assert obj["prev"] == prev
        assert TIME.fullmatch(obj["time"])
        assert obj["event"] == "hop"
        assert obj["train_id"] == f"train-{i}"
        assert obj["signers"][1] == {"key_id": "sha256:" + "2" * 64, "role": "approver"}
        assert obj["approved_by"] == "alice"
        prev = _sha(line)
    assert json.loads(head_path(path).read_bytes()) == {"seq": 4, "sha256": prev}
    assert log.last() == written[-1]
    assert list(log.entries()) == written
    assert verify_log(path) == 5
    ok, message = audit_verify_main(str(path))
    assert ok, message
    assert "5 records, hash chain intact" in message
    assert "head file matches" in message


def test_generic_records_and_utf8(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    rec = log.append({"event": "station-start", "note": "Zürich ✓", "n": [1, 2.5, None]})
    assert rec["note"] == "Zürich ✓"
    assert "Zürich ✓".encode() in log.path.read_bytes()
    assert verify_log(log.path) == 1


def test_file_and_head_mode_0640_and_folder_created(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        log = AuditLog(tmp_path / "new" / "folder" / "audit.jsonl")
        log.append({"event": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o640
    assert stat.S_IMODE(log.head_path.stat().st_mode) == 0o640
    log.append({"event": "y"})
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o640


def test_empty_and_missing_logs(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "none.jsonl")
    assert log.last() is None
    assert list(log.entries()) == []
    assert not log.completed(DIGEST, STATION)
    with pytest.raises(AuditLogError, match="no such audit log"):
        verify_log(log.path)
    log.path.touch()
    assert verify_log(log.path) == 0
    assert log.last() is None


def test_last_reads_long_lines_from_the_end(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"event": "big", "blob": "x" * 50_000})
    log.append({"event": "big", "blob": "y" * 30_000})
    last = log.last()
    assert last is not None
    assert last["seq"] == 1
    assert last["blob"] == "y" * 30_000
    third = log.append({"event": "small"})
    assert third["prev"] == _sha(_lines(log.path)[1])
    assert verify_log(log.path) == 3


# --- concurrency -------------------------------------------------------------------------


def _writer(path: str, name: str, start: multiprocessing.synchronize.Event) -> None:
    log = AuditLog(path)
    start.wait(10)
    for i in range(50):
        log.append({"event": "test", "writer": name, "i": i})


def test_two_processes_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), n, start)) for n in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert verify_log(path) == 100
    records = list(AuditLog(path).entries())
    assert [r["seq"] for r in records] == list(range(100))
    for name in ("a", "b"):
        assert [r["i"] for r in records if r["writer"] == name] == list(range(50))
    head = json.loads(head_path(path).read_bytes())
    assert head == {"seq": 99, "sha256": _sha(_lines(path)[-1])}


# --- tampering ---------------------------------------------------------------------------


def test_edited_byte_in_a_middle_line(copy: Path) -> None:
    lines = _lines(copy)
    assert b'"train_id":"train-4"' in lines[4]
    lines[4] = lines[4].replace(b'"train_id":"train-4"', b'"train_id":"train-X"')
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 6: its prev does not match the hash of line 5" in str(err)
    assert "line 5 was edited" in str(err)
    assert err.line == 6


def test_edited_last_line_is_caught_by_the_head_file(copy: Path) -> None:
    lines = _lines(copy)
    lines[9] = lines[9].replace(b'"exit_code":0', b'"exit_code":1')
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 10 (the last line) was edited" in str(err)
    assert "audit.jsonl.head" in str(err)
    # …and the next append refuses rather than chaining onto the edit.
    with pytest.raises(AuditLogError, match="does not match the last line"):
        AuditLog(copy).append({"event": "x"})
    assert len(_lines(copy)) == 10


def test_without_the_head_file_an_edited_last_line_goes_unseen_and_says_so(copy: Path) -> None:
    lines = _lines(copy)
    lines[9] = lines[9].replace(b'"exit_code":0', b'"exit_code":1')
    _write_lines(copy, lines)
    head_path(copy).unlink()
    assert verify_log(copy) == 10
    ok, message = audit_verify_main(str(copy))
    assert ok
    assert "no head file" in message
    with pytest.raises(AuditLogError, match="head file audit.jsonl.head is missing"):
        AuditLog(copy).append({"event": "x"})


def test_removed_middle_line(copy: Path) -> None:
    lines = _lines(copy)
    del lines[4]
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 5 has seq 5 where 4 was expected" in str(err)
    assert "1 line was removed before line 5" in str(err)
    assert err.line == 5


def test_removed_first_line(copy: Path) -> None:
    _write_lines(copy, _lines(copy)[1:])
    err = _error(copy)
    assert "line 1 has seq 1 where 0 was expected" in str(err)
    assert err.line == 1


def test_removed_last_line(copy: Path) -> None:
    _write_lines(copy, _lines(copy)[:-1])
    err = _error(copy)
    assert "records seq 9 but the log ends with seq 8 on line 9" in str(err)
    assert "the last 1 line was removed" in str(err)
    with pytest.raises(AuditLogError, match="does not match the last line"):
        AuditLog(copy).append({"event": "x"})


def test_removed_last_three_lines(copy: Path) -> None:
    _write_lines(copy, _lines(copy)[:-3])
    assert "the last 3 lines were removed" in str(_error(copy))


def test_emptied_log(copy: Path) -> None:
    copy.write_bytes(b"")
    assert "the log is empty: 10 lines were removed" in str(_error(copy))
    with pytest.raises(AuditLogError, match="the log is empty but its head file records seq 9"):
        AuditLog(copy).append({"event": "x"})


def test_swapped_lines(copy: Path) -> None:
    lines = _lines(copy)
    lines[3], lines[4] = lines[4], lines[3]
    _write_lines(copy, lines)
    err = _error(copy)
    assert str(err).startswith(f"{copy}: line 4 has seq 4 where 3 was expected")
    assert "reordered" in str(err)
    assert err.line == 4


def test_swapped_last_two_lines(copy: Path) -> None:
    lines = _lines(copy)
    lines[8], lines[9] = lines[9], lines[8]
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 9 has seq 9 where 8 was expected" in str(err)


def test_truncated_last_line(copy: Path) -> None:
    data = copy.read_bytes()
    copy.write_bytes(data[:-1])
    err = _error(copy)
    assert "line 10 is truncated (no newline at the end)" in str(err)
    assert err.line == 10
    with pytest.raises(AuditLogError, match="last line is truncated"):
        AuditLog(copy).append({"event": "x"})
    with pytest.raises(AuditLogError, match="truncated"):
        AuditLog(copy).last()


def test_last_line_cut_in_half(copy: Path) -> None:
    data = copy.read_bytes()
    copy.write_bytes(data[: len(data) - 100])
    assert "line 10 is truncated" in str(_error(copy))


def test_forged_line_with_right_prev_and_wrong_seq(copy: Path) -> None:
    lines = _lines(copy)
    forged = json.loads(lines[4])
    forged.update(seq=42, prev=_sha(lines[4]), train_id="forged")
    lines.insert(5, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 6 has seq 42 but follows seq 4 on line 5 (expected 5)" in str(err)
    assert "line 6 was edited or forged" in str(err)
    assert err.line == 6


def test_forged_line_with_right_prev_and_seq(copy: Path) -> None:
    lines = _lines(copy)
    forged = json.loads(lines[4])
    forged.update(seq=5, prev=_sha(lines[4]), train_id="forged")
    lines.insert(5, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 7 has seq 5 where 6 was expected" in str(err)
    assert "a line was inserted before line 7" in str(err)


def test_lines_added_by_hand_at_the_end(copy: Path) -> None:
    lines = _lines(copy)
    forged = json.loads(lines[9])
    forged.update(seq=10, prev=_sha(lines[9]))
    forged2 = dict(forged)
    lines.append(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    forged2.update(seq=11, prev=_sha(lines[10]))
    lines.append(json.dumps(forged2, sort_keys=True, separators=(",", ":")).encode())
    _write_lines(copy, lines)
    err = _error(copy)
    assert "lines 11..12 come after the last line the head file" in str(err)


def test_reformatted_line_is_not_canonical(copy: Path) -> None:
    lines = _lines(copy)
    lines[9] = json.dumps(json.loads(lines[9]), sort_keys=True).encode()  # ", " and ": "
    _write_lines(copy, lines)
    assert "line 10 is not in the form AuditLog writes" in str(_error(copy))


def test_line_that_is_not_json(copy: Path) -> None:
    lines = _lines(copy)
    lines[2] = lines[2][:-1]  # drop the closing brace
    _write_lines(copy, lines)
    err = _error(copy)
    assert "line 3 is not JSON" in str(err)
    assert err.line == 3


def test_empty_line(copy: Path) -> None:
    lines = _lines(copy)
    lines.insert(3, b"")
    _write_lines(copy, lines)
    assert "line 4 is empty" in str(_error(copy))


def test_invalid_head_file(copy: Path) -> None:
    head_path(copy).write_text("not json\n")
    assert "the head file audit.jsonl.head is not valid" in str(_error(copy))


def test_interrupted_append_leaves_head_one_behind(copy: Path) -> None:
    """A crash after the line's fsync and before the head's rename is not tampering."""
    head = head_path(copy).read_bytes()
    AuditLog(copy).append({"event": "x"})
    head_path(copy).write_bytes(head)  # as if the head update never happened
    assert verify_log(copy) == 11
    ok, message = audit_verify_main(str(copy))
    assert ok
    assert "one record behind" in message
    AuditLog(copy).append({"event": "y"})  # repairs it
    ok, message = audit_verify_main(str(copy))
    assert ok
    assert "12 records" in message
    assert "head file matches" in message


def test_reseal_head_after_review(copy: Path) -> None:
    head_path(copy).unlink()
    log = AuditLog(copy)
    assert log.reseal_head() == 10
    assert audit_verify_main(str(copy))[1].endswith("head file matches the last line")
    assert log.append({"event": "x"})["seq"] == 10


def test_reseal_head_refuses_a_broken_chain(copy: Path) -> None:
    lines = _lines(copy)
    del lines[4]
    _write_lines(copy, lines)
    with pytest.raises(AuditLogError, match="line 5"):
        AuditLog(copy).reseal_head()


def test_audit_log_error_is_a_pht_error() -> None:
    assert issubclass(AuditLogError, PhtError)


# --- no secrets --------------------------------------------------------------------------


def _unencrypted_ec_pem() -> str:
    private = ec.generate_private_key(ec.SECP256R1())
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


# Key material made now, for this test only: none is committed.
_SECRETS = {
    "ec-private-key-pem": _unencrypted_ec_pem,
    "encrypted-pkcs8-first-line": lambda: (
        SigningKey.generate().private_pem(b"pw").decode().splitlines()[0]
    ),
    "age-identity": lambda: AgeIdentity.generate().secret_text(),
    "age-identity-lowercase": lambda: AgeIdentity.generate().secret_text().lower(),
}


@pytest.mark.parametrize("kind", list(_SECRETS))
def test_secret_looking_values_are_refused(tmp_path: Path, kind: str) -> None:
    secret = _SECRETS[kind]()
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"event": "ok"})
    before = log.path.read_bytes()
    with pytest.raises(ValueError, match="looks like key material") as info:
        log.append({"event": "hop", "failure": {"message": f"oops {secret}"}})
    assert "record.failure.message" in str(info.value)
    assert secret not in str(info.value)
    with pytest.raises(ValueError, match="looks like key material"):
        log.append({"event": "hop", "notes": ["fine", secret]})
    with pytest.raises(ValueError, match="looks like key material"):
        log.append({"event": "hop", secret: 1})
    with pytest.raises(ValueError, match="looks like key material"):
        hop_record(
            train_id="t",
            train_digest=DIGEST,
            station=STATION,
            outcome="failure",
            failure={"error": "KeyFileError", "message": secret},
        )
    assert log.path.read_bytes() == before


def test_a_lowercase_mention_of_a_private_key_is_fine(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"event": "hop", "message": "could not decrypt the private key file"})
    assert verify_log(log.path) == 1


def test_bad_records_are_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="seq"):
        log.append({"event": "x", "seq": 5})
    with pytest.raises(ValueError, match="prev"):
        log.append({"event": "x", "prev": ZERO_HASH})
    with pytest.raises(ValueError, match="event"):
        log.append({"train_id": "t"})
    with pytest.raises(TypeError, match="bytes"):
        log.append({"event": "x", "blob": b"raw"})
    with pytest.raises(ValueError, match="finite"):
        log.append({"event": "x", "n": float("nan")})
    with pytest.raises(ValueError, match="outcome"):
        hop_record(train_id="t", train_digest=DIGEST, station=STATION, outcome="done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failed_check"):
        hop_record(
            train_id="t",
            train_digest=DIGEST,
            station=STATION,
            outcome="success",
            failed_check="route",
        )
    with pytest.raises(ValueError, match="signers"):
        hop_record(
            train_id="t",
            train_digest=DIGEST,
            station=STATION,
            outcome="success",
            signers=[{"key_id": "k"}],
        )
    assert not log.path.exists() or log.path.read_bytes() == b""


# --- completed ---------------------------------------------------------------------------


def test_completed_only_for_success_of_that_digest_and_station(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    other = "sha256:" + "ef" * 32
    log.append(_hop(1, outcome="failure", digest=DIGEST))
    assert not log.completed(DIGEST, STATION)
    log.append(_hop(2, outcome="success", digest=other))
    log.append({**_hop(3, outcome="success", digest=DIGEST), "station": "station-b"})
    log.append({"event": "note", "outcome": "success", "train_digest": DIGEST, "station": STATION})
    assert not log.completed(DIGEST, STATION)
    assert log.completed(DIGEST, "station-b")
    assert log.completed(other, STATION)
    log.append(_hop(4, outcome="success", digest=DIGEST))
    assert log.completed(DIGEST, STATION)
    assert not log.completed("sha256:" + "00" * 32, STATION)
    assert verify_log(log.path) == 5


def test_minimal_hop_record_for_an_early_failure(tmp_path: Path) -> None:
    rec = hop_record(train_id=None, train_digest=None, station=STATION, outcome="failure")
    written = AuditLog(tmp_path / "audit.jsonl").append(rec)
    assert written["train_id"] is None
    assert written["signers"] == []
    assert written["recipients"] == []
    assert written["event"] == "hop"
