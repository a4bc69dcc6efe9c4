"""The Airflow edge: thin shells around the station library, and the only code importing Airflow.

``names`` (DAG ids, importable without Airflow), ``dags`` (DAG builders used by ``dags/``),
``operators`` and ``selftest_operators`` (each takes arguments, calls one library function and
returns a small summary for XCom), ``plugin`` (mounts the webhook receiver in the API server)
``lookups`` (Airflow's Variables and Connections, handed to the library as plain lookups) and
``datasources`` (a ``sql`` data set's database, opened with the Postgres provider's hook).
"""
