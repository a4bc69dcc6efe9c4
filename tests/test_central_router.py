"""The central service: directory, submission, routing on results, reconciliation, the API.

Real registry, real engine, the real station hop (``run_hop``) at each station, the real
FastAPI app served by uvicorn on 127.0.0.1 for the API and CLI tests.
"""

from __future__ import annotations

import json
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from click.testing import CliRunner
from support.stationkit import build_train, make_station, make_train_spec, sign_train

from pht_airflow.attestation import attestation_tag, hop_predicate, verify_attestation
from pht_airflow.central.db import make_engine, make_sessionmaker
from pht_airflow.central.registry import PlainRegistryAdmin
from pht_airflow.central.router import Router, RouterError
from pht_airflow.cli import main
from pht_airflow.dev.localregistry import free_port
from pht_airflow.errors import VerificationError
from pht_airflow.hopreport import make_report
from pht_airflow.keys import load_public_key
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.researcher.train import StationInfo, make_spec
from pht_airflow.results import fetch_results, seal
from pht_airflow.station.hop import record_step, run_hop
from pht_airflow.web.central_app import create_app
from pht_airflow.webhooks import parse_events

pytestmark = [pytest.mark.registry, pytest.mark.docker]

TOKEN = "central-test-token"
SECRET = "central-webhook-secret"
DIST = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture()
def client(registry: Any) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The central database: a SQLite file (the default), or PostgreSQL (production's)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def router(db_url: str, client: RegistryClient, parties: Any) -> Router:
    r = Router(make_sessionmaker(make_engine(db_url)), client, PlainRegistryAdmin(client))
    for name in ("station-a", "station-b"):
        r.add_station(name, parties[name].public.pem, parties[name].age.recipient, project=name)
    return r


@pytest.fixture()
def stations(tmp_path: Path, parties: Any, registry: Any) -> dict[str, Any]:
    return {
        name: make_station(
            tmp_path / name,
            parties[name],
            registry.host,
            creators=[parties["alice"].public.pem],
            approvers=[parties["reviewer"].public.pem],
            rows=rows,
        )
        for name, rows in (("station-a", 3), ("station-b", 4))
    }


def _incoming_train(docker_client: Any, client: Any, registry: Any, parties: Any,
                    mode: str = "sequential") -> tuple[Reference, Any]:  # fmt: skip
    spec = make_train_spec(parties, ["station-a", "station-b"], mode=mode)
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    return ref, spec


def _push_event(registry: Any, repository: str, tag: str, digest: str) -> Any:
    """A distribution notification for a manifest push, parsed as the receiver does."""
    body = _push_body(registry, repository, tag, digest)
    (event,) = parse_events(body, DIST)
    return event


def _push_body(registry: Any, repository: str, tag: str, digest: str) -> bytes:
    """A distribution notification for a manifest push, as the registry sends it."""
    envelope = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "repository": repository,
                    "url": f"http://{registry.host}/v2/{repository}/manifests/{digest}",
                    "tag": tag,
                },
                "request": {"method": "PUT", "host": registry.host},
            }
        ]
    }
    return json.dumps(envelope).encode()


def test_sequential_route_end_to_end(
    router: Router, stations: Any, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    with pytest.raises(RouterError, match="not the key the spec names"):
        router.submit(str(ref), parties["mallory"].public.pem)
    info = router.submit(str(ref), parties["alice"].public.pem)
    assert info["status"] == "routing"
    assert [h["state"] for h in info["hops"]] == ["sent", "pending"], (
        info["status"],
        info.get("reason"),
        info["events"],
    )
    assert "train" in client.list_tags(f"station-a/{spec.id}")
    # Submitting again changes nothing.
    assert router.submit(str(ref), parties["alice"].public.pem)["hops"] == info["hops"]

    a = run_hop(stations["station-a"].config(), f"{registry.host}/station-a/{spec.id}:train",
                docker_client=docker_client)  # fmt: skip
    event = _push_event(registry, f"station-a/{spec.id}", "result-0", a["result_digest"])
    assert router.handle_push(event) == "sent hop 1"
    assert router.handle_push(event) is None  # a duplicate delivery does nothing
    assert "result-0" in client.list_tags(f"station-b/{spec.id}")

    run_hop(stations["station-b"].config(), f"{registry.host}/station-b/{spec.id}:train",
            docker_client=docker_client)  # fmt: skip
    # The webhook for hop 1 is lost: reconciliation finds the result anyway.
    assert router.reconcile() == 1
    info = router.train(spec.id)
    assert info["status"] == "done"
    assert [h["state"] for h in info["hops"]] == ["done", "done"]
    kinds = [e["kind"] for e in info["events"]]
    assert kinds[:2] == ["submitted", "sent"] and kinds[-1] == "done"

    outbox = Reference(registry.host, f"pht-outbox/{spec.id}", digest=info["digest"])
    assert {"train", "result-0", "result-1"} <= set(client.list_tags(outbox.repository))
    fetch_results(client, outbox, spec, parties["alice"].age, tmp_path / "results")
    assert (tmp_path / "results" / "1-station-b" / "state.json").is_file()


def test_a_push_to_incoming_submits_only_when_push_submission_is_on(
    router: Router, docker_client: Any, client: Any, registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    event = _push_event(registry, ref.repository, "train", client.resolve(ref.repository, "train"))
    assert (
        router.handle_push(event) is None
    )  # no creator key registered: pushes are not submissions
    assert router.incoming_pushes() == {"waiting": [], "refused": []}
    with pytest.raises(RouterError, match="role 'owner' must be creator or approver"):
        router.add_trusted_key("alice", parties["alice"].public.pem, "owner")
    router.add_trusted_key("alice", parties["alice"].public.pem, "creator")
    router.add_trusted_key("reviewer", parties["reviewer"].public.pem, "approver")
    assert router.handle_push(event) == "submitted"  # signed by alice and the reviewer
    assert router.handle_push(event) is None  # a second delivery
    assert [h["state"] for h in router.train(spec.id)["hops"]] == ["sent", "pending"]


def test_parallel_route_collects_every_result(
    router: Router, stations: Any, docker_client: Any, client: Any, registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties, mode="parallel")
    info = router.submit(str(ref), parties["alice"].public.pem)
    assert [h["state"] for h in info["hops"]] == ["sent", "sent"]
    for hop, name in enumerate(("station-a", "station-b")):
        record = run_hop(stations[name].config(), f"{registry.host}/{name}/{spec.id}:train",
                         docker_client=docker_client)  # fmt: skip
        result = router.handle_push(
            _push_event(registry, f"{name}/{spec.id}", f"result-{hop}", record["result_digest"])
        )
        assert result == ("collected" if hop == 0 else "done")
    assert {"result-0", "result-1"} <= set(client.list_tags(f"pht-outbox/{spec.id}"))


def test_a_forged_result_fails_the_train(
    router: Router, docker_client: Any, client: Any, registry: Any, parties: Any, tmp_path: Path
) -> None:
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    router.submit(str(ref), parties["alice"].public.pem)
    repo = f"station-a/{spec.id}"
    pinned = Reference(registry.host, repo, digest=client.resolve(repo, "train"))
    out = tmp_path / "forged"
    out.mkdir()
    (out / "x.txt").write_text("forged")
    sealed = seal(client, pinned, client.get_manifest(repo, pinned.digest), spec, hop=0,
                  output_dir=out, key=parties["mallory"].key, previous=None)  # fmt: skip
    assert router.handle_push(_push_event(registry, repo, "result-0", sealed.digest)) == "failed"
    info = router.train(spec.id)
    assert info["status"] == "failed"
    assert "not signed by station-a's key" in info["reason"]
    assert "result-0" not in client.list_tags(f"station-b/{spec.id}")
    # Retrying sends the hop again (the station would run it afresh).
    assert router.retry(spec.id, 0)["status"] == "routing"


def test_the_router_copies_each_results_attestation_onward_and_to_the_outbox(
    router: Router, docker_client: Any, client: Any, registry: Any, parties: Any, tmp_path: Path
) -> None:
    """Each station's ``.att`` travels with its result and ``.sig`` (like a signature), so
    the next station and the researcher verify it where they read the result."""
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    router.submit(str(ref), parties["alice"].public.pem)
    previous = None
    for hop, name in enumerate(["station-a", "station-b"]):
        repo = f"{name}/{spec.id}"
        pinned = Reference(registry.host, repo, digest=client.resolve(repo, "train"))
        out = tmp_path / name
        out.mkdir()
        (out / "n.txt").write_text(str(hop))
        train = {"id": spec.id, "name": spec.name, "digest": pinned.digest}
        predicate = hop_predicate(train=train, station=name, hop=hop,
                                  released_by=f"staff-of-{name}")  # fmt: skip
        sealed = seal(client, pinned, client.get_manifest(repo, pinned.digest), spec, hop=hop,
                      output_dir=out, key=parties[name].key, previous=previous,
                      predicate=predicate)  # fmt: skip
        assert router.handle_push(_push_event(registry, repo, f"result-{hop}", sealed.digest))
        previous = sealed.digest
        if hop == 0:  # hop 1's project got result-0 with its attestation
            there = Reference(registry.host, f"station-b/{spec.id}", digest=sealed.digest)
            assert attestation_tag(sealed.digest) in client.list_tags(there.repository)
            statement = verify_attestation(client, there, parties["station-a"].public)
            assert statement["predicate"]["released_by"] == "staff-of-station-a"
    info = router.train(spec.id)
    assert info["status"] == "done", info.get("reason")
    outbox = Reference(registry.host, f"pht-outbox/{spec.id}", digest=info["digest"])
    seen: list[Any] = []
    fetch_results(client, outbox, spec, parties["alice"].age, tmp_path / "results",
                  on_attestation=lambda r, s: seen.append((r.hop, s["predicate"]["released_by"])),
                  )  # fmt: skip
    assert seen == [(0, "staff-of-station-a"), (1, "staff-of-station-b")]


@pytest.fixture()
def served(router: Router) -> Iterator[str]:
    app = create_app(router, api_token=lambda: TOKEN, webhook_secret=lambda: SECRET,
                     reconcile_seconds=0)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not server.started:
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


def test_api_and_cli(
    served: str, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path, key_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    session = requests.Session()
    session.trust_env = False
    stations = session.get(f"{served}/stations").json()
    assert [s["id"] for s in stations] == ["station-a", "station-b"]
    body = {"id": "station-c", "key": parties["station-c"].public.pem,
            "recipient": parties["station-c"].age.recipient}  # fmt: skip
    assert session.post(f"{served}/stations", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert session.post(f"{served}/stations", json=body, headers=wrong).status_code == 401
    assert session.get(f"{served}/docs").status_code == 200
    big = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert session.post(f"{served}/stations", data=b" " * (2 << 20), headers=big).status_code == 413

    runner = CliRunner()
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "c.pub").write_text(parties["station-c"].public.pem)
    (keys / "c.age.pub").write_text(parties["station-c"].age.recipient + "\n")
    result = runner.invoke(main, ["central", "stations", "add", "--central", served,
                                  "--id", "station-c", "--key", str(keys / "c.pub"),
                                  "--recipient-file", str(keys / "c.age.pub")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "project station-station-c" in result.output
    result = runner.invoke(main, ["central", "stations", "list", "--central", served, "--json"])
    assert [s["id"] for s in json.loads(result.stdout)] == [
        "station-a", "station-b", "station-c"
    ]  # fmt: skip
    # Researchers' keys: a push to pht-incoming signed by a registered creator submits.
    add_key = ["central", "keys", "add", "--central", served, "--key", str(key_files["pub"])]
    result = runner.invoke(main, [*add_key, "--name", "alice", "--role", "creator"])
    assert result.exit_code == 0, result.output
    creator_id = load_public_key(key_files["pub"]).key_id
    assert f"creator alice: key {creator_id}" in result.output
    result = runner.invoke(main, [*add_key, "--name", "bob", "--role", "approver"])
    assert result.exit_code != 0 and "already registered as 'alice'" in result.output
    result = runner.invoke(main, ["central", "keys", "list", "--central", served])
    assert result.exit_code == 0 and creator_id[:20] in result.output

    # A researcher builds against the directory, submits, and follows the train.
    folder = tmp_path / "analysis"
    assert runner.invoke(main, ["train", "init", str(folder)]).exit_code == 0
    result = runner.invoke(main, [
        "train", "build", str(folder), "--route", "station-a,station-b", "--dataset", "cohort",
        "--creator-key", str(key_files["key"]), "--central", served,
        "--push", f"{registry.host}/pht-incoming", "--json",
        "--passphrase-file", str(key_files["passphrase"]),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    # The train was built from the directory; alice's key signs it; approve as the reviewer.
    sign_train(client, Reference.parse(built["reference"]).with_digest(built["digest"]), parties,
               "reviewer")  # fmt: skip
    result = runner.invoke(main, ["train", "submit", built["reference"], "--central", served,
                                  "--key", str(key_files["pub"])])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "routing" in result.output
    result = runner.invoke(main, ["train", "status", built["id"], "--central", served, "--json"])
    info = json.loads(result.stdout)
    assert [h["state"] for h in info["hops"]] == ["sent", "pending"], (
        info["status"],
        info.get("reason"),
        info["events"],
    )
    # The same by reference, as a table with the timeline.
    result = runner.invoke(main, ["train", "status", built["reference"], "--central", served])
    assert result.exit_code == 0, result.output
    assert "submitted" in result.output and "station-a" in result.output
    # A registry webhook with a wrong secret is refused.
    response = session.post(f"{served}/webhooks/registry-events", data=b"{}",
                            headers={"Authorization": "wrong"})  # fmt: skip
    assert response.status_code == 401


def _deliver_concurrently(url: str, body: bytes, deliveries: int) -> list[Any]:
    """Post ``body`` from ``deliveries`` threads at once; every answer's ``accepted`` results."""
    barrier = threading.Barrier(deliveries)
    answers: list[Any] = []
    lock = threading.Lock()

    def deliver() -> None:
        session = requests.Session()
        session.trust_env = False
        barrier.wait()
        headers = {"Authorization": SECRET, "Content-Type": DIST}
        response = session.post(url, data=body, timeout=120, headers=headers)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=deliver) for _ in range(deliveries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * deliveries, [a.text for a in answers]
    return [a.json()["accepted"][0]["result"] for a in answers]


def test_concurrent_duplicate_webhook_deliveries_act_once_and_all_get_200(
    router: Router, served: str, stations: Any, docker_client: Any, client: Any, registry: Any,
    parties: Any,
) -> None:  # fmt: skip
    router.add_trusted_key("alice", parties["alice"].public.pem, "creator")
    router.add_trusted_key("reviewer", parties["reviewer"].public.pem, "approver")
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    url = f"{served}/webhooks/registry-events"
    digest = client.resolve(ref.repository, "train")
    results = _deliver_concurrently(url, _push_body(registry, ref.repository, "train", digest), 6)
    assert results.count("submitted") == 1 and results.count(None) == 5, results
    info = router.train(spec.id)
    assert [h["state"] for h in info["hops"]] == ["sent", "pending"], (
        info["status"],
        info.get("reason"),
        info["events"],
    )
    assert router.incoming_pushes() == {"waiting": [], "refused": []}

    a = run_hop(stations["station-a"].config(), f"{registry.host}/station-a/{spec.id}:train",
                docker_client=docker_client)  # fmt: skip
    body = _push_body(registry, f"station-a/{spec.id}", "result-0", a["result_digest"])
    results = _deliver_concurrently(url, body, 6)
    assert results.count("sent hop 1") == 1 and results.count(None) == 5, results
    info = router.train(spec.id)
    assert [h["state"] for h in info["hops"]] == ["done", "sent"]
    assert [e["kind"] for e in info["events"]].count("result") == 1
    assert [e["kind"] for e in info["events"]].count("sent") == 2


def test_concurrent_submissions_through_two_services_register_one_train(
    db_url: str, router: Router, docker_client: Any, client: Any, registry: Any, parties: Any,
) -> None:  # fmt: skip
    """Two central processes (two routers, each with its own lock) over one database submit
    the same train at once: every call answers the train, one registers it."""
    other = Router(make_sessionmaker(make_engine(db_url)), client, PlainRegistryAdmin(client))
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    callers = [router, other] * 3
    barrier = threading.Barrier(len(callers))
    outcomes: list[Any] = []
    lock = threading.Lock()

    def submit(r: Router) -> None:
        barrier.wait()
        try:
            outcome: Any = r._submit(str(ref), parties["alice"].public.pem)[1]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome = exc
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit, args=(r,)) for r in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes, key=repr) == [False] * 5 + [True], outcomes
    info = router.train(spec.id)
    assert [e["kind"] for e in info["events"]].count("submitted") == 1
    assert [h["state"] for h in info["hops"]] == ["sent", "pending"], (
        info["status"],
        info.get("reason"),
        info["events"],
    )


# --- the route must be the directory's: every station's key and recipient -------------


@pytest.mark.parametrize(
    ("field", "key_of", "recipient_of"),
    [("recipient", "station-b", "alice"), ("key", "mallory", "station-b")],
    ids=["researcher-recipient-for-b", "wrong-key-for-b"],
)
def test_a_route_that_differs_from_the_directory_is_refused_over_the_api(
    served: str, docker_client: Any, client: Any, registry: Any, parties: Any,
    field: str, key_of: str, recipient_of: str,
) -> None:  # fmt: skip
    """The attack: station-b listed with one of its two fields swapped for the researcher's
    (its real key with the researcher's recipient reads station-a's intermediate result
    under ``results_visibility: final``; a wrong key signs for it). Refused at submission,
    naming the station and the field; nothing is registered or copied."""
    route = [
        StationInfo("station-a", parties["station-a"].public.pem,
                    parties["station-a"].age.recipient),
        StationInfo("station-b", parties[key_of].public.pem, parties[recipient_of].age.recipient),
    ]  # fmt: skip
    alice = parties["alice"]
    spec = make_spec(name="row-count", creator_id="alice", creator_key_id=alice.key.key_id,
                     creator_recipient=alice.age.recipient, route=route,
                     mode="sequential", dataset="cohort", visibility="final")  # fmt: skip
    ref = Reference(registry.host, f"pht-incoming/{spec.id}", tag="train")
    digest = build_train(docker_client, ref, spec)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    session = requests.Session()
    session.trust_env = False
    body = {"reference": str(ref), "creator_key": parties["alice"].public.pem}
    response = session.post(f"{served}/trains", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"route[1] (station-b): the route {field} for station-b differs" in detail
    assert session.get(f"{served}/trains/{spec.id}").status_code == 404
    assert client.list_tags(f"station-a/{spec.id}") == []


# --- failed hops: the station's signed report, and timeouts ---------------------------


def test_a_station_reports_its_failed_hop_and_the_train_fails_at_once(
    router: Router, served: str, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    router.submit(str(ref), parties["alice"].public.pem)
    # station-a does not trust alice: its verify step fails, and its record step reports it.
    station = make_station(tmp_path / "station-a", parties["station-a"], registry.host,
                           creators=[parties["mallory"].public.pem],
                           approvers=[parties["reviewer"].public.pem],
                           overrides={"central": {"url": served}})  # fmt: skip
    said: list[str] = []
    with pytest.raises(VerificationError, match="creator"):
        run_hop(station.config(), f"{registry.host}/station-a/{spec.id}:train",
                docker_client=docker_client, logger=said.append)  # fmt: skip
    assert any("reported the failed hop" in line for line in said), said
    info = router.train(spec.id)
    assert info["status"] == "failed"
    assert info["reason"].startswith("hop 0 (station-a) failed at the station: [creator] ")
    assert [h["state"] for h in info["hops"]] == ["failed", "pending"]
    assert not client.list_tags(f"station-b/{spec.id}")  # nothing moved on
    # The station's audit log holds the same failure.
    (line,) = (tmp_path / "station-a" / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["failed_check"] == "creator"


def test_failure_reports_that_do_not_hold_change_nothing(
    router: Router, served: str, docker_client: Any, client: Any, registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties)
    info = router.submit(str(ref), parties["alice"].public.pem)
    url = f"{served}/trains/{spec.id}/failures"
    session = requests.Session()
    session.trust_env = False

    def report(key: str = "station-a", **changes: Any) -> dict[str, Any]:
        failure = {"check": "creator", "error": "UntrustedCreatorError", "message": "no"}
        signed = {"train_digest": info["digest"], "hop": 0, "now": None}
        signed.update((k, changes.pop(k)) for k in list(changes) if k in signed)
        made = make_report(train_id=spec.id, station="station-a", failure=failure,
                           audit_seq=0, key=parties[key].key, **signed)  # fmt: skip
        return {**made, **changes}

    refusals = [
        (report("mallory"), 422, "not the station's key"),
        ({**report(), "message": "edited after signing"}, 422, "does not verify"),
        ({**report(), "signature": "%%%"}, 422, "not base64"),
        ({**report(), "extra": 1}, 422, "unknown field"),
        (report(station="station-c"), 422, "not on the route"),
        (report(train_id="another"), 422, "another train"),
    ]
    for body, status, message in refusals:
        answer = session.post(url, json=body)
        assert (answer.status_code, message in answer.json()["detail"]) == (status, True), (
            answer.text
        )
    missing = session.post(f"{served}/trains/nope/failures", json=report(train_id="nope"))
    assert missing.status_code == 404
    # Signed by the station but about another digest, or another hop.
    with pytest.raises(RouterError, match="another digest"):
        router.station_failure(spec.id, report(train_digest="sha256:" + "0" * 64))
    with pytest.raises(RouterError, match="is hop 0, not hop 1"):
        router.station_failure(spec.id, report(hop=1))
    assert router.train(spec.id)["status"] == "routing"
    # A report made before the hop was sent (a replay of an old one) is ignored.
    old = report(now=datetime.now(UTC) - timedelta(hours=1))
    assert session.post(url, json=old).json() == {
        "accepted": False, "why": "the report predates hop 0's last send"
    }  # fmt: skip
    assert router.train(spec.id)["status"] == "routing"
    # The real one fails the hop; a second delivery changes nothing.
    good = report()
    assert session.post(url, json=good).json()["accepted"] is True
    assert session.post(url, json=good).json() == {
        "accepted": False, "why": "hop 0 is failed, not in flight"
    }  # fmt: skip
    # After a retry, the old report cannot fail the hop again.
    router.retry(spec.id, 0)
    assert session.post(url, json=good).json()["accepted"] is False
    assert router.train(spec.id)["status"] == "routing"


def test_a_parallel_train_delivers_what_arrived_when_a_hop_fails(
    router: Router, stations: Any, docker_client: Any, client: Any, registry: Any, parties: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties, mode="parallel")
    router.submit(str(ref), parties["alice"].public.pem)
    record = run_hop(stations["station-b"].config(), f"{registry.host}/station-b/{spec.id}:train",
                     docker_client=docker_client)  # fmt: skip
    event = _push_event(registry, f"station-b/{spec.id}", "result-1", record["result_digest"])
    assert router.handle_push(event) == "collected"
    # station-a never answers: once its hop times out, the train is done with station-b's result.
    router.hop_timeout = timedelta(0)
    assert router.reconcile() == 1
    info = router.train(spec.id)
    assert info["status"] == "done"
    assert [h["state"] for h in info["hops"]] == ["failed", "done"]
    assert info["reason"] == "hop 0 (station-a) timed out"
    tags = set(client.list_tags(f"pht-outbox/{spec.id}"))
    assert "result-1" in tags and "result-0" not in tags
    fetch_results(client, Reference(registry.host, f"pht-outbox/{spec.id}", digest=info["digest"]),
                  spec, parties["alice"].age, tmp_path / "results")  # fmt: skip
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["1-station-b"]


def test_a_parallel_train_fails_when_every_hop_fails(
    router: Router, docker_client: Any, client: Any, registry: Any, parties: Any,
) -> None:  # fmt: skip
    ref, spec = _incoming_train(docker_client, client, registry, parties, mode="parallel")
    info = router.submit(str(ref), parties["alice"].public.pem)
    for hop, name in enumerate(("station-a", "station-b")):
        report = make_report(train_id=spec.id, train_digest=info["digest"], station=name,
                             hop=hop, failure={"error": "NotRun", "message": "rejected"},
                             audit_seq=3, key=parties[name].key)  # fmt: skip
        assert router.station_failure(spec.id, report)["accepted"] is True
    info = router.train(spec.id)
    assert info["status"] == "failed"
    assert info["reason"] == (
        "every hop failed: hop 0 (station-a) failed at the station: rejected; "
        "hop 1 (station-b) failed at the station: rejected"
    )
    assert not client.list_tags(f"pht-outbox/{spec.id}")


def test_an_unreachable_central_service_does_not_change_the_hops_outcome(
    tmp_path: Path, parties: Any
) -> None:
    """Reporting is best effort: the audit record stands, the reason is said, nothing raises."""
    nobody = f"http://127.0.0.1:{free_port()}"
    station = make_station(tmp_path / "s", parties["station-a"], "127.0.0.1:5000",
                           creators=[parties["alice"].public.pem],
                           approvers=[parties["reviewer"].public.pem],
                           overrides={"central": {"url": nobody}})  # fmt: skip
    said: list[str] = []
    record = record_step(station.config(), reference="127.0.0.1:5000/station-a/t1:train",
                         verified=None, executed=None,
                         failure={"error": "RegistryError", "message": "registry down"},
                         logger=said.append)  # fmt: skip
    assert record["outcome"] == "failure"
    assert said == [
        "could not report the failed hop to the central service: cannot reach the central "
        f"service at {station.config().central_url}: ConnectionError"
    ]


def _station_c_args(served: str, parties: Any, tmp_path: Path) -> list[str]:
    keys = tmp_path / "keys-c"
    keys.mkdir(exist_ok=True)
    (keys / "c.pub").write_text(parties["station-c"].public.pem)
    (keys / "c.age.pub").write_text(parties["station-c"].age.recipient + "\n")
    return ["central", "stations", "add", "--central", served, "--id", "station-c",
            "--key", str(keys / "c.pub"), "--recipient-file", str(keys / "c.age.pub")]  # fmt: skip


def test_stations_add_provision_creates_project_robot_and_webhook_then_registers(
    served: str, harbor: Any, parties: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Onboarding in one command against the Harbor stand-in: the robot's secret lands only in
    its 0600 file (never in the output), a second run changes nothing, and the station is in
    the directory."""
    from support.harbor_standin import ADMIN_PASSWORD

    standin, harbor_url = harbor
    hook_secret = "hook-" + uuid.uuid4().hex
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    monkeypatch.setenv("PHT_REGISTRY_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("PHT_WEBHOOK_SECRET", hook_secret)
    secret_file = tmp_path / "robots" / "station-c.secret"
    hook = "https://airflow.station-c.example.org/pht/registry-events"
    args = _station_c_args(served, parties, tmp_path) + [
        "--provision", "--harbor-url", harbor_url, "--username", "admin",
        "--webhook-url", hook, "--robot-secret-file", str(secret_file)]  # fmt: skip
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output

    robot = standin.robots["robot$station-station-c+station-c"]
    assert [p["namespace"] for p in robot.body["permissions"]] == ["station-station-c"]
    assert secret_file.read_text() == robot.secret + "\n"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    [policy] = standin.policies["station-station-c"]
    assert policy["targets"][0]["address"] == hook
    for output in (first.output, again.output):
        for secret in (robot.secret, hook_secret, ADMIN_PASSWORD):
            assert secret not in output
    assert "robot" in again.output and "already there" in again.output
    assert len(standin.robots) == 1
    listed = requests.get(f"{served}/stations", timeout=10).json()
    assert "station-c" in [s["id"] for s in listed]


def test_stations_add_provision_needs_a_webhook_url_and_registers_nothing(
    served: str, parties: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    args = _station_c_args(served, parties, tmp_path) + ["--provision", "--harbor-url",
                                                         "https://harbor.example.org"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "--provision needs --webhook-url" in result.output
    listed = requests.get(f"{served}/stations", timeout=10).json()
    assert "station-c" not in [s["id"] for s in listed]


def test_stations_add_provision_needs_a_registry_and_registers_nothing(
    served: str, parties: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHT_CENTRAL_TOKEN", TOKEN)
    hook = "https://airflow.station-c.example.org/pht/events"
    args = _station_c_args(served, parties, tmp_path) + ["--provision", "--webhook-url", hook]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "--provision needs --harbor-url (Harbor) or --registry HOST" in result.output
    listed = requests.get(f"{served}/stations", timeout=10).json()
    assert "station-c" not in [s["id"] for s in listed]
