"""A small client for the central service's REST API (used by the `pht` command)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from .errors import ConfigError, PhtError
from .oci.auth import is_loopback_host

TOKEN_ENV = "PHT_CENTRAL_TOKEN"  # noqa: S105 - the variable's name, not a secret


class CentralError(PhtError):
    """The central service refused a request or could not be reached."""


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

    def __init__(self, url: str, token: str | None = None, timeout: float = 60) -> None:
        self.url = check_central_url(url)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def _call(self, method: str, path: str, body: Any = None, write: bool = False) -> Any:
        headers = {}
        if write:
            if not self.token:
                raise ConfigError(f"set {TOKEN_ENV} to the central service's API token")
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self.session.request(
                method, self.url + path, json=body, headers=headers, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise CentralError(
                f"cannot reach the central service at {self.url}: {type(exc).__name__}"
            ) from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text[:300]
            raise CentralError(
                f"central service: {method} {path} failed ({resp.status_code}): {detail}"
            )
        return resp.json()

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
        """Send a station's signed failure report (no token: the signature authenticates)."""
        return dict(self._call("POST", f"/trains/{report['train_id']}/failures", report))

    def retry(self, train_id: str, hop: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/trains/{train_id}/retry", {"hop": hop}, write=True))
