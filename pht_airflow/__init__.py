"""pht-airflow: Personal Health Train stations on Apache Airflow.

The library is the product: everything here is importable and testable without Airflow.
Only :mod:`pht_airflow.airflow` imports Airflow.
"""

__version__ = "0.1.0"
