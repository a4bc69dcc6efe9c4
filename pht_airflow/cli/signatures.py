"""``pht sign``, ``pht verify`` and ``pht inspect``: sign an image by digest, check who signed
it, and show a train's spec and signers."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    json_option,
    passphrase_options,
    read_passphrase,
    registry_client,
    registry_options,
)
from .render import out, print_json, render_spec, shown, signer_dict, signers_table


@click.command("sign")
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
    from ..researcher.inspect import pin_reference
    from ..signing import sign

    key = load_signing_key(key_path, read_passphrase(passphrase_file))
    with registry_client(Reference.parse(ref), username, insecure) as client:
        pinned = pin_reference(client, ref)
        sign(client, pinned, key, role=role, signer=signer or key_path.name.split(".")[0])
    out.print(f"signed {pinned.name}@{pinned.digest} as {role} with {key.key_id}", markup=False)


@click.command("verify")
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
    from ..researcher.inspect import pin_reference
    from ..signing import verify

    keys_ = [load_public_key(p) for p in key_paths]
    with registry_client(Reference.parse(ref), username, insecure) as client:
        pinned = pin_reference(client, ref)
        signers = verify(client, pinned, keys_)
    if as_json:
        print_json({"digest": pinned.digest, "signers": [signer_dict(s) for s in signers]})
        return
    out.print(signers_table(signers, f"verified {pinned.name}@{pinned.digest}"))


@click.command("inspect")
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
    from ..researcher.inspect import read_train

    keys_ = [load_public_key(p) for p in key_paths]
    with registry_client(Reference.parse(ref), username, insecure) as client:
        view = read_train(client, ref, keys_)
    signers = view.signers
    if as_json:
        print_json(
            {
                "reference": f"{view.reference.name}@{view.digest}",
                "digest": view.digest,
                "spec": view.spec.to_dict(),
                "signers": [signer_dict(s) for s in signers],
                "signature_error": view.signature_error,
            }
        )
        return
    render_spec(view.spec, view.digest, view.reference.name)
    if keys_:
        if signers:
            out.print(signers_table(signers, "signatures"))
        else:
            out.print(f"[red]signatures:[/red] {shown(view.signature_error or '', limit=2000)}")
    else:
        out.print("signatures: not checked (pass --key PUB to check)")
