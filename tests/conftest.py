"""Shared fixtures: a real registry per test session, the real Docker engine, fresh keys.

Nothing here is a mock. The registry is Debian's ``docker-registry`` (CNCF distribution),
started on a free 127.0.0.1 port with temporary storage and deletes enabled, and stopped by
PID at the end. Docker tests talk to the engine that ``scripts/bootstrap.sh`` starts.
Missing parts fail loudly in CI (``CI=true``) and skip with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pht_airflow.localregistry import LocalRegistry, start_registry

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _missing(what: str) -> None:
    """Fail in CI, skip (with the reason, shown by ``-ra``) on a developer machine."""
    msg = f"{what} is not available: run scripts/bootstrap.sh first"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A real CNCF distribution registry on 127.0.0.1, fresh storage, deletes enabled."""
    if shutil.which("docker-registry") is None:
        _missing("the docker-registry binary")
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    """A docker SDK client for the running engine."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        _missing(f"the Docker engine ({type(exc).__name__})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """The local ``pht-local/busybox`` base image (built by bootstrap; never pulled)."""
    import docker.errors

    try:
        docker_client.images.get("pht-local/busybox:latest")
    except docker.errors.ImageNotFound:
        _missing("the image pht-local/busybox")
    return "pht-local/busybox:latest"


@pytest.fixture(scope="session")
def interop_dir() -> Path:
    """``shared/interop``: vectors made by other tools."""
    path = SHARED / "interop"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: tests need the shared interop vectors", pytrace=False)
    return path
