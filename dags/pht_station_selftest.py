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
A deployment hosting several stations (``PHT_STATION_CONFIG_DIR``) gets
``pht_station_selftest__<station>`` for each.
"""

from __future__ import annotations

from pht_airflow.airflow.dags import SELFTEST, selftest_dag, station_dags

dags = station_dags(SELFTEST, selftest_dag, __doc__)
globals().update(dags)
dag = dags.get(SELFTEST)
