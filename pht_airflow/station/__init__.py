"""The station role: everything a hospital's station does with a train, without Airflow.

``config`` (the validated station file; Airflow lookups are handed in), ``verify`` (the
numbered trust checks returning a ``VerifiedTrain``), ``sandbox`` (the locked-down container
run), ``hop`` (the hop's steps: verify, execute, record), ``audit`` (the hash-chained audit log)
``selftest`` (the pre-flight checks of a station's setup), ``data`` (the data set kinds,
their extraction into the train's ``/pht/data`` view, their shape and digest) and
``publish`` (the shape of the data sets it chooses, signed, to the central service's
directory). The Airflow edge
(:mod:`pht_airflow.airflow`) calls these; nothing here imports another role.
"""
