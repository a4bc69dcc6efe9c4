"""Sealed results on the real registry: round trips, and every rule of "The chain".

Covers ``pht_airflow/results/artifact.py`` (seal, open, fetch) and, on artifacts it seals,
``pht_airflow/results/chain.py``.

Each rejection test builds the forgery an attacker with write access to a station project
could build (copying, re-tagging, re-signing artifacts) and checks that verification names
the hop, the station and the reason.

The hostile-result tests (end of file) publish what a compromised station could sign (every
archive of ``support/hostile_tar.py``, bad configs, lying lengths) and what a registry could
serve (a swapped layer), and check that ``pht results fetch``'s path and a station's path
refuse each with a clean error and nothing written, with peak memory measured in a child.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from support.hostile_tar import CASES, large_pax_stream
from support.stationkit import sandbox_containers, signed_train

from pht_airflow.attestation import attest, attestation_tag, hop_predicate, verify_attestation
from pht_airflow.errors import (
    ChainError,
    DigestMismatchError,
    PhtError,
    UnsafeArchiveError,
    VerificationError,
)
from pht_airflow.oci import OCI_MANIFEST, Reference, RegistryClient
from pht_airflow.protocol import RESULT_CONFIG_MEDIA_TYPE, RESULT_MEDIA_TYPE, TRAIN_LABEL
from pht_airflow.researcher.train import StationInfo, make_spec
from pht_airflow.results.archive import TarStream, plan_tar, tar_bytes, tar_size
from pht_airflow.results.artifact import fetch_results, open_result, push_result, seal
from pht_airflow.results.chain import verify_chain
from pht_airflow.results.crypt import decrypt_stream, encrypt_stream
from pht_airflow.signing import signature_tag
from pht_airflow.spec import TrainSpec
from pht_airflow.station.audit import AuditLog
from pht_airflow.station.hop import run_hop

pytestmark = [pytest.mark.registry, pytest.mark.docker]

STATIONS = ("station-a", "station-b", "station-c")


@dataclasses.dataclass
class Train:
    ref: Reference
    spec: TrainSpec
    manifest: Any


@pytest.fixture()
def client(registry: Any) -> Any:
    with RegistryClient(registry.host) as c:
        yield c


@pytest.fixture()
def new_train(build_and_push: Any, client: Any, parties: Any) -> Any:
    """A factory for a fresh signed-spec train in its own repository."""

    def factory(mode: str = "sequential") -> Train:
        spec = make_spec(
            name="sealing-test",
            creator_id="alice",
            creator_key_id=parties["alice"].key.key_id,
            creator_recipient=parties["alice"].age.recipient,
            recipients=[parties["reviewer"].age.recipient],
            route=[
                StationInfo(s, parties[s].public.pem, parties[s].age.recipient) for s in STATIONS
            ],
            mode=mode,
            dataset="cohort",
        )
        ref = build_and_push(
            f"station-test/{spec.id}", "train", labels={TRAIN_LABEL: spec.to_canonical_json()}
        )
        return Train(ref, spec, client.get_manifest(ref.repository, ref.digest))

    return factory


def _output(folder: Path, text: str = "counts") -> Path:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"text": text}))
    return folder


def _seal(client: Any, train: Train, parties: Any, hop: int, previous: str | None, out: Path,
          *, key: str | None = None, spec: TrainSpec | None = None, created: str | None = None,
          ) -> Any:  # fmt: skip
    return seal(
        client,
        train.ref,
        train.manifest,
        spec or train.spec,
        hop=hop,
        output_dir=out,
        key=parties[key or STATIONS[hop]].key,
        previous=previous,
        created=created,
    )


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_two_recipients_third_fails(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    out = tmp_path / "output"
    (out / "nested" / "deeper").mkdir(parents=True)
    (out / "empty-folder").mkdir()
    (out / "empty.txt").write_bytes(b"")
    (out / "nested" / "deeper" / "empty.csv").write_bytes(b"")
    (out / "nested" / "Größe – 统计 ñ.csv").write_text("stage,n\nII,4\n", encoding="utf-8")
    with open(out / "nested" / "big.bin", "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1024 * 1024))
    (out / "summary.json").write_text('{"n": 3}')

    # The last hop is encrypted to the result recipients: alice and the reviewer.
    sealed = _seal(client, train, parties, 2, None, out)
    assert sealed.recipients == [parties["alice"].age.recipient, parties["reviewer"].age.recipient]
    assert sealed.layer.media_type == RESULT_MEDIA_TYPE
    assert sealed.config["plaintext_bytes"] == len(tar_bytes(out))

    for who in ("alice", "reviewer"):
        dest = tmp_path / f"opened-{who}"
        stats = open_result(client, sealed, parties[who].age, dest)
        assert _tree(dest) == _tree(out)
        assert stats.files == 5
    # The plaintext inside the blob is exactly the deterministic tar of the folder.
    plain = b"".join(
        decrypt_stream(
            client.open_blob(train.ref.repository, sealed.layer.digest), parties["alice"].age
        )
    )
    assert plain == tar_bytes(out)

    dest = tmp_path / "opened-mallory"
    with pytest.raises(PhtError, match="not a recipient"):
        open_result(client, sealed, parties["mallory"].age, dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".opened")] == []


def test_sealing_twice_gives_the_same_plaintext(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    out = _output(tmp_path / "out")
    first = _seal(client, train, parties, 2, None, out)
    second = _seal(client, train, parties, 2, None, out)
    assert first.layer.digest != second.layer.digest  # age uses a fresh file key each time
    alice = parties["alice"].age
    repo = train.ref.repository
    plain = [
        b"".join(decrypt_stream(client.open_blob(repo, s.layer.digest), alice))
        for s in (first, second)
    ]
    assert plain[0] == plain[1] == tar_bytes(out)


def test_result_artifact_shape(new_train: Any, client: Any, parties: Any, tmp_path: Path) -> None:
    train = new_train()
    sealed = _seal(client, train, parties, 0, None, _output(tmp_path / "o"))
    manifest = client.get_manifest(train.ref.repository, "result-0")
    assert manifest.digest == sealed.digest
    data = manifest.data
    assert data["mediaType"] == OCI_MANIFEST
    assert data["artifactType"] == "application/vnd.pht.result.v1"
    assert data["subject"]["digest"] == train.ref.digest
    assert data["config"]["mediaType"] == RESULT_CONFIG_MEDIA_TYPE
    assert data["annotations"]["org.pht.hop"] == "0"
    assert data["annotations"]["org.pht.station"] == "station-a"
    config = json.loads(client.get_blob(train.ref.repository, data["config"]["digest"]))
    assert config["train"] == {"id": train.spec.id, "digest": train.ref.digest}
    assert config["previous"] is None
    # Sequential, not last: only the next station can read it.
    assert config["recipients"] == [parties["station-b"].age.recipient]
    sig = client.get_manifest(train.ref.repository, signature_tag(sealed.digest))
    assert len(sig.layers) == 1


def test_valid_chain_and_fetch(new_train: Any, client: Any, parties: Any, tmp_path: Path) -> None:
    train = new_train()
    r0 = _seal(client, train, parties, 0, None, _output(tmp_path / "o0", "a"))
    r1 = _seal(client, train, parties, 1, r0.digest, _output(tmp_path / "o1", "b"))
    r2 = _seal(client, train, parties, 2, r1.digest, _output(tmp_path / "o2", "c"))
    accepted = verify_chain(client, train.ref, train.spec)
    assert [a.digest for a in accepted] == [r0.digest, r1.digest, r2.digest]
    assert [a.station for a in accepted] == list(STATIONS)
    placed = fetch_results(client, train.ref, train.spec, parties["alice"].age, tmp_path / "got")
    # visibility "final": alice reads only the last hop.
    assert [p.name for _, p in placed] == ["2-station-c"]
    assert json.loads((tmp_path / "got" / "2-station-c" / "result.json").read_text()) == {
        "text": "c"
    }


# --- run attestations --------------------------------------------------------------------------


def test_seal_attests_the_result_with_the_callers_predicate(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    predicate = hop_predicate(
        train={"id": train.spec.id, "name": train.spec.name, "digest": train.ref.digest},
        station="station-a", hop=0, dataset={"name": "cohort", "digest": "sha256:" + "1" * 64},
        sandbox={"memory": "256m", "gpus": None}, disclosure={"verdict": "pass", "files": []},
        approved_by="dora", released_by=None, started="2026-12-05T06:00:00Z",
        finished="2026-12-05T06:00:03Z", exit_code=0,
    )  # fmt: skip
    sealed = seal(client, train.ref, train.manifest, train.spec, hop=0,
                  output_dir=_output(tmp_path / "o"), key=parties["station-a"].key,
                  previous=None, predicate=predicate)  # fmt: skip
    statement = verify_attestation(client, sealed.reference, parties["station-a"].public)
    assert statement["predicate"] == predicate
    assert statement["subject"][0]["digest"]["sha256"] == sealed.digest.split(":")[1]


def test_seal_without_a_predicate_attests_what_it_knows(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    sealed = _seal(client, train, parties, 1, None, _output(tmp_path / "o"))
    predicate = verify_attestation(client, sealed.reference, parties["station-b"].public)[
        "predicate"
    ]
    assert predicate["train"] == {
        "id": train.spec.id, "name": "sealing-test", "digest": train.ref.digest
    }  # fmt: skip
    assert (predicate["station"], predicate["hop"]) == ("station-b", 1)
    assert predicate["dataset"] == {"name": "cohort", "digest": None}
    assert predicate["disclosure"] is None and predicate["exit_code"] is None


class _Recording(RegistryClient):
    """The real client, noting the tag or digest of every manifest it puts."""

    puts: list[str]

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        self.puts.append(reference)
        return super().put_manifest(repository, reference, raw, media_type)


def test_the_attestation_is_in_place_before_the_result_tag(
    new_train: Any, registry: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    with _Recording(registry.host) as client:
        client.puts = []
        sealed = _seal(client, train, parties, 0, None, _output(tmp_path / "o"))
    order = [sealed.digest, signature_tag(sealed.digest), attestation_tag(sealed.digest),
             "result-0"]  # fmt: skip
    assert client.puts == order


class _DiesBeforeTheTag(_Recording):
    """The real client; the process "dies" (an exception) when it would tag the result."""

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        if reference.startswith("result-"):
            raise KeyboardInterrupt("killed before the tag")
        return super().put_manifest(repository, reference, raw, media_type)


def test_a_seal_killed_before_its_tag_is_finished_by_the_retry_not_pushed_twice(
    new_train: Any, registry: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    """Age encryption is randomised: without the journal the retry would push a second,
    different result beside the first, untagged one."""
    train = new_train()
    journal = tmp_path / "seal.json"
    out = _output(tmp_path / "o")
    args = (train.ref, train.manifest, train.spec)
    kw: dict[str, Any] = {"hop": 0, "output_dir": out, "key": parties[STATIONS[0]].key,
                          "previous": None, "journal": journal}  # fmt: skip
    with _DiesBeforeTheTag(registry.host) as dying:
        dying.puts = []
        with pytest.raises(KeyboardInterrupt):
            seal(dying, *args, **kw)
        first = dying.puts[0]  # the result manifest, by digest
    assert json.loads(journal.read_text())["repository"] == train.ref.repository
    with _Recording(registry.host) as again:
        again.puts = []
        sealed = seal(again, *args, **kw)
    assert sealed.digest == first  # the same manifest, finished: signed, attested, tagged
    assert again.puts[-1] == "result-0"
    assert client.resolve(train.ref.repository, "result-0") == first
    # A journal of another train's result is ignored: a fresh seal.
    other = new_train()
    fresh = seal(client, other.ref, other.manifest, other.spec, **kw)
    assert fresh.digest != first


def test_fetch_refuses_a_result_without_attestation_before_writing(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train("parallel")
    sealed = _seal(client, train, parties, 0, None, _output(tmp_path / "o"))
    repo = train.ref.repository
    client.delete_manifest(repo, client.resolve(repo, attestation_tag(sealed.digest)))
    with pytest.raises(VerificationError) as info:
        fetch_results(client, train.ref, train.spec, parties["alice"].age, tmp_path / "got")
    assert info.value.check == "attestation"
    assert f"{repo}@{sealed.digest} has no attestation" in info.value.reason
    assert not (tmp_path / "got").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_fetch_refuses_a_result_attested_by_the_next_stations_key(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train("parallel")
    sealed = _seal(client, train, parties, 0, None, _output(tmp_path / "o"))
    repo = train.ref.repository
    client.delete_manifest(repo, client.resolve(repo, attestation_tag(sealed.digest)))
    attest(client, repo, sealed.digest, {"station": "station-a", "hop": 0},
           parties["station-b"].key)  # fmt: skip
    with pytest.raises(VerificationError) as info:
        fetch_results(client, train.ref, train.spec, parties["alice"].age, tmp_path / "got")
    assert f"signed by another key (it names key {parties['station-b'].key.key_id})" in (
        info.value.reason
    )
    assert not (tmp_path / "got").exists()


# --- rejections ------------------------------------------------------------------------------


def _copy_artifact(client: Any, digest: str, src: str, dst: str, tag: str) -> None:
    """Copy a manifest and its blobs (mounted, not re-uploaded) under ``tag`` in ``dst``."""
    manifest = client.get_manifest(src, digest)
    for d in [manifest.config, *manifest.layers]:
        assert client.mount_blob(dst, d.digest, src)
    client.put_manifest(dst, tag, manifest.raw, manifest.media_type)


def test_result_of_another_train_is_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    mine, other = new_train(), new_train()
    foreign = _seal(client, other, parties, 0, None, _output(tmp_path / "o"))
    repo = mine.ref.repository
    _copy_artifact(client, foreign.digest, other.ref.repository, repo, "result-0")
    sig = signature_tag(foreign.digest)
    sig_digest = client.resolve(other.ref.repository, sig)
    _copy_artifact(client, sig_digest, other.ref.repository, repo, sig)
    with pytest.raises(ChainError, match="for another train: its subject is") as info:
        verify_chain(client, mine.ref, mine.spec, upto=1)
    assert (info.value.hop, info.value.station) == (0, "station-a")
    assert info.value.digest == foreign.digest


def test_result_config_naming_another_train_is_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    impostor = dataclasses.replace(train.spec, id="0c4f5a0e-6a53-4c4b-9a0e-1f8a3c2b9d7e")
    _seal(client, train, parties, 0, None, _output(tmp_path / "o"), spec=impostor)
    with pytest.raises(ChainError, match="config names another train") as info:
        verify_chain(client, train.ref, train.spec, upto=1)
    assert info.value.check == "chain"


def test_wrong_hop_is_rejected(new_train: Any, client: Any, parties: Any, tmp_path: Path) -> None:
    train = new_train()
    r0 = _seal(client, train, parties, 0, None, _output(tmp_path / "o"))
    # Hop 0's result re-tagged as hop 1's.
    manifest = client.get_manifest(train.ref.repository, r0.digest)
    client.put_manifest(train.ref.repository, "result-1", manifest.raw, OCI_MANIFEST)
    with pytest.raises(ChainError, match="is for hop 0, not hop 1") as info:
        verify_chain(client, train.ref, train.spec, upto=2)
    assert (info.value.hop, info.value.station) == (1, "station-b")


def test_wrong_station_is_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    r0 = _seal(client, train, parties, 0, None, _output(tmp_path / "o0"))
    route = list(train.spec.route)
    route[1] = dataclasses.replace(route[1], station="station-x")
    renamed = dataclasses.replace(train.spec, route=tuple(route))
    _seal(client, train, parties, 1, r0.digest, _output(tmp_path / "o1"), spec=renamed)
    with pytest.raises(ChainError, match="names station 'station-x', not 'station-b'"):
        verify_chain(client, train.ref, train.spec, upto=2)


def test_signature_by_a_key_not_on_the_route_is_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    _seal(client, train, parties, 0, None, _output(tmp_path / "o"), key="mallory")
    with pytest.raises(ChainError, match="not signed by station-a's key") as info:
        verify_chain(client, train.ref, train.spec, upto=1)
    assert info.value.key_id == parties["station-a"].key.key_id


def test_broken_previous_link_is_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    _seal(client, train, parties, 0, None, _output(tmp_path / "o0"))
    wrong = "sha256:" + "0" * 64
    _seal(client, train, parties, 1, wrong, _output(tmp_path / "o1"))
    with pytest.raises(ChainError, match="previous link is") as info:
        verify_chain(client, train.ref, train.spec, upto=2)
    assert info.value.hop == 1


def test_two_valid_results_for_one_hop_are_rejected(
    new_train: Any, client: Any, parties: Any, tmp_path: Path
) -> None:
    train = new_train()
    first = _seal(client, train, parties, 0, None, _output(tmp_path / "o"),
                  created="2026-01-01T00:00:00Z")  # fmt: skip
    raw = client.get_manifest(train.ref.repository, first.digest).raw
    client.put_manifest(train.ref.repository, "result-0-first", raw, OCI_MANIFEST)
    second = _seal(client, train, parties, 0, None, _output(tmp_path / "o2", "other"))
    assert second.digest != first.digest
    with pytest.raises(ChainError, match="2 valid results for one hop") as info:
        verify_chain(client, train.ref, train.spec, upto=1)
    assert info.value.station == "station-a"


def test_altered_blob_bytes_are_rejected_and_nothing_is_written(
    new_train: Any, client: Any, parties: Any, tmp_path: Path, registry: Any
) -> None:
    train = new_train()
    r0 = _seal(client, train, parties, 0, None, _output(tmp_path / "o0"))
    r1 = _seal(client, train, parties, 1, r0.digest, _output(tmp_path / "o1"))
    sealed = _seal(client, train, parties, 2, r1.digest, _output(tmp_path / "o2"))
    hexdigest = sealed.layer.digest.split(":", 1)[1]
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    blob = bytearray(data.read_bytes())
    blob[-20] ^= 0xFF
    data.write_bytes(bytes(blob))
    dest = tmp_path / "opened"
    with pytest.raises(DigestMismatchError, match="altered in storage or in transit") as info:
        open_result(client, sealed, parties["alice"].age, dest)
    assert sealed.layer.digest in str(info.value)
    assert not dest.exists()
    out = tmp_path / "fetched"
    with pytest.raises(DigestMismatchError):
        fetch_results(client, train.ref, train.spec, parties["alice"].age, out)
    assert not out.exists()
    assert not any(p.name.startswith(".fetched") for p in tmp_path.iterdir())


# --- hostile results a station could sign, and a registry that swaps layers ------------------
#
# A station's key signs whatever it is given, so a compromised station can publish any
# archive and any config; a registry can serve any bytes. The same code opens results for
# ``pht results fetch`` (fetch_results) and for a station's next hop (open_result of the
# accepted previous result): both are exercised for every case.


@pytest.fixture(scope="module")
def hostile_train(build_and_push: Any, registry: Any, parties: Any) -> Train:
    """One parallel train for the hostile cases: each test re-tags ``result-0``."""
    spec = make_spec(
        name="hostile-results",
        creator_id="alice",
        creator_key_id=parties["alice"].key.key_id,
        creator_recipient=parties["alice"].age.recipient,
        recipients=[],
        route=[StationInfo(s, parties[s].public.pem, parties[s].age.recipient) for s in STATIONS],
        mode="parallel",
        dataset="cohort",
    )
    ref = build_and_push(
        f"station-test/{spec.id}", "train", labels={TRAIN_LABEL: spec.to_canonical_json()}
    )
    with RegistryClient(registry.host) as c:
        return Train(ref, spec, c.get_manifest(ref.repository, ref.digest))


def _publish(client: Any, train: Train, parties: Any, plaintext: io.RawIOBase | bytes,
             length: int, **config: Any) -> Any:  # fmt: skip
    """Seal ``plaintext`` (any bytes) as station-a's signed result-0, addressed to alice."""
    source = io.BytesIO(plaintext) if isinstance(plaintext, bytes) else plaintext
    recipients = [parties["alice"].age.recipient]
    layer = client.upload_blob(
        train.ref.repository, encrypt_stream(source, recipients), media_type=RESULT_MEDIA_TYPE
    )
    return _push(client, train, parties, layer, length, recipients, **config)


def _push(client: Any, train: Train, parties: Any, layer: Any, length: int,
          recipients: list[str], **config: Any) -> Any:  # fmt: skip
    body = {
        "train": {"id": train.spec.id, "digest": train.ref.digest},
        "hop": 0,
        "station": "station-a",
        "previous": None,
        "created": "2026-12-05T00:00:00Z",
        "recipients": recipients,
        "plaintext_bytes": length,
        **config,
    }
    return push_result(client, train.ref, train.manifest, layer, body,
                       key=parties["station-a"].key)  # fmt: skip


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of chunks (to encrypt large plaintexts lazily)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it, self._left = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._it, b"")
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _both_paths_refuse(client: Any, train: Train, parties: Any, tmp_path: Path,
                       error: type[Exception], message: str) -> None:  # fmt: skip
    """`pht results fetch`'s path and a station's path both refuse; nothing is written."""
    out = tmp_path / "fetched"
    with pytest.raises(error, match=message):
        fetch_results(client, train.ref, train.spec, parties["alice"].age, out)
    assert os.listdir(tmp_path) == []  # no output folder, no staging folder left
    accepted = verify_chain(client, train.ref, train.spec)
    assert [a.hop for a in accepted] == [0]
    dest = tmp_path / "input"
    with pytest.raises(error, match=message):
        open_result(client, accepted[0], parties["alice"].age, dest)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_archive_is_refused_before_anything_is_written(
    case: str, hostile_train: Train, client: Any, parties: Any, tmp_path: Path
) -> None:
    build, message = CASES[case]
    plaintext = build()
    _publish(client, hostile_train, parties, plaintext, len(plaintext))
    _both_paths_refuse(client, hostile_train, parties, tmp_path, UnsafeArchiveError, message)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("4096", "'4096'"), (-1, "-1"), (True, "True"), (4096.0, "4096.0"), (None, "None"),
     ([4096], r"\[4096\]"), (1 << 60, str(1 << 60))],
    ids=["string", "negative", "bool", "float", "null", "list", "huge"],
)  # fmt: skip
def test_result_config_with_a_bad_plaintext_bytes_is_refused(
    value: Any, shown: str, hostile_train: Train, client: Any, parties: Any, tmp_path: Path
) -> None:
    plaintext = tar_bytes(_output(tmp_path / "o"))
    _publish(client, hostile_train, parties, plaintext, len(plaintext), plaintext_bytes=value)
    shutil.rmtree(tmp_path / "o")
    message = rf"plaintext_bytes must be a whole number of bytes .*, not {shown}"
    with pytest.raises(ChainError, match=message) as info:
        fetch_results(client, hostile_train.ref, hostile_train.spec, parties["alice"].age,
                      tmp_path / "fetched")  # fmt: skip
    assert (info.value.hop, info.value.station) == (0, "station-a")
    assert os.listdir(tmp_path) == []
    # The station's path: the chain check before open_result refuses it the same way.
    with pytest.raises(ChainError, match=message):
        verify_chain(client, hostile_train.ref, hostile_train.spec)


def test_plaintext_bytes_that_lie_are_refused(
    hostile_train: Train, client: Any, parties: Any, tmp_path: Path
) -> None:
    """The signed length bounds extraction: shorter or longer than the archive is refused."""
    plaintext = tar_bytes(_output(tmp_path / "o"))
    shutil.rmtree(tmp_path / "o")
    cases = [
        (plaintext, 512, r"'result.json': its 18 bytes run past the archive's signed length"),
        (plaintext, len(plaintext) - 512, "longer than its signed length"),
        (plaintext + bytes(512), len(plaintext), "longer than its signed length"),
        (plaintext, len(plaintext) + 512, "ends before its signed length"),
    ]
    for data, length, message in cases:
        _publish(client, hostile_train, parties, data, length)
        _both_paths_refuse(client, hostile_train, parties, tmp_path, UnsafeArchiveError, message)


def test_a_layer_too_large_for_its_plaintext_is_refused_before_download(
    hostile_train: Train, client: Any, parties: Any, tmp_path: Path
) -> None:
    plaintext = tar_bytes(_output(tmp_path / "o"))
    shutil.rmtree(tmp_path / "o")
    _publish(client, hostile_train, parties, plaintext + bytes(1 << 20), len(plaintext))
    message = "more than an age encryption of its signed 10240 plaintext bytes can take"
    _both_paths_refuse(client, hostile_train, parties, tmp_path, UnsafeArchiveError, message)


# --- a registry that swaps the layer; memory bounds measured in a child process ------------

#: Peak RSS allowed to a child that opens a hostile result (interpreter and imports included,
#: about 60 MiB). The large payloads are 128 MiB, so holding one in memory could not pass.
RSS_LIMIT_MIB = 100
LARGE = 128 * 1024 * 1024

_CHILD = r"""
import json, sys
from pathlib import Path
from pht_airflow.keys import age_identity_from_bytes
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.results import fetch_results
from pht_airflow.spec import read_spec

args = json.loads(sys.argv[1])
identity = age_identity_from_bytes(Path(args["identity"]).read_bytes(), None, "identity")
train = Reference.parse(args["train"])
outcome = {"error": None, "message": ""}
with RegistryClient(train.registry) as client:
    spec, _ = read_spec(client, train, check_expiry=False)
    try:
        fetch_results(client, train, spec, identity, Path(args["out"]))
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
status = Path("/proc/self/status").read_text().splitlines()
hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({**outcome, "hwm_kib": hwm}))
"""


def _fetch_in_child(train: Train, parties: Any, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """``fetch_results`` in a fresh interpreter; its outcome and peak RSS (VmHWM, reset by
    exec, unlike ``ru_maxrss``)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    identity = keys / "alice.age"
    identity.write_text(parties["alice"].age.secret_text() + "\n")
    identity.chmod(0o600)
    work = tmp_path / "work"
    work.mkdir()
    args = {"identity": str(identity), "train": str(train.ref), "out": str(work / "fetched")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), work


def _blob_path(registry: Any, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def _large_result(tmp_path: Path) -> Path:
    out = tmp_path / "big"
    out.mkdir(parents=True)
    with open(out / "data.bin", "wb") as f:
        for _ in range(LARGE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    return out


def test_swapped_layer_is_never_decrypted_and_memory_stays_bounded(
    hostile_train: Train, client: Any, parties: Any, registry: Any, tmp_path: Path
) -> None:
    """A registry serves another valid age file to the same recipient, of the same size, in
    place of the signed layer. Its plaintext starts with a symbolic link: had any of it been
    decrypted and read before the digest check, the refusal would name the link.

    Both age files are made by the age CLI, whose output size depends only on the plaintext
    size and the recipients (pyrage adds a random-sized grease stanza), so the swap cannot be
    told by its size."""
    if shutil.which("age") is None:
        pytest.fail("the age CLI is missing: run scripts/bootstrap.sh", pytrace=False)
    src = tmp_path / "src"
    folder = _large_result(src)
    entries = plan_tar(folder)
    plain = src / "plain.tar"
    with open(plain, "wb") as f:
        shutil.copyfileobj(TarStream(entries), f, 1 << 20)
    shutil.rmtree(folder)
    recipient = parties["alice"].age.recipient
    subprocess.run(["age", "-r", recipient, "-o", str(src / "signed.age"), str(plain)], check=True)
    with open(plain, "r+b") as f:
        header = bytearray(f.read(512))
        header[156:157] = tarfile.SYMTYPE
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\x00 " % sum(header)
        f.seek(0)
        f.write(header)
    subprocess.run(["age", "-r", recipient, "-o", str(src / "swapped.age"), str(plain)], check=True)
    with open(src / "signed.age", "rb") as f:
        layer = client.upload_blob(hostile_train.ref.repository, f, media_type=RESULT_MEDIA_TYPE)
    _push(client, hostile_train, parties, layer, tar_size(entries), [recipient])
    blob = _blob_path(registry, layer.digest)
    shutil.copyfile(src / "swapped.age", blob)
    shutil.rmtree(src)
    assert blob.stat().st_size == layer.size  # same size: only the digest tells

    message = "altered in storage or in transit"
    _both_paths_refuse(client, hostile_train, parties, tmp_path, DigestMismatchError, message)
    outcome, work = _fetch_in_child(hostile_train, parties, tmp_path)
    assert outcome["error"] == "DigestMismatchError", outcome
    assert message in outcome["message"]
    assert os.listdir(work) == []
    assert outcome["hwm_kib"] < RSS_LIMIT_MIB * 1024, outcome


@pytest.mark.parametrize("case", ["large-pax", "sparse-gnu", "sparse-pax"])
def test_large_headers_and_sparse_files_are_refused_with_bounded_memory(
    case: str, hostile_train: Train, client: Any, parties: Any, tmp_path: Path
) -> None:
    """A 128 MiB PAX header is refused from its header block, without being read; a sparse
    file that would expand a 10 KiB result to 1 GiB is refused before a byte is written."""
    if case == "large-pax":
        chunks, length = large_pax_stream(LARGE)
        _publish(client, hostile_train, parties, _Chunks(chunks), length)
        message = "over the limit of 8192 bytes for a result"
    else:
        plaintext = CASES[case][0]()
        _publish(client, hostile_train, parties, plaintext, len(plaintext))
        message = "sparse files are not allowed in a result"
    outcome, work = _fetch_in_child(hostile_train, parties, tmp_path)
    assert outcome["error"] == "UnsafeArchiveError", outcome
    assert message in outcome["message"]
    assert os.listdir(work) == []
    assert outcome["hwm_kib"] < RSS_LIMIT_MIB * 1024, outcome


def test_a_station_refuses_a_hostile_previous_result_before_its_container_runs(
    docker_client: Any, client: Any, registry: Any, parties: Any, stations: Any
) -> None:
    """The station's own path end to end: station-b's hop verifies the chain, opens hop 0's
    result (signed by station-a, but holding a name twice) and fails cleanly: no container,
    nothing left in its work folder, the failure in its audit log."""
    b = stations["station-b"]
    ref, spec = signed_train(docker_client, client, registry, parties, "station-b",
                             ["station-a", "station-b"])  # fmt: skip
    pinned = ref.with_digest(client.resolve(ref.repository, "train"))
    train = Train(pinned, spec, client.get_manifest(ref.repository, pinned.digest))
    build, message = CASES["duplicate-name"]
    plaintext = build()
    recipients = [parties["station-b"].age.recipient]
    layer = client.upload_blob(ref.repository, encrypt_stream(io.BytesIO(plaintext), recipients),
                               media_type=RESULT_MEDIA_TYPE)  # fmt: skip
    _push(client, train, parties, layer, len(plaintext), recipients)
    lines: list[str] = []
    with pytest.raises(UnsafeArchiveError, match=message):
        run_hop(b.config(), str(ref), logger=lines.append, docker_client=docker_client)
    assert any(line == "decrypting the result of hop 0" for line in lines), lines
    assert not any("exited" in line for line in lines), lines
    assert sandbox_containers(docker_client) == []
    assert list((b.root / "work").iterdir()) == []
    records = list(AuditLog(b.audit_path).entries())
    assert [r["outcome"] for r in records] == ["failure"]
    assert "appears twice" in json.dumps(records[0]["failure"])
