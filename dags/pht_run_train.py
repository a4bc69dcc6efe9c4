"""pht_run_train: one hop of a Personal Health Train at this station.

preflight → verify → approve (a person, when the policy asks) → run → check_output →
release (a person, when the policy or a disclosure check asks) → seal → record.
``record`` runs whatever happened before it, so failures are audited too. Trigger it from
the UI form, the REST API (conf ``{"train": "<registry>/<project>/<id>:train"}``) or the
registry webhook (the plugin creates one run per train digest).

The station config comes from ``PHT_STATION_CONFIG`` in the worker's environment, read when
each task runs (a config change needs no DAG re-parse). A deployment hosting several
stations sets ``PHT_STATION_CONFIG_DIR`` instead and gets ``pht_run_train__<station>`` for
each ``<station>.yaml`` in it.
"""

from __future__ import annotations

from pht_airflow.airflow.dags import RUN_TRAIN, run_train_dag, station_dags

dags = station_dags(RUN_TRAIN, run_train_dag, __doc__)
globals().update(dags)
dag = dags.get(RUN_TRAIN)
