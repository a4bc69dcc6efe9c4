"""Registry authentication against real registries: htpasswd Basic and the bearer-token flow.

Both are ``docker-registry`` processes (CNCF distribution 2.8) with an ``auth:`` section.
Distribution 2.8 accepts htpasswd over plain http (it does not insist on TLS), so the Basic
registry runs on http://127.0.0.1. The token registry trusts a certificate generated here;
:class:`support.authservers.TokenServer` signs ES256 JWTs with its key and sends the certificate in
the ``x5c`` header, which is how distribution finds the verifying key.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.authservers import (
    QuietHandler,
    TokenServer,
    htpasswd_line,
    serve_http,
    server_url,
    start_registry_with_auth,
)

from pht_airflow.dev.localregistry import LocalRegistry
from pht_airflow.errors import RegistryAuthError
from pht_airflow.oci import OCI_CONFIG, OCI_MANIFEST, RegistryClient, auth, sha256_digest

pytestmark = pytest.mark.registry

USER = "alice"
PASSWORD = "pw-Xq7!s3cret"  # distinctive, so a leak into a message is easy to spot
SERVICE = "pht-test"
ISSUER = "pht-test-issuer"


@pytest.fixture
def repo() -> str:
    return f"oci-auth/t{uuid.uuid4().hex[:12]}"


def push_and_pull(client: RegistryClient, repo: str) -> str:
    """Stream a blob (several PATCHes), push a manifest by tag, read both back."""
    layer = os.urandom(300_000)
    layer_desc = client.upload_blob(repo, io.BytesIO(layer), patch_size=100_000)
    config_desc = client.upload_bytes(repo, b"{}", OCI_CONFIG)
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_dict(),
            "layers": [layer_desc.to_dict()],
        }
    ).encode()
    digest = client.put_manifest(repo, "v1", raw, OCI_MANIFEST)
    assert client.resolve(repo, "v1") == digest
    assert client.get_manifest(repo, digest).raw == raw
    assert client.get_blob(repo, layer_desc.digest) == layer
    assert client.list_tags(repo) == ["v1"]
    return digest


def assert_no_secret(exc: BaseException) -> None:
    """Neither the message, nor the args, nor any chained cause holds the password."""
    seen: BaseException | None = exc
    while seen is not None:
        assert PASSWORD not in str(seen)
        assert PASSWORD not in repr(seen.args)
        seen = seen.__cause__ or seen.__context__


# --- htpasswd (Basic) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("basic-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(htpasswd_line(USER, PASSWORD) + "\n" + htpasswd_line("bob", "x") + "\n")
    reg = start_registry_with_auth(
        root, {"htpasswd": {"realm": "pht-test-basic", "path": str(htpasswd)}}
    )
    try:
        yield reg
    finally:
        reg.stop()


def test_basic_registry_really_requires_auth(basic_registry: LocalRegistry) -> None:
    resp = requests.get(f"{basic_registry.url}/v2/", timeout=10)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pht-test-basic"'


def test_basic_right_credentials(basic_registry: LocalRegistry, repo: str) -> None:
    with RegistryClient(basic_registry.host, username=USER, password=PASSWORD) as c:
        c.ping()
        push_and_pull(c, repo)
    with RegistryClient(basic_registry.host, username=USER, password=PASSWORD) as c:
        assert c.list_tags(repo) == ["v1"]  # a fresh client reads what the first one pushed


@pytest.mark.parametrize(
    ("user", "password"),
    [(USER, "wrong-password"), (USER, PASSWORD + "x"), ("mallory", PASSWORD)],
)
def test_basic_wrong_credentials(
    basic_registry: LocalRegistry, repo: str, user: str, password: str
) -> None:
    with RegistryClient(basic_registry.host, username=user, password=password) as c:
        with pytest.raises(RegistryAuthError) as info:
            c.upload_bytes(repo, b"data")
        assert f"user {user!r}" in str(info.value)
        assert info.value.status == 401
        assert not info.value.retryable
        assert password not in str(info.value)
        assert_no_secret(info.value)
        # a later request, now in Basic mode, fails the same way
        with pytest.raises(RegistryAuthError, match=f"user {user!r}") as again:
            c.ping()
        assert password not in str(again.value)


def test_basic_without_credentials(basic_registry: LocalRegistry, repo: str) -> None:
    with RegistryClient(basic_registry.host) as c:
        with pytest.raises(RegistryAuthError, match="requires a username") as info:
            c.get_manifest(repo, "v1")
        assert info.value.status == 401
        with pytest.raises(RegistryAuthError, match="requires a username"):
            c.upload_blob(repo, [b"x" * 1000])


# --- bearer token ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    server = TokenServer(users={USER: PASSWORD}, service=SERVICE, issuer=ISSUER).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[LocalRegistry]:
    root = tmp_path_factory.mktemp("token-registry")
    bundle = root / "token-signer.pem"
    bundle.write_bytes(token_server.cert_pem)
    reg = start_registry_with_auth(
        root,
        {
            "token": {
                "realm": token_server.realm,
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
def tokens(token_server: TokenServer) -> Iterator[TokenServer]:
    """The token server with an empty request log; settings restored afterwards."""
    token_server.reset()
    yield token_server
    token_server.refuse = False
    token_server.lifetime = 300


def test_token_registry_challenges(token_registry: LocalRegistry, tokens: TokenServer) -> None:
    resp = requests.get(f"{token_registry.url}/v2/", timeout=10)
    assert resp.status_code == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{tokens.realm}"' in challenge
    assert f'service="{SERVICE}"' in challenge


def test_token_push_and_pull(token_registry: LocalRegistry, tokens: TokenServer, repo: str) -> None:
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        push_and_pull(c, repo)
    assert tokens.requests, "the token service was never asked"
    assert all(r.status == 200 for r in tokens.requests)
    assert all(r.user == USER and r.account == USER for r in tokens.requests)
    assert all(r.service == SERVICE for r in tokens.requests)
    asked = {s for r in tokens.requests for s in r.scopes}
    assert f"repository:{repo}:pull" in asked
    assert f"repository:{repo}:pull,push" in asked
    # a token for one repository does not open another: the registry checks the claims
    with (
        RegistryClient(token_registry.host) as anonymous,
        pytest.raises(RegistryAuthError, match="refused anonymous access"),
    ):
        anonymous.get_manifest(repo, "v1")


def test_token_mount_asks_for_both_repositories(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str
) -> None:
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        desc = c.upload_bytes(repo, os.urandom(100))
        tokens.reset()
        assert c.mount_blob(repo + "-b", desc.digest, repo) is True
        assert c.blob_size(repo + "-b", desc.digest) == 100
    mount_scopes = set(tokens.requests[0].scopes)
    assert {f"repository:{repo}-b:pull,push", f"repository:{repo}:pull"} <= mount_scopes


def test_tokens_are_cached_per_scope(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str
) -> None:
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        push_and_pull(c, repo)
    tokens.reset()
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        # five pull operations on one repository: one token
        digest = c.resolve(repo, "v1")
        manifest = c.get_manifest(repo, digest)
        c.get_blob(repo, manifest.layers[0].digest)
        assert c.blob_size(repo, manifest.layers[0].digest) == 300_000
        assert c.list_tags(repo) == ["v1"]
        assert tokens.scope_requests() == [[f"repository:{repo}:pull"]]
        # pushes to the same repository: one more token, reused for every request
        for _ in range(3):
            c.upload_blob(repo, [os.urandom(1000)])
        assert tokens.scope_requests() == [
            [f"repository:{repo}:pull"],
            [f"repository:{repo}:pull,push"],
        ]
        # another repository is another scope
        assert c.list_tags(repo + "-other") == []
        assert len(tokens.requests) == 3
    # a new client starts with an empty cache
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        c.resolve(repo, "v1")
    assert len(tokens.requests) == 4


def test_token_refreshed_when_it_expires(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expires_in 12 s: the client keeps it for 2 s (it refreshes 10 s early). The tokens' clock
    # is moved by hand, so however slowly the requests go, only the moves count.
    now = [1000.0]
    monkeypatch.setattr(auth, "_clock", lambda: now[0])
    tokens.lifetime = 12
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        c.list_tags(repo)
        now[0] += 1.9
        c.list_tags(repo)
        assert len(tokens.requests) == 1
        now[0] += 0.2
        c.list_tags(repo)
        assert len(tokens.requests) == 2


def test_token_service_refuses(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str
) -> None:
    tokens.refuse = True
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        with pytest.raises(RegistryAuthError, match=r"refused user 'alice' \(HTTP 401\)") as info:
            c.list_tags(repo)
        assert info.value.status == 401
        assert tokens.realm in str(info.value)
        assert_no_secret(info.value)
    assert [r.status for r in tokens.requests] == [401]


def test_token_wrong_password(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str
) -> None:
    wrong = "not-" + PASSWORD
    with RegistryClient(token_registry.host, username=USER, password=wrong) as c:
        with pytest.raises(RegistryAuthError, match="refused user 'alice'") as info:
            c.upload_blob(repo, [b"x" * 10])
        assert wrong not in str(info.value)
        assert_no_secret(info.value)
    assert [(r.user, r.status) for r in tokens.requests] == [(USER, 401)]


def test_plain_http_realm_on_another_host_is_refused(repo: str) -> None:
    """Credentials never go to a clear-text realm on a non-loopback host (no request made)."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                'Bearer realm="http://auth.example.org/token",service="x",'
                f'scope="repository:{repo}:pull"',
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve_http(Handler) as server:
        host = server_url(server).removeprefix("http://")
        with RegistryClient(host, username=USER, password=PASSWORD) as c:
            with pytest.raises(RegistryAuthError, match="refusing to send credentials") as info:
                c.list_tags(repo)
            assert_no_secret(info.value)


def test_token_realm_sees_digest_pull(
    token_registry: LocalRegistry, tokens: TokenServer, repo: str, tmp_path: Path
) -> None:
    """A streamed download under a token: digest-checked, written to a file."""
    with RegistryClient(token_registry.host, username=USER, password=PASSWORD) as c:
        data = os.urandom(2 * 1024 * 1024 + 1)
        desc = c.upload_blob(repo, io.BytesIO(data))
        out = tmp_path / "blob"
        with out.open("wb") as f:
            assert c.download_blob(repo, desc.digest, f) == len(data)
    assert sha256_digest(out.read_bytes()) == desc.digest


def test_challenged_scopes_merge_with_ours_whatever_the_action_order() -> None:
    """Regression: distribution names a challenge's actions from a Go map, so the same scope
    comes as ``push,pull`` or ``pull,push``; merged with ours it must stay one scope."""
    from pht_airflow.oci.auth import merge_scopes

    assert merge_scopes(["repository:a/b:push,pull", "repository:a/b:pull,push"]) == [
        "repository:a/b:pull,push"
    ]
    assert merge_scopes(["repository:a/b:pull", "repository:c:pull", "repository:a/b:push"]) == [
        "repository:a/b:pull,push",
        "repository:c:pull",
    ]
    assert merge_scopes(["registry:catalog:*"]) == ["registry:catalog:*"]
