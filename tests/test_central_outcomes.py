"""A station's signed outcome reaches the central service: rejected and withheld hops.

The real central app served by uvicorn on 127.0.0.1 over a real database (a SQLite file;
PostgreSQL), the session's real registry and real trains (the Python base image). Reports
are made with :func:`pht_airflow.hopreport.make_report`, what a station's ``record`` step
calls; a parallel train's delivered result is sealed with :func:`pht_airflow.results.seal`
and the station's key, what its execute step calls. ``pht train status --central`` shows
the outcome with control characters escaped.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from click.testing import CliRunner
from support.stationkit import build_train, make_train_spec, sign_train

from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import free_port
from pht_airflow.hopreport import make_report
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.results import fetch_results, seal
from pht_airflow.spec import TrainSpec, canonical_json
from pht_airflow.web.central_app import create_app

pytestmark = [pytest.mark.registry, pytest.mark.docker]

TOKEN = "central-outcomes-token"
SECRET = "central-outcomes-webhook-secret"
HOSTILE = "not our cohort\x1b[2J\u202e[bold]"
SHOWN = "not our cohort\\x1b[2J\\u202e[bold]"


class Central:
    """The served app, and how a station and a researcher talk to it."""

    def __init__(self, url: str, router: Router) -> None:
        self.url = url
        self.router = router
        self.http = requests.Session()
        self.http.trust_env = False

    def report(self, train_id: str, report: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.url}/trains/{train_id}/failures", json=report, timeout=60)

    def train(self, train_id: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.url}/trains/{train_id}", timeout=60)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def reconcile(self) -> int:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = self.http.post(f"{self.url}/reconcile", headers=auth, timeout=120)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["actions"])


@pytest.fixture(params=["sqlite", "postgresql"])
def central(
    request: pytest.FixtureRequest, tmp_path: Path, client: RegistryClient, parties: Any
) -> Iterator[Central]:
    db_url = (
        f"sqlite:///{tmp_path / 'central.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = make_engine(db_url)
    router = Router(make_sessionmaker(engine), client, PlainRegistryAdmin(client))
    for name in ("station-a", "station-b"):
        router.add_station(name, parties[name].public.pem, parties[name].age.recipient,
                           project=name)  # fmt: skip
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: SECRET,
                     reconcile_seconds=0)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while thread.is_alive() and not server.started:
        time.sleep(0.05)  # waiting for the server to listen, not fixing a race
    assert server.started, "the central service did not start"
    try:
        yield Central(f"http://127.0.0.1:{port}", router)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.dispose()


def _submitted(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
    mode: str = "sequential",
) -> tuple[TrainSpec, dict[str, Any]]:  # fmt: skip
    spec = make_train_spec(parties, ["station-a", "station-b"], mode=mode)
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    info = central.router.submit(str(ref), parties["alice"].public.pem)
    return spec, info


def _decision(parties: Any, spec: TrainSpec, info: dict[str, Any], station: str, outcome: str,
              by: str, reason: str, **changes: Any) -> dict[str, Any]:  # fmt: skip
    """A station's signed report of a person's decision, as its record step makes it."""
    hop = [e.station for e in spec.route].index(station)
    args: dict[str, Any] = {
        "train_id": spec.id, "train_digest": info["digest"], "station": station, "hop": hop,
        "audit_seq": 4, "key": parties[station].key, "outcome": outcome, "by": by,
        "reason": reason,
    }  # fmt: skip
    args.update(changes)
    return make_report(**args)


def _status(central: Central, train_id: str, *extra: str) -> str:
    result = CliRunner().invoke(main, ["train", "status", train_id, "--central", central.url,
                                       *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return str(result.output)


def _raw_controls(text: str) -> list[str]:
    return [
        ch for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
    ]  # fmt: skip


@pytest.fixture()
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def test_a_rejected_hop_ends_the_train_as_rejected_and_status_says_who_and_why(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
    wide: None,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties)
    report = _decision(parties, spec, info, "station-a", "rejected", "dr.jones", HOSTILE)
    answer = central.report(spec.id, report)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] is True
    train = central.train(spec.id)
    line = f"hop 0: rejected at station station-a by dr.jones: {SHOWN}"
    assert (train["status"], train["reason"]) == ("rejected", line)
    assert [(h["state"], h["note"]) for h in train["hops"]] == [
        ("rejected", line), ("pending", None)
    ]  # fmt: skip
    assert (train["events"][-1]["kind"], train["events"][-1]["message"]) == ("rejected", line)
    assert "failed" not in [e["kind"] for e in train["events"]]
    assert "train" not in client.list_tags(f"station-b/{spec.id}")  # nothing moved on
    assert not client.list_tags(f"pht-outbox/{spec.id}")
    # The researcher's view: the status, the hop, who and why; no raw control character.
    shown = _status(central, spec.id)
    assert _raw_controls(shown) == []
    assert f"train {spec.id} (rejected)" in shown
    assert f"reason: {line}\n" in shown
    assert f"rejected  {line}\n" in shown  # the timeline's event
    assert shown.count("rejected at station station-a by dr.jones") == 3  # note, reason, event
    as_json = json.loads(_status(central, spec.id, "--json"))
    assert (as_json["status"], as_json["hops"][0]["state"]) == ("rejected", "rejected")
    # The same report again, or a later one, changes nothing.
    assert central.report(spec.id, report).json() == {
        "accepted": False, "why": "hop 0 is rejected, not in flight"
    }  # fmt: skip


def test_withheld_output_ends_the_train_as_withheld_and_status_says_so(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
    wide: None,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties)
    report = _decision(parties, spec, info, "station-a", "withheld", "release-officer",
                       "cell of 3 under min_cell_count 10",
                       failure={"check": "disclosure", "message": "review: counts.csv"},
                       )  # fmt: skip
    assert central.report(spec.id, report).json()["accepted"] is True
    train = central.train(spec.id)
    line = (
        "hop 0: withheld by the station station-a: cell of 3 under min_cell_count 10 "
        "(decided by release-officer)"
    )
    assert (train["status"], train["reason"]) == ("withheld", line)
    assert [h["state"] for h in train["hops"]] == ["withheld", "pending"]
    assert train["events"][-1] == {**train["events"][-1], "kind": "withheld", "message": line}
    shown = _status(central, spec.id)
    assert f"train {spec.id} (withheld)" in shown and f"reason: {line}\n" in shown


def _hand_signed(parties: Any, doc: dict[str, Any], who: str) -> dict[str, Any]:
    """``doc`` signed by ``who`` whatever it holds (make_report would refuse to make it)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    signature = parties[who].key.sign(canonical_json(body).encode())
    return {**body, "signature": base64.b64encode(signature).decode()}


def test_forged_or_incomplete_decisions_are_refused_and_change_nothing(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties)
    good = _decision(parties, spec, info, "station-a", "rejected", "dr.jones", "no")
    own_key = {"key_id": parties["station-a"].key.key_id}
    refusals = [
        ("signed by an outsider", _decision(parties, spec, info, "station-a", "rejected", "x",
                                            "no", key=parties["mallory"].key),
         "not the station's key"),
        ("station-b's key for station-a",
         _decision(parties, spec, info, "station-a", "rejected", "x", "no",
                   key=parties["station-b"].key),
         "not the station's key"),
        ("an outsider's signature under the station's key id",
         _hand_signed(parties, {**good, **own_key}, "mallory"), "does not verify"),
        ("the reason edited after signing", {**good, "reason": "approved, go on"},
         "does not verify"),
        ("the person edited after signing", {**good, "by": "the director"}, "does not verify"),
        ("the outcome edited after signing", {**good, "outcome": "withheld"}, "does not verify"),
        ("signed, without who", _hand_signed(parties, {**good, "by": None}, "station-a"),
         "a rejected report must say who decided ('by')"),
        ("signed, without the digest",
         _hand_signed(parties, {**good, "train_digest": None}, "station-a"),
         "must name the verified train's digest and hop"),
        ("signed, with an unknown outcome",
         _hand_signed(parties, {**good, "outcome": "vetoed"}, "station-a"),
         "outcome must be one of failed, rejected, withheld"),
        ("about another digest", _decision(parties, spec, info, "station-a", "rejected", "x",
                                           "no", train_digest="sha256:" + "0" * 64),
         "about another digest"),
    ]  # fmt: skip
    for what, body, message in refusals:
        answer = central.report(spec.id, body)
        assert answer.status_code == 422, (what, answer.text)
        assert message in answer.json()["detail"], (what, answer.text)
    # station-b is hop 1, not in flight: its (genuine) rejection is answered and ignored.
    early = _decision(parties, spec, info, "station-b", "rejected", "dr.who", "no")
    assert central.report(spec.id, early).json() == {
        "accepted": False, "why": "hop 1 is pending, not in flight"
    }  # fmt: skip
    train = central.train(spec.id)
    assert train["status"] == "routing" and train["reason"] is None
    assert [h["state"] for h in train["hops"]] == ["sent", "pending"]
    assert [e["kind"] for e in train["events"]] == ["submitted", "sent"]


def test_an_old_version_1_report_still_fails_the_hop(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties)
    version_1 = _hand_signed(parties, {
        "version": 1, "train_id": spec.id, "train_digest": info["digest"],
        "station": "station-a", "hop": 0, "check": "creator", "error": "UntrustedCreatorError",
        "message": "alice is not trusted here", "audit_seq": 2,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 1)),
        "key_id": parties["station-a"].key.key_id,
    }, "station-a")  # fmt: skip
    answer = central.report(spec.id, version_1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] is True
    train = central.train(spec.id)
    line = "hop 0 (station-a) failed at the station: [creator] alice is not trusted here"
    assert (train["status"], train["reason"]) == ("failed", line)
    assert [(h["state"], h["note"]) for h in train["hops"]] == [("failed", line), ("pending", None)]
    # A version 1 report cannot carry an outcome (it would be a rejection old code misreads).
    spec2, info2 = _submitted(central, docker_client, client, registry, parties)
    mixed = _hand_signed(parties, {**version_1, "train_id": spec2.id,
                                   "train_digest": info2["digest"], "outcome": "rejected"},
                         "station-a")  # fmt: skip
    answer = central.report(spec2.id, mixed)
    assert answer.status_code == 422
    assert "unknown field(s) in the version 1 failure report: 'outcome'" in answer.json()["detail"]
    assert central.train(spec2.id)["status"] == "routing"


def test_a_parallel_train_delivers_the_other_results_when_one_station_rejects(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties, mode="parallel")
    rejected = _decision(parties, spec, info, "station-a", "rejected", "dr.jones", "no")
    assert central.report(spec.id, rejected).json()["accepted"] is True
    train = central.train(spec.id)
    line = "hop 0: rejected at station station-a by dr.jones: no"
    assert (train["status"], train["reason"]) == ("routing", line)  # station-b goes on
    assert [h["state"] for h in train["hops"]] == ["rejected", "sent"]
    assert train["events"][-1]["kind"] == "rejected"
    # station-b delivers its result (sealed and signed with its key, as its hop does).
    output = tmp_path / "output"
    output.mkdir()
    (output / "count.txt").write_text("4\n")
    repo = Reference(registry.host, f"station-b/{spec.id}", digest=info["digest"])
    manifest = client.get_manifest(repo.repository, info["digest"])
    sealed = seal(client, repo, manifest, spec, hop=1, output_dir=output,
                  key=parties["station-b"].key, previous=None)  # fmt: skip
    assert central.reconcile() == 1
    train = central.train(spec.id)
    assert (train["status"], train["reason"]) == ("done", line)
    assert [(h["state"], h["result_digest"]) for h in train["hops"]] == [
        ("rejected", None), ("done", sealed.digest)
    ]  # fmt: skip
    tags = set(client.list_tags(f"pht-outbox/{spec.id}"))
    assert "result-1" in tags and "result-0" not in tags
    fetch_results(client, Reference(registry.host, f"pht-outbox/{spec.id}", digest=info["digest"]),
                  spec, parties["alice"].age, tmp_path / "results")  # fmt: skip
    assert (tmp_path / "results" / "1-station-b" / "count.txt").read_text() == "4\n"


def test_a_parallel_train_where_no_station_delivers_ends_as_rejected(
    central: Central, docker_client: Any, client: RegistryClient, registry: Any, parties: Any,
) -> None:  # fmt: skip
    spec, info = _submitted(central, docker_client, client, registry, parties, mode="parallel")
    withheld = _decision(parties, spec, info, "station-a", "withheld", "officer", "small cells")
    rejected = _decision(parties, spec, info, "station-b", "rejected", "dr.who", "not today")
    assert central.report(spec.id, withheld).json()["accepted"] is True
    assert central.report(spec.id, rejected).json()["accepted"] is True
    train = central.train(spec.id)
    assert train["status"] == "rejected"
    assert train["reason"] == (
        "no hop delivered a result: hop 0: withheld by the station station-a: small cells "
        "(decided by officer); hop 1: rejected at station station-b by dr.who: not today"
    )
    assert [e["kind"] for e in train["events"]][-3:] == ["withheld", "rejected", "rejected"]
    assert [h["state"] for h in train["hops"]] == ["withheld", "rejected"]
    assert not client.list_tags(f"pht-outbox/{spec.id}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_made_before_hop_notes_gains_the_column(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from sqlalchemy import inspect, text

    from pht_airflow.central.db import HopRow, TrainRow

    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if kind == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as s:
        train = TrainRow(id="t1", digest="sha256:" + "a" * 64, name="n", mode="sequential",
                         route=["station-a"], spec={}, source_repository="pht-incoming/t1",
                         status="routing")  # fmt: skip
        train.hops = [HopRow(hop=0, station="station-a", state="sent")]
        s.add(train)
    with engine.begin() as conn:  # the hops table as it was before notes
        conn.execute(text("ALTER TABLE hops DROP COLUMN note"))
    assert "note" not in {c["name"] for c in inspect(engine).get_columns("hops")}
    engine.dispose()

    engine = make_engine(url)
    assert "note" in {c["name"] for c in inspect(engine).get_columns("hops")}
    make_engine(url).dispose()  # a second start adds nothing and fails nothing
    with make_sessionmaker(engine)() as s:
        row = s.get(TrainRow, "t1")
        assert row is not None
        assert [(h["state"], h["note"]) for h in row.to_dict()["hops"]] == [("sent", None)]
    engine.dispose()
