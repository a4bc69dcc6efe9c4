"""pht-airflow: Personal Health Train stations on Apache Airflow.

The library is the product: everything here is importable and testable without Airflow.
Folders are roles, and imports point one way (import-linter contracts in ``setup.cfg``, run by
``make lint``)::

    core      errors, protocol (tags, media types, id rules), oci/, keys, signing, spec,
              results/ (archive, crypt, artifact, chain), hopreport (the hop outcome report's wire
              format), schemadoc (a station's signed data set description), webhooks
              (registry notifications), central_client (the central API),
              text (untrusted text made safe to show), attestation (a result's signed
              run attestation: in-toto statement in a DSSE envelope, cosign's .att)
    roles     station/ (config, verify, sandbox, hop, audit, self-test)
              central/ (directory and router, registry admin, onboarding)
              researcher/ (build, inspect and approve trains; follow and collect results)
    edges     cli/ (the ``pht`` command), airflow/ (operators, DAG builders, plugin, Variables
              and Connections), web/ (the webhook receiver and the central service's API)
    dev       dev/ (``make demo``, the local Airflow and registry launchers; imported by
              nothing at runtime)

Roles import only the core; edges import roles and the core; only :mod:`pht_airflow.airflow`
imports Airflow, and only the CLI and the dev tools render (click, rich).
"""

__version__ = "0.1.0"
