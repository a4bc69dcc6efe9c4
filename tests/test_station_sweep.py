"""The leftover sweep (station.sweep) on the real Docker engine and registry.

Leftovers are made the way a killed hop leaves them: hop folders whose lock is free,
sandbox-labelled containers naming such a folder, train images pulled by digest. A running
hop (its folder locked by a live process) and another station's leftovers stay.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pht_airflow.station.audit import AuditLog
from pht_airflow.station.sandbox import LABEL
from pht_airflow.station.sweep import (
    IMAGE_MARKER,
    OUTPUT_LABEL,
    STATION_LABEL,
    open_work,
    sweep,
)


def _repo_digests(docker_client: Any) -> set[str]:
    return {d for i in docker_client.api.images() for d in i.get("RepoDigests") or []}


@pytest.fixture()
def made(docker_client: Any) -> Iterator[dict[str, list[Any]]]:
    """What a test makes in the engine; removed afterwards whatever the sweep did."""
    import docker.errors

    things: dict[str, list[Any]] = {"containers": [], "images": []}
    yield things
    for c in things["containers"]:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)
    for ref in things["images"]:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_image(ref, noprune=False)


def _pulled(docker_client: Any, registry: Any, busybox: str, project: str, made: Any) -> str:
    """A train image pushed to ``project`` and pulled by digest, as a hop pulls it."""
    repo = f"{registry.host}/{project}/sweep-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(busybox).tag(repo, "train")
    made["images"].append(f"{repo}:train")
    for line in docker_client.images.push(repo, tag="train", stream=True, decode=True):
        assert "error" not in line, line
    digest = docker_client.api.inspect_distribution(f"{repo}:train")["Descriptor"]["digest"]
    docker_client.api.remove_image(f"{repo}:train")
    docker_client.images.pull(repo, tag=digest)
    ref = f"{repo}@{digest}"
    made["images"].append(ref)
    assert ref in _repo_digests(docker_client)
    return ref


def _folder(work: Path, name: str, *, plaintext: bool = False) -> Path:
    folder = work / f"hop-{name}-{uuid.uuid4().hex[:6]}"
    (folder / "output").mkdir(parents=True)
    if plaintext:
        (folder / "input").mkdir()
        (folder / "input" / "result.csv").write_text("id,age\n1,41\n")
    return folder


def _container(
    docker_client: Any, busybox: str, station: str, folder: Path, command: list[str], made: Any
) -> Any:
    c = docker_client.containers.create(
        busybox,
        command=command,
        name=f"pht-sweeptest-{uuid.uuid4().hex[:10]}",
        labels={LABEL: "1", STATION_LABEL: station, OUTPUT_LABEL: str(folder / "output")},
        network_mode="none",
    )
    made["containers"].append(c)
    return c


def _exists(docker_client: Any, container: Any) -> bool:
    import docker.errors

    try:
        docker_client.containers.get(container.id)
    except docker.errors.NotFound:
        return False
    return True


def test_sweep_removes_leftovers_of_finished_hops_and_leaves_running_hops_and_other_stations(
    docker_client: Any, registry: Any, busybox_image: str, stations: Any, made: Any
) -> None:
    a, b = stations["station-a"], stations["station-b"]
    config, config_b = a.config(), b.config()
    work, work_b = config.work_dir, config_b.work_dir
    work.mkdir(parents=True, exist_ok=True)
    work_b.mkdir(parents=True, exist_ok=True)

    # Leftovers of this station's finished, failed or killed hops.
    done = _folder(work, "done")
    exited = _container(docker_client, busybox_image, "station-a", done, ["true"], made)
    exited.start()
    assert exited.wait()["StatusCode"] == 0
    created_folder = _folder(work, "created")
    created = _container(docker_client, busybox_image, "station-a", created_folder, ["true"], made)
    stale = _folder(work, "stale", plaintext=True)
    old_image = _pulled(docker_client, registry, busybox_image, "station-a", made)

    # A running hop: its folder is locked, its container runs, its image is in use.
    live_image = _pulled(docker_client, registry, busybox_image, "station-a", made)
    running, lock = open_work(config, "hop-running-", image=live_image)
    try:
        (running / "output").mkdir()
        (running / "input").mkdir()
        (running / "input" / "result.csv").write_text("id,age\n1,41\n")
        live = _container(
            docker_client, busybox_image, "station-a", running, ["sleep", "600"], made
        )
        live.start()
        # A running hop's container that has not started yet is left alone too.
        live_created = _container(
            docker_client, busybox_image, "station-a", running, ["true"], made
        )

        # Another station's leftovers, on the same engine.
        other = _folder(work_b, "done", plaintext=True)
        other_c = _container(docker_client, busybox_image, "station-b", other, ["true"], made)
        other_image = _pulled(docker_client, registry, busybox_image, "station-b", made)

        lines: list[str] = []
        swept = sweep(config, docker_client, logger=lines.append)

        assert sorted(swept.folders) == sorted([done.name, created_folder.name, stale.name])
        assert not done.exists() and not created_folder.exists() and not stale.exists()
        assert not _exists(docker_client, exited) and not _exists(docker_client, created)
        assert sorted(swept.containers) == sorted(
            f"{c.name} ({c.id[:12]})" for c in (exited, created)
        )
        assert swept.images == [old_image]
        digests = _repo_digests(docker_client)
        assert old_image not in digests

        # Left alone: the running hop's folder, plaintext, containers and image.
        assert (running / "input" / "result.csv").exists()
        live.reload()
        assert live.status == "running"
        assert _exists(docker_client, live_created)
        assert live_image in digests
        # And the other station's.
        assert (other / "input" / "result.csv").exists() and _exists(docker_client, other_c)
        assert other_image in digests

        (record,) = AuditLog(a.audit_path).entries()
        assert record["event"] == "cleanup" and record["station"] == "station-a"
        assert record["removed"] == {
            "folders": swept.folders,
            "containers": swept.containers,
            "images": [old_image],
        }
        assert lines == [
            "sweep: removed 3 hop folder(s), 2 container(s), 1 train image reference(s)"
        ]
        assert not b.audit_path.exists() or list(AuditLog(b.audit_path).entries()) == []

        # Nothing left: a second sweep removes nothing and writes no record.
        assert not sweep(config, docker_client)
        assert len(list(AuditLog(a.audit_path).entries())) == 1
    finally:
        os.close(lock)

    # Once the hop has ended (lock released), its container, image and folder are leftovers.
    swept = sweep(config, docker_client)
    assert swept.folders == [running.name] and not running.exists()
    assert sorted(swept.containers) == sorted(
        f"{c.name} ({c.id[:12]})" for c in (live, live_created)
    )
    assert swept.images == [live_image]
    # The other station's own sweep removes its leftovers.
    swept_b = sweep(config_b, docker_client)
    assert swept_b.folders == [other.name] and swept_b.images == [other_image]
    assert swept_b.containers == [f"{other_c.name} ({other_c.id[:12]})"]


def test_sweep_leaves_an_image_tagged_in_the_project(
    docker_client: Any, registry: Any, busybox_image: str, stations: Any, made: Any
) -> None:
    """A train built or tagged locally in the project (not pulled by a hop) is not removed."""
    config = stations["station-a"].config()
    repo = f"{registry.host}/station-a/sweep-built-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(busybox_image).tag(repo, "train")
    made["images"].append(f"{repo}:train")
    for line in docker_client.images.push(repo, tag="train", stream=True, decode=True):
        assert "error" not in line, line
    swept = sweep(config, docker_client)
    assert not swept.images
    assert f"{repo}:train" in {
        t for i in docker_client.api.images() for t in i.get("RepoTags") or []
    }


def test_a_deep_stale_folder_is_removed(stations: Any, docker_client: Any) -> None:
    config = stations["station-a"].config()
    folder = config.work_dir / "hop-deep-x"
    path = folder / "output"
    path.mkdir(parents=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:  # deeper than PATH_MAX: rmtree alone cannot remove it
        for _ in range(300):
            os.mkdir("d" * 40, dir_fd=fd)
            nfd = os.open("d" * 40, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("plain.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
            f.write("secret row\n")
    finally:
        os.close(fd)
    swept = sweep(config, docker_client)
    assert swept.folders == ["hop-deep-x"] and not folder.exists()
    assert not IMAGE_MARKER.startswith("hop-")


def test_the_self_test_sweeps_leftovers_and_audits_them(
    docker_client: Any, busybox_image: str, stations: Any, made: Any
) -> None:
    from pht_airflow.station import selftest

    a = stations["station-a"]
    config = a.config()
    stale = _folder(config.work_dir, "killed", plaintext=True)
    exited = _container(docker_client, busybox_image, "station-a", stale, ["true"], made)
    exited.start()
    assert exited.wait()["StatusCode"] == 0
    message = selftest.run_check("leftovers", config, docker_client)
    assert message.startswith("leftovers: removed 1 hop folder(s), 1 sandbox container(s) and 0")
    assert not stale.exists() and not _exists(docker_client, exited)
    (record,) = AuditLog(a.audit_path).entries()
    assert record["event"] == "cleanup"
    assert record["removed"]["folders"] == [stale.name]
    assert record["removed"]["containers"] == [f"{exited.name} ({exited.id[:12]})"]
    assert selftest.run_check("leftovers", config, docker_client) == (
        "leftovers: no hop folder, sandbox container or pulled train image left behind"
    )


def test_the_self_test_says_when_the_sweep_cannot_run(docker_client: Any, stations: Any) -> None:
    from pht_airflow.errors import SelfTestError
    from pht_airflow.station import selftest

    config = stations["station-a"].config()
    config.work_dir.parent.mkdir(parents=True, exist_ok=True)
    config.work_dir.write_text("not a folder\n")  # work_dir cannot be created or locked
    with pytest.raises(SelfTestError, match=r"^leftovers: the sweep of .* failed \("):
        selftest.run_check("leftovers", config, docker_client)
