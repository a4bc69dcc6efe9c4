"""The ``pht`` command: a thin layer that parses, calls the library, and renders.

Errors become one red line on stderr and a non-zero exit (1 for errors, 3 for a failed
verification, 2 for usage), never a traceback unless ``--debug`` is given. Tables are for
people; ``--json`` is for machines.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..errors import PhtError, VerificationError
from ..protocol import INCOMING_PROJECT, OUTBOX_PROJECT

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFICATION = 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    debug: bool = False


def _fail(exc: PhtError) -> NoReturn:
    """Print one red line for a library error and exit with its code."""
    if _State.debug:
        raise exc
    err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True)
    for line in getattr(exc, "details", []) or []:
        err.print(f"  {line}", markup=False)
    sys.exit(EXIT_VERIFICATION if isinstance(exc, VerificationError) else EXIT_ERROR)


class PhtGroup(click.Group):
    """A click group that turns :class:`PhtError` into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhtError as exc:
            _fail(exc)


# --- shared options ---------------------------------------------------------------------


def passphrase_options(f: F) -> F:
    """``--passphrase-file``; otherwise ``PHT_PASSPHRASE``; otherwise a prompt on a TTY."""
    return click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read the key passphrase from the first line of this file "
        "(default: $PHT_PASSPHRASE, else a prompt).",
    )(f)


central_url_option = click.option(
    "--central", "url", required=True, help="The central service URL."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def registry_options(f: F) -> F:
    """Registry credentials and transport options shared by every command that talks to one."""
    f = click.option(
        "--insecure",
        is_flag=True,
        default=False,
        envvar="PHT_REGISTRY_INSECURE",
        help="Allow plain HTTP to a non-loopback registry (loopback is always allowed).",
    )(f)
    return click.option(
        "--username",
        envvar="PHT_REGISTRY_USERNAME",
        help="Registry user or robot account (default: $PHT_REGISTRY_USERNAME).",
    )(f)


def _client(ref: Any, username: str | None, insecure: bool) -> Any:
    from ..oci import RegistryClient

    password = os.environ.get("PHT_REGISTRY_PASSWORD") if username else None
    return RegistryClient.for_reference(
        ref, username=username, password=password, insecure=insecure
    )


def _resolved(client: Any, text: str) -> Any:
    """Parse ``text`` and pin it to a manifest digest (every later step uses the digest)."""
    from ..oci import Reference

    ref = Reference.parse(text)
    digest = client.resolve(ref.repository, ref.reference)
    if ref.digest and ref.digest != digest:
        raise VerificationError(
            f"{text} resolves to {digest}, not the digest it names",
            digest=ref.digest,
            check="digest",
        )
    return ref.with_digest(digest)


def _passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> bytes:
    from ..keys import passphrase_from

    return passphrase_from(file=passphrase_file, prompt=sys.stdin.isatty(), confirm=confirm)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def _signers_table(signers: Sequence[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("role")
    table.add_column("signer")
    table.add_column("key id")
    for s in signers:
        table.add_row(s.role or "-", s.signer or "-", s.key_id)
    return table


def _signer_dict(s: Any) -> dict[str, Any]:
    return {"key_id": s.key_id, "role": s.role, "signer": s.signer}


# --- commands ---------------------------------------------------------------------------


@click.group(cls=PhtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pht")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Personal Health Train: keys, trains, signatures and results.

    Registry credentials come from --username / $PHT_REGISTRY_USERNAME and
    $PHT_REGISTRY_PASSWORD (never from a command-line argument).
    """
    _State.debug = debug


@main.group()
def keys() -> None:
    """Generate and inspect signing (ECDSA P-256) and encryption (age) keys."""


@keys.command("generate")
@click.option("--name", required=True, help="Base name of the key files (e.g. alice).")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the four key files into (created if missing).",
)
@passphrase_options
def keys_generate(name: str, out_dir: Path, passphrase_file: Path | None) -> None:
    """Write NAME.key, NAME.pub, NAME.age and NAME.age.pub into OUT.

    The private files (NAME.key, NAME.age) are encrypted with the passphrase and
    created with mode 0600. Existing files are never overwritten.
    """
    from ..keys import generate_keypair, load_public_key

    passphrase = _passphrase(passphrase_file, confirm=True)
    paths = generate_keypair(name, out_dir, passphrase)
    public = load_public_key(paths["pub"])
    recipient = paths["age_pub"].read_text().strip()
    # Plain lines, not a table: a table cut the key id to the width of a non-terminal.
    out.print(f"keys for {name}", markup=False)
    for label, path in paths.items():
        out.print(f"{label}: {path}", markup=False)
    out.print(f"key id: {public.key_id}", markup=False)
    out.print(f"recipient: {recipient}", markup=False)


@keys.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@passphrase_options
@json_option
def keys_show(path: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Print what PATH is and its public identity (key id or age recipient).

    An encrypted private file needs its passphrase to show its public identity; without
    one, only its type is shown. No secret is ever printed.
    """
    from ..keys import describe_key_file

    passphrase = None
    if passphrase_file is not None or os.environ.get("PHT_PASSPHRASE"):
        passphrase = _passphrase(passphrase_file)
    info = describe_key_file(path, passphrase=passphrase)
    if as_json:
        _print_json(info)
        return
    for k, v in info.items():
        out.print(f"{k}: {v}", markup=False)


@main.command("sign")
@click.argument("ref")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your private signing key (NAME.key).",
)
@click.option(
    "--role",
    type=click.Choice(["creator", "approver"]),
    default="creator",
    show_default=True,
    help="What this signature says (informational; trust comes from the key).",
)
@click.option("--signer", help="Your name in the signature (default: the key file's base name).")
@passphrase_options
@registry_options
def sign_cmd(
    ref: str,
    key_path: Path,
    role: str,
    signer: str | None,
    passphrase_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Add a cosign-compatible signature to the image REF (resolved to its digest first)."""
    from ..keys import load_signing_key
    from ..oci import Reference
    from ..signing import sign

    key = load_signing_key(key_path, _passphrase(passphrase_file))
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        sign(client, pinned, key, role=role, signer=signer or key_path.name.split(".")[0])
    out.print(f"signed {pinned.name}@{pinned.digest} as {role} with {key.key_id}", markup=False)


@main.command("verify")
@click.argument("ref")
@click.option(
    "--key",
    "key_paths",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A trusted public key (NAME.pub); repeat for several.",
)
@json_option
@registry_options
def verify_cmd(
    ref: str, key_paths: tuple[Path, ...], as_json: bool, username: str | None, insecure: bool
) -> None:
    """Verify REF's signatures against the given keys; list who signed it.

    Exits 0 when at least one signature verifies, 3 with the reason otherwise.
    """
    from ..keys import load_public_key
    from ..oci import Reference
    from ..signing import verify

    keys_ = [load_public_key(p) for p in key_paths]
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        signers = verify(client, pinned, keys_)
    if as_json:
        _print_json({"digest": pinned.digest, "signers": [_signer_dict(s) for s in signers]})
        return
    out.print(_signers_table(signers, f"verified {pinned.name}@{pinned.digest}"))


@main.command("inspect")
@click.argument("ref")
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public keys to check signatures against (default: the creator's and route keys "
    "named in the spec are not trusted implicitly; without --key signers are not listed).",
)
@json_option
@registry_options
def inspect_cmd(
    ref: str, key_paths: tuple[Path, ...], as_json: bool, username: str | None, insecure: bool
) -> None:
    """Show a train: its spec, its digest, and the signers among the given keys."""
    from ..keys import load_public_key
    from ..oci import Reference
    from ..signing import verify
    from ..spec import read_spec

    keys_ = [load_public_key(p) for p in key_paths]
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        spec, digest = read_spec(client, pinned, check_expiry=False)
        signers: list[Any] = []
        signature_error: str | None = None
        if keys_:
            try:
                signers = verify(client, pinned, keys_)
            except VerificationError as exc:
                signature_error = str(exc)
    if as_json:
        _print_json(
            {
                "reference": f"{pinned.name}@{digest}",
                "digest": digest,
                "spec": spec.to_dict(),
                "signers": [_signer_dict(s) for s in signers],
                "signature_error": signature_error,
            }
        )
        return
    _render_spec(spec, digest, pinned.name)
    if keys_:
        if signers:
            out.print(_signers_table(signers, "signatures"))
        else:
            out.print(f"[red]signatures:[/red] {escape(signature_error or '')}")
    else:
        out.print("signatures: not checked (pass --key PUB to check)")


def _render_spec(spec: Any, digest: str, name: str) -> None:
    head = Table(title=f"train {spec.name}", title_justify="left", show_header=False)
    head.add_column()
    head.add_column()
    rows = [
        ("reference", f"{name}@{digest}"),
        ("id", spec.id),
        ("creator", f"{spec.creator.id} ({spec.creator.key})"),
        ("mode", spec.mode),
        ("dataset", spec.dataset),
        ("results visibility", spec.results_visibility),
        ("result recipients", "\n".join(spec.result_recipients)),
        ("created", spec.to_dict()["created"]),
        ("expires", spec.to_dict()["expires"]),
    ]
    for k, v in rows:
        head.add_row(k, v)
    out.print(head)
    route = Table(title="route", title_justify="left")
    route.add_column("hop")
    route.add_column("station")
    route.add_column("key id")
    route.add_column("recipient")
    from ..keys import public_key_from_pem

    for i, entry in enumerate(spec.route):
        route.add_row(str(i), entry.station, public_key_from_pem(entry.key).key_id, entry.recipient)
    out.print(route)


# --- trains -----------------------------------------------------------------------------


@main.group()
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
        parse_duration,
        push_image,
    )
    from ..signing import sign

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
    key = load_signing_key(creator_key, _passphrase(passphrase_file))
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
    password = os.environ.get("PHT_REGISTRY_PASSWORD") if username else None
    with err.status(f"building {folder}"):
        build_image(engine, folder, str(target), spec, log=lambda s: err.print(s, markup=False))
    with err.status(f"pushing {target}"):
        digest = push_image(engine, target, username=username, password=password)
    with _client(target, username, insecure) as client:
        pinned = target.with_digest(digest)
        sign(client, pinned, key, role="creator", signer=spec.creator.id)
    if as_json:
        _print_json({"reference": str(target), "digest": digest, "id": spec.id})
        return
    out.print(f"train {spec.id} pushed and signed: {target.name}@{digest}", markup=False)


def _image_files(client: Any, ref: Any, manifest: Any, limit: int) -> list[str]:
    """List the files in an image's layers (streams each layer once; nothing is stored)."""
    import tarfile

    from ..results import _IterReader

    names: list[str] = []
    for layer in manifest.layers:
        stream = _IterReader(client.open_blob(ref.repository, layer.digest))
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                names.append(member.name + ("/" if member.isdir() else ""))
    names.sort()
    return names if len(names) <= limit else names[:limit] + [f"… {len(names) - limit} more"]


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
@passphrase_options
@registry_options
def train_approve(
    ref: str,
    key_path: Path,
    signer: str | None,
    yes: bool,
    no_files: bool,
    max_files: int,
    passphrase_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Show a train for review (spec, build history, files), then sign it as approver."""
    from ..keys import load_signing_key
    from ..oci import Reference
    from ..signing import sign
    from ..spec import read_spec

    key = load_signing_key(key_path, _passphrase(passphrase_file))
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        spec, digest = read_spec(client, pinned)
        _render_spec(spec, digest, pinned.name)
        manifest = client.get_manifest(pinned.repository, digest)
        config = json.loads(client.get_blob(pinned.repository, manifest.config.digest))
        history = Table(title="build history", title_justify="left")
        history.add_column("step")
        history.add_column("created by")
        for i, step in enumerate(config.get("history", [])):
            history.add_row(str(i), str(step.get("created_by", ""))[:160])
        out.print(history)
        entry = config.get("config", {})
        out.print(f"entrypoint: {entry.get('Entrypoint')}  cmd: {entry.get('Cmd')}", markup=False)
        if not no_files:
            with err.status("listing the image's files"):
                files = _image_files(client, pinned, manifest, max_files)
            out.print(f"files ({len(files)} shown):", markup=False)
            for name in files:
                out.print(f"  {name}", markup=False)
        if not yes and not click.confirm(f"Approve train {spec.id} ({digest})?", default=False):
            err.print("not approved")
            sys.exit(EXIT_ERROR)
        sign(client, pinned, key, role="approver", signer=signer or key_path.name.split(".")[0])
    out.print(f"approved {pinned.name}@{digest} with {key.key_id}", markup=False)


def _train_signers(
    client: Any, pinned: Any, key_paths: Sequence[Path]
) -> tuple[list[Any], str | None]:
    from ..keys import load_public_key
    from ..signing import verify

    if not key_paths:
        return [], "not checked (pass --key PUB)"
    try:
        return verify(client, pinned, [load_public_key(p) for p in key_paths]), None
    except VerificationError as exc:
        return [], str(exc)


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

    With --central, show where the central service has the train: each hop's state and the
    event timeline (submitted, sent, result, outbox, failed).
    """
    from ..oci import Reference
    from ..results import chain_status
    from ..spec import read_spec

    if central:
        from ..central_client import CentralClient

        # A reference names the train by its repository: <project>/<train-id>.
        train_id = ref if "/" not in ref else Reference.parse(ref).repository.rsplit("/", 1)[1]
        info = CentralClient(central).train(train_id)
        if as_json:
            _print_json(info)
        else:
            _print_timeline(info)
        return
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        spec, digest = read_spec(client, pinned, check_expiry=False)
        signers, sig_problem = _train_signers(client, pinned, key_paths)
        hops = chain_status(client, pinned, spec)
    if as_json:
        _print_json(
            {
                "reference": f"{pinned.name}@{digest}",
                "spec": spec.to_dict(),
                "signers": [_signer_dict(s) for s in signers],
                "signature_error": sig_problem,
                "hops": [h.__dict__ for h in hops],
            }
        )
        return
    _render_spec(spec, digest, pinned.name)
    if signers:
        out.print(_signers_table(signers, "signatures"))
    else:
        out.print(f"signatures: {sig_problem}", markup=False)
    table = Table(title="hops", title_justify="left")
    for col in ("hop", "station", "result", "digest", "signed by", "note"):
        table.add_column(col)
    colour = {"accepted": "green", "missing": "yellow", "rejected": "red", "unchecked": "dim"}
    for h in hops:
        table.add_row(
            str(h.hop),
            h.station,
            f"[{colour[h.state]}]{h.state}[/]",
            (h.digest or "")[:19],
            (h.signer_key_id or "")[:19],
            h.reason or "",
        )
    out.print(table)


@main.group()
def results() -> None:
    """Fetch, verify and decrypt a train's results."""


@results.command("fetch")
@click.argument("ref")
@click.option(
    "--identity",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Your age identity (NAME.age).",
)
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The creator's public key (default: NAME.pub beside the identity).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write DIR/<hop>-<station>/… into (new or empty).",
)
@click.option("--max-bytes", default=16 * 1024**3, show_default=True, help="Extraction limit.")
@passphrase_options
@registry_options
def results_fetch(
    ref: str,
    identity: Path,
    key_paths: tuple[Path, ...],
    out_dir: Path,
    max_bytes: int,
    passphrase_file: Path | None,
    username: str | None,
    insecure: bool,
) -> None:
    """Verify the train, every result and the chain; decrypt what is addressed to you.

    A verification failure writes nothing and exits 3 with the reason.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    from ..keys import load_age_identity, load_public_key
    from ..oci import Reference
    from ..results import fetch_results
    from ..signing import verify
    from ..spec import read_spec

    if not key_paths:
        sibling = identity.with_name(identity.name.rsplit(".", 1)[0] + ".pub")
        if not sibling.is_file():
            raise click.UsageError(
                f"give --key CREATOR.pub (no {sibling.name} beside the identity)"
            )
        key_paths = (sibling,)
    creator_keys = [load_public_key(p) for p in key_paths]
    age_identity = load_age_identity(identity, _passphrase(passphrase_file))
    with _client(Reference.parse(ref), username, insecure) as client:
        pinned = _resolved(client, ref)
        spec, digest = read_spec(client, pinned, check_expiry=False)
        signers = verify(client, pinned, creator_keys)
        if not any(s.key_id == spec.creator.key for s in signers):
            raise VerificationError(
                "the train is not signed by the creator key its spec names",
                digest=digest,
                key_id=spec.creator.key,
                check="creator",
            )
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("results", total=None)

            def started(result: Any) -> None:
                bar.update(
                    task,
                    description=f"hop {result.hop} ({result.station})",
                    total=result.layer.size,
                    completed=0,
                )

            placed = fetch_results(
                client,
                pinned,
                spec,
                age_identity,
                out_dir,
                max_bytes=max_bytes,
                progress=lambda n: bar.advance(task, n),
                on_result=started,
            )
    for result, path in placed:
        out.print(f"hop {result.hop} ({result.station}) -> {path}", markup=False)


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
        _print_json(train_info)
        return
    out.print(f"train {train_info['id']} submitted: {train_info['status']}", markup=False)
    _print_timeline(train_info)


def _print_timeline(info: dict[str, Any]) -> None:
    hops = Table(title=f"train {info['id']} ({info['status']})", title_justify="left")
    for col in ("hop", "station", "state", "result"):
        hops.add_column(col)
    for h in info.get("hops", []):
        hops.add_row(str(h["hop"]), h["station"], h["state"], (h["result_digest"] or "")[:19])
    out.print(hops)
    if info.get("reason"):
        out.print(f"reason: {info['reason']}", markup=False)
    for e in info.get("events", []):
        out.print(f"{e['time'][:19]}  {e['kind']:<9} {e['message']}", markup=False)


@train.command("retry")
@click.argument("train_id")
@click.option("--central", required=True, help="The central service URL.")
@click.option("--hop", required=True, type=int, help="The hop to send again.")
def train_retry(train_id: str, central: str, hop: int) -> None:
    """Ask the central service to send one hop of a train again."""
    from ..central_client import CentralClient

    _print_timeline(CentralClient(central).retry(train_id, hop))


@main.group()
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

    from ..central.db import make_engine, make_sessionmaker
    from ..central.registry import HarborAdmin, PlainRegistryAdmin
    from ..central.router import Router
    from ..errors import ConfigError
    from ..oci import RegistryClient
    from ..researcher.train import parse_duration
    from ..web.central_app import create_app

    token, secret = os.environ.get("PHT_CENTRAL_TOKEN"), os.environ.get("PHT_WEBHOOK_SECRET")
    if not token or not secret:
        raise ConfigError("set PHT_CENTRAL_TOKEN and PHT_WEBHOOK_SECRET before serving")
    password = os.environ.get("PHT_REGISTRY_PASSWORD") if username else None
    client = RegistryClient(registry_host, username=username, password=password, insecure=insecure)
    copier: Any
    if harbor_url:
        copier = HarborAdmin(harbor_url, username or "", password or "")
    else:
        copier = PlainRegistryAdmin(client)
    router = Router(
        make_sessionmaker(make_engine(db)),
        client,
        copier,
        incoming_project=incoming,
        outbox_project=outbox,
        hop_timeout=parse_duration(hop_timeout),
        incoming_approvals=incoming_approvals,
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
@click.option("--webhook-url", help="The station's webhook endpoint, for reference.")
def central_stations_add(
    url: str,
    station_id: str,
    key_path: Path,
    recipient_file: Path,
    project: str | None,
    webhook_url: str | None,
) -> None:
    """Register (or update) a station in the directory."""
    from ..central_client import CentralClient
    from ..keys import load_public_key, load_recipient

    row = CentralClient(url).add_station(
        id=station_id,
        key=load_public_key(key_path).pem,
        recipient=load_recipient(recipient_file),
        project=project,
        webhook_url=webhook_url,
    )
    out.print(f"station {row['id']}: project {row['project']}, key {row['key_id']}", markup=False)


@central_stations.command("list")
@central_url_option
@json_option
def central_stations_list(url: str, as_json: bool) -> None:
    """List the registered stations."""
    from ..central_client import CentralClient

    _print_rows(CentralClient(url).stations(), "stations",
                {"id": "id", "project": "project", "key id": "key_id",
                 "recipient": "recipient"}, as_json)  # fmt: skip


def _print_rows(
    rows: list[dict[str, Any]], title: str, columns: dict[str, str], as_json: bool
) -> None:
    """Print directory rows as JSON, or as a table of ``columns`` (heading -> field)."""
    if as_json:
        _print_json(rows)
        return
    table = Table(title=title, title_justify="left")
    for heading in columns:
        table.add_column(heading)
    for r in rows:
        table.add_row(*(str(r[name]) for name in columns.values()))
    out.print(table)


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
    out.print(f"{row['role']} {row['name']}: key {row['key_id']}", markup=False)


@central_keys.command("list")
@central_url_option
@json_option
def central_keys_list(url: str, as_json: bool) -> None:
    """List the researchers' keys the central service trusts for submission by push."""
    from ..central_client import CentralClient

    _print_rows(CentralClient(url).trusted_keys(), "trusted keys",
                {"name": "name", "role": "role", "key id": "key_id"}, as_json)  # fmt: skip


@main.group()
def station() -> None:
    """Run a station's hop by hand (for operators debugging a train without the scheduler)."""


@station.command("run")
@click.argument("ref")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="PHT_STATION_CONFIG",
    required=True,
    help="The station config (default: $PHT_STATION_CONFIG).",
)
@click.option("--rerun", is_flag=True, help="Run a train this station already completed.")
@click.option(
    "--approved-by",
    help="Who approved this run (required when the station's policy asks for approval).",
)
def station_run(ref: str, config_path: Path, rerun: bool, approved_by: str | None) -> None:
    """Verify, run, seal and record one hop of the train REF, exactly as the DAG does."""
    from ..station.config import load_config
    from ..station.hop import run_hop

    config = load_config(config_path)
    record = run_hop(
        config,
        ref,
        rerun=rerun,
        approved_by=approved_by,
        logger=lambda line: err.print(line, markup=False),
    )
    out.print(
        f"hop {record['hop']} of train {record['train_id']} at {config.station_id}: "
        f"{record['outcome']}; result {record['result_digest']}; audit seq {record['seq']}",
        markup=False,
    )


@main.group()
def audit() -> None:
    """Check a station's tamper-evident audit log."""


@audit.command("verify")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def audit_verify(path: Path) -> None:
    """Check every line's hash chain; name the first edited, removed or reordered line."""
    from ..station.audit import audit_verify_main

    ok, message = audit_verify_main(str(path))
    if ok:
        out.print(message, markup=False)
        return
    err.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(EXIT_VERIFICATION)


if __name__ == "__main__":  # pragma: no cover
    main()
