"""``pht keys``: generate and inspect signing (ECDSA P-256) and encryption (age) keys."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .options import json_option, passphrase_options, read_passphrase
from .render import out, print_json


@click.group()
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

    passphrase = read_passphrase(passphrase_file, confirm=True)
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
        passphrase = read_passphrase(passphrase_file)
    info = describe_key_file(path, passphrase=passphrase)
    if as_json:
        print_json(info)
        return
    for k, v in info.items():
        out.print(f"{k}: {v}", markup=False)
