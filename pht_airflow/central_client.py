"""A small client for the central service's REST API (used by the `pht` command)."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import (
    ConfigError,
    DeadlineExceededError,
    PhtError,
    RegistryError,
    ResponseTooLargeError,
)
from .oci import transport
from .oci.auth import is_loopback_host
from .oci.transport import CENTRAL_LIMIT, ERROR_BODY_LIMIT, Deadline

TOKEN_ENV = "PHT_CENTRAL_TOKEN"  # noqa: S105 - the variable's name, not a secret


class CentralError(PhtError):
    """The central service refused a request, could not be reached, answered too much (more
    than ``CENTRAL_LIMIT`` bytes) or too slowly (past the client's ``deadline``)."""


DEADLINE = 120.0
"""Default total seconds for one call to the central service."""


def _detail(raw: bytes) -> str:
    """The ``detail`` of a FastAPI error body, or the start of the body."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:300].decode("utf-8", "replace")
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:300]


def check_central_url(url: str) -> str:
    """Check a central service URL (https, or http for a loopback host); return it without
    a trailing slash. Raises :class:`ConfigError` saying what is wrong."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"central service URL {url!r} must be http(s)://host[:port]")
    if parts.scheme == "http" and not is_loopback_host(parts.netloc):
        raise ConfigError(
            f"plain http only for a loopback host; use https (refusing http to {parts.netloc})"
        )
    return url.rstrip("/")


class CentralClient:
    """Talks to ``url`` (https, or http for a loopback host); the token comes from
    ``$PHT_CENTRAL_TOKEN`` unless given."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 60,
        deadline: float = DEADLINE,
    ) -> None:
        self.url = check_central_url(url)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = timeout
        self.deadline = deadline
        self.session = transport.make_session()

    def _call(self, method: str, path: str, body: Any = None, write: bool = False) -> Any:
        """One request within ``deadline`` seconds in total; the answer is read with a limit
        of ``CENTRAL_LIMIT`` decoded bytes (an error body: ``ERROR_BODY_LIMIT``)."""
        headers = {}
        if write:
            if not self.token:
                raise ConfigError(f"set {TOKEN_ENV} to the central service's API token")
            headers["Authorization"] = f"Bearer {self.token}"
        what = f"{method} {path} at the central service {self.url}"
        try:
            with Deadline(self.deadline, what) as deadline, deadline.active():
                try:
                    resp = self.session.request(
                        method,
                        self.url + path,
                        json=body,
                        headers=headers,
                        stream=True,
                        timeout=deadline.timeout(self.timeout),
                    )
                except transport.TRANSPORT_ERRORS as exc:
                    if deadline.is_over():
                        raise deadline.error() from None
                    raise CentralError(
                        f"cannot reach the central service at {self.url}: {type(exc).__name__}"
                    ) from None
                if resp.status_code >= 400:
                    raw, _ = transport.read_prefix(resp, ERROR_BODY_LIMIT, deadline)
                    raise CentralError(
                        f"central service: {method} {path} failed ({resp.status_code}): "
                        f"{_detail(raw)}"
                    )
                raw = transport.read_body(resp, CENTRAL_LIMIT, f"the answer to {what}", deadline)
        except (ResponseTooLargeError, DeadlineExceededError, RegistryError) as exc:
            raise CentralError(str(exc)) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise CentralError(f"central service: {method} {path} did not answer JSON") from None

    def stations(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/stations"))

    def station(self, station_id: str) -> dict[str, Any]:
        """A station's directory entry with the schema document it published (or None)."""
        return dict(self._call("GET", f"/stations/{quote(station_id, safe='')}"))

    def publish_schema(self, document: dict[str, Any]) -> dict[str, Any]:
        """Send a station's signed schema document (no token: the signature authenticates)."""
        station = quote(str(document.get("station", "")), safe="")
        return dict(self._call("POST", f"/stations/{station}/schema", document))

    def add_station(self, **fields: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/stations", fields, write=True))

    def remove_station(self, station_id: str) -> dict[str, Any]:
        """Mark a station removed: it takes no new trains (its entry stays)."""
        return dict(self._call("DELETE", f"/stations/{quote(station_id, safe='')}", write=True))

    def trusted_keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/keys"))

    def add_trusted_key(self, name: str, role: str, key_pem: str) -> dict[str, Any]:
        body = {"name": name, "role": role, "key": key_pem}
        return dict(self._call("POST", "/keys", body, write=True))

    def submit(self, reference: str, creator_key_pem: str) -> dict[str, Any]:
        body = {"reference": reference, "creator_key": creator_key_pem}
        return dict(self._call("POST", "/trains", body, write=True))

    def train(self, train_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/trains/{train_id}"))

    def report_failure(self, report: dict[str, Any]) -> dict[str, Any]:
        """Send a station's signed report of a hop's outcome, failed, rejected or withheld
        (:func:`pht_airflow.hopreport.make_report`; no token: the signature authenticates).
        Answers ``{"accepted": bool, "why": ..., "train": ...}``."""
        return dict(self._call("POST", f"/trains/{report['train_id']}/failures", report))

    def retry(self, train_id: str, hop: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/trains/{train_id}/retry", {"hop": hop}, write=True))
