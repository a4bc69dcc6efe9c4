"""The station's polling intake (pht_airflow.station.inbox) and explicit retries, on the real
registry: what a poll finds, what it costs, and that a retry tag lets a hop run once."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from support.stationkit import make_station, signed_train

from pht_airflow.errors import AlreadyDoneError, VerificationError
from pht_airflow.oci import Reference, RegistryClient
from pht_airflow.protocol import RETRY_TAG, retry_tag
from pht_airflow.station.audit import AuditLog
from pht_airflow.station.hop import run_hop
from pht_airflow.station.inbox import (
    Arrival,
    catalog_repositories,
    is_intake_tag,
    remember,
    run_id_for,
    scan,
)

pytestmark = [pytest.mark.registry, pytest.mark.docker]


class CountingClient(RegistryClient):
    """The real client, counting the registry requests a poll makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    def list_catalog(self, page_size: int = 1000) -> list[str]:
        self.calls["catalog"] += 1
        return super().list_catalog(page_size)

    def list_tags(self, repository: str, page_size: int = 1000) -> list[str]:
        self.calls["tags"] += 1
        return super().list_tags(repository, page_size)

    def resolve(self, repository: str, reference: str) -> str:
        self.calls["resolve"] += 1
        return super().resolve(repository, reference)


def _tag(client: RegistryClient, repository: str, source: str, tag: str) -> str:
    manifest = client.get_manifest(repository, source)
    return client.put_manifest(repository, tag, manifest.raw, manifest.media_type)


def _images(client: RegistryClient, build_and_push: Any, project: str, n: int) -> list[str]:
    """``n`` different images, the first built and pushed, the others its copies with a
    changed annotation (so each has a digest of its own), in ``<project>/src``."""
    src = f"{project}/src"
    first = build_and_push(src, "base")
    manifest = client.get_manifest(src, str(first.digest))
    digests = []
    for i in range(n):
        raw = manifest.raw.replace(
            b'"schemaVersion"', f'"annotations":{{"n":"{i}"}},"schemaVersion"'.encode(), 1
        )
        digests.append(client.put_manifest(src, f"copy-{i}", raw, manifest.media_type))
    return digests


def _place(client: RegistryClient, project: str, digest: str, repository: str, tag: str) -> str:
    manifest = client.get_manifest(f"{project}/src", digest)
    for d in [manifest.config, *manifest.layers]:
        if d is not None:
            client.mount_blob(repository, d.digest, f"{project}/src")
    return client.put_manifest(repository, tag, manifest.raw, manifest.media_type)


def test_intake_tags_and_run_ids() -> None:
    digest = "sha256:" + "ab" * 32
    assert is_intake_tag("train") and is_intake_tag("retry-2-13")
    for tag in ("result-0", "retry-1", "retry-a-1", "retry-1-2-3", "trains", None, "sha256-x.sig"):
        assert not is_intake_tag(tag), tag
    assert RETRY_TAG.match(retry_tag(3, 7))
    # The webhook receiver's run id for a train push, byte for byte.
    assert run_id_for(digest) == "pht__sha256_" + "ab" * 32
    assert run_id_for(digest, "retry-1-1") == "pht__sha256_" + "ab" * 32 + "__retry-1-1"
    arrival = Arrival("station-x/t1", "retry-1-1", digest)
    assert arrival.reference("reg:5000") == f"reg:5000/station-x/t1:retry-1-1@{digest}"
    assert Reference.parse(arrival.reference("reg:5000")).digest == digest
    assert Arrival("station-x/t1", "train", digest).trigger("reg:5000") == {
        "trigger_run_id": run_id_for(digest),
        "conf": {"train": f"reg:5000/station-x/t1@{digest}", "rerun": False},
    }


def test_scan_finds_new_trains_once_and_costs_one_listing_per_repository(
    registry: Any, build_and_push: Any
) -> None:
    project = f"inbox-{uuid.uuid4().hex[:8]}"
    with CountingClient(registry.host) as client:
        a, b, c = _images(client, build_and_push, project, 3)
        one = _place(client, project, a, f"{project}/t1", "train")
        two = _place(client, project, b, f"{project}/t2", "train")
        _place(client, project, c, f"{project}/t2", "result-0")  # not an intake tag
        _place(client, project, c, f"{project}x/t3", "train")  # another project
        _place(client, project, c, f"{project}/nested/t4", "train")  # not a train repository

        def listing() -> list[str]:
            return [r for r in catalog_repositories(client, project) if r != f"{project}/src"]

        assert sorted(listing()) == [f"{project}/t1", f"{project}/t2"]
        client.calls.clear()
        arrivals, seen = scan(client, listing, {})
        assert sorted((a.repository, a.tag, a.digest) for a in arrivals) == [
            (f"{project}/t1", "train", one),
            (f"{project}/t2", "train", two),
        ]
        assert seen == {}  # known only once their runs exist
        assert client.calls == {"catalog": 1, "tags": 2, "resolve": 2}

        known = remember(seen, arrivals)
        client.calls.clear()
        assert scan(client, listing, known) == ([], known)
        # An idle poll: the listing and one tag list per repository, no HEAD.
        assert client.calls == {"catalog": 1, "tags": 2}

        # A retry tag on t1 is new; the known train tag is not resolved again.
        _tag(client, f"{project}/t1", one, "retry-0-1")
        client.calls.clear()
        arrivals, seen = scan(client, listing, known)
        assert [(a.repository, a.tag, a.digest) for a in arrivals] == [
            (f"{project}/t1", "retry-0-1", one)
        ]
        assert arrivals[0].run_id == run_id_for(one) + "__retry-0-1"
        assert client.calls["resolve"] == 1

        # A repository that disappeared is dropped from what is known.
        gone = {**known, f"{project}/gone": {"train": one}}
        _, seen = scan(client, listing, gone)
        assert f"{project}/gone" not in seen


def test_scan_hands_over_at_most_limit_per_poll(registry: Any, build_and_push: Any) -> None:
    project = f"inbox-{uuid.uuid4().hex[:8]}"
    with CountingClient(registry.host) as client:
        for n, digest in enumerate(_images(client, build_and_push, project, 3)):
            _place(client, project, digest, f"{project}/t{n}", "train")

        def listing() -> list[str]:
            return [r for r in catalog_repositories(client, project) if r != f"{project}/src"]

        first, seen = scan(client, listing, {}, limit=2)
        assert len(first) == 2
        second, _ = scan(client, listing, remember(seen, first), limit=2)
        assert [a.repository for a in second] == [f"{project}/t2"]


# --- explicit retries at the station -------------------------------------------------------


@pytest.fixture()
def station(tmp_path: Any, parties: Any, registry: Any) -> Any:
    return make_station(
        tmp_path / "station-a",
        parties["station-a"],
        registry.host,
        creators=[parties["alice"].public.pem],
        approvers=[parties["reviewer"].public.pem],
    )


def test_a_retry_tag_runs_a_completed_hop_once(
    station: Any, docker_client: Any, registry: Any, parties: Any
) -> None:
    with RegistryClient(registry.host) as client:
        ref, _ = signed_train(docker_client, client, registry, parties, "station-a", ["station-a"])
        digest = client.resolve(ref.repository, "train")
        config = station.config()
        run_hop(config, str(ref), docker_client=docker_client)
        with pytest.raises(AlreadyDoneError):  # the "already done" rule, as before
            run_hop(config, str(ref), docker_client=docker_client)

        _tag(client, ref.repository, digest, "retry-0-1")
        retried = f"{registry.host}/{ref.repository}:retry-0-1@{digest}"
        record = run_hop(config, retried, docker_client=docker_client)
        assert record["outcome"] == "success"
        with pytest.raises(AlreadyDoneError, match="already ran retry-0-1"):
            run_hop(config, retried, docker_client=docker_client)

        # A retry tag for another hop, or one that points elsewhere, is refused.
        _tag(client, ref.repository, digest, "retry-1-1")
        with pytest.raises(AlreadyDoneError, match="retries hop 1, but station station-a is hop 0"):
            run_hop(config, f"{registry.host}/{ref.repository}:retry-1-1@{digest}",
                    docker_client=docker_client)  # fmt: skip
        other, _ = signed_train(docker_client, client, registry, parties, "station-a",
                                ["station-a"])  # fmt: skip
        other_digest = client.resolve(other.repository, "train")
        _tag(client, ref.repository, digest, "retry-0-2")
        with pytest.raises(VerificationError, match="points at"):
            run_hop(config, f"{registry.host}/{ref.repository}:retry-0-2@{other_digest}",
                    docker_client=docker_client)  # fmt: skip

    outcomes = [
        (r["outcome"], r.get("reference", "").rsplit("/", 1)[-1].split("@")[0])
        for r in AuditLog(station.audit_path).entries()
        if r.get("event") == "hop" and r.get("train_digest") == digest
    ]
    assert [o for o, _ in outcomes].count("success") == 2, outcomes
