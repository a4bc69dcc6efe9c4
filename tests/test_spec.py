"""The train spec (PROTOCOL.md "The train"): validation, canonical JSON, recipients per hop,
and reading the spec label from a real registry without pulling a layer."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import NotFoundError, SpecError
from pht_airflow.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Reference,
    RegistryClient,
)
from pht_airflow.protocol import TRAIN_LABEL
from pht_airflow.spec import TrainSpec, canonical_json, format_time, read_spec

STATIONS = ("station-a", "station-b", "station-c")
FIELDS = (
    "version",
    "id",
    "name",
    "creator",
    "mode",
    "route",
    "result_recipients",
    "results_visibility",
    "dataset",
    "created",
    "expires",
)


def make_spec_dict(parties: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A valid version-1 spec: alice creates, stations a, b, c in order."""
    now = datetime.now(UTC)
    alice = parties["alice"]
    data: dict[str, Any] = {
        "version": 1,
        "id": str(uuid.uuid4()),
        "name": "age-histogram",
        "creator": {"id": "alice", "key": alice.key.key_id, "recipient": alice.age.recipient},
        "mode": "sequential",
        "route": [
            {
                "station": s,
                "key": parties[s].public.pem,
                "recipient": parties[s].age.recipient,
            }
            for s in STATIONS
        ],
        "result_recipients": [alice.age.recipient],
        "results_visibility": "final",
        "dataset": "cohort-2024",
        "created": format_time(now - timedelta(hours=1)),
        "expires": format_time(now + timedelta(days=30)),
    }
    data.update(overrides)
    return data


def problems_of(data: Any, **kwargs: Any) -> list[str]:
    """The problems :meth:`TrainSpec.from_dict` lists for ``data`` (it must refuse it)."""
    with pytest.raises(SpecError) as info:
        TrainSpec.from_dict(data, **kwargs)
    assert info.value.problems, "a SpecError must list at least one problem"
    for problem in info.value.problems:
        assert problem in str(info.value)
    return info.value.problems


def only_problem(data: Any, **kwargs: Any) -> str:
    problems = problems_of(data, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def _p384_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- a valid spec ------------------------------------------------------------------------------


def test_valid_spec_round_trips(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    original = copy.deepcopy(data)
    spec = TrainSpec.from_dict(data)
    assert spec.to_dict() == data
    assert data == original  # from_dict does not modify its input
    assert spec.id == data["id"]
    assert spec.creator.key == parties["alice"].key.key_id
    assert [r.station for r in spec.route] == list(STATIONS)
    assert spec.route[1].key_id == parties["station-b"].key.key_id
    assert spec.created.tzinfo is not None and spec.expires.utcoffset() == timedelta(0)
    assert format_time(spec.created) == data["created"]
    assert not spec.is_expired()
    assert TrainSpec.from_json(spec.to_canonical_json()) == spec


def test_parallel_and_all_are_valid(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties, mode="parallel", results_visibility="all")
    assert TrainSpec.from_dict(data).to_dict() == data


def test_canonical_json(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    spec = TrainSpec.from_dict(data)
    text = spec.to_canonical_json()
    expected = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert text == expected
    assert text == canonical_json(data)
    assert json.loads(text) == data
    # no whitespace outside string values (the PEMs hold spaces, escaped newlines)
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    assert not re.search(r"\s", outside_strings)
    assert "\n" not in text
    assert text.startswith('{"created":')  # keys sorted
    # stable: the same spec, however its dict was ordered, gives the same bytes
    reordered = dict(reversed(list(data.items())))
    reordered["creator"] = dict(reversed(list(data["creator"].items())))
    assert TrainSpec.from_dict(reordered).to_canonical_json() == text
    assert TrainSpec.from_json(text).to_canonical_json() == text
    assert spec.to_canonical_json() == text


def test_canonical_json_keeps_unicode() -> None:
    assert canonical_json({"b": "ä", "a": [1, 2]}) == '{"a":[1,2],"b":"ä"}'


# --- rejections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, True, None])
def test_unknown_version(parties: dict[str, Any], version: Any) -> None:
    problem = only_problem(make_spec_dict(parties, version=version))
    assert problem.startswith(f"unknown spec version {version!r}")
    assert "version 1" in problem


def test_missing_version(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    del data["version"]
    assert only_problem(data).startswith("unknown spec version None")


def test_unknown_top_level_field(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties, extra="x")
    assert only_problem(data) == "unknown field 'extra'"


def test_unknown_field_in_route_entry(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][1]["port"] = 5000
    assert only_problem(data) == "unknown field 'route[1].port'"


def test_unknown_field_in_creator(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["creator"]["email"] = "alice@example.org"
    assert only_problem(data) == "unknown field 'creator.email'"


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "version"])
def test_missing_field(parties: dict[str, Any], field: str) -> None:
    data = make_spec_dict(parties)
    del data[field]
    assert f"missing field {field!r}" in problems_of(data)


def test_missing_field_in_route_entry(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    del data["route"][0]["recipient"]
    assert only_problem(data) == "route[0].recipient must be an age recipient string"


def test_empty_route(parties: dict[str, Any]) -> None:
    assert only_problem(make_spec_dict(parties, route=[])) == (
        "route must be a non-empty list of stations"
    )


def test_route_not_a_list(parties: dict[str, Any]) -> None:
    problem = only_problem(make_spec_dict(parties, route={"station": "station-a"}))
    assert problem == "route must be a non-empty list of stations"


def test_duplicate_station(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][2] = dict(data["route"][0])
    assert only_problem(data) == "route[2].station 'station-a' appears more than once"


def test_bad_station_name(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][0]["station"] = "Station A"
    assert only_problem(data).startswith("route[0].station 'Station A' is not allowed")


def test_bad_key_pem_garbage(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][0]["key"] = "not a key at all"
    problem = only_problem(data)
    assert problem.startswith("route[0].key: expected a PEM public key")
    assert "not a key file pht knows" in problem


def test_bad_key_pem_truncated(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][1]["key"] = parties["station-b"].public.pem[:100]
    assert only_problem(data).startswith("route[1].key: the public key PEM is truncated or corrupt")


def test_bad_key_pem_p384(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][2]["key"] = _p384_pem()
    assert only_problem(data) == "route[2].key: the public key is not ECDSA P-256"


def test_bad_key_private_pem(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][0]["key"] = parties["station-a"].key.private_pem(b"pw").decode()
    problem = only_problem(data)
    assert "expected a PEM public key" in problem
    assert "signing private key" in problem
    assert "ENCRYPTED" not in problem


def test_key_not_a_string(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["route"][0]["key"] = 42
    assert only_problem(data) == "route[0].key must be a PEM public key string"


@pytest.mark.parametrize("value", ["garbage", "age1", "age1" + "x" * 58, "age1" + "q" * 58])
def test_bad_route_recipient(parties: dict[str, Any], value: str) -> None:
    data = make_spec_dict(parties)
    data["route"][1]["recipient"] = value
    problem = only_problem(data)
    assert problem.startswith("route[1].recipient: ")
    assert "age recipient" in problem or "age X25519 recipient" in problem


def test_bad_result_recipient(parties: dict[str, Any]) -> None:
    alice = parties["alice"].age.recipient
    data = make_spec_dict(parties, result_recipients=[alice, "age1junk"])
    assert only_problem(data).startswith("result_recipients[1]: 'age1junk'")


def test_duplicate_result_recipient(parties: dict[str, Any]) -> None:
    alice = parties["alice"].age.recipient
    data = make_spec_dict(parties, result_recipients=[alice, alice])
    assert only_problem(data) == "result_recipients[1] is listed twice"


def test_empty_result_recipients(parties: dict[str, Any]) -> None:
    problem = only_problem(make_spec_dict(parties, result_recipients=[]))
    assert problem == "result_recipients must be a non-empty list of age recipients"


def test_creator_recipient_not_among_result_recipients(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties, result_recipients=[parties["reviewer"].age.recipient])
    assert only_problem(data) == "result_recipients must include the creator's recipient"


def test_bad_creator_key_id(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    data["creator"]["key"] = "sha256:ABC"
    assert only_problem(data).startswith("creator.key 'sha256:ABC' is not allowed")


def test_expired(parties: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    data = make_spec_dict(
        parties,
        created=format_time(now - timedelta(days=60)),
        expires=format_time(now - timedelta(days=30)),
    )
    assert only_problem(data) == f"the train expired at {data['expires']}"
    spec = TrainSpec.from_dict(data, check_expiry=False)
    assert spec.is_expired()
    assert not spec.is_expired(now - timedelta(days=45))
    # as of a moment before expiry it is valid
    TrainSpec.from_dict(data, now=now - timedelta(days=45))


def test_expiry_against_now(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties)
    spec = TrainSpec.from_dict(data)
    later = spec.expires + timedelta(seconds=1)
    assert only_problem(data, now=later) == f"the train expired at {data['expires']}"
    assert only_problem(data, now=spec.expires) == f"the train expired at {data['expires']}"
    TrainSpec.from_dict(data, now=spec.expires - timedelta(seconds=1))
    assert TrainSpec.from_dict(data, now=later, check_expiry=False) == spec
    with pytest.raises(SpecError, match="expired"):
        TrainSpec.from_json(spec.to_canonical_json(), now=later)


def test_created_after_expires(parties: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    created, expires = format_time(now + timedelta(days=40)), format_time(now + timedelta(days=30))
    data = make_spec_dict(parties, created=created, expires=expires)
    assert only_problem(data) == f"created ({created}) is not before expires ({expires})"
    same = make_spec_dict(parties, created=expires, expires=expires)
    assert "is not before expires" in only_problem(same)


@pytest.mark.parametrize(
    "value", ["2026-11-22 12:00:00", "2026-11-22T12:00:00+00:00", "2026-11-22T12:00:00.5Z", 17]
)
def test_bad_time_format(parties: dict[str, Any], value: Any) -> None:
    problem = only_problem(make_spec_dict(parties, created=value))
    assert problem == "created must be a UTC time like 2026-11-22T12:00:00Z"


def test_impossible_date(parties: dict[str, Any]) -> None:
    problem = only_problem(make_spec_dict(parties, created="2026-02-30T00:00:00Z"))
    assert problem == "created '2026-02-30T00:00:00Z' is not a real date and time"


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid1()),
        str(uuid.uuid4()).upper(),
        uuid.uuid4().hex,
        "{" + str(uuid.uuid4()) + "}",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_bad_id(parties: dict[str, Any], value: str) -> None:
    assert only_problem(make_spec_dict(parties, id=value)) == (
        f"id {value!r} must be a lowercase UUID version 4"
    )


def test_empty_id(parties: dict[str, Any]) -> None:
    assert only_problem(make_spec_dict(parties, id="")) == "id must be a non-empty string"


@pytest.mark.parametrize("value", ["round-robin", "Sequential", "", None])
def test_bad_mode(parties: dict[str, Any], value: Any) -> None:
    problem = only_problem(make_spec_dict(parties, mode=value))
    assert problem == f"mode {value!r} must be one of sequential, parallel"


@pytest.mark.parametrize("value", ["some", "none", None])
def test_bad_visibility(parties: dict[str, Any], value: Any) -> None:
    problem = only_problem(make_spec_dict(parties, results_visibility=value))
    assert problem == f"results_visibility {value!r} must be one of final, all"


def test_bad_name_and_dataset(parties: dict[str, Any]) -> None:
    problems = problems_of(make_spec_dict(parties, name="", dataset="../etc/passwd"))
    assert "name must be a non-empty string" in problems
    assert any(p.startswith("dataset '../etc/passwd' is not allowed") for p in problems)
    assert len(problems) == 2


def test_several_problems_in_one_error(parties: dict[str, Any]) -> None:
    data = make_spec_dict(parties, mode="loop", results_visibility="some", id="x", extra=1)
    data["route"][1]["recipient"] = "age1junk"
    data["route"].append(dict(data["route"][0]))
    with pytest.raises(SpecError) as info:
        TrainSpec.from_dict(data, source="train.json")
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = str(info.value)
    assert text.startswith("invalid train spec in train.json (6 problems):")
    for expected in (
        "unknown field 'extra'",
        "id 'x' must be a lowercase UUID version 4",
        "mode 'loop' must be one of sequential, parallel",
        "results_visibility 'some' must be one of final, all",
        "route[3].station 'station-a' appears more than once",
    ):
        assert expected in problems
        assert f"  - {expected}" in text
    assert any(p.startswith("route[1].recipient: 'age1junk'") for p in problems)
    assert info.value.source == "train.json"


def test_not_an_object_and_not_json() -> None:
    with pytest.raises(SpecError, match="expected a JSON object, got list"):
        TrainSpec.from_dict([1, 2])
    with pytest.raises(SpecError, match="not valid JSON") as info:
        TrainSpec.from_json("{not json", source="label")
    assert str(info.value).startswith("invalid train spec in label: not valid JSON")


# --- recipients per hop --------------------------------------------------------------------------


def test_recipients_sequential_final(parties: dict[str, Any]) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    alice = parties["alice"].age.recipient
    assert spec.recipients_for_hop(0) == [parties["station-b"].age.recipient]
    assert spec.recipients_for_hop(1) == [parties["station-c"].age.recipient]
    assert spec.recipients_for_hop(2) == [alice]


def test_recipients_sequential_all(parties: dict[str, Any]) -> None:
    alice = parties["alice"].age.recipient
    reviewer = parties["reviewer"].age.recipient
    b = parties["station-b"].age.recipient
    c = parties["station-c"].age.recipient
    # station-b also reads final results: it must appear once, not twice
    data = make_spec_dict(parties, results_visibility="all", result_recipients=[alice, b])
    spec = TrainSpec.from_dict(data)
    assert spec.recipients_for_hop(0) == [b, alice]
    assert spec.recipients_for_hop(1) == [c, alice, b]
    assert spec.recipients_for_hop(2) == [alice, b]
    spec2 = TrainSpec.from_dict(
        make_spec_dict(parties, results_visibility="all", result_recipients=[alice, reviewer])
    )
    assert spec2.recipients_for_hop(0) == [b, alice, reviewer]


@pytest.mark.parametrize("visibility", ["final", "all"])
def test_recipients_parallel(parties: dict[str, Any], visibility: str) -> None:
    alice = parties["alice"].age.recipient
    reviewer = parties["reviewer"].age.recipient
    data = make_spec_dict(
        parties,
        mode="parallel",
        results_visibility=visibility,
        result_recipients=[alice, reviewer],
    )
    spec = TrainSpec.from_dict(data)
    for hop in range(len(STATIONS)):
        assert spec.recipients_for_hop(hop) == [alice, reviewer]
    station_recipients = {parties[s].age.recipient for s in STATIONS}
    assert not station_recipients & set(spec.recipients_for_hop(0))


def test_recipients_for_hop_off_the_route(parties: dict[str, Any]) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    for hop in (-1, 3, 10):
        with pytest.raises(IndexError, match=f"hop {hop} is not on the route"):
            spec.recipients_for_hop(hop)


def test_hop_of_and_is_last_hop(parties: dict[str, Any]) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    assert [spec.hop_of(s) for s in STATIONS] == [0, 1, 2]
    assert spec.hop_of("station-z") is None
    assert spec.hop_of("alice") is None
    assert [spec.is_last_hop(h) for h in range(3)] == [False, False, True]
    single = make_spec_dict(parties)
    single["route"] = single["route"][:1]
    one = TrainSpec.from_dict(single)
    assert one.is_last_hop(0)
    assert one.recipients_for_hop(0) == [parties["alice"].age.recipient]


# --- read_spec against the real registry ---------------------------------------------------------


def _tiny_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = os.urandom(16).hex().encode()
        info = tarfile.TarInfo("marker")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def push_image(
    client: RegistryClient, repository: str, labels: dict[str, str] | None, tag: str = "train"
) -> tuple[str, Descriptor]:
    """Push a one-layer OCI image whose config carries ``labels``; return digest and layer."""
    layer = client.upload_bytes(repository, _tiny_layer(), "application/vnd.oci.image.layer.v1.tar")
    inner: dict[str, Any] = {"Cmd": ["/bin/true"]}
    if labels is not None:
        inner["Labels"] = labels
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }
    config_desc = client.upload_bytes(repository, json.dumps(config).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_dict(),
        "layers": [layer.to_dict()],
    }
    digest = client.put_manifest(repository, tag, json.dumps(manifest).encode(), OCI_MANIFEST)
    return digest, layer


@pytest.fixture()
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.host) as c:
        yield c


def _repo() -> str:
    return f"pht-incoming/{uuid.uuid4()}"


@pytest.mark.registry
def test_read_spec(
    registry: LocalRegistry, client: RegistryClient, parties: dict[str, Any]
) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    repo = f"pht-incoming/{spec.id}"
    digest, _ = push_image(client, repo, {TRAIN_LABEL: spec.to_canonical_json(), "other": "x"})
    got, got_digest = read_spec(client, Reference(registry.host, repo, tag="train"))
    assert got == spec
    assert got_digest == digest
    pinned, pinned_digest = read_spec(client, Reference(registry.host, repo, digest=digest))
    assert pinned == spec and pinned_digest == digest


@pytest.mark.registry
def test_read_spec_fetches_no_layer(
    registry: LocalRegistry, client: RegistryClient, parties: dict[str, Any]
) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    repo = _repo()
    digest, layer = push_image(client, repo, {TRAIN_LABEL: spec.to_canonical_json()})
    client.delete_blob(repo, layer.digest)
    assert client.blob_size(repo, layer.digest) is None
    with pytest.raises(NotFoundError):
        client.get_blob(repo, layer.digest)
    got, got_digest = read_spec(client, Reference(registry.host, repo, tag="train"))
    assert got == spec and got_digest == digest


@pytest.mark.registry
def test_read_spec_without_label(registry: LocalRegistry, client: RegistryClient) -> None:
    repo = _repo()
    for labels in (None, {"maintainer": "someone"}):
        digest, _ = push_image(client, repo, labels)
        with pytest.raises(SpecError) as info:
            read_spec(client, Reference(registry.host, repo, tag="train"))
        assert info.value.problems == [f"the image has no {TRAIN_LABEL} label: it is not a train"]
        assert digest in str(info.value)


@pytest.mark.registry
def test_read_spec_invalid_label(
    registry: LocalRegistry, client: RegistryClient, parties: dict[str, Any]
) -> None:
    repo = _repo()
    data = make_spec_dict(parties, mode="loop", results_visibility="some")
    digest, _ = push_image(client, repo, {TRAIN_LABEL: canonical_json(data)})
    with pytest.raises(SpecError) as info:
        read_spec(client, Reference(registry.host, repo, tag="train"))
    assert info.value.problems == [
        "mode 'loop' must be one of sequential, parallel",
        "results_visibility 'some' must be one of final, all",
    ]
    assert info.value.source == f"{registry.host}/{repo}@{digest}"

    push_image(client, repo, {TRAIN_LABEL: "{not json"}, tag="broken")
    with pytest.raises(SpecError, match="not valid JSON"):
        read_spec(client, Reference(registry.host, repo, tag="broken"))


@pytest.mark.registry
def test_read_spec_expired(
    registry: LocalRegistry, client: RegistryClient, parties: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    data = make_spec_dict(
        parties,
        created=format_time(now - timedelta(days=60)),
        expires=format_time(now - timedelta(days=30)),
    )
    repo = _repo()
    digest, _ = push_image(client, repo, {TRAIN_LABEL: canonical_json(data)})
    ref = Reference(registry.host, repo, tag="train")
    with pytest.raises(SpecError) as info:
        read_spec(client, ref)
    assert info.value.problems == [f"the train expired at {data['expires']}"]
    spec, got_digest = read_spec(client, ref, check_expiry=False)
    assert spec.to_dict() == data and got_digest == digest
    spec2, _ = read_spec(client, ref, now=now - timedelta(days=45))
    assert spec2 == spec


@pytest.mark.registry
def test_read_spec_refuses_an_index(
    registry: LocalRegistry, client: RegistryClient, parties: dict[str, Any]
) -> None:
    spec = TrainSpec.from_dict(make_spec_dict(parties))
    repo = _repo()
    digest, _ = push_image(client, repo, {TRAIN_LABEL: spec.to_canonical_json()})
    raw_manifest = client.get_manifest(repo, digest).raw
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(raw_manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    client.put_manifest(repo, "multi", json.dumps(index).encode(), OCI_INDEX)
    with pytest.raises(SpecError, match="not a single image manifest"):
        read_spec(client, Reference(registry.host, repo, tag="multi"))
