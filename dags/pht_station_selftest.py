"""pht_station_selftest: is this station ready to run trains safely?

Five independent checks, one task each, so one failure does not hide the others:

- `engine`: the Docker engine answers and the probe image (`$PHT_SELFTEST_IMAGE`, default
  `pht-local/busybox:latest`) is local;
- `registry`: a tiny artifact can be pushed to `<project>/pht-selftest:<random tag>`,
  pulled back unchanged, and deleted;
- `keys`: the signing key opens and matches `keys.public_key`; the age identity opens and
  decrypts;
- `datasets`: every data set folder exists and the sandbox user can list and read it;
- `sandbox`: a probe container under the station's limits has no network, a read-only `/`
  and `/pht/data`, a non-root user, no capabilities and `no-new-privileges`.

A failed task's log says what failed and what to fix; it never shows keys, passphrases or
data. Run it after installing or changing a station (config, keys, registry account, Docker).
"""

from __future__ import annotations

from airflow.sdk import DAG

from pht_airflow.airflow.selftest_operators import StationSelfTestOperator
from pht_airflow.station.selftest import CHECKS

# The station config comes from PHT_STATION_CONFIG in the worker's environment.
with DAG(
    dag_id="pht_station_selftest",
    description="Check the engine, registry, keys, data sets and sandbox of this station",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["pht"],
    doc_md=__doc__,
    default_args={"retries": 0},
) as dag:
    for check in CHECKS:
        StationSelfTestOperator(task_id=check, check=check)
