"""Shared fixtures: a real registry per test session, the real Docker engine, fresh keys.

Nothing here is a mock. The registry is Debian's ``docker-registry`` (CNCF distribution),
started on a free 127.0.0.1 port with temporary storage and deletes enabled, and stopped by
PID at the end. Docker tests talk to the engine that ``scripts/bootstrap.sh`` starts.
Missing parts fail loudly in CI (``CI=true``) and skip with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.harbor_standin import ADMIN_PASSWORD, HarborStandIn, serve
from support.stationkit import make_station

from pht_airflow.central.registry import HarborAdmin
from pht_airflow.dev.localregistry import LocalRegistry, start_registry
from pht_airflow.keys import AgeIdentity, PublicKey, SigningKey, generate_keypair
from pht_airflow.oci import RegistryClient

REPO = Path(__file__).resolve().parents[1]
# Airflow reads its settings when first imported: point it at a private home, SQLite, and
# this repository's dags/ before any test module imports it.
AIRFLOW_HOME = REPO / ".pht" / "airflow-test"
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.pop("PHT_STATION_CONFIG", None)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# A copy of shared/interop, for checkouts that have no ../shared beside them.
VECTORS = Path(__file__).resolve().parent / "vectors"


def _missing(what: str) -> None:
    """Fail in CI, skip (with the reason, shown by ``-ra``) on a developer machine."""
    msg = f"{what} is not available: run scripts/bootstrap.sh first"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright, headless, for one test module."""
    from support.browser import chromium_path, launch

    executable = chromium_path()
    if executable is None:
        _missing("Debian's chromium")
    assert executable is not None
    with launch(executable) as b:
        yield b


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
def postgres_server() -> Iterator[str]:
    """A private PostgreSQL server (Debian ``postgresql``) on a free 127.0.0.1 port.

    Its cluster lives in a fresh temporary folder and is stopped and deleted at the end
    (:mod:`pht_airflow.dev.localpostgres`, which the demo uses too). Returns the server's URL
    without a database name.
    """
    from pht_airflow.dev.localpostgres import postgres_bindir, start_postgres
    from pht_airflow.errors import ServiceError

    if postgres_bindir() is None:
        _missing("PostgreSQL (Debian postgresql)")
    try:
        server = start_postgres()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server, as a SQLAlchemy URL."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


@pytest.fixture(scope="session", autouse=True)
def no_containers_left_behind() -> Iterator[None]:
    """Fail the session if any test left a container in the engine (sandbox, build, probe).

    Lists through the engine's list endpoint only (no per-container inspect), so a container
    that is removed while the list is read cannot fail the check.
    """
    try:
        import docker

        client = docker.from_env(timeout=30)
        before = {c["Id"] for c in client.api.containers(all=True)}
    except Exception:  # noqa: BLE001 - no engine: the tests that need one say so
        yield
        return
    yield
    left = [c for c in client.api.containers(all=True) if c["Id"] not in before]
    client.close()
    if left:
        names = ", ".join(
            f"{'/'.join(c.get('Names') or [])} ({c.get('Image')}, {c.get('State')})" for c in left
        )
        pytest.fail(f"tests left containers behind: {names}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def no_servers_left_behind() -> Iterator[None]:
    """Fail the session if a process it started (a registry, Airflow, PostgreSQL, the central
    service, a browser) still runs once every other fixture has stopped its own: a test that
    restarts a server must stop the new process, not the old one."""
    import psutil

    yield
    me = psutil.Process()
    left = []
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{child.pid} {' '.join(child.cmdline())[:160]}")
    if left:
        pytest.fail("tests left processes running:\n  " + "\n  ".join(left), pytrace=False)


def _listening(name: str) -> bool:
    """True if the 127.0.0.1 registry an image name points at still accepts connections."""
    import socket

    port = name.split(":", 2)[1].split("/", 1)[0]
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session", autouse=True)
def train_images_removed() -> Iterator[None]:
    """Remove the train images this session built or pulled for its registries.

    Tests build trains as ``127.0.0.1:<port>/<project>/<id>:<tag>`` for registries that live
    only as long as the session; a station's hop removes what it pulls, but the images the
    tests build stay tagged in the engine. Without this, every run added about 50 images
    (seen: 1,000 after a day of runs). Images that existed before the session, and the
    ``pht-local/*`` base images, are left alone.
    """
    try:
        import docker

        client = docker.from_env(timeout=60)
        before = {i["Id"] for i in client.api.images(all=True)}
    except Exception:  # noqa: BLE001 - no engine: the tests that need one say so
        yield
        return
    yield
    for image in client.api.images():
        # Tagged by a build, or only a digest reference (pulled by digest by a hop).
        names = (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
        if image["Id"] in before or not names:
            continue
        # Only for registries that are gone: a live one belongs to a concurrent session.
        if all(n.startswith("127.0.0.1:") and not _listening(n) for n in names):
            # An image still used by a container stays (the container check reports it).
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_image(image["Id"], force=True)
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
    for path in (SHARED / "interop", VECTORS):
        if (path / "cosign" / "signature.json").is_file():
            return path
    pytest.fail(f"no interop vectors in {SHARED / 'interop'} or {VECTORS}", pytrace=False)


@pytest.fixture(scope="session")
def cosign_vector(interop_dir: Path) -> Path:
    """The real cosign signature vector (``interop/cosign``)."""
    return interop_dir / "cosign"


# --- keys: fresh per test session, never committed -------------------------------------

PASSPHRASE = b"correct horse battery staple"


@dataclass(frozen=True)
class Party:
    """A party's in-memory keys: signing key (with public half) and age identity."""

    name: str
    key: SigningKey
    age: AgeIdentity

    @property
    def public(self) -> PublicKey:
        return self.key.public


@pytest.fixture(scope="session")
def parties() -> dict[str, Party]:
    """Creator, reviewer, an untrusted outsider and three stations, generated per session."""
    names = ["alice", "reviewer", "mallory", "station-a", "station-b", "station-c"]
    return {n: Party(n, SigningKey.generate(), AgeIdentity.generate()) for n in names}


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``pht keys generate`` output for alice (passphrase-protected) and its passphrase file."""
    folder = tmp_path_factory.mktemp("keys")
    paths = generate_keypair("alice", folder, PASSPHRASE)
    passfile = folder / "passphrase"
    passfile.write_bytes(PASSPHRASE + b"\n")
    passfile.chmod(0o600)
    return {**paths, "passphrase": passfile}


# --- images: built locally from pht-local/busybox, pushed through the real engine ---------


@pytest.fixture(scope="session")
def build_and_push(docker_client, busybox_image: str, registry: LocalRegistry):  # type: ignore[no-untyped-def]
    """A factory: build a tiny image on ``pht-local/busybox`` and push it; return its digest.

    ``labels`` go into the image config (a train's spec label, say); ``marker`` makes the
    image unique so two calls never give the same digest by accident.
    """
    from pht_airflow.oci import Reference
    from pht_airflow.researcher.train import push_image

    built: list[str] = []

    def factory(repository: str, tag: str, *, labels: dict[str, str] | None = None) -> Reference:
        marker = os.urandom(8).hex()
        dockerfile = f"FROM {busybox_image}\nRUN echo {marker} > /marker\n".encode()
        ref = Reference(registry.host, repository, tag=tag)
        stream = docker_client.api.build(
            fileobj=io.BytesIO(dockerfile),
            tag=str(ref),
            labels=labels or {},
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for line in stream:
            if "error" in line:
                raise RuntimeError(f"docker build failed: {line['error']}")
        built.append(str(ref))
        digest = push_image(docker_client, ref)
        return ref.with_digest(digest)

    yield factory
    for tag in built:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite Airflow metadata database under ``.pht/airflow-test``."""
    import subprocess
    import sys

    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    proc = subprocess.run(
        [str(airflow), "db", "migrate"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{proc.stderr[-2000:]}", pytrace=False)
    return AIRFLOW_HOME


@pytest.fixture()
def client(registry: Any) -> Any:
    """A registry client for the session's registry."""
    with RegistryClient(registry.host) as c:
        yield c


@pytest.fixture()
def stations(tmp_path: Path, parties: Any, registry: Any) -> dict[str, Any]:
    """station-a (5 rows) and station-b (7 rows), trusting alice as creator and reviewer."""
    creators = [parties["alice"].public.pem]
    approvers = [parties["reviewer"].public.pem]
    return {
        name: make_station(
            tmp_path / name,
            parties[name],
            registry.host,
            creators=creators,
            approvers=approvers,
            rows=rows,
        )
        for name, rows in (("station-a", 5), ("station-b", 7))
    }


@pytest.fixture()
def harbor(registry: LocalRegistry) -> Iterator[tuple[HarborStandIn, str]]:
    """The Harbor stand-in (its API v2.0) in front of the session's registry, and its URL."""
    standin = HarborStandIn(registry.host, users={"admin": ADMIN_PASSWORD})
    with serve(standin) as url:
        yield standin, url


@pytest.fixture()
def admin(harbor: tuple[HarborStandIn, str]) -> Iterator[HarborAdmin]:
    """``HarborAdmin`` signed in to the stand-in as its admin."""
    with HarborAdmin(harbor[1], "admin", ADMIN_PASSWORD) as a:
        yield a
