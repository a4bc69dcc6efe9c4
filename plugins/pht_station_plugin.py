"""Airflow loads plugins from this folder: the PHT station's webhook receiver."""

from pht_airflow.airflow.plugin import PhtStationPlugin

__all__ = ["PhtStationPlugin"]
