"""``pht station``: check a station before it runs anything (pre-flight), run a station's hop
by hand, as the DAG does (for operators debugging a train without the scheduler), and publish
the shape of its data sets to the central service."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from ..station.secrets import NO_LOOKUPS, Lookups
from .render import EXIT_ERROR, err, out, plain


def _lookups() -> Lookups:
    """Airflow's Variables and Connections where Airflow is installed (a station host), so a
    config that names them works here as in the DAG; elsewhere such a reference is refused."""
    if importlib.util.find_spec("airflow") is None:
        return NO_LOOKUPS
    from ..airflow.lookups import AIRFLOW_LOOKUPS

    return AIRFLOW_LOOKUPS


#: ``--config``: every ``pht station`` command reads the station's config.
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="PHT_STATION_CONFIG",
    required=True,
    help="The station config (default: $PHT_STATION_CONFIG).",
)


@click.group()
def station() -> None:
    """Run a station's hop by hand (for operators debugging a train without the scheduler);
    publish the shape of its data sets."""


@station.command("run")
@click.argument("ref")
@_config_option
@click.option("--rerun", is_flag=True, help="Run a train this station already completed.")
@click.option(
    "--approved-by",
    help="Who approved this run (needed with --push when the policy asks for approval).",
)
@click.option(
    "--released-by",
    help="Who reviewed and released the output (needed with --push when a disclosure check "
    "asks for review or the policy asks for a release).",
)
@click.option("--push", is_flag=True, help="Seal, push and sign the result (default: dry run).")
@click.option("--record", is_flag=True, help="Append the hop to the station's audit log.")
@click.option("--report", is_flag=True, help="Tell the central service of a failed hop.")
def station_run(
    ref: str,
    config_path: Path,
    rerun: bool,
    approved_by: str | None,
    released_by: str | None,
    push: bool,
    record: bool,
    report: bool,
) -> None:
    """Verify and run one hop of the train REF by hand, for debugging a train.

    Dry by default: the train is verified, run in the sandbox and its output checked by the
    station's disclosure control, and nothing leaves the station or is written down: no
    result pushed, no audit record, no report to the central service. --push, --record and
    --report do each of those, as the DAG does."""
    from ..station.config import load_config
    from ..station.hop import run_hop

    if report and not record:
        raise click.UsageError("--report needs --record (a report is sent from the audit record)")
    if record and not push:
        raise click.UsageError("--record needs --push (a dry run is not a hop to audit)")
    config = load_config(config_path, _lookups())
    done = run_hop(
        config,
        ref,
        rerun=rerun,
        approved_by=approved_by,
        released_by=released_by,
        push=push,
        record=record,
        report=report,
        logger=lambda line: err.print(plain(line, limit=None, multiline=True), markup=False),
    )
    disclosure = done.get("disclosure") or {}
    verdict = disclosure.get("verdict") if isinstance(disclosure, dict) else None
    what = f"result {done.get('result_digest')}" if push else "dry run: nothing pushed"
    seq = f"audit seq {done['seq']}" if done.get("seq") is not None else "not recorded"
    out.print(
        plain(
            f"hop {done.get('hop')} of train {done.get('train_id')} at {config.station_id}: "
            f"{done.get('outcome')}; disclosure {verdict or '-'}; {what}; {seq}"
        ),
        markup=False,
    )


@station.command("publish-schema")
@_config_option
@click.option("--show", is_flag=True, help="Print the signed document instead of sending it.")
def station_publish_schema(config_path: Path, show: bool) -> None:
    """Publish the shape of the data sets marked publish_schema: true (column names and
    types, row counts rounded down to policy.min_cell_count; never values) to the central
    service's directory (central.url), signed with the station's key. Replaces what the
    station published before."""
    from ..station.config import load_config
    from ..station.publish import publish_schema, schema_document
    from .render import print_json

    config = load_config(config_path, _lookups())
    if show:
        print_json(schema_document(config))
        return
    answer = publish_schema(config, logger=lambda line: err.print(plain(line), markup=False))
    names = ", ".join(answer.get("datasets") or []) or "none"
    out.print(
        f"{plain(answer.get('station'))}: schema published at {plain(answer.get('time'))} "
        f"(data sets: {plain(names)})",
        markup=False,
    )


@station.command("check")
@_config_option
@click.option("--no-cache", is_flag=True, help="Run every check, even those that passed recently.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def station_check(config_path: Path, no_cache: bool, as_json: bool) -> None:
    """Pre-flight: the checks every hop runs first. Each key file is the right kind and opens
    with its passphrase, each data set is readable as the sandbox user, the registry lets the
    station's credentials in, the Docker engine answers. Prints each check with ✓ or ✗ and
    what to do; exits 1 if any failed (a broken config file too)."""
    from ..station.config import load_config
    from ..station.preflight import run_preflight
    from .render import print_json

    config = load_config(config_path, _lookups())
    report = run_preflight(config, cache=not no_cache)
    if as_json:
        print_json(report.summary())
    else:
        for line in report.lines():
            style = "green" if line.startswith("✓") else "red" if line.startswith("✗") else ""
            out.print(line, style=style or None, markup=False)
        verdict = "passed" if report.ok else f"failed ({len(report.failed)} check(s))"
        out.print(f"station {plain(config.station_id)}: pre-flight {verdict}", markup=False)
    if not report.ok:
        raise SystemExit(EXIT_ERROR)
