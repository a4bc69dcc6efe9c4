"""Verification (``station/verify.py``): every check refuses before the container runs.

Real engine, real registry. For every verification check the tamper matrix shows that the hop
fails at verify with that check's error, that no sandbox container was ever created, that
nothing was pushed, and that the audit log names the check; each case runs twice, once through
``run_hop`` (what ``pht station run`` calls) and once as a ``pht_run_train`` DAG run under
``dag.test()`` (verify failed, run and seal upstream_failed, record audited the failure).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.stationkit import (
    build_train,
    make_train_spec,
    repository_tags,
    sign_train,
    signed_train,
)

from pht_airflow.errors import (
    AlreadyDoneError,
    ChainError,
    ExpiredError,
    InvalidManifestError,
    InvalidSpecError,
    NotOnRouteError,
    PolicyError,
    RouteKeyMismatchError,
    TooFewApprovalsError,
    UnsignedError,
    UntrustedCreatorError,
    UntrustedSignatureError,
)
from pht_airflow.oci import Reference
from pht_airflow.station.audit import AuditLog
from pht_airflow.station.hop import run_hop

pytestmark = [pytest.mark.registry, pytest.mark.docker]


def _sandbox_creates(docker_client: Any, since: float, repository: str) -> list[Any]:
    """Sandbox containers created since ``since`` for the train in ``repository``."""
    train_id = repository.rsplit("/", 1)[-1]
    events = docker_client.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": "org.pht.sandbox"},
        decode=True,
    )
    return [
        e
        for e in events
        if e.get("timeNano", 0) / 1e9 >= since
        and train_id[:8] in e.get("Actor", {}).get("Attributes", {}).get("name", "")
    ]


@dataclasses.dataclass
class Refusal:
    """What a refused hop reported: the error class name, check, digest, key id, message."""

    error: str
    check: str
    digest: str | None
    key_id: str | None
    message: str

    def __str__(self) -> str:
        return self.message


@pytest.fixture(scope="module")
def run_train_dag(airflow_db: Path) -> Any:
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("pht_run_train_dag_matrix",
                                                  REPO / "dags" / "pht_run_train.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.fixture(params=["hop", "dag"])
def refuse(request: pytest.FixtureRequest, docker_client: Any, client: Any,
           monkeypatch: pytest.MonkeyPatch) -> Any:  # fmt: skip
    """Run a hop that must be refused at verify, as ``pht station run`` does (``hop``) or as
    the ``pht_run_train`` DAG does under ``dag.test()`` (``dag``), and check that it failed at
    verify with the check's error, that no sandbox container was created, that nothing was
    pushed, and that the audit log names the check."""

    def check_refused(station: Any, reference: str, error: type, check: str) -> Refusal:
        repository = Reference.parse(reference).repository
        tags_before = repository_tags(client, repository)
        since = time.time()
        if request.param == "hop":
            with pytest.raises(error) as info:
                run_hop(station.config(), reference, docker_client=docker_client)
            assert info.value.check == check
        else:
            dag = request.getfixturevalue("run_train_dag")
            monkeypatch.setenv("PHT_STATION_CONFIG", str(station.config_path))
            run = dag.test(run_conf={"train": reference, "rerun": False})
            states = {ti.task_id: ti.state for ti in run.get_task_instances()}
            assert run.state == "failed", states
            assert states["verify"] == "failed", states
            assert states["run"] == states["seal"] == "upstream_failed", states
            assert states["record"] == "failed", states  # recorded, then failed the run
        assert _sandbox_creates(docker_client, since, repository) == []
        assert repository_tags(client, repository) == tags_before
        # The hop's record (a sweep may have audited what it removed after it).
        hops = [r for r in AuditLog(station.audit_path).entries() if r.get("event") == "hop"]
        last = hops[-1]
        assert last["outcome"] == "failure"
        assert last["failed_check"] == check
        failure = last["failure"]
        assert failure["error"] == error.__name__
        if request.param == "hop":
            assert failure["message"] == str(info.value)
        return Refusal(failure["error"], failure["check"], failure.get("digest"),
                       failure.get("key_id"), failure["message"])  # fmt: skip

    return check_refused


def test_invalid_spec(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    spec = make_train_spec(parties, ["station-a"])
    ref = Reference(registry.host, f"station-a/{spec.id}", tag="train")
    broken = json.loads(spec.to_canonical_json())
    broken["route"][0]["recipient"] = "age1notarecipient"
    broken["surprise"] = True
    from pht_airflow.spec import canonical_json

    spec_text = canonical_json(broken)
    fake = type("S", (), {"to_canonical_json": lambda self: spec_text})()
    digest = build_train(docker_client, ref, fake)
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    err = refuse(stations["station-a"], str(ref),
                          InvalidSpecError, "spec")  # fmt: skip
    assert "unknown field 'surprise'" in str(err)


def test_unsigned(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    signers=())  # fmt: skip
    refuse(stations["station-a"], str(ref), UnsignedError, "signed")


def test_signed_only_by_an_untrusted_key(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    signers=("mallory",))  # fmt: skip
    err = refuse(stations["station-a"], str(ref),
                          UntrustedSignatureError, "signature-trusted")  # fmt: skip
    assert err.key_id == parties["mallory"].key.key_id


def test_creator_untrusted(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    # Approved by a trusted reviewer, but the creator's signature is missing.
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    signers=("reviewer",))  # fmt: skip
    err = refuse(stations["station-a"], str(ref),
                          UntrustedCreatorError, "creator")  # fmt: skip
    assert err.key_id == parties["alice"].key.key_id


def test_too_few_approvals(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    signers=("alice",))  # fmt: skip
    err = refuse(stations["station-a"], str(ref),
                          TooFewApprovalsError, "approvals")  # fmt: skip
    assert "0 approval(s)" in str(err)


def test_station_not_on_route(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a",
                    ["station-b", "station-c"])  # fmt: skip
    refuse(stations["station-a"], str(ref), NotOnRouteError,
                    "route")  # fmt: skip


def test_route_key_is_not_this_stations_key(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    mallory = parties["mallory"]

    def change(spec: Any) -> dict[str, Any]:
        entry = dataclasses.replace(spec.route[0], key=mallory.public.pem)
        return {"route": (entry,)}

    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    change=change)  # fmt: skip
    err = refuse(stations["station-a"], str(ref),
                          RouteKeyMismatchError, "route-key")  # fmt: skip
    assert err.key_id == mallory.key.key_id


def test_expired(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)

    def change(spec: Any) -> dict[str, Any]:
        return {"created": past, "expires": past + timedelta(days=1)}

    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"],
                    change=change)  # fmt: skip
    refuse(stations["station-a"], str(ref), ExpiredError, "expired")


def test_already_done(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    run_hop(stations["station-a"].config(), str(ref), docker_client=docker_client)
    refuse(stations["station-a"], str(ref), AlreadyDoneError,
                    "already-done")  # fmt: skip


def test_chain_broken(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    # Hop 1 at station-b, but hop 0 never ran: there is no result-0.
    ref, _ = signed_train(docker_client, client, registry, parties, "station-b",
                    ["station-a", "station-b"])  # fmt: skip
    err = refuse(stations["station-b"], str(ref), ChainError,
                          "chain")  # fmt: skip
    assert "hop 0 (station-a)" in str(err)


def test_retagged_after_signing(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    ref, spec = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    signed_digest = client.resolve(ref.repository, "train")
    other = build_train(docker_client, ref, spec, script="print('something else')\n")
    assert other != signed_digest
    err = refuse(stations["station-a"], str(ref), UnsignedError,
                          "signed")  # fmt: skip
    assert err.digest == other


def _repushed(client: Any, ref: Reference, edit_config: Any = None, edit_manifest: Any = None,
              ) -> str:  # fmt: skip
    """Push ``ref``'s image again under its tag, its config and manifest JSON text edited
    (bytes a tool could push; the registry stores them as sent); the new digest."""
    manifest = client.get_manifest(ref.repository, "train")
    assert manifest.config is not None
    config_text = client.get_blob(ref.repository, manifest.config.digest).decode()
    if edit_config is not None:
        config_text = edit_config(config_text)
    config = client.upload_bytes(ref.repository, config_text.encode(), manifest.config.media_type)
    text = manifest.raw.decode().replace(manifest.config.digest, config.digest)
    text = re.sub(rf'"size"\s*:\s*{manifest.config.size}\b', f'"size": {config.size}', text,
                  count=1)  # the config's, which comes first  # fmt: skip
    if edit_manifest is not None:
        text = edit_manifest(text)
    return str(client.put_manifest(ref.repository, "train", text.encode(), manifest.media_type))


def test_a_command_spelt_in_another_case_is_refused_before_anything_runs(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any, refuse: Any
) -> None:
    """Go's encoding/json (the Docker engine's) reads ``"cmd"`` as ``Cmd``, the last one
    winning: an approver shown ``Cmd`` would approve code the engine never runs. The
    signatures are over the edited image; only the spelling is refused."""
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    digest = _repushed(client, ref, edit_config=lambda text: text.replace(
        '"Cmd":', '"cmd":["python","-c","print(1)"],"Cmd":', 1))  # fmt: skip
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    err = refuse(stations["station-a"], str(ref), InvalidSpecError, "spec")
    assert err.digest == digest
    assert (
        "the image config is ambiguous: the key 'cmd' in config is Cmd in another case, which "
        "the Docker engine reads as Cmd and an exact reader does not"
    ) in str(err)


def test_layers_spelt_in_another_case_are_refused(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any
) -> None:
    """A manifest that names its layers twice, as ``"Layers"`` and ``"layers"`` (the engine
    keeps the last of the two, an exact reader ``"layers"``), is refused when the station
    reads it, before any container."""
    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    digest = _repushed(client, ref, edit_manifest=lambda text: re.sub(
        r'"layers"\s*:', '"Layers":[],"layers":', text, count=1))  # fmt: skip
    sign_train(client, ref.with_digest(digest), parties, "alice", "reviewer")
    since = time.time()
    with pytest.raises(InvalidManifestError) as info:
        run_hop(stations["station-a"].config(), str(ref), docker_client=docker_client)
    assert f"manifest {digest} is ambiguous: the key 'Layers' is layers in another case" in str(
        info.value
    )
    assert _sandbox_creates(docker_client, since, ref.repository) == []


def test_train_from_another_project_is_refused(docker_client: Any, client: Any, registry: Any,
                                               parties: Any, stations: Any) -> None:  # fmt: skip
    ref, _ = signed_train(docker_client, client, registry, parties, "station-b", ["station-a"])
    with pytest.raises(PolicyError, match="not in this station's project"):
        run_hop(stations["station-a"].config(), str(ref), docker_client=docker_client)


def test_passed_checks_read_as_statements(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any
) -> None:
    """A train that passes: each check as it passes (the ids the audit log keeps) reads as a
    statement of what holds, in order; none reads like a failure ("expired")."""
    from pht_airflow.station.verify import CHECKS, Trust, check_statement, verify_train

    ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
    config = stations["station-a"].config()
    passed: list[str] = []
    verified = verify_train(
        client, ref, station_id="station-a", station_key=config.public_key,
        trust=Trust(config.trust.creators, config.trust.approvers, 1), on_check=passed.append,
    )  # fmt: skip
    assert passed == verified.passed == list(CHECKS)
    assert [check_statement(c) for c in passed] == [
        "pinned to its digest", "train spec valid", "signatures valid", "creator trusted",
        "enough trusted approvals", "this station is on the route",
        "route names this station's key", "not expired", "not run here before",
        "earlier hops' results verified",
    ]  # fmt: skip
