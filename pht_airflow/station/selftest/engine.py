"""The ``engine`` check: the Docker engine answers, and the probe image is local."""

from __future__ import annotations

from typing import Any

from ...errors import SelfTestError
from ..config import StationConfig
from .probe import IMAGE_ENV, _engine, _short, selftest_image


def check_engine(
    config: StationConfig, docker_client: Any = None, *, image: str | None = None
) -> str:
    """The Docker engine answers, and the probe image is in it (it is never pulled)."""
    import docker.errors

    image = image or selftest_image(config)
    with _engine(docker_client, "engine") as engine:
        try:
            engine.ping()
            version = engine.version()
        except Exception as exc:  # noqa: BLE001 - requests or docker errors alike
            raise SelfTestError(
                f"engine: cannot reach the Docker engine ({type(exc).__name__}: {_short(exc)}); "
                "is dockerd running and DOCKER_HOST right?"
            ) from None
        try:
            img = engine.images.get(image)
        except docker.errors.ImageNotFound:
            raise SelfTestError(
                f"engine: the probe image {image} is not in the local Docker engine; build it "
                f"with scripts/bootstrap.sh or set {IMAGE_ENV} to a local shell image"
            ) from None
        except docker.errors.APIError as exc:
            raise SelfTestError(
                f"engine: the Docker engine could not inspect the probe image {image}: "
                f"{exc.explanation}"
            ) from None
    return (
        f"engine: Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
        f"answers; probe image {image} ({img.short_id}) is local"
    )
