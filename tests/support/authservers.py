"""Small real servers for the OCI tests, all bound to 127.0.0.1 and stopped by the caller.

- :func:`serve_http`: run a ``BaseHTTPRequestHandler`` class in a thread (cookie, paging).
- :func:`start_registry_with_auth`: a ``docker-registry`` with an ``auth:`` section
  (htpasswd or token), built from :func:`pht_airflow.dev.localregistry.registry_config`.
- :class:`TokenServer`: a Docker token service (the "token authentication specification")
  that checks Basic credentials and issues ES256 JWTs carrying an ``x5c`` certificate chain,
  which distribution 2.8 verifies against the ``rootcertbundle`` of its ``auth.token`` config.
- :class:`LyingProxy`: forwards to a real server (the registry, the token service) and lies
  where a test says so (:class:`Lie`): a gzip bomb (:func:`gzip_bomb`) for a body, a status,
  or the true answer dripped one byte at a time.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import http.client
import json
import shutil
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import bcrypt
import jwt
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pht_airflow.dev.localregistry import LocalRegistry, free_port, registry_config


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not write an access log to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a daemon thread until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


# --- docker-registry with auth ----------------------------------------------------------


def htpasswd_line(user: str, password: str) -> str:
    """One htpasswd line with a bcrypt hash in the ``$2y$`` form Apache writes."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}"


def start_registry_with_auth(
    root: Path, auth: dict[str, Any], timeout: float = 20
) -> LocalRegistry:
    """Start ``docker-registry`` on 127.0.0.1 with ``auth`` added to the usual config.

    Waits until ``/v2/`` answers at all (401 is the expected answer with auth on).
    """
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = registry_config(root, port)
    config["auth"] = auth
    config_path = root / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = root / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    reg = LocalRegistry(root=root, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log_path.read_text()[-2000:]}")
        try:
            requests.get(f"{reg.url}/v2/", timeout=1).close()
            return reg
        except requests.RequestException:
            time.sleep(0.1)
    reg.stop()
    raise RuntimeError(f"docker-registry did not answer on {reg.url}")


# --- token service -----------------------------------------------------------------------


@dataclass
class TokenRequest:
    """What the token service was asked: by whom, for which scopes, and what it answered."""

    account: str | None
    user: str | None
    service: str | None
    scopes: list[str]
    status: int


def _self_signed(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@dataclass
class TokenServer:
    """A token service for ``service``; grants every requested action to a known user.

    ``refuse`` makes it answer 401 to everyone. ``requests`` records every call.
    Anonymous callers (no Authorization) get a token with no access, as Docker Hub does.
    """

    users: dict[str, str]
    service: str = "pht-test"
    issuer: str = "pht-test-issuer"
    lifetime: int = 300
    refuse: bool = False
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed(self._key, "pht-test token signer")
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._serving = ExitStack()  # serve_http's context, closed by stop()

    @property
    def cert_pem(self) -> bytes:
        """The signing certificate: distribution's ``rootcertbundle``."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def realm(self) -> str:
        assert self._server is not None, "start() the token server first"
        return server_url(self._server) + "/token"

    def scope_requests(self) -> list[list[str]]:
        with self._lock:
            return [r.scopes for r in self.requests]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> TokenServer:
        owner = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                owner._handle(self)

        self._server = self._serving.enter_context(serve_http(Handler))
        return self

    def stop(self) -> None:
        self._serving.close()

    def _user(self, header: str | None) -> tuple[str | None, bool]:
        """(user name, credentials valid) from a Basic Authorization header."""
        if not header or not header.startswith("Basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None, False
        return user, self.users.get(user) == password

    def _issue(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name and user is not None:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        x5c = [base64.b64encode(der).decode("ascii")]
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": x5c})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qsl(parts.query)
        scopes = [v for k, v in query if k == "scope"]
        account = next((v for k, v in query if k == "account"), None)
        service = next((v for k, v in query if k == "service"), None)
        user, valid = self._user(handler.headers.get("Authorization"))
        status = 200
        if parts.path != "/token":
            status = 404
        elif self.refuse or (user is not None and not valid):
            status = 401
        with self._lock:
            self.requests.append(TokenRequest(account, user, service, scopes, status))
        if status != 200:
            body = json.dumps({"details": "access denied"}).encode()
            handler.send_response(status)
            if status == 401:
                handler.send_header("WWW-Authenticate", 'Basic realm="pht-test-token"')
        else:
            token = self._issue(user if valid else None, scopes)
            body = json.dumps(
                {"token": token, "access_token": token, "expires_in": self.lifetime}
            ).encode()
            handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# --- a lying proxy -----------------------------------------------------------------------

MiB = 1024 * 1024


@functools.lru_cache(maxsize=4)
def gzip_bomb(decoded: int = 1024 * MiB, fill: bytes = b" ") -> bytes:
    """A gzip stream of about ``decoded / 1000`` bytes that inflates to ``decoded`` bytes of
    ``fill`` (``decoded`` a multiple of 1 MiB). Built from one compressed MiB repeated: after
    a full flush the deflate state starts afresh, so equal input compresses to equal bytes."""
    if decoded % MiB or decoded <= 0:
        raise ValueError("decoded must be a positive multiple of 1 MiB")
    chunk = fill * (MiB // len(fill))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = decoded // MiB
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    last = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, decoded & 0xFFFFFFFF)
    return header + first + again * (count - 1) + last + trailer


def inflated_size(data: bytes) -> int:
    """How many bytes a gzip stream inflates to, counted in bounded memory (CRC checked)."""
    inflate = zlib.decompressobj(31)
    total, pending = 0, data
    while pending:
        total += len(inflate.decompress(pending, MiB))
        pending = inflate.unconsumed_tail
    total += len(inflate.flush())
    if not inflate.eof:
        raise ValueError("truncated gzip stream")
    return total


@dataclass
class Lie:
    """What the proxy answers instead of the truth.

    ``body`` replaces the upstream's body (None: keep it), sent with ``headers`` added and
    ``status`` (None: the upstream's); a ``Content-Length`` among ``headers`` is sent as
    given, whatever the body. ``drip`` sends the answer one byte per ``drip``
    seconds: the body only, or the status line and headers too with ``drip_headers``.
    ``rewrite`` turns the upstream's body into another (a token answer with a twist).
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    drip: float | None = None
    drip_headers: bool = False
    rewrite: Callable[[bytes], bytes] | None = None


_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class LyingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``).

    Every request goes to the upstream as it came; ``rule(method, path)`` may return a
    :class:`Lie` for the answer. ``served`` counts the lies told. A dripped answer stops when
    the client hangs up (or after ``max_drip`` seconds).
    """

    def __init__(
        self,
        upstream: str,
        rule: Callable[[str, str], Lie | None] | None = None,
        max_drip: float = 120.0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rule = rule
        self.max_drip = max_drip
        self.served = 0
        self._server: ThreadingHTTPServer | None = None
        self._serving = ExitStack()  # serve_http's context, closed by stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return server_url(self._server)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def __enter__(self) -> LyingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LyingProxy:
        owner = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._handle(self)

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

        self._server = self._serving.enter_context(serve_http(Handler))
        return self

    def stop(self) -> None:
        self._serving.close()

    def _forward(
        self, handler: BaseHTTPRequestHandler
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_HEADERS}
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        status, reason, headers, body = self._forward(handler)
        up = list(headers)
        lie = self.rule(handler.command, handler.path) if self.rule else None
        if lie is not None:
            self.served += 1
            status = lie.status or status
            if lie.rewrite is not None:
                body = lie.rewrite(body)
            if lie.body is not None:
                body = lie.body
                headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
            replaced = {k.lower() for k in lie.headers}
            headers = [(k, v) for k, v in headers if k.lower() not in replaced]
            headers.extend(lie.headers.items())
        head = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS:
                head.append(f"{name}: {value}\r\n".encode("latin-1"))
        length_text = str(len(body))
        if handler.command == "HEAD":  # no body; the length the upstream (or the lie) states
            if lie is None or lie.body is None:
                length_text = next((v for k, v in up if k.lower() == "content-length"), "0")
            body = b""
        stated = {k.lower(): v for k, v in lie.headers.items()} if lie is not None else {}
        length_text = stated.get("content-length", length_text)  # a lie may state any length
        if "content-length" in stated:  # the body ends where the connection does
            head.append(b"Connection: close\r\n")
            handler.close_connection = True
        head.append(f"Content-Length: {length_text}\r\n\r\n".encode("latin-1"))
        head_bytes = b"".join(head)
        try:
            if lie is not None and lie.drip is not None:
                self._drip(
                    handler,
                    head_bytes if lie.drip_headers else b"",
                    lie.drip,
                    prefix=b"" if lie.drip_headers else head_bytes,
                    body=body,
                )
            else:
                handler.wfile.write(head_bytes + body)
        except OSError:
            handler.close_connection = True  # the client hung up

    def _drip(
        self,
        handler: BaseHTTPRequestHandler,
        dripped_head: bytes,
        interval: float,
        *,
        prefix: bytes,
        body: bytes,
    ) -> None:
        if prefix:
            handler.wfile.write(prefix)
        stop = time.monotonic() + self.max_drip
        data = dripped_head + body
        for i in range(len(data)):
            if time.monotonic() > stop:
                break
            handler.wfile.write(data[i : i + 1])
            time.sleep(interval)  # the slowness under test, not a wait for another thread
        handler.close_connection = True
