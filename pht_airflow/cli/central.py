"""``pht central``: run the central service, and manage its station directory and the
researchers' keys it trusts for submission by push."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..protocol import INCOMING_PROJECT, OUTBOX_PROJECT
from .options import central_url_option, json_option, registry_options, registry_password
from .render import err, out, plain, print_json, print_rows

if TYPE_CHECKING:
    from ..schemadoc import SchemaDocument


@click.group()
def central() -> None:
    """Run and manage the central service (station directory and router)."""


@central.command("serve")
@click.option(
    "--db",
    default="sqlite:///central.db",
    show_default=True,
    help="SQLAlchemy URL (a PostgreSQL URL works).",
)
@click.option("--registry", "registry_host", required=True, help="Registry host[:port].")
@click.option("--harbor-url", help="Harbor base URL: use Harbor's API for copies.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8600, show_default=True, type=int)
@click.option("--reconcile-seconds", default=30.0, show_default=True, type=float)
@click.option("--hop-timeout", default="24h", show_default=True, help="Fail a hop after this.")
@click.option(
    "--incoming-approvals",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Approver signatures (keys from `pht central keys`) a push to the incoming project "
    "needs before it is submitted.",
)
@click.option("--incoming", default=INCOMING_PROJECT, show_default=True)
@click.option("--outbox", default=OUTBOX_PROJECT, show_default=True)
@registry_options
def central_serve(
    db: str,
    registry_host: str,
    harbor_url: str | None,
    host: str,
    port: int,
    reconcile_seconds: float,
    hop_timeout: str,
    incoming_approvals: int,
    incoming: str,
    outbox: str,
    username: str | None,
    insecure: bool,
) -> None:
    """Serve the central service (OpenAPI docs at /docs).

    The API token comes from $PHT_CENTRAL_TOKEN, the webhook secret from
    $PHT_WEBHOOK_SECRET, registry credentials from --username and $PHT_REGISTRY_PASSWORD.
    """
    import uvicorn

    from ..central.service import build_router
    from ..errors import ConfigError
    from ..spec import parse_duration
    from ..web.central_app import create_app

    token, secret = os.environ.get("PHT_CENTRAL_TOKEN"), os.environ.get("PHT_WEBHOOK_SECRET")
    if not token or not secret:
        raise ConfigError("set PHT_CENTRAL_TOKEN and PHT_WEBHOOK_SECRET before serving")
    router = build_router(
        db_url=db,
        registry_host=registry_host,
        username=username,
        password=registry_password(username),
        insecure=insecure,
        harbor_url=harbor_url,
        hop_timeout=parse_duration(hop_timeout),
        incoming_approvals=incoming_approvals,
        incoming_project=incoming,
        outbox_project=outbox,
    )
    app = create_app(
        router,
        api_token=lambda: token or "",
        webhook_secret=lambda: secret or "",
        reconcile_seconds=reconcile_seconds,
    )
    err.print(f"central service on http://{host}:{port} (docs at /docs)", markup=False)
    uvicorn.run(app, host=host, port=port, log_level="info")


@central.group("stations")
def central_stations() -> None:
    """The station directory."""


@central_stations.command("add")
@central_url_option
@click.option("--id", "station_id", required=True, help="The station id (e.g. station-a).")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The station's signing public key (NAME.pub).",
)
@click.option(
    "--recipient-file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The station's age recipient (NAME.age.pub).",
)
@click.option("--project", help="The station's registry project (default: station-<id>).")
@click.option("--webhook-url", help="The station's webhook endpoint (Harbor posts pushes there).")
@click.option(
    "--provision",
    is_flag=True,
    help="First give the station its registry project, a robot account limited to it "
    "(pull+push) and the push webhook (Harbor); safe to re-run: each item says 'created', "
    "'updated' or 'already there', and an existing robot and its secret file are kept (never "
    "rotated). The robot's secret goes to --robot-secret-file (mode 0600), never to the "
    "terminal. The webhook secret comes from $PHT_WEBHOOK_SECRET.",
)
@click.option("--registry", "registry_host", help="With --provision: a plain registry host[:port].")
@click.option("--harbor-url", help="With --provision: Harbor's base URL (its API v2.0).")
@click.option(
    "--robot-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --provision: where the robot's secret is written [default: ./<id>.robot-secret].",
)
@registry_options
def central_stations_add(
    url: str,
    station_id: str,
    key_path: Path,
    recipient_file: Path,
    project: str | None,
    webhook_url: str | None,
    provision: bool,
    registry_host: str | None,
    harbor_url: str | None,
    robot_secret_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Register (or update) a station in the directory; with --provision, first create its
    project, robot account and webhook on the registry.

    Registry admin credentials: --username and $PHT_REGISTRY_PASSWORD.
    """
    from ..central_client import CentralClient
    from ..keys import load_public_key, load_recipient

    key, recipient = load_public_key(key_path).pem, load_recipient(recipient_file)
    if provision:
        from ..central.onboarding import provision_station
        from ..central.service import admin_for
        from ..errors import ConfigError
        from ..protocol import station_project

        if not webhook_url:
            raise ConfigError("--provision needs --webhook-url (the station's webhook endpoint)")
        if not harbor_url and not registry_host:
            raise ConfigError(
                "--provision needs --harbor-url (Harbor) or --registry HOST (a plain registry)"
            )
        with admin_for(
            registry_host=registry_host,
            harbor_url=harbor_url,
            username=username,
            password=registry_password(username),
            insecure=insecure,
        ) as admin:
            report = provision_station(
                admin,
                station_id,
                project or station_project(station_id),
                webhook_url,
                secret_file=robot_secret_file or Path(f"{station_id}.robot-secret"),
                webhook_secret=os.environ.get("PHT_WEBHOOK_SECRET"),
            )
        out.print(plain(report, limit=None, multiline=True), markup=False)
    row = CentralClient(url).add_station(
        id=station_id,
        key=key,
        recipient=recipient,
        project=project,
        webhook_url=webhook_url,
    )
    out.print(
        f"station {plain(row['id'])}: project {plain(row['project'])}, key {plain(row['key_id'])}",
        markup=False,
    )


@central_stations.command("remove")
@central_url_option
@click.argument("station_id")
@click.option("--registry", "registry_host", help="A plain registry host[:port] (no robot API).")
@click.option("--harbor-url", help="Harbor's base URL (its API v2.0): delete the robot there.")
@click.option("--yes", is_flag=True, help="Remove without asking.")
@registry_options
def central_stations_remove(
    url: str,
    station_id: str,
    registry_host: str | None,
    harbor_url: str | None,
    yes: bool,
    username: str | None,
    insecure: bool,
) -> None:
    """Remove a station: the directory takes it off every new route (a submission naming it
    is refused; a train whose next hop is it, or that is at it now, fails saying so), then
    its registry robot is deleted (Harbor) or you are told what to remove from the
    registry's auth config (plain registry). Its entry and its trains' history stay; running
    it again is safe.

    Registry admin credentials: --username and $PHT_REGISTRY_PASSWORD.
    """
    import sys

    from ..central.onboarding import revoke_station
    from ..central.service import admin_for
    from ..central_client import CentralClient
    from ..errors import ConfigError
    from .render import EXIT_ERROR

    if not harbor_url and not registry_host:
        raise ConfigError(
            "remove needs --harbor-url (Harbor: its robot is deleted) or --registry HOST (a "
            "plain registry: you are told what to remove)"
        )
    client = CentralClient(url)
    entry = client.station(station_id)
    question = (
        f"Remove station {plain(entry['id'])} (project {plain(entry['project'])}): no new "
        "trains, its trains in flight fail, its robot is revoked?"
    )
    if not yes and not click.confirm(question, default=False):
        err.print("not removed")
        sys.exit(EXIT_ERROR)
    row = client.remove_station(station_id)
    out.print(
        f"station {plain(row['id'])}: removed from the directory at {plain(row['removed'])} "
        "(takes no new trains)",
        markup=False,
    )
    with admin_for(
        registry_host=registry_host,
        harbor_url=harbor_url,
        username=username,
        password=registry_password(username),
        insecure=insecure,
    ) as admin:
        report = revoke_station(admin, row["id"], row["project"])
    out.print(plain(report, limit=None, multiline=True), markup=False)


@central_stations.command("list")
@central_url_option
@json_option
def central_stations_list(url: str, as_json: bool) -> None:
    """List the registered stations."""
    from ..central_client import CentralClient

    print_rows(CentralClient(url).stations(), "stations",
               {"id": "id", "project": "project", "key id": "key_id",
                "recipient": "recipient", "removed": "removed"}, as_json)  # fmt: skip


@central_stations.command("show")
@central_url_option
@click.argument("station_id")
@json_option
def central_stations_show(url: str, station_id: str, as_json: bool) -> None:
    """Show a station's directory entry and the shape of the data sets it publishes: per
    table its columns and types and a row count rounded down to the station's disclosure
    threshold (never values). The schema is checked against the station's key first."""
    from ..central_client import CentralClient
    from ..keys import public_key_from_pem
    from ..schemadoc import check_document

    row = CentralClient(url).station(station_id)
    # Shown only once it verifies with the station's key, whoever stored it.
    schema = row.get("schema")
    checked = None if schema is None else check_document(
        schema, public_key_from_pem(row["key"]), station=row["id"])  # fmt: skip
    if as_json:
        print_json(row)
        return
    _print_station(row, checked)


def _print_station(row: dict[str, Any], schema: SchemaDocument | None) -> None:
    from ..text import safe_text

    out.print(f"station {safe_text(row.get('id'))}", markup=False)
    for label, field in (("project", "project"), ("key id", "key_id"),
                         ("recipient", "recipient"), ("webhook", "webhook_url"),
                         ("removed", "removed")):  # fmt: skip
        out.print(f"  {label:<10} {safe_text(row.get(field) or '-')}", markup=False)
    if schema is None:
        out.print("no data sets published (the station runs `pht station publish-schema`)")
        return
    threshold = schema.min_cell_count
    out.print(
        f"{len(schema.datasets)} data set(s) published {schema.document['time']}, signed by "
        f"the station's key {schema.key_id}; row counts rounded down to a multiple of "
        f"{threshold}",
        markup=False,
    )
    for ds in schema.datasets:
        out.print(f"data set {safe_text(ds.name)} ({safe_text(ds.kind)})", markup=False)
        for t in ds.tables:
            rows = "rows not counted" if t.rows is None else (
                f"fewer than {threshold} rows" if t.rows == 0 else f"{t.rows} rows")  # fmt: skip
            files = f"; /pht/data/{{{', '.join(t.files)}}}" if t.files else ""
            out.print(f"  table {safe_text(t.name)}: {rows}{safe_text(files, limit=None)}",
                      markup=False)  # fmt: skip
            width = max((len(safe_text(c.name)) for c in t.columns), default=0)
            for c in t.columns:
                mark = " (identifier)" if c.identifier else ""
                out.print(f"    {safe_text(c.name):<{width}}  {safe_text(c.type)}{mark}",
                          markup=False)  # fmt: skip


@central.group("keys")
def central_keys() -> None:
    """Researchers' keys trusted for submission by a push to the incoming project."""


@central_keys.command("add")
@central_url_option
@click.option("--name", required=True, help="A name for the researcher (e.g. alice).")
@click.option(
    "--role",
    type=click.Choice(["creator", "approver"]),
    required=True,
    help="creator: their signed pushes submit trains; approver: their signatures count.",
)
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The researcher's signing public key (NAME.pub).",
)
def central_keys_add(url: str, name: str, role: str, key_path: Path) -> None:
    """Register (or update) a researcher's key. A train pushed to the incoming project is
    submitted, without `pht train submit`, once its creator and enough approvers signed it."""
    from ..central_client import CentralClient
    from ..keys import load_public_key

    row = CentralClient(url).add_trusted_key(name, role, load_public_key(key_path).pem)
    out.print(
        f"{plain(row['role'])} {plain(row['name'])}: key {plain(row['key_id'])}", markup=False
    )


@central_keys.command("list")
@central_url_option
@json_option
def central_keys_list(url: str, as_json: bool) -> None:
    """List the researchers' keys the central service trusts for submission by push."""
    from ..central_client import CentralClient

    print_rows(CentralClient(url).trusted_keys(), "trusted keys",
               {"name": "name", "role": "role", "key id": "key_id"}, as_json)  # fmt: skip
