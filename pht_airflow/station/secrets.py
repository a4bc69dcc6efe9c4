"""Secrets a station config refers to, read only when a task needs them.

The station file never holds a secret: it says where one lives, as ``{file: PATH}``,
``{env: NAME}`` or ``{variable: NAME}`` (an Airflow Variable, which a secrets backend such as
HashiCorp Vault can serve). A :class:`SecretRef` reads it on demand; errors name the reference
and where in the file it was given, never the value. Airflow Variables and Connections are read
through :class:`Lookups` handed in by the Airflow edge, so this library never imports Airflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError


class Lookups(Protocol):
    """Where ``variable`` secrets and ``registry.connection_id`` are looked up.

    A station inside Airflow is handed Airflow's Variables and Connections (which a secrets
    backend such as HashiCorp Vault can serve) by the Airflow edge
    (:class:`pht_airflow.airflow.lookups.AirflowLookups`); the library itself never imports
    Airflow. Each method returns ``None`` for a name that is not set.
    """

    def variable(self, name: str) -> str | None:
        """The Variable's value, or ``None`` if it is not set."""
        ...

    def connection(self, conn_id: str) -> tuple[str | None, str | None] | None:
        """The Connection's (login, password), or ``None`` if it is not set."""
        ...

    def database(self, conn_id: str) -> Any:
        """A new DB-API connection to the database the Connection names (a ``sql`` data set),
        or ``None`` if it is not set. Inside Airflow: the provider hook's connection (the
        Postgres provider's ``PostgresHook``). The caller closes it."""
        ...


class NoLookups:
    """Outside Airflow: Variables and Connections cannot be read, and the error says so."""

    def variable(self, name: str) -> str | None:
        raise ConfigError(
            f"Airflow Variable {name!r} can only be read inside the station's Airflow "
            "(outside it, give the secret as file: or env:)"
        )

    def connection(self, conn_id: str) -> tuple[str | None, str | None] | None:
        raise ConfigError(
            f"Airflow Connection {conn_id!r} can only be read inside the station's Airflow "
            "(outside it, give registry.username and registry.password)"
        )

    def database(self, conn_id: str) -> Any:
        raise ConfigError(
            f"Airflow Connection {conn_id!r} (a sql data set's database) can only be opened "
            "where Airflow and its Postgres provider are installed (the station extra)"
        )


class DatabaseUrls:
    """Lookups for ``sql`` data sets from plain URLs (tests, tools): ``{conn_id: url}``.

    Variables and Connections are refused as outside Airflow; a database is opened with
    psycopg (PostgreSQL) from its ``postgresql://`` URL.
    """

    def __init__(self, urls: dict[str, str], fallback: Lookups | None = None) -> None:
        self._urls = dict(urls)
        self._fallback = fallback or NO_LOOKUPS

    def variable(self, name: str) -> str | None:
        return self._fallback.variable(name)

    def connection(self, conn_id: str) -> tuple[str | None, str | None] | None:
        return self._fallback.connection(conn_id)

    def database(self, conn_id: str) -> Any:
        url = self._urls.get(conn_id)
        if url is None:
            return self._fallback.database(conn_id)
        import psycopg

        from .data.model import DataSetError

        try:
            return psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            raise DataSetError(
                f"cannot connect to the database of Connection {conn_id!r}: "
                f"{str(exc).strip().splitlines()[0][:300]}"
            ) from None


NO_LOOKUPS = NoLookups()


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: ``file``, ``env`` or ``variable`` (an Airflow Variable)."""

    kind: str
    name: str
    where: str  # file:line, for messages
    lookups: Lookups = field(default=NO_LOOKUPS, compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.kind} {self.name!r}"

    def read_bytes(self) -> bytes:
        """The secret's bytes. Errors name the reference, never the value."""
        if self.kind == "file":
            try:
                return Path(self.name).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{self.where}: cannot read secret file {self.name} ({exc.strerror})"
                ) from None
        if self.kind == "env":
            value = os.environ.get(self.name)
            if not value:
                raise ConfigError(f"{self.where}: environment variable {self.name} is not set")
            return value.encode()
        try:
            value = self.lookups.variable(self.name)
        except ConfigError as exc:
            raise ConfigError(f"{self.where}: {exc}") from None
        if value is None:
            raise ConfigError(f"{self.where}: Airflow Variable {self.name!r} is not set")
        return value.encode()

    def read_text(self) -> str:
        """The secret as text, without a trailing newline."""
        return self.read_bytes().decode("utf-8").rstrip("\r\n")
