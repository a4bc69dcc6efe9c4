"""pht_poll_inbox: a station behind a firewall asks the registry for new trains.

Defined only for a station whose config says ``intake: poll`` or ``both`` (see
``pht_airflow.airflow.polling``): every ``poll_interval`` it lists the station's project and
starts ``pht_run_train`` once per new train digest, under the run id the webhook uses. A
deployment hosting several stations (``PHT_STATION_CONFIG_DIR``) gets
``pht_poll_inbox__<station>`` for each polling station.
"""

from __future__ import annotations

from pht_airflow.airflow.polling import inbox_dags

globals().update(inbox_dags())
