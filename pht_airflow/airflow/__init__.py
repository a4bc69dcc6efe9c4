"""Airflow shells around the library: operators and the webhook plugin."""
