"""The central service's directory: stations (key, recipient, project, the described schema
of the data sets they publish) and researchers' keys.

The router reads a train's route from here; the REST API (:mod:`pht_airflow.web.central_app`)
and ``pht central stations|keys`` write it. Every entry is validated before it is stored: a
station id is a DNS label, a key is a P-256 public key, a recipient an age X25519 recipient,
a project a valid repository name, a schema document signed by the station's key in the
directory (:mod:`pht_airflow.schemadoc`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import PhtError
from ..keys import public_key_from_pem, validate_recipient
from ..oci.reference import check_repository
from ..protocol import STATION_ID, station_project
from ..schemadoc import check_document
from .db import StationRow, StationSchemaRow, TrustedKeyRow, utcnow


class RouterError(PhtError):
    """A request to the router is invalid (unknown station, unknown train, bad state)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _check_webhook_url(url: str) -> None:
    """A station's webhook URL is informational, but stored and shown: an http(s) URL of at
    most 500 characters, printable, without spaces."""
    if len(url) > 500:
        raise RouterError("webhook_url is longer than 500 characters")
    try:
        parts = urlsplit(url) if url.isprintable() and " " not in url else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise RouterError(f"webhook_url {url[:60]!r} must be an http(s) URL")


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
        """Register or update a station (validating its key, recipient and project).

        Adding a removed station again puts it back (``removed`` cleared)."""
        if not STATION_ID.fullmatch(station_id or ""):
            raise RouterError(f"station id {station_id!r} must be lowercase letters, digits, '-'")
        key = public_key_from_pem(key_pem, f"station {station_id} key")
        validate_recipient(recipient, f"station {station_id} recipient")
        project = project or station_project(station_id)
        check_repository(project)
        if webhook_url is not None:
            _check_webhook_url(webhook_url)
        with self.sessions.begin() as s:
            row = s.get(StationRow, station_id) or StationRow(id=station_id)
            if row.key_id is not None and row.key_id != key.key_id:
                # A schema signed by the old key no longer verifies with the directory's key.
                old = s.get(StationSchemaRow, station_id)
                if old is not None:
                    s.delete(old)
            row.key_pem, row.key_id, row.recipient = key.pem, key.key_id, recipient.strip()
            row.project, row.webhook_url = project, webhook_url
            row.removed = None
            s.add(row)
            return row.to_dict()

    def remove_station(self, station_id: str) -> dict[str, Any]:
        """Mark a station removed: it takes no new trains. Its row stays (trains' hops name
        it); removing it again changes nothing. Returns its entry."""
        with self.sessions.begin() as s:
            return self._mark_removed(s, station_id).to_dict()

    @staticmethod
    def _mark_removed(s: Session, station_id: str) -> StationRow:
        row = s.get(StationRow, station_id) if isinstance(station_id, str) else None
        if row is None:
            raise RouterError(f"no station {station_id!r} in the directory", 404)
        if row.removed is None:
            row.removed = utcnow()
        return row

    def stations(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [r.to_dict() for r in s.scalars(select(StationRow).order_by(StationRow.id))]

    def station(self, station_id: str) -> dict[str, Any]:
        """A station's entry, with the schema document it published (``schema``, or None)."""
        with self.sessions() as s:
            row = s.get(StationRow, station_id)
            if row is None:
                raise RouterError(f"no station {station_id!r} in the directory", 404)
            schema = s.get(StationSchemaRow, station_id)
            return {**row.to_dict(), "schema": schema.document if schema else None}

    def publish_schema(self, station_id: str, document: Any) -> dict[str, Any]:
        """Store a station's signed schema document, replacing its previous one.

        The document must be signed by the station's key in the directory and newer than
        the stored one (a replayed older document is refused with 409). The replacement is
        one conditional UPDATE, so of two documents published at once the newer one stays.
        """
        try:
            return self._store_schema(station_id, document)
        except IntegrityError:  # another publish for a first schema won the race
            raise RouterError(
                f"{station_id} published another schema at the same time; publish again", 409
            ) from None

    def _store_schema(self, station_id: str, document: Any) -> dict[str, Any]:
        with self.sessions.begin() as s:
            row = s.get(StationRow, station_id)
            if row is None:
                raise RouterError(f"no station {station_id!r} in the directory", 404)
            checked = check_document(document, public_key_from_pem(row.key_pem), station=station_id)
            made = checked.time.replace(tzinfo=None)
            fields = {"document": checked.document, "key_id": checked.key_id, "made": made}
            replaced = s.execute(
                update(StationSchemaRow)
                .where(StationSchemaRow.station_id == station_id, StationSchemaRow.made < made)
                .values(**fields, received=utcnow())
            )
            if not getattr(replaced, "rowcount", 0):
                stored = s.get(StationSchemaRow, station_id)
                if stored is not None:
                    raise RouterError(
                        f"{station_id} already published a schema made at "
                        f"{stored.made.isoformat()}Z; this one is not newer",
                        409,
                    )
                s.add(StationSchemaRow(station_id=station_id, **fields))
        return {
            "station": station_id,
            "time": checked.document["time"],
            "datasets": [d.name for d in checked.datasets],
        }

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
