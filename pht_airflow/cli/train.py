"""``pht train``: create, build, approve and follow trains (and hand them to the central
service)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from .options import (
    json_option,
    passphrase_options,
    read_passphrase,
    registry_client,
    registry_options,
    registry_password,
)
from .render import (
    EXIT_ERROR,
    err,
    out,
    plain,
    print_json,
    print_timeline,
    render_spec,
    shown,
    signer_dict,
    signers_table,
)

if TYPE_CHECKING:
    from ..results import HopStatus


#: Longest build step shown in full by ``pht train approve`` (longer ones end in an ellipsis).
HISTORY_LIMIT = 2000


@click.group()
def train() -> None:
    """Create, build, approve and follow trains."""


@train.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--base-image",
    default="pht-local/python:3.11",
    show_default=True,
    help="Base image for the Dockerfile (must exist locally or in a registry the "
    "station's engine can reach).",
)
def train_init(folder: Path, base_image: str) -> None:
    """Write a starter analysis (Dockerfile, analysis.py, README) into FOLDER."""
    from ..researcher.train import init_train

    for path in init_train(folder, base_image=base_image):
        out.print(f"wrote {path}", markup=False)


@train.command("build")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--route", required=True, help="Comma-separated station ids, in visiting order.")
@click.option(
    "--mode",
    type=click.Choice(["sequential", "parallel"]),
    default="sequential",
    show_default=True,
)
@click.option("--dataset", required=True, help="Name of the data set each station maps.")
@click.option(
    "--creator-key",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Your private signing key (NAME.key); the train is signed with it as creator.",
)
@click.option(
    "--creator-recipient",
    help="Your age recipient (default: NAME.age.pub beside the creator key).",
)
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    help="A further age recipient allowed to read results; repeat for several.",
)
@click.option(
    "--visibility",
    type=click.Choice(["final", "all"]),
    default="final",
    show_default=True,
    help="final: only the last sequential hop is readable by the recipients; all: every hop.",
)
@click.option("--expires", default="30d", show_default=True, help="Lifetime, e.g. 30d, 12h.")
@click.option("--name", "train_name", help="Train name (default: the folder's name).")
@click.option(
    "--stations",
    "stations_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Station directory YAML with each station's public key and recipient.",
)
@click.option("--central", help="Central service URL to read the station directory from.")
@click.option(
    "--push",
    "push_to",
    required=True,
    help="REGISTRY/PROJECT to push to; the train becomes REGISTRY/PROJECT/<train-id>:train.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@passphrase_options
@registry_options
def train_build(
    folder: Path,
    route: str,
    mode: str,
    dataset: str,
    creator_key: Path,
    creator_recipient: str | None,
    recipients: tuple[str, ...],
    visibility: str,
    expires: str,
    train_name: str | None,
    stations_file: Path | None,
    central: str | None,
    push_to: str,
    as_json: bool,
    passphrase_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Build FOLDER into a train, push it as <train-id>:train and sign it as creator."""
    import docker

    from ..keys import load_signing_key, validate_recipient
    from ..oci import Reference
    from ..researcher.train import (
        build_image,
        load_station_directory,
        make_spec,
        push_image,
    )
    from ..signing import sign
    from ..spec import parse_duration

    if bool(stations_file) == bool(central):
        raise click.UsageError("give exactly one of --stations FILE or --central URL")
    if central:
        from ..central_client import CentralClient
        from ..researcher.train import StationInfo

        directory = {
            s["id"]: StationInfo(s["id"], s["key"], s["recipient"], s.get("project"))
            for s in CentralClient(central).stations()
        }
        source = central
    else:
        assert stations_file is not None
        directory = load_station_directory(stations_file)
        source = str(stations_file)
    ids = [s.strip() for s in route.split(",") if s.strip()]
    missing = [s for s in ids if s not in directory]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"station(s) {', '.join(missing)} not in the directory {source}")
    if creator_recipient is None:
        sibling = creator_key.with_name(creator_key.name.rsplit(".", 1)[0] + ".age.pub")
        if not sibling.is_file():
            raise click.UsageError(f"give --creator-recipient (no {sibling.name} beside the key)")
        creator_recipient = sibling.read_text().strip()
    key = load_signing_key(creator_key, read_passphrase(passphrase_file))
    spec = make_spec(
        name=train_name or folder.resolve().name,
        creator_id=creator_key.name.rsplit(".", 1)[0],
        creator_key_id=key.key_id,
        creator_recipient=validate_recipient(creator_recipient),
        route=[directory[s] for s in ids],
        mode=mode,
        dataset=dataset,
        recipients=[validate_recipient(r) for r in recipients],
        visibility=visibility,
        expires_in=parse_duration(expires),
    )
    target = Reference.parse(f"{push_to.rstrip('/')}/{spec.id}:train")
    engine = docker.from_env()
    password = registry_password(username)
    with err.status(f"building {folder}"):
        build_image(
            engine,
            folder,
            str(target),
            spec,
            log=lambda s: err.print(plain(s, limit=None), markup=False),
        )
    with err.status(f"pushing {target}"):
        digest = push_image(engine, target, username=username, password=password)
    with registry_client(target, username, insecure) as client:
        pinned = target.with_digest(digest)
        sign(client, pinned, key, role="creator", signer=spec.creator.id)
    if as_json:
        print_json({"reference": str(target), "digest": digest, "id": spec.id})
        return
    out.print(f"train {spec.id} pushed and signed: {target.name}@{digest}", markup=False)


@train.command("approve")
@click.argument("ref")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Your private signing key as a reviewer.",
)
@click.option("--signer", help="Your name in the signature (default: the key file's base name).")
@click.option("--yes", is_flag=True, help="Approve without asking (after showing the train).")
@click.option("--no-files", is_flag=True, help="Do not list the image's files (skips layers).")
@click.option("--max-files", default=200, show_default=True, help="List at most this many files.")
@click.option(
    "--all-layers",
    is_flag=True,
    help="List the files of every layer, the base image's too (default: only the train's own "
    "layers, with its small text files shown).",
)
@passphrase_options
@registry_options
def train_approve(
    ref: str,
    key_path: Path,
    signer: str | None,
    yes: bool,
    no_files: bool,
    max_files: int,
    all_layers: bool,
    passphrase_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Show a train for review (spec, build history, the files and code it adds on top of its
    base image), then sign it as approver."""
    from ..keys import load_signing_key
    from ..oci import Reference
    from ..researcher.inspect import describe_image, image_files, read_train, train_code
    from ..signing import sign

    if max_files < 1:
        raise click.UsageError("--max-files must be at least 1")

    key = load_signing_key(key_path, read_passphrase(passphrase_file))
    with registry_client(Reference.parse(ref), username, insecure) as client:
        view = read_train(client, ref, check_expiry=True)
        pinned, spec, digest = view.reference, view.spec, view.digest
        render_spec(spec, digest, pinned.name)
        image = describe_image(client, pinned)
        history = Table(title="build history", title_justify="left")
        history.add_column("step")
        history.add_column("created by")
        for i, step in enumerate(image.history):
            history.add_row(str(i), shown(step, limit=HISTORY_LIMIT))
        out.print(history)
        entrypoint, cmd = plain(image.entrypoint, limit=1000), plain(image.cmd, limit=1000)
        out.print(f"entrypoint: {entrypoint}  cmd: {cmd}", markup=False)
        for label, value in sorted(image.labels.items()):
            out.print(f"label {plain(label)} = {plain(value, limit=1000)}", markup=False)
        if not no_files and all_layers:
            with err.status("listing the image's files"):
                files = image_files(client, pinned, image.manifest, max_files)
            out.print(f"files ({len(files)} shown):", markup=False)
            for name in files:
                out.print(f"  {plain(name, limit=1000)}", markup=False)
        elif not no_files:
            with err.status("reading the train's own layers"):
                code = train_code(client, pinned, image.manifest, max_files=max_files)
            print_train_code(code.to_dict())
        question = f"Approve train {plain(spec.id)} ({plain(digest)})?"
        if not yes and not click.confirm(question, default=False):
            err.print("not approved")
            sys.exit(EXIT_ERROR)
        sign(client, pinned, key, role="approver", signer=signer or key_path.name.split(".")[0])
    out.print(f"approved {pinned.name}@{digest} with {key.key_id}", markup=False)


def print_train_code(code: dict[str, Any]) -> None:
    """The train's own code (:meth:`pht_airflow.traincode.TrainCode.to_dict`, already safe
    text): its base image, its layers with their build steps, the files it adds, and its
    small text files in full."""
    from rich.text import Text

    base = code.get("base")
    if base:
        digest = f" ({base['digest']})" if base.get("digest") else ""
        out.print(
            f"base image: {base.get('name') or 'unnamed'}{digest}, {base['layers']} layer(s), "
            "not listed (--all-layers lists them)",
            markup=False,
        )
    if code.get("base_problem"):
        out.print(Text(f"note: {code['base_problem']}", style="yellow"))
    layers = Table(title="the train's own layers", title_justify="left")
    layers.add_column("layer")
    layers.add_column("build step")
    layers.add_column("entries")
    for layer in code.get("layers", []):
        entries = str(layer["entries"]) if layer["read"] else "not read (over the read limit)"
        layers.add_row(str(layer["index"]), escape(layer["step"] or "?"), entries)
    out.print(layers)
    files = code.get("files", [])
    out.print(f"files the train adds ({len(files)} shown):", markup=False)
    for f in files:
        if f["kind"] == "link":
            out.print(f"  {'link':>10}  {f['path']} -> {f['target']}", markup=False)
        elif f["kind"] == "file":
            out.print(f"  {f['size']:>10}  {f['path']}", markup=False)
        else:
            out.print(f"  {f['kind']:>10}  {f['path']}", markup=False)
    if code.get("more_files"):
        out.print(f"  … {code['more_files']} more", markup=False)
    for f in code.get("inline", []):
        # Printed as it is (soft-wrapped by the terminal, never cropped): every line counts.
        out.rule(Text(f"{f['path']} ({f['size']} bytes)"), align="left")
        out.print(f["text"].rstrip("\n"), markup=False)
    if code.get("inline"):
        out.rule()


@train.command("status")
@click.argument("ref")
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Creator/approver public keys to check the train's signatures against.",
)
@click.option(
    "--central",
    help="Ask the central service instead: route progress and event timeline (REF may be "
    "the train id).",
)
@json_option
@registry_options
def train_status(
    ref: str,
    key_paths: tuple[Path, ...],
    central: str | None,
    as_json: bool,
    username: str | None,
    insecure: bool,
) -> None:
    """Show a train's spec, signers, and per hop: result, signer, and whether the chain holds.

    With --central, show where the central service has the train: its status (routing, done,
    failed, rejected, withheld), each hop's state with why it ended without a result (failed,
    rejected at the station by whom and why, output withheld by the station and why), and
    the event timeline (submitted, sent, result, outbox, failed, rejected, withheld).
    """
    from ..keys import load_public_key
    from ..oci import Reference
    from ..researcher.status import central_timeline, train_status

    if central:
        info = central_timeline(central, ref)
        if as_json:
            print_json(info)
        else:
            print_timeline(info)
        return
    keys_ = [load_public_key(p) for p in key_paths]
    with registry_client(Reference.parse(ref), username, insecure) as client:
        status = train_status(client, ref, keys_)
    view = status.train
    sig_problem = view.signature_error if keys_ else "not checked (pass --key PUB)"
    if as_json:
        print_json(
            {
                "reference": f"{view.reference.name}@{view.digest}",
                "spec": view.spec.to_dict(),
                "signers": [signer_dict(s) for s in view.signers],
                "signature_error": sig_problem,
                "hops": [h.__dict__ for h in status.hops],
            }
        )
        return
    render_spec(view.spec, view.digest, view.reference.name)
    if view.signers:
        out.print(signers_table(view.signers, "signatures"))
    else:
        out.print(f"signatures: {plain(sig_problem, limit=2000)}", markup=False)
    _hops_table(status.hops)


def _hops_table(hops: Sequence[HopStatus]) -> None:
    """Print each hop's state (coloured), result digest, signer and the reason it broke."""
    table = Table(title="hops", title_justify="left")
    for col in ("hop", "station", "result", "digest", "signed by", "note"):
        table.add_column(col)
    colour = {"accepted": "green", "missing": "yellow", "rejected": "red", "unchecked": "dim"}
    for h in hops:
        table.add_row(
            str(h.hop),
            shown(h.station),
            f"[{colour[h.state]}]{h.state}[/]",
            shown((h.digest or "")[:19]),
            shown((h.signer_key_id or "")[:19]),
            shown(h.reason or "", limit=1000),
        )
    out.print(table)


@train.command("submit")
@click.argument("ref")
@click.option("--central", required=True, help="The central service URL.")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The creator's public key (NAME.pub); the service checks the creator signature.",
)
@json_option
def train_submit(ref: str, central: str, key_path: Path, as_json: bool) -> None:
    """Hand a signed train in pht-incoming to the central service, which routes it."""
    from ..central_client import CentralClient
    from ..keys import load_public_key

    key = load_public_key(key_path)
    train_info = CentralClient(central).submit(ref, key.pem)
    if as_json:
        print_json(train_info)
        return
    out.print(
        f"train {plain(train_info['id'])} submitted: {plain(train_info['status'])}", markup=False
    )
    print_timeline(train_info)


@train.command("retry")
@click.argument("train_id")
@click.option("--central", required=True, help="The central service URL.")
@click.option("--hop", required=True, type=int, help="The hop to send again.")
def train_retry(train_id: str, central: str, hop: int) -> None:
    """Ask the central service to send one hop of a train again."""
    from ..central_client import CentralClient

    print_timeline(CentralClient(central).retry(train_id, hop))
