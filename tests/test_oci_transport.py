"""Bounded reads and total deadlines (``pht_airflow.oci.transport``), on the real registry.

A :class:`~support.authservers.LyingProxy` stands in front of the session's registry (or the
token service) and lies where a test says: a gzip bomb of about 1 MiB on the wire that
inflates to 1 GiB as a tag list, a manifest, an error body or a token answer; a manifest,
token or blob dripped one byte at a time. Each client call runs in a subprocess that reports
the error it got and its own peak RSS (``VmHWM`` of ``/proc/self/status``), which must stay below
``RSS_LIMIT_MIB`` while the bomb would need 1 GiB. Drips use a short deadline; the tests
assert on the error, never on how long anything took.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from support.authservers import (
    Lie,
    LyingProxy,
    QuietHandler,
    TokenServer,
    gzip_bomb,
    inflated_size,
    serve_http,
    server_url,
    start_registry_with_auth,
)

from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import ResponseTooLargeError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, RegistryClient, sha256_digest, transport
from pht_airflow.oci.transport import (
    CENTRAL_LIMIT,
    ERROR_BODY_LIMIT,
    LIST_LIMIT,
    MANIFEST_LIMIT,
    TOKEN_LIMIT,
)

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
GiB = 1024 * MiB
RSS_LIMIT_MIB = 150
"""Peak RSS of the child doing the call (about 30 MiB of it is the interpreter and imports)."""

GZIP_JSON = {"Content-Encoding": "gzip", "Content-Type": "application/json"}

CHILD = """
import json, sys
from pht_airflow.errors import PhtError
out = {}
try:
    exec(sys.argv[1], {})
    out["error"] = None
except PhtError as exc:
    out["error"] = type(exc).__name__
    out["classes"] = [c.__name__ for c in type(exc).__mro__]
    out["message"] = str(exc)
# VmHWM: the peak RSS of this process image. getrusage's ru_maxrss would also count the
# forked pytest process this child was exec'd from (Linux keeps the maximum across exec).
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def run_isolated(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its PhtError (or None) and its peak RSS in MiB.

    Anything but a PhtError escaping is a traceback and a non-zero exit: the test fails.
    """
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, code],
        capture_output=True,
        text=True,
        timeout=300,  # a safety net for a hung child, not a measurement
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def assert_refused(result: dict[str, Any], error: str, *phrases: str) -> None:
    assert result["error"] == error, result
    for phrase in phrases:
        assert phrase in result["message"], (phrase, result["message"])
    print(f"peak RSS {result['peak_rss_mib']:.1f} MiB: {result['error']}")
    assert result["peak_rss_mib"] < RSS_LIMIT_MIB, result


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """1 GiB of spaces, gzip-compressed to about 1 MiB."""
    return gzip_bomb(GiB)


@pytest.fixture
def repo() -> str:
    return f"bounded/t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(registry: LocalRegistry) -> Iterator[LyingProxy]:
    """A lying proxy in front of the session's registry; tests set its ``rule``."""
    with LyingProxy(registry.url) as lying:
        yield lying


def push_manifest(registry: LocalRegistry, repo: str, tag: str = "v1") -> str:
    """A small OCI manifest (one config blob) under ``repo:tag``; its digest."""
    with RegistryClient(registry.host) as client:
        config = client.upload_bytes(repo, b"{}", OCI_CONFIG)
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.to_dict(),
                "layers": [],
            }
        ).encode()
        return client.put_manifest(repo, tag, raw, OCI_MANIFEST)


def when(method: str, prefix: str, lie: Lie) -> Callable[[str, str], Lie | None]:
    return lambda m, path: lie if m == method and path.startswith(prefix) else None


def client_call(host: str, call: str, **options: Any) -> str:
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    return (
        "from pht_airflow.oci import RegistryClient\n"
        f"with RegistryClient({host!r}{args}) as c:\n"
        f"    c.{call}\n"
    )


# --- size ---------------------------------------------------------------------------------


def test_the_bomb_is_small_on_the_wire_and_inflates_to_1_gib(bomb: bytes) -> None:
    assert len(bomb) < 2 * MiB
    assert inflated_size(bomb) == GiB


def test_gzip_bomb_tag_list_is_refused_in_bounded_memory(
    registry: LocalRegistry, proxy: LyingProxy, repo: str, bomb: bytes
) -> None:
    push_manifest(registry, repo)
    proxy.rule = when("GET", f"/v2/{repo}/tags/list", Lie(headers=GZIP_JSON, body=bomb))
    result = run_isolated(client_call(proxy.host, f"list_tags({repo!r})"))
    assert_refused(
        result, "ResponseTooLargeError", f"listing tags of {repo}", f"{LIST_LIMIT // MiB} MiB"
    )
    assert proxy.served == 1


def test_gzip_bomb_manifest_is_refused_in_bounded_memory(
    registry: LocalRegistry, proxy: LyingProxy, repo: str, bomb: bytes
) -> None:
    push_manifest(registry, repo)
    proxy.rule = when("GET", f"/v2/{repo}/manifests/", Lie(headers=GZIP_JSON, body=bomb))
    result = run_isolated(client_call(proxy.host, f"get_manifest({repo!r}, 'v1')"))
    assert_refused(
        result,
        "ResponseTooLargeError",
        f"fetching manifest {repo}:v1",
        f"{MANIFEST_LIMIT // MiB} MiB",
    )


def test_gzip_bomb_error_body_is_not_read_past_its_limit(
    proxy: LyingProxy, repo: str, bomb: bytes
) -> None:
    """The 404 still says what it is (NotFoundError), from the first 64 KiB of its body."""
    proxy.rule = when("GET", f"/v2/{repo}/manifests/", Lie(headers=GZIP_JSON, body=bomb))
    result = run_isolated(client_call(proxy.host, f"get_manifest({repo!r}, 'missing')"))
    assert_refused(
        result,
        "NotFoundError",
        "HTTP 404",
        f"larger than the limit of {ERROR_BODY_LIMIT // 1024} KiB",
    )
    assert proxy.served == 1


def test_gzip_bomb_catalog_is_refused(proxy: LyingProxy, bomb: bytes) -> None:
    proxy.rule = when("GET", "/v2/_catalog", Lie(headers=GZIP_JSON, body=bomb))
    result = run_isolated(client_call(proxy.host, "list_catalog()"))
    assert_refused(result, "ResponseTooLargeError", "catalog", f"{LIST_LIMIT // MiB} MiB")


def test_blob_head_with_an_absurd_content_length_is_refused(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    """4500 digits: more than Python's int() takes from a string (a ValueError, not a size)."""
    digest = push_manifest(registry, repo)
    with RegistryClient(registry.host) as client:
        config_digest = json.loads(client.get_manifest(repo, digest).raw)["config"]["digest"]
    proxy.rule = when("HEAD", f"/v2/{repo}/blobs/", Lie(headers={"Content-Length": "9" * 4500}))
    result = run_isolated(client_call(proxy.host, f"blob_size({repo!r}, {config_digest!r})"))
    assert_refused(result, "RegistryError", "invalid Content-Length")


def test_tag_pages_that_loop_are_refused(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    push_manifest(registry, repo)
    link = f'</v2/{repo}/tags/list?n=1000>; rel="next"'
    proxy.rule = when("GET", f"/v2/{repo}/tags/list", Lie(headers={"Link": link}))
    result = run_isolated(client_call(proxy.host, f"list_tags({repo!r})"))
    assert_refused(result, "RegistryError", "paginates in a loop")


# --- time ---------------------------------------------------------------------------------


def test_slow_drip_manifest_fails_at_the_operation_deadline(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    """One byte every 0.2 s of a ~400-byte manifest: each read is quick, the whole is not."""
    push_manifest(registry, repo)
    proxy.rule = when("GET", f"/v2/{repo}/manifests/", Lie(drip=0.2))
    result = run_isolated(client_call(proxy.host, f"get_manifest({repo!r}, 'v1')", deadline=1.0))
    assert_refused(
        result,
        "DeadlineExceededError",
        f"fetching manifest {repo}:v1 did not finish within its deadline (1 s)",
    )
    assert "RegistryError" in result["classes"]


def test_slow_drip_headers_fail_at_the_operation_deadline(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    """The status line and headers dripped too: the deadline covers them as well."""
    push_manifest(registry, repo)
    proxy.rule = when("GET", f"/v2/{repo}/manifests/", Lie(drip=0.2, drip_headers=True))
    result = run_isolated(client_call(proxy.host, f"get_manifest({repo!r}, 'v1')", deadline=1.0))
    assert_refused(result, "DeadlineExceededError", "did not finish within its deadline (1 s)")


def test_slow_drip_blob_fails_the_minimum_throughput_rule(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    digest = push_manifest(registry, repo)
    with RegistryClient(registry.host) as client:
        blob = client.upload_bytes(repo, b"x" * 4096)
    del digest
    proxy.rule = when("GET", f"/v2/{repo}/blobs/", Lie(drip=0.05))
    result = run_isolated(
        client_call(
            proxy.host,
            f"get_blob({repo!r}, {blob.digest!r})",
            deadline=1.0,
            min_blob_rate=1024 * 1024,
        )
    )
    assert_refused(
        result,
        "DeadlineExceededError",
        f"downloading blob {blob.digest} did not finish within its deadline (1 s plus 1 s per "
        "1 MiB moved",
    )


# --- the token service --------------------------------------------------------------------

USER, PASSWORD = "alice", "alice-secret"
SERVICE, ISSUER = "pht-bounded", "pht-bounded-issuer"


@pytest.fixture(scope="module")
def token_proxy() -> Iterator[LyingProxy]:
    """A token service behind a lying proxy; the registry's realm is the proxy."""
    server = TokenServer(users={USER: PASSWORD}, service=SERVICE, issuer=ISSUER).start()
    try:
        with LyingProxy(server_url(server._server)) as lying:  # type: ignore[arg-type]
            lying.token_server = server  # type: ignore[attr-defined]
            yield lying
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_proxy: LyingProxy
) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("bounded-token-registry")
    bundle = root / "token-signer.pem"
    bundle.write_bytes(token_proxy.token_server.cert_pem)  # type: ignore[attr-defined]
    reg = start_registry_with_auth(
        root,
        {
            "token": {
                "realm": token_proxy.url + "/token",
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(bundle),
            }
        },
    )
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def lying_tokens(token_proxy: LyingProxy) -> Iterator[LyingProxy]:
    token_proxy.served = 0
    yield token_proxy
    token_proxy.rule = None


def test_the_token_stand_in_works_through_the_proxy(
    token_registry: LocalRegistry, lying_tokens: LyingProxy, repo: str
) -> None:
    """The control: with no lie told, a token is fetched and the push succeeds."""
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as client:
        client.upload_bytes(repo, b"fine")
    assert lying_tokens.served == 0


def test_gzip_bomb_token_answer_is_refused_in_bounded_memory(
    token_registry: LocalRegistry, lying_tokens: LyingProxy, repo: str, bomb: bytes
) -> None:
    lying_tokens.rule = when("GET", "/token", Lie(headers=GZIP_JSON, body=bomb))
    call = client_call(
        token_registry.host, f"list_tags({repo!r})", username=USER, password=PASSWORD
    )
    result = run_isolated(call)
    assert_refused(
        result,
        "ResponseTooLargeError",
        f"the answer of the token service {lying_tokens.url}/token",
        f"{TOKEN_LIMIT // 1024} KiB",
    )
    assert lying_tokens.served == 1


def test_slow_drip_token_fails_at_the_deadline_of_the_operation_that_needed_it(
    token_registry: LocalRegistry, lying_tokens: LyingProxy, repo: str
) -> None:
    lying_tokens.rule = when("GET", "/token", Lie(drip=0.2))
    call = client_call(
        token_registry.host,
        f"list_tags({repo!r})",
        username=USER,
        password=PASSWORD,
        deadline=1.0,
    )
    result = run_isolated(call)
    assert_refused(result, "DeadlineExceededError", f"listing tags of {repo} did not finish within")


# --- the central service client -----------------------------------------------------------


def _central(
    body: bytes, headers: dict[str, str], drip: bool = False
) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if drip:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        __import__("time").sleep(0.2)  # the slowness under test
                else:
                    self.wfile.write(body)
            except OSError:
                self.close_connection = True

    return Handler


def test_gzip_bomb_from_the_central_service_is_refused(bomb: bytes) -> None:
    with serve_http(_central(bomb, GZIP_JSON)) as server:
        code = (
            "from pht_airflow.central_client import CentralClient\n"
            f"CentralClient({server_url(server)!r}).stations()\n"
        )
        result = run_isolated(code)
    assert_refused(result, "CentralError", "GET /stations", f"{CENTRAL_LIMIT // MiB} MiB")


def test_slow_drip_from_the_central_service_fails_at_the_deadline() -> None:
    body = json.dumps([{"id": "station-a"}] * 20).encode()
    with serve_http(_central(body, {"Content-Type": "application/json"}, drip=True)) as server:
        code = (
            "from pht_airflow.central_client import CentralClient\n"
            f"CentralClient({server_url(server)!r}, deadline=1.0).stations()\n"
        )
        result = run_isolated(code)
    assert_refused(result, "CentralError", "GET /stations", "did not finish within its deadline")


@pytest.mark.parametrize("extra", [0, 1])
def test_the_manifest_limit_is_exact(
    registry: LocalRegistry, proxy: LyingProxy, repo: str, extra: int
) -> None:
    """A manifest of exactly the limit is read (plain, no encoding); one byte more is not."""
    digest = push_manifest(registry, repo)
    with RegistryClient(registry.host) as client:
        real = client.get_manifest(repo, digest).raw
    body = real + b" " * (MANIFEST_LIMIT + extra - len(real))  # still JSON: trailing spaces
    lie = Lie(headers={"Content-Type": OCI_MANIFEST}, body=body)
    proxy.rule = when("GET", f"/v2/{repo}/manifests/", lie)
    with RegistryClient(proxy.host) as client:
        if extra:
            with pytest.raises(ResponseTooLargeError, match="larger than the limit of 4 MiB"):
                client.get_manifest(repo, "v1")
        else:
            assert client.get_manifest(repo, "v1").raw == body


def test_a_server_that_never_answers_fails_at_the_deadline() -> None:
    """Connected, request sent, and then nothing: the per-read timeout (120 s) is not what
    ends it, the operation's deadline is."""
    release = threading.Event()

    class Silent(QuietHandler):
        def do_GET(self) -> None:
            release.wait(60)

    with serve_http(Silent) as server:
        host = server_url(server).removeprefix("http://")
        try:
            result = run_isolated(client_call(host, "ping()", deadline=1.0))
        finally:
            release.set()
    assert_refused(
        result,
        "DeadlineExceededError",
        "the API version check did not finish within its deadline (1 s)",
    )


def test_an_expired_operation_does_not_cut_a_connection_another_one_reuses() -> None:
    """The first operation's connection goes back to the pool; the second takes it and reads
    a dripped answer (2 s) while the first (0.5 s, still watched) runs out of time. Only the
    connection's current operation may cut it."""

    class Server(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"x" * 20
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/small":
                self.wfile.write(body)
                return
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                time.sleep(0.1)  # the slowness under test

    with serve_http(Server) as server:
        url = server_url(server)
        session = transport.make_session()
        first = transport.Deadline(0.5, "the first operation")
        with first, first.active():
            resp = session.get(url + "/small", stream=True, timeout=30)
            assert transport.read_body(resp, 100, "small", first) == b"x" * 20
            with transport.Deadline(30, "the second operation") as second, second.active():
                resp = session.get(url + "/drip", stream=True, timeout=30)
                assert transport.read_body(resp, 100, "dripped", second) == b"x" * 20
            assert first.is_over()  # it did run out while the second one read
        session.close()


def test_an_upload_the_registry_does_not_read_fails_at_the_deadline() -> None:
    """The registry opens an upload session and then reads none of the PATCH body: once the
    socket buffers are full the client's send blocks, until the deadline cuts it."""
    release = threading.Event()

    class Stuck(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.send_response(202)
            self.send_header("Location", "/v2/stuck/blobs/uploads/session-1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_PATCH(self) -> None:
            release.wait(60)
            self.close_connection = True

        def do_DELETE(self) -> None:  # the client cancels the upload: fine
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve_http(Stuck) as server:
        host = server_url(server).removeprefix("http://")
        call = client_call(
            host,
            "upload_blob('stuck', iter([bytes(1024 * 1024)] * 64))",
            deadline=1.0,
            min_blob_rate=1024 * 1024 * 1024,
        )
        try:
            result = run_isolated(call)
        finally:
            release.set()
    assert_refused(
        result,
        "DeadlineExceededError",
        "uploading a blob to stuck did not finish within its deadline (1 s plus 1 s per 1024 MiB",
    )


@pytest.mark.parametrize(
    "expires_in", [b"1" + b"0" * 400, b"1e400", b"NaN", b"-Infinity", b'"soon"', b"[]"]
)
def test_an_odd_token_lifetime_is_no_traceback(
    token_registry: LocalRegistry, lying_tokens: LyingProxy, repo: str, expires_in: bytes
) -> None:
    """A huge, infinite, NaN, negative or non-number ``expires_in``: the token is used (its
    lifetime capped at a day or the default 60 s) and the push goes through."""

    def twist(body: bytes) -> bytes:
        answer = json.loads(body)
        return (
            json.dumps({"token": answer["token"]}).encode()[:-1]
            + b', "expires_in": '
            + (expires_in + b"}")
        )

    lying_tokens.rule = when("GET", "/token", Lie(rewrite=twist))
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as client:
        client.upload_bytes(repo, b"fine")
        assert client.blob_size(repo, sha256_digest(b"fine")) == 4
    assert lying_tokens.served >= 1


def test_a_blob_larger_than_its_bound_is_refused_before_a_byte_is_written(
    registry: LocalRegistry, repo: str
) -> None:
    with RegistryClient(registry.host) as client:
        blob = client.upload_bytes(repo, b"x" * 4096)
        dest = io.BytesIO()
        with pytest.raises(ResponseTooLargeError, match="larger than the 4095 bytes allowed"):
            client.download_blob(repo, blob.digest, dest, max_bytes=4095)
        assert dest.getvalue() == b""
        with pytest.raises(ResponseTooLargeError, match="larger than the 100 bytes allowed"):
            client.get_blob(repo, blob.digest, max_bytes=100)
        assert client.download_blob(repo, blob.digest, dest, max_bytes=4096) == 4096


def test_a_blob_streamed_past_its_bound_is_cut_there(
    registry: LocalRegistry, proxy: LyingProxy, repo: str
) -> None:
    """No usable Content-Length (the body runs to the end of the connection): the bound holds
    on the stream itself, and nothing past it is yielded."""
    with RegistryClient(registry.host) as client:
        blob = client.upload_bytes(repo, b"x" * (3 * MiB))
    proxy.rule = when("GET", f"/v2/{repo}/blobs/", Lie(headers={"Content-Length": "unknown"}))
    received = 0
    with (
        RegistryClient(proxy.host) as client,
        pytest.raises(ResponseTooLargeError, match=f"larger than the {2 * MiB} bytes"),
    ):
        for block in client.open_blob(repo, blob.digest, chunk_size=MiB, max_bytes=2 * MiB):
            received += len(block)
    assert received == 2 * MiB
    assert proxy.served == 1


# --- the Harbor API client (central) shares the transport ---------------------------------


def test_gzip_bomb_from_the_harbor_api_is_refused(bomb: bytes) -> None:
    with serve_http(_central(bomb, GZIP_JSON)) as server:
        code = (
            "from pht_airflow.central.registry.harbor import HarborAdmin\n"
            f"HarborAdmin({server_url(server)!r}, 'admin', 'pw').list_repositories('p')\n"
        )
        result = run_isolated(code)
    assert_refused(
        result, "ResponseTooLargeError", "listing the repositories of project p", "4 MiB"
    )


def test_slow_drip_from_the_harbor_api_fails_at_the_deadline() -> None:
    handler = _central(b"[]" + b" " * 40, {"Content-Type": "application/json"}, drip=True)
    with serve_http(handler) as server:
        code = (
            "from pht_airflow.central.registry.harbor import HarborAdmin\n"
            f"HarborAdmin({server_url(server)!r}, 'admin', 'pw', deadline=1.0)"
            ".list_repositories('p')\n"
        )
        result = run_isolated(code)
    assert_refused(
        result,
        "DeadlineExceededError",
        "listing the repositories of project p at Harbor",
        "did not finish within its deadline (1 s)",
    )
