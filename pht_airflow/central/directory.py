"""The central service's directory: stations (key, recipient, project) and researchers' keys.

The router reads a train's route from here; the REST API (:mod:`pht_airflow.web.central_app`)
and ``pht central stations|keys`` write it. Every entry is validated before it is stored: a
station id is a DNS label, a key is a P-256 public key, a recipient an age X25519 recipient,
a project a valid repository name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import PhtError
from ..keys import public_key_from_pem, validate_recipient
from ..oci.reference import check_repository
from ..protocol import STATION_ID, station_project
from .db import StationRow, TrustedKeyRow


class RouterError(PhtError):
    """A request to the router is invalid (unknown station, unknown train, bad state)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Directory:
    """Stations and researchers' keys, over a database session factory."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # --- station directory ------------------------------------------------------------

    def add_station(
        self,
        station_id: str,
        key_pem: str,
        recipient: str,
        *,
        project: str | None = None,
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        """Register or update a station (validating its key, recipient and project)."""
        if not STATION_ID.fullmatch(station_id or ""):
            raise RouterError(f"station id {station_id!r} must be lowercase letters, digits, '-'")
        key = public_key_from_pem(key_pem, f"station {station_id} key")
        validate_recipient(recipient, f"station {station_id} recipient")
        project = project or station_project(station_id)
        check_repository(project)
        with self.sessions.begin() as s:
            row = s.get(StationRow, station_id) or StationRow(id=station_id)
            row.key_pem, row.key_id, row.recipient = key.pem, key.key_id, recipient.strip()
            row.project, row.webhook_url = project, webhook_url
            s.add(row)
            return row.to_dict()

    def stations(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [r.to_dict() for r in s.scalars(select(StationRow).order_by(StationRow.id))]

    def station(self, station_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            row = s.get(StationRow, station_id)
            if row is None:
                raise RouterError(f"no station {station_id!r} in the directory", 404)
            return row.to_dict()

    # --- researchers' keys (submission by pushing to the incoming project) -------------

    def add_trusted_key(self, name: str, key_pem: str, role: str) -> dict[str, Any]:
        """Register or update a researcher's key as ``creator`` or ``approver``."""
        if role not in ("creator", "approver"):
            raise RouterError(f"role {role!r} must be creator or approver")
        if not STATION_ID.fullmatch(name or ""):
            raise RouterError(f"name {name!r} must be lowercase letters, digits, '-'")
        key = public_key_from_pem(key_pem, f"{role} {name} key")
        with self.sessions.begin() as s:
            other = s.scalars(select(TrustedKeyRow).where(TrustedKeyRow.key_id == key.key_id))
            clash = other.first()
            if clash is not None and clash.name != name:
                raise RouterError(f"key {key.key_id} is already registered as {clash.name!r}", 409)
            row = s.get(TrustedKeyRow, name) or TrustedKeyRow(name=name)
            row.key_pem, row.key_id, row.role = key.pem, key.key_id, role
            s.add(row)
            return row.to_dict()

    def trusted_keys(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(TrustedKeyRow).order_by(TrustedKeyRow.name))
            return [r.to_dict() for r in rows]
