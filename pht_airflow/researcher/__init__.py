"""The researcher's role: build a train, inspect and approve it, follow it and collect results.

Plain functions with typed arguments, no click and no rendering: the ``pht`` command
(:mod:`pht_airflow.cli`) parses, calls these, and renders.
"""
