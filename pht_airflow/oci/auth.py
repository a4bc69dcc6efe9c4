"""Registry authentication: anonymous, HTTP Basic, and the Docker bearer-token challenge.

The flow is the one in the Docker registry "token authentication specification": a request
goes out anonymously; a ``401`` carries ``WWW-Authenticate``. ``Basic`` means "send the
username and password"; ``Bearer realm=…,service=…,scope=…`` means "fetch a token from
``realm`` for ``service`` and the scopes, then retry with ``Authorization: Bearer``".
Tokens are cached per set of scopes until shortly before they expire.

Nothing in this module puts a password or a token into a message or a log line.

The token service's answer is read with a limit (:data:`.transport.TOKEN_LIMIT` decoded
bytes) and within the deadline of the registry operation that needed the token, or within
``deadline`` seconds of its own when called on its own.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from ..errors import RegistryAuthError, RegistryError
from . import transport
from .transport import TOKEN_LIMIT

log = logging.getLogger(__name__)

# Token spec: "expires_in … If omitted, … 60 seconds". Refresh a little early so a token
# does not run out between our check and the registry's.
_DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 10.0
_MAX_TOKEN_LIFETIME = 86400.0
# The clock a cached token expires by (monotonic; a test moves it instead of waiting).
_clock = time.monotonic

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Challenge:
    """One challenge from a ``WWW-Authenticate`` header: scheme (lowercase) and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> list[str]:
        """The space-separated ``scope`` parameter as a list (empty if absent)."""
        return self.params.get("scope", "").split()


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header (RFC 7235) into challenges.

    Handles quoted values holding commas (``scope="repository:a:pull,push"``) and several
    challenges in one header (``Basic realm="x", Bearer realm="y"``).
    """
    challenges: list[Challenge] = []
    pos, n = 0, len(header)
    current: Challenge | None = None
    while pos < n:
        while pos < n and header[pos] in " \t,":
            pos += 1
        m = _TOKEN_RE.match(header, pos)
        if not m:
            break
        token, pos = m.group(0), m.end()
        j = pos
        while j < n and header[j] in " \t":
            j += 1
        if j < n and header[j] == "=" and current is not None:
            j += 1
            while j < n and header[j] in " \t":
                j += 1
            q = _QUOTED_RE.match(header, j)
            if q:
                value, pos = re.sub(r"\\(.)", r"\1", q.group(1)), q.end()
            else:
                v = _TOKEN_RE.match(header, j)
                value, pos = (v.group(0), v.end()) if v else ("", j)
            current.params[token.lower()] = value
        else:
            current = Challenge(scheme=token.lower())
            challenges.append(current)
    return challenges


def repository_scope(repository: str, actions: Sequence[str]) -> str:
    """A token scope such as ``repository:project/train:pull,push``."""
    return f"repository:{repository}:{','.join(actions)}"


_ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2}


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """One scope per resource with the union of its actions, in a canonical order.

    A registry's challenge may name actions in any order (distribution builds it from a Go
    map: ``push,pull`` one time, ``pull,push`` the next); merged with the client's own scope
    it must still make one scope per repository, so tokens are asked for and cached once.
    """
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        resource, sep, actions = scope.rpartition(":")
        if not sep or ":" not in resource:
            merged.setdefault(scope, [])  # not type:name:actions; pass it on as it is
            continue
        known = merged.setdefault(resource, [])
        known.extend(a for a in actions.split(",") if a and a not in known)
    return [
        f"{resource}:{','.join(sorted(actions, key=lambda a: (_ACTION_ORDER.get(a, 9), a)))}"
        if actions
        else resource
        for resource, actions in merged.items()
    ]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without port or brackets)."""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HeaderAuth(requests.auth.AuthBase):
    """Sets (or leaves out) the Authorization header. Always passing an ``auth`` object stops
    requests from filling one in from ``~/.netrc`` behind our back."""

    def __init__(self, value: str | None) -> None:
        self._value = value

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._value is not None:
            r.headers["Authorization"] = self._value
        else:
            r.headers.pop("Authorization", None)
        return r


@dataclass
class _Token:
    value: str
    expires_at: float


class RegistryAuth:
    """Holds credentials and tokens for one registry and answers its challenges.

    :param session: the (cookie-less) session used to reach the token service.
    :param registry: the registry host, used in messages only.
    :param username: user or robot account name; None for anonymous access.
    :param password: password or robot secret; never logged or put in a message.
    :param insecure: allow a token realm over plain http on a non-loopback host.
    :param timeout: seconds to wait for the token service on connect and on each read.
    :param deadline: total seconds for a token exchange outside a registry operation's own.
    """

    def __init__(
        self,
        session: requests.Session,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        timeout: float = 60.0,
        deadline: float = 300.0,
    ) -> None:
        self._session = session
        self._deadline = deadline
        self._registry = registry
        self._username = username
        self._password = password
        self._insecure = insecure
        self._timeout = timeout
        self._basic = False
        self._tokens: dict[tuple[str, ...], _Token] = {}

    @property
    def has_credentials(self) -> bool:
        """True if a username (and possibly a password) was given."""
        return self._username is not None

    @property
    def identity(self) -> str:
        """Who requests go out as, for messages: ``user 'name'`` or ``anonymous access``."""
        return f"user {self._username!r}" if self.has_credentials else "anonymous access"

    def _basic_header(self) -> str:
        raw = f"{self._username or ''}:{self._password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def auth_for(self, scopes: Sequence[str]) -> requests.auth.AuthBase:
        """The auth to attach to a request needing ``scopes``: Basic, a cached token, or none."""
        if self._basic:
            return _HeaderAuth(self._basic_header())
        token = self._tokens.get(tuple(sorted(scopes)))
        if token is not None and token.expires_at > _clock():
            return _HeaderAuth(f"Bearer {token.value}")
        return _HeaderAuth(None)

    def can_authorize(self, scopes: Sequence[str]) -> bool:
        """True if :meth:`auth_for` would send credentials (so a request need not be replayed)."""
        if self._basic:
            return True
        token = self._tokens.get(tuple(sorted(scopes)))
        return token is not None and token.expires_at > _clock()

    def handle_unauthorized(self, response: requests.Response, scopes: Sequence[str]) -> None:
        """Act on a ``401``: switch to Basic or fetch a bearer token, so a retry can succeed.

        Raises :class:`RegistryAuthError` when the challenge cannot be answered.
        """
        header = response.headers.get("WWW-Authenticate", "")
        challenges = {c.scheme: c for c in parse_www_authenticate(header)}
        key = tuple(sorted(scopes))
        self._tokens.pop(key, None)
        if "bearer" in challenges:
            self._fetch_token(challenges["bearer"], scopes)
            return
        if "basic" in challenges:
            if self._basic:
                raise RegistryAuthError(
                    f"registry {self._registry} rejected the username and password "
                    f"for user {self._username!r}",
                    status=401,
                    url=response.url,
                )
            if not self.has_credentials:
                raise RegistryAuthError(
                    f"registry {self._registry} requires a username and password; none given",
                    status=401,
                    url=response.url,
                )
            self._basic = True
            return
        raise RegistryAuthError(
            f"registry {self._registry} answered 401 with no usable challenge "
            f"(WWW-Authenticate: {header[:200]!r})",
            status=401,
            url=response.url,
        )

    def _fetch_token(self, challenge: Challenge, scopes: Iterable[str]) -> None:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(
                f"registry {self._registry} sent a Bearer challenge without a realm", status=401
            )
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryAuthError(
                f"registry {self._registry} sent a token realm that is not an http(s) URL: "
                f"{realm!r}",
                status=401,
            )
        if parts.scheme == "http" and not (self._insecure or is_loopback_host(parts.netloc)):
            # Credentials must not travel in clear text to a realm the registry names.
            raise RegistryAuthError(
                f"refusing to send credentials to the plain-http token realm {realm}; "
                "use https or insecure=True",
                status=401,
                url=realm,
            )
        wanted = merge_scopes([*challenge.scopes, *scopes])
        params: list[tuple[str, str]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in wanted)
        if self._username is not None:
            params.append(("account", self._username))
        auth = _HeaderAuth(self._basic_header() if self.has_credentials else None)
        log.debug("fetching a registry token from %s for %s", realm, wanted)
        what = f"the answer of the token service {realm}"
        with transport.operation(self._deadline, f"fetching a token from {realm}") as deadline:
            try:
                resp = self._session.get(
                    realm,
                    params=params,
                    auth=auth,
                    stream=True,
                    timeout=deadline.timeout(self._timeout),
                )
            except transport.TRANSPORT_ERRORS as exc:
                if deadline.is_over():
                    raise deadline.error() from None
                raise RegistryError(
                    f"cannot reach the token service {realm}: {type(exc).__name__}", url=realm
                ) from exc
            if resp.status_code != 200:
                transport.read_prefix(resp, transport.ERROR_BODY_LIMIT, deadline)
            else:
                raw = transport.read_body(resp, TOKEN_LIMIT, what, deadline)
        if resp.status_code in (401, 403):
            who = f"user {self._username!r}" if self.has_credentials else "anonymous access"
            raise RegistryAuthError(
                f"the token service {realm} for registry {self._registry} refused {who} "
                f"(HTTP {resp.status_code})",
                status=resp.status_code,
                url=realm,
            )
        if resp.status_code != 200:
            raise RegistryAuthError(
                f"the token service {realm} answered HTTP {resp.status_code}",
                status=resp.status_code,
                url=realm,
            )
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise RegistryAuthError(
                f"the token service {realm} did not answer JSON", status=resp.status_code, url=realm
            ) from exc
        value = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(
                f"the token service {realm} answered without a token", url=realm, status=200
            )
        lifetime = body.get("expires_in")
        # not lifetime > 0: also true for NaN
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or not lifetime > 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        lifetime = min(lifetime, _MAX_TOKEN_LIFETIME)  # also keeps a huge number from overflowing
        expires_at = _clock() + max(float(lifetime) - _EXPIRY_MARGIN, 1.0)
        self._tokens[tuple(sorted(scopes))] = _Token(value=value, expires_at=expires_at)
