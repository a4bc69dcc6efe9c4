"""The ``registry`` check: a tiny artifact pushed to the station's project, pulled back, deleted.

Also :func:`client_identity`, who the station logs in to its registry as (never a secret).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from ...errors import ConfigError, PhtError, RegistryError, SelfTestError
from ...oci import OCI_MANIFEST
from ..config import StationConfig
from ..hop import registry_client
from .probe import _root_cause, _short

#: The repository (inside the station's project) the registry check writes to.
REPOSITORY = "pht-selftest"
ARTIFACT_TYPE = "application/vnd.pht.selftest.v1"
CONFIG_MEDIA_TYPE = "application/vnd.pht.selftest.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.pht.selftest.v1.bin"


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def check_registry(config: StationConfig) -> str:
    """Push a tiny artifact to ``<project>/pht-selftest:<random tag>``, read it back, delete it.

    Steps, named in the failure message: credentials, ping, push blob, push config, push
    manifest, pull manifest, pull blob, delete manifest. A registry that refuses the delete
    (HTTP 401/403/405: no delete permission or deletes disabled) passes with a note, since a
    station never deletes anything while running trains.
    """
    host = config.registry.host
    repository = f"{config.registry.project}/{REPOSITORY}"
    tag = f"selftest-{secrets.token_hex(6)}"
    step = "credentials"
    payload = f"pht station self-test {config.station_id} {secrets.token_hex(16)}\n".encode()
    try:
        client = registry_client(config)
    except ConfigError as exc:
        raise SelfTestError(f"registry {host}: step 'credentials' failed: {exc}") from None
    note = ""
    try:
        with client:
            step = "ping"
            client.ping()
            step = "push blob"
            layer = client.upload_bytes(repository, payload, LAYER_MEDIA_TYPE)
            step = "push config"
            config_blob = _canonical({"station": config.station_id, "tag": tag})
            config_desc = client.upload_bytes(repository, config_blob, CONFIG_MEDIA_TYPE)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": ARTIFACT_TYPE,
                "config": config_desc.to_dict(),
                "layers": [layer.to_dict()],
                "annotations": {"org.pht.selftest": config.station_id},
            }
            raw = _canonical(manifest)
            step = "push manifest"
            digest = client.put_manifest(repository, tag, raw, OCI_MANIFEST)
            try:
                step = "pull manifest"
                pulled = client.get_manifest(repository, tag)
                if pulled.raw != raw or pulled.digest != digest:
                    raise SelfTestError(
                        f"registry {host}: step 'pull manifest' failed: {repository}:{tag} "
                        f"came back as {pulled.digest}, not the {digest} just pushed"
                    )
                step = "pull blob"
                if client.get_blob(repository, layer.digest) != payload:
                    raise SelfTestError(
                        f"registry {host}: step 'pull blob' failed: blob {layer.digest} came "
                        "back with other bytes than were pushed"
                    )
            except BaseException:
                with contextlib.suppress(PhtError):  # best effort: leave no probe behind
                    client.delete_manifest(repository, digest)
                raise
            step = "delete manifest"
            try:
                client.delete_manifest(repository, digest)
            except RegistryError as exc:
                if exc.status not in (401, 403, 405):
                    raise
                note = (
                    f"; could not delete the probe (HTTP {exc.status}), remove "
                    f"{repository}:{tag} by hand"
                )
    except SelfTestError:
        raise
    except RegistryError as exc:
        if exc.status is None and step == "ping":
            raise SelfTestError(
                f"cannot reach registry {host} (step 'ping'): {_root_cause(exc)}; is it "
                f"running, and is registry.host right in {config.source}?"
            ) from None
        raise SelfTestError(f"registry {host}: step '{step}' failed: {_short(exc, 400)}") from None
    except PhtError as exc:
        raise SelfTestError(f"registry {host}: step '{step}' failed: {_short(exc, 400)}") from None
    return (
        f"registry: pushed, pulled and compared {repository}:{tag} ({digest}) on {host} as "
        f"{client_identity(config)}{note}"
    )


def client_identity(config: StationConfig) -> str:
    """Who the station logs in as (no secret): the user name, the Connection, or anonymous."""
    reg = config.registry
    if reg.connection_id:
        return f"Airflow Connection {reg.connection_id!r}"
    return f"user {reg.username!r}" if reg.username else "anonymous"
