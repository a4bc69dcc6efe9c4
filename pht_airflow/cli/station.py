"""``pht station``: run a station's hop by hand, as the DAG does (for operators debugging a
train without the scheduler)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from ..station.secrets import NO_LOOKUPS, Lookups
from .render import err, out, plain


def _lookups() -> Lookups:
    """Airflow's Variables and Connections where Airflow is installed (a station host), so a
    config that names them works here as in the DAG; elsewhere such a reference is refused."""
    if importlib.util.find_spec("airflow") is None:
        return NO_LOOKUPS
    from ..airflow.lookups import AIRFLOW_LOOKUPS

    return AIRFLOW_LOOKUPS


@click.group()
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

    config = load_config(config_path, _lookups())
    record = run_hop(
        config,
        ref,
        rerun=rerun,
        approved_by=approved_by,
        logger=lambda line: err.print(plain(line, limit=None, multiline=True), markup=False),
    )
    out.print(
        f"hop {record['hop']} of train {record['train_id']} at {config.station_id}: "
        f"{record['outcome']}; result {record['result_digest']}; audit seq {record['seq']}",
        markup=False,
    )
