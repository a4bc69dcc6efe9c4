"""What every self-test check shares: the probe image, the Docker engine, and a probe run.

:func:`selftest_image` names the probe image, ``_engine`` lends the caller's Docker client or
opens one, ``_run_probe`` runs a shell script in the station's sandbox and returns the
``MARKER key=value`` lines it printed, and ``_short``, ``_root_cause`` and ``_scrub`` keep
failure messages to one line with no secret in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import SandboxError, SelfTestError
from ..config import StationConfig
from ..sandbox import Limits, run_train

IMAGE_ENV = "PHT_SELFTEST_IMAGE"
DEFAULT_IMAGE = "pht-local/busybox:latest"
#: Every line the probe scripts print for us starts with this; the rest is ``key=value``.
MARKER = "PHT-SELFTEST"
#: The probe never needs long; the station's own wall-time limit applies if it is shorter.
PROBE_WALL_SECONDS = 120.0


def selftest_image(config: StationConfig | None = None) -> str:
    """The probe image: ``$PHT_SELFTEST_IMAGE``, else the default local busybox."""
    env = os.environ.get(IMAGE_ENV, "").strip()
    if env:
        return env
    extra = config.extra.get("selftest_image") if config is not None else None
    return str(extra) if extra else DEFAULT_IMAGE


@contextlib.contextmanager
def _engine(docker_client: Any, what: str) -> Iterator[Any]:
    """The caller's Docker client, or a new one from the environment (closed afterwards)."""
    if docker_client is not None:
        yield docker_client
        return
    try:
        import docker

        client = docker.from_env(timeout=120)
    except Exception as exc:  # noqa: BLE001 - DockerException, or no docker SDK at all
        raise SelfTestError(
            f"{what}: cannot reach the Docker engine ({type(exc).__name__}: {_short(exc)}); "
            "is dockerd running and DOCKER_HOST right?"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chained network error: ``Connection refused``, or a type."""
    reason = type(exc.__cause__ or exc).__name__
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror
        elif "timed out" in str(current).lower():
            reason = "timed out"
        current = current.__cause__ or current.__context__
    return reason


def _scrub(text: str, secret_values: list[bytes]) -> str:
    """Belt and braces: blank any secret value that found its way into a message."""
    for value in secret_values:
        try:
            plain = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        if len(plain) >= 4:
            text = text.replace(plain, "***")
    return text


def _private_dir(config: StationConfig, prefix: str) -> Path:
    """A fresh folder under the station's work dir (the sandbox bind-mounts from there)."""
    try:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=config.work_dir))
    except OSError as exc:
        raise SelfTestError(
            f"cannot create a folder in work_dir {config.work_dir} ({exc.strerror}); "
            "the station needs it for every hop"
        ) from None


def _probe_limits(limits: Limits) -> Limits:
    return dataclasses.replace(limits, wall_seconds=min(limits.wall_seconds, PROBE_WALL_SECONDS))


def _run_probe(
    config: StationConfig,
    engine: Any,
    image: str,
    script: str,
    *,
    data_dir: Path,
    what: str,
) -> dict[str, str]:
    """Run ``script`` (sh -c) in the sandbox; return its ``MARKER key=value`` lines."""
    lines: list[str] = []
    work = _private_dir(config, "selftest-")
    try:
        output = work / "output"
        output.mkdir()
        try:
            run_train(
                engine,
                image,
                data_dir=data_dir,
                input_dir=None,
                output_dir=output,
                env={
                    "PHT_TRAIN_ID": "selftest",
                    "PHT_STATION_ID": config.station_id,
                    "PHT_HOP": "0",
                    "PHT_ROUTE_LENGTH": "1",
                    "PHT_DATASET": "selftest",
                },
                limits=_probe_limits(config.limits),
                log=lines.append,
                name=f"pht-selftest-{config.station_id}-{secrets.token_hex(4)}",
                command=["sh", "-c", script],
            )
        except SandboxError as exc:
            raise SelfTestError(f"{what}: the probe container failed: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith(MARKER + " ") and "=" in line:
            key, _, value = line[len(MARKER) + 1 :].partition("=")
            found[key.strip()] = value.strip()
    if found.get("done") != "1":
        raise SelfTestError(
            f"{what}: the probe in {image} did not finish its script (is it a shell image "
            f"like {DEFAULT_IMAGE}? set {IMAGE_ENV})"
        )
    return found
