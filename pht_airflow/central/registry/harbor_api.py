"""A connection to Harbor's REST API v2.0: the request conventions HarborAdmin is built on.

The API is ``/api/v2.0`` (swagger ``api/v2.0/swagger.yaml`` in goharbor/harbor).
:class:`HarborAPI` holds the session and one method per call shape; the Harbor-specific
behaviour it relies on:

- Basic auth on every request and **no cookie jar**: Harbor answers each API call with a
  ``sid`` session cookie, and a request that carries that cookie back is treated as a
  browser session, whose unsafe methods then need a CSRF token (HTTP 403 "CSRF token
  invalid"). The session here refuses every cookie.
- ``X-Is-Resource-Name: true`` on project-scoped requests, so a project name that looks
  like a number is never read as a project id.
- Repository names inside a project that contain ``/`` are URL-encoded twice in the path
  (``a/b`` → ``a%252Fb``), as the swagger's ``repository_name`` parameter demands.

Error messages name the operation, Harbor's ``errors[].message`` and its request id, never
the password or a robot secret. Answers are read bounded (:mod:`pht_airflow.oci.transport`):
at most ``LIST_LIMIT`` decoded bytes, an error body ``ERROR_BODY_LIMIT``, each call within
``deadline`` seconds in total.
"""

from __future__ import annotations

import http.cookiejar
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ...errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
)
from ...oci import transport
from ...oci.auth import is_loopback_host
from ...oci.transport import ERROR_BODY_LIMIT, LIST_LIMIT, Deadline
from .admin import _MAX_PAGES, _PAGE_SIZE


class _RefuseCookies(http.cookiejar.DefaultCookiePolicy):
    """Keep no cookie: Harbor treats a returned ``sid`` as a browser session (CSRF)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _repo_path(project: str, name: str) -> str:
    # Harbor: a repository name with '/' is URL-encoded twice ("a/b" -> "a%252Fb").
    return f"/projects/{_q(project)}/repositories/{_q(_q(name))}"


def _harbor_detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for e in errors:
            if isinstance(e, dict):
                code, message = str(e.get("code") or "").strip(), str(e.get("message") or "")
                parts.append(f"{code}: {message}" if code else message)
        if parts:
            return "; ".join(parts)[:500]
    return resp.reason or f"HTTP {resp.status_code}"


class HarborAPI:
    """A session with Harbor's REST API v2.0, the base of :class:`~.harbor.HarborAdmin`.

    Checks the URL rules, sends Basic auth on every request and keeps no cookie; the
    constructor's arguments are documented on :class:`~.harbor.HarborAdmin`.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify_tls: bool | str = True,
        insecure: bool = False,
        timeout: float = 60.0,
        deadline: float = 300.0,
    ) -> None:
        url = (base_url or "").strip().rstrip("/")
        if "://" not in url:
            url = ("http://" if is_loopback_host(url.split("/", 1)[0]) else "https://") + url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"Harbor URL {base_url!r} must be https://host[:port]")
        if parts.scheme == "http" and not (insecure or is_loopback_host(parts.netloc)):
            raise ConfigError(
                f"refusing plain http to Harbor at {parts.netloc}: the API carries "
                "credentials; use https (or insecure=True on a trusted network)"
            )
        path = parts.path.rstrip("/")
        if path.endswith("/api/v2.0"):
            path = path[: -len("/api/v2.0")]
        self.host = parts.netloc
        self.api = f"{parts.scheme}://{parts.netloc}{path}/api/v2.0"
        self.username = username
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.deadline = deadline
        self._secrets: set[str] = {password} if password else set()
        self._session = transport.make_session()  # no proxies or ~/.netrc; deadlines can cut
        self._session.cookies.set_policy(_RefuseCookies())
        self._session.auth = requests.auth.HTTPBasicAuth(username, password)
        self._session.verify = verify_tls
        self._session.headers.update({"Accept": "application/json", "User-Agent": "pht-airflow"})

    def close(self) -> None:
        self._session.close()

    # --- plumbing ---------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] = (200,),
        allow: tuple[int, ...] = (),
        params: dict[str, Any] | None = None,
        body: Any = None,
        by_name: bool = False,
    ) -> requests.Response:
        """One API call; statuses in ``ok`` and ``allow`` return, others raise."""
        headers = {"X-Request-Id": uuid.uuid4().hex}
        if by_name:
            headers["X-Is-Resource-Name"] = "true"
        with Deadline(self.deadline, f"{what} at Harbor {self.host}") as deadline:
            try:
                with deadline.active():
                    resp = self._session.request(
                        method,
                        self.api + path,
                        params=params,
                        json=body,
                        headers=headers,
                        timeout=deadline.timeout(self.timeout),
                        allow_redirects=False,
                        stream=True,
                    )
            except transport.TRANSPORT_ERRORS as exc:
                if deadline.is_over():
                    raise deadline.error() from None
                raise RegistryError(
                    f"cannot reach Harbor at {self.host} ({what}): {type(exc).__name__}",
                    url=self.api + path,
                ) from None
            if resp.status_code in ok or resp.status_code in allow:
                return transport.ensure_loaded(
                    resp, LIST_LIMIT, f"the answer of Harbor {self.host} to {what}", deadline
                )
            raw, complete = transport.read_prefix(resp, ERROR_BODY_LIMIT, deadline)
            resp._content = raw if complete else b""  # _harbor_detail reads it
        raise self._error(resp, what, headers["X-Request-Id"])

    def _error(self, resp: requests.Response, what: str, request_id: str) -> RegistryError:
        status = resp.status_code
        detail = _harbor_detail(resp)
        rid = resp.headers.get("X-Request-Id") or request_id
        where = f" [request id {rid}]"
        url = resp.url
        if status == 401:
            message = (
                f"Harbor {self.host} rejected the credentials of {self.username!r} while "
                f"{what} (HTTP 401: {detail}){where}"
            )
            return RegistryAuthError(self._redact(message), status=status, url=url)
        if status == 403:
            hint = (
                ": the request carried a session cookie, which API clients must not send"
                if "csrf" in detail.lower()
                else f": {self.username!r} lacks the permission"
            )
            message = f"Harbor {self.host} refused {what} (HTTP 403: {detail}){hint}{where}"
            return RegistryAuthError(self._redact(message), status=status, url=url)
        message = f"Harbor {self.host}: {what} failed (HTTP {status}: {detail}){where}"
        if status == 404:
            return NotFoundError(self._redact(message), status=status, url=url)
        if status == 409:
            return ConflictError(self._redact(message), status=status, url=url)
        if status == 412:
            message = (
                f"Harbor {self.host}: {what} failed: a precondition does not hold (HTTP 412: "
                f"{detail}; an immutable tag rule, or a project that is not empty){where}"
            )
        return RegistryError(self._redact(message), status=status, url=url)

    def _json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise RegistryError(
                f"Harbor {self.host}: {what}: the answer is not JSON", status=resp.status_code
            ) from None

    def _pages(
        self,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        by_name: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paged list endpoint (``page``/``page_size``)."""
        for page in range(1, _MAX_PAGES + 1):
            query = {**(params or {}), "page": page, "page_size": _PAGE_SIZE}
            resp = self._request("GET", path, what=what, params=query, by_name=by_name)
            items = self._json(resp, what)
            if not isinstance(items, list):
                raise RegistryError(f"Harbor {self.host}: {what}: expected a JSON list")
            yield from (i for i in items if isinstance(i, dict))
            total = resp.headers.get("X-Total-Count")
            if len(items) < _PAGE_SIZE or (
                total is not None and total.isdigit() and page * _PAGE_SIZE >= int(total)
            ):
                return
        raise RegistryError(f"Harbor {self.host}: {what}: more than {_MAX_PAGES} pages")
