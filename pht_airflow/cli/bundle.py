"""``pht bundle``: carry a train, its signatures and results across an air gap as one file.

``export`` writes an OCI image layout archive (``skopeo inspect oci-archive:FILE:train``
reads it); ``import`` verifies the archive against the importer's trust (creator and
approver keys, or a station's ``station.yaml``) and the result chain before pushing anything.
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import json_option, registry_client, registry_options
from .render import err, out, plain, print_json, signer_dict


@click.group()
def bundle() -> None:
    """Export a train to a file, and import one after verifying it (air-gapped stations)."""


@bundle.command("export")
@click.argument("ref")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive to write (an OCI image layout tar).",
)
@registry_options
def export_cmd(ref: str, out_path: Path, username: str | None, insecure: bool) -> None:
    """Write the train REF with its signatures, results and their signatures to --out."""
    from ..oci import Reference
    from ..researcher.bundle import export_bundle

    with registry_client(Reference.parse(ref), username, insecure) as client:
        summary = export_bundle(client, ref, out_path)
    out.print(
        f"wrote {plain(out_path, limit=None)}: {plain(summary.train)} with "
        f"{len(summary.tags)} tag(s), {summary.bytes} bytes",
        markup=False,
    )


@bundle.command("import")
@click.argument(
    "archive", type=click.Path(dir_okay=False, exists=True, path_type=Path), metavar="FILE"
)
@click.option("--to", "target", required=True, help="REGISTRY/PROJECT to push into.")
@click.option(
    "--creator",
    "creator_paths",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A trusted creator's public key (repeatable).",
)
@click.option(
    "--approver",
    "approver_paths",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A trusted approver's public key (repeatable).",
)
@click.option(
    "--approvals",
    type=click.IntRange(min=0),
    default=None,
    help="Approvals required (default 1, or the station config's).",
)
@click.option(
    "--station-config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust what this station trusts (its station.yaml trust section).",
)
@json_option
@registry_options
def import_cmd(
    archive: Path,
    target: str,
    creator_paths: tuple[Path, ...],
    approver_paths: tuple[Path, ...],
    approvals: int | None,
    station_config: Path | None,
    as_json: bool,
    username: str | None,
    insecure: bool,
) -> None:
    """Verify the bundle FILE (train signatures, result chain, every blob), then push it to
    REGISTRY/PROJECT/<train id>. A bundle that fails is refused, nothing pushed, exit 3."""
    from ..keys import load_public_key
    from ..oci import Reference
    from ..researcher.bundle import BundleTrust, import_bundle, parse_target

    registry, project = parse_target(target)
    creators = [load_public_key(p) for p in creator_paths]
    approvers = [load_public_key(p) for p in approver_paths]
    required = 1
    if station_config is not None:
        from ..station.config import load_config

        store = load_config(station_config).trust
        creators += store.creators
        approvers += store.approvers
        required = store.required_approvals
    if not creators:
        raise click.UsageError("give --creator KEY.pub or --station-config station.yaml")
    trust = BundleTrust(creators, approvers, required if approvals is None else approvals)
    with registry_client(Reference(registry, project + "/x"), username, insecure) as client:
        summary = import_bundle(
            archive,
            client,
            project,
            trust,
            on_verified=lambda s: err.print(
                f"verified train {plain(s.train_id)}: creator {s.creator.key_id}, "
                f"{len(s.approvers)} approval(s), {len(s.results)} result(s); pushing",
                markup=False,
            ),
        )
    if as_json:
        print_json(
            {
                "reference": str(summary.reference),
                "train_id": summary.train_id,
                "creator": signer_dict(summary.creator),
                "approvers": [signer_dict(a) for a in summary.approvers],
                "results": [
                    {"hop": r.hop, "station": r.station, "digest": r.digest}
                    for r in summary.results
                ],
                "tags": summary.tags,
                "pushed_blobs": summary.pushed_blobs,
                "reused_blobs": summary.reused_blobs,
            }
        )
        return
    out.print(f"imported {plain(summary.reference)}", markup=False)
    for r in summary.results:
        out.print(f"  result {r.hop} ({plain(r.station)}) {r.digest}", markup=False)
