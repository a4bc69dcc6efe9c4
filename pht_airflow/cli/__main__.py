"""``python -m pht_airflow.cli``: the same as the ``pht`` command."""

from . import main

main()
