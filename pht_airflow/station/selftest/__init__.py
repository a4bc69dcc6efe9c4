"""A station's self-test: is this machine ready to run trains safely?

Seven checks, each a plain function that takes the :class:`StationConfig` (and a Docker
client where it needs the engine), returns a one-line message when it passes and raises
:class:`SelfTestError` with a one-line, actionable message when it fails. The
``pht_station_selftest`` DAG runs one task per check; ``run_all`` runs them in a row.

=============  ==============================================================================
``engine``     the Docker engine answers (ping, version) and the probe image is local
``registry``   ping, push a tiny blob and manifest to ``<project>/pht-selftest:<random>``,
               pull both back and compare, delete the manifest
``keys``       the signing key opens, matches ``keys.public_key`` and signs; the age identity
               opens and decrypts what was encrypted to it
``datasets``   every data set folder exists and the sandbox user can list and read it (in a
               probe container, with a mode-bits diagnosis on the host)
``sandbox``    a probe container under the station's limits: no network (it cannot reach a
               listener on the host's 127.0.0.1), read-only ``/`` and ``/pht/data``, writable
               ``/pht/output`` and ``/tmp``, ``noexec`` ``/tmp``, non-root uid and gid, no
               capabilities, ``no-new-privileges``
``preflight``  the station's pre-flight, in full (the checks every hop runs first: folders,
               key kinds and passphrases, data sets readable, registry credentials, engine)
``leftovers``  the leftover sweep (:mod:`pht_airflow.station.sweep`): hop folders, sandbox
               containers and pulled train images of hops that are not running are removed
               and listed in a ``cleanup`` audit record
=============  ==============================================================================

The probe image is ``$PHT_SELFTEST_IMAGE`` (default ``pht-local/busybox:latest``, built by
``scripts/bootstrap.sh``); it needs a POSIX shell with ``id``, ``sed``, ``cut``, ``tr``,
``find``, ``head``, ``ls`` and ``nc`` or ``wget``. It is never pulled. Messages never
contain key material, passphrases, registry secrets or data set contents.

One module per check (``engine``, ``registry``, ``keys``, ``datasets``, ``sandbox``,
``preflight``, ``leftovers``), and
``probe`` for what they share: the probe image, the engine, running a probe, short messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from .datasets import PROBE_FILES, SCAN_ENTRIES, check_datasets, scan_dataset
from .engine import check_engine
from .keys import check_keys
from .leftovers import check_leftovers
from .preflight import check_preflight
from .probe import DEFAULT_IMAGE, IMAGE_ENV, MARKER, PROBE_WALL_SECONDS, selftest_image
from .registry import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    REPOSITORY,
    check_registry,
    client_identity,
)
from .sandbox import check_sandbox, sandbox_problems

__all__ = [
    "ARTIFACT_TYPE",
    "CHECKS",
    "CONFIG_MEDIA_TYPE",
    "DEFAULT_IMAGE",
    "ENGINE_CHECKS",
    "IMAGE_ENV",
    "LAYER_MEDIA_TYPE",
    "MARKER",
    "PROBE_FILES",
    "PROBE_WALL_SECONDS",
    "REPOSITORY",
    "SCAN_ENTRIES",
    "Check",
    "check_datasets",
    "check_engine",
    "check_keys",
    "check_leftovers",
    "check_preflight",
    "check_registry",
    "check_sandbox",
    "client_identity",
    "run_all",
    "run_check",
    "sandbox_problems",
    "scan_dataset",
    "selftest_image",
]

Check = Callable[..., str]

CHECKS: dict[str, Check] = {
    "engine": check_engine,
    "registry": check_registry,
    "keys": check_keys,
    "datasets": check_datasets,
    "sandbox": check_sandbox,
    "preflight": check_preflight,
    "leftovers": check_leftovers,
}
#: The checks that need the Docker engine (they take a ``docker_client``).
ENGINE_CHECKS = frozenset({"engine", "datasets", "sandbox", "preflight", "leftovers"})


def run_check(name: str, config: StationConfig, docker_client: Any = None) -> str:
    """Run one check by name; return its pass message or raise :class:`SelfTestError`."""
    try:
        check = CHECKS[name]
    except KeyError:
        raise ValueError(f"no self-test check {name!r} (one of {', '.join(CHECKS)})") from None
    if name in ENGINE_CHECKS:
        return check(config, docker_client)
    return check(config)


def run_all(config: StationConfig, docker_client: Any = None) -> dict[str, str | SelfTestError]:
    """Every check, in order; each maps to its pass message or its :class:`SelfTestError`."""
    results: dict[str, str | SelfTestError] = {}
    for name in CHECKS:
        try:
            results[name] = run_check(name, config, docker_client)
        except SelfTestError as exc:
            results[name] = exc
    return results
