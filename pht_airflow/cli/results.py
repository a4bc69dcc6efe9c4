"""``pht results``: fetch, verify and decrypt a train's results (with a progress bar)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .options import passphrase_options, read_passphrase, registry_client, registry_options
from .render import err, out, plain

if TYPE_CHECKING:
    from ..results import AcceptedResult


@click.group()
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
@click.option(
    "--max-bytes",
    default=16 * 1024**3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Extraction limit: the most bytes of files a result may write.",
)
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
    """Verify the train, every result, the chain and each result's run attestation;
    decrypt what is addressed to you.

    Each result must carry a run attestation signed by its station's key from the train
    spec and naming that result; a summary of each (station, hop, data set, disclosure
    verdict, who approved and released, exit code, times) is printed. A verification failure
    writes nothing and exits 3 with the reason.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    from ..attestation import summary
    from ..keys import load_age_identity, load_public_key
    from ..oci import Reference
    from ..researcher.collect import collect_results

    if not key_paths:
        sibling = identity.with_name(identity.name.rsplit(".", 1)[0] + ".pub")
        if not sibling.is_file():
            raise click.UsageError(
                f"give --key CREATOR.pub (no {sibling.name} beside the identity)"
            )
        key_paths = (sibling,)
    creator_keys = [load_public_key(p) for p in key_paths]
    age_identity = load_age_identity(identity, read_passphrase(passphrase_file))
    with (
        registry_client(Reference.parse(ref), username, insecure) as client,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
        ) as bar,
    ):
        # Hidden while the train and chain are verified; shown from the first download.
        task = bar.add_task("results", total=None, visible=False)

        def started(result: AcceptedResult) -> None:
            bar.update(
                task,
                description=f"hop {result.hop} ({result.station})",
                total=result.layer.size,
                completed=0,
                visible=True,
            )

        attested: list[tuple[AcceptedResult, dict[str, Any]]] = []
        placed = collect_results(
            client,
            ref,
            creator_keys,
            age_identity,
            out_dir,
            max_bytes=max_bytes,
            progress=lambda n: bar.advance(task, n),
            on_result=started,
            on_attestation=lambda result, statement: attested.append((result, statement)),
        )
    for result, statement in attested:
        out.print(
            f"hop {result.hop} ({plain(result.station)}): run attestation verified", markup=False
        )
        for label, value in summary(statement).items():
            if label not in ("station", "hop"):
                out.print(f"  {label}: {plain(value)}", markup=False)
    for result, path in placed:
        out.print(
            f"hop {result.hop} ({plain(result.station)}) -> {plain(path, limit=None)}", markup=False
        )
