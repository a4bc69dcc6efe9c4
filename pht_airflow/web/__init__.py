"""The web edge: FastAPI apps around the library.

``webhook_app`` (the registry webhook receiver a station's Airflow plugin and the central
service mount) and ``central_app`` (the central service's REST API around the router).
"""
