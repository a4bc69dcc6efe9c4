"""Options several ``pht`` commands share (passphrase, registry credentials, ``--central``,
``--json``) and the small steps behind them: reading the passphrase, and a registry client
with the password from the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ..oci import Reference, RegistryClient

F = TypeVar("F", bound=Callable[..., Any])


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


def registry_password(username: str | None) -> str | None:
    """``$PHT_REGISTRY_PASSWORD`` when a user is given (never from a command-line argument)."""
    return os.environ.get("PHT_REGISTRY_PASSWORD") if username else None


def registry_client(ref: Reference, username: str | None, insecure: bool) -> RegistryClient:
    """A client for the registry ``ref`` lives in, with the credentials from the options."""
    from ..oci import RegistryClient

    return RegistryClient.for_reference(
        ref, username=username, password=registry_password(username), insecure=insecure
    )


def read_passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> bytes:
    """The key passphrase from the file, ``$PHT_PASSPHRASE`` or a prompt (on a TTY only)."""
    from ..keys import passphrase_from

    return passphrase_from(file=passphrase_file, prompt=sys.stdin.isatty(), confirm=confirm)
