"""Development tools: ``make demo`` and the local Airflow, registry and PostgreSQL launchers.

For the demo, tests and benchmarks only: nothing in the library, the CLI or Airflow imports
these (the import-linter layers contract keeps it so). They need the ``dev`` extra.
"""
