"""Assembling the central service from plain settings: the database, the registry client, the
registry admin that copies trains (Harbor's API, or a plain distribution registry), and the
router over them.

The web app around the router (``pht_airflow.web.central_app``) and the server that runs it
are edges; they take the router built here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from ..errors import ConfigError
from ..oci import RegistryClient
from ..protocol import INCOMING_PROJECT, OUTBOX_PROJECT
from .db import make_engine, make_sessionmaker
from .registry import HarborAdmin, PlainRegistryAdmin, RegistryAdmin
from .router import Copier, Router


def registry_admin(
    client: RegistryClient,
    *,
    harbor_url: str | None,
    username: str | None,
    password: str | None,
) -> Copier:
    """What copies trains between projects: Harbor's API when ``harbor_url`` is given, else
    the plain distribution registry behind ``client``."""
    if harbor_url:
        return HarborAdmin(harbor_url, username or "", password or "")
    return PlainRegistryAdmin(client)


@contextmanager
def admin_for(
    *,
    registry_host: str | None,
    harbor_url: str | None,
    username: str | None,
    password: str | None,
    insecure: bool = False,
) -> Iterator[RegistryAdmin]:
    """A registry admin for provisioning stations (:mod:`.onboarding`): Harbor's API at
    ``harbor_url``, else the plain distribution registry at ``registry_host``; closed after."""
    if harbor_url:
        with HarborAdmin(harbor_url, username or "", password or "") as harbor:
            yield harbor
        return
    if not registry_host:
        raise ConfigError("name the registry to provision: Harbor's URL or a plain registry host")
    with RegistryClient(
        registry_host, username=username, password=password, insecure=insecure
    ) as client:
        yield PlainRegistryAdmin(client)


def build_router(
    *,
    db_url: str,
    registry_host: str,
    username: str | None,
    password: str | None,
    insecure: bool,
    harbor_url: str | None,
    hop_timeout: timedelta,
    incoming_approvals: int,
    incoming_project: str = INCOMING_PROJECT,
    outbox_project: str = OUTBOX_PROJECT,
) -> Router:
    """The central router over the database at ``db_url`` (tables created if missing) and the
    registry at ``registry_host``, copying through :func:`registry_admin`."""
    client = RegistryClient(registry_host, username=username, password=password, insecure=insecure)
    copier = registry_admin(client, harbor_url=harbor_url, username=username, password=password)
    return Router(
        make_sessionmaker(make_engine(db_url)),
        client,
        copier,
        incoming_project=incoming_project,
        outbox_project=outbox_project,
        hop_timeout=hop_timeout,
        incoming_approvals=incoming_approvals,
    )
