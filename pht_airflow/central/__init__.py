"""The central service's role: station directory, router, reconciliation, registry admin.

``db`` (the directory and routing tables), ``router`` (routes trains and results between
station projects on registry events, reconciles what was missed, fails hops that time out),
``registry/`` (one admin protocol, two adapters: a plain CNCF registry and Harbor) and
``onboarding`` (provisioning a station's project, robot and webhook). Its REST API is an edge:
:mod:`pht_airflow.web.central_app`; its client is core: :mod:`pht_airflow.central_client`.
"""
