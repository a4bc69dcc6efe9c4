"""The central service's REST API (FastAPI): station directory, trains, registry webhooks.

Reads are open (the directory holds public keys only); writes need ``Authorization: Bearer
<token>``. Registry webhooks use their own shared secret. Request bodies are capped. A
background thread reconciles the database with the registry every ``reconcile_seconds``.
OpenAPI docs are served at ``/docs``.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..central.router import Router, RouterError
from ..errors import PhtError, VerificationError
from .webhook_app import create_app as create_webhook_app

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class StationIn(BaseModel):
    """A station to register: its id, signing public key (PEM), age recipient, project."""

    id: str = Field(examples=["station-a"])
    key: str = Field(description="SubjectPublicKeyInfo PEM of the station's signing key")
    recipient: str = Field(examples=["age1…"])
    project: str | None = Field(None, description="default: station-<id>")
    webhook_url: str | None = None


class TrustedKeyIn(BaseModel):
    """A researcher's key: a creator whose pushes to the incoming project submit trains,
    or an approver whose signatures count towards such a submission."""

    name: str = Field(examples=["alice"])
    role: Literal["creator", "approver"]
    key: str = Field(description="SubjectPublicKeyInfo PEM of the researcher's signing key")


class TrainIn(BaseModel):
    """A train to submit: its reference in pht-incoming and the creator's public key."""

    reference: str = Field(examples=["harbor.example.org/pht-incoming/3b1f…:train"])
    creator_key: str = Field(description="PEM of the creator's signing public key")


class RetryIn(BaseModel):
    hop: int


def create_app(
    router: Router,
    *,
    api_token: Callable[[], str],
    webhook_secret: Callable[[], str],
    reconcile_seconds: float = 30.0,
) -> FastAPI:
    """The central service as an ASGI app."""
    stop = threading.Event()

    def reconcile_loop() -> None:
        while not stop.wait(reconcile_seconds):
            try:
                actions = router.reconcile()
                if actions:
                    log.info("reconciliation took %d action(s)", actions)
            except Exception:  # noqa: BLE001 - keep the loop alive, say what broke
                log.exception("reconciliation failed")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=reconcile_loop, name="pht-reconcile", daemon=True)
        if reconcile_seconds > 0:
            thread.start()
        yield
        stop.set()

    app = FastAPI(
        title="pht-airflow central service",
        description="Station directory, train routing between station projects, registry "
        "webhooks. Holds no key that can read a result.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": "request body too large"}, status_code=413)
        return await call_next(request)

    def require_token(authorization: str | None = Header(None)) -> None:
        expected = api_token()
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "a valid API token is required (Authorization: Bearer …)")

    def call(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RouterError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except VerificationError as exc:
            raise HTTPException(422, str(exc)) from None
        except PhtError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/stations", tags=["directory"])
    def list_stations() -> list[dict[str, Any]]:
        """Every registered station with its public key, key id, recipient and project."""
        return router.stations()

    @app.get("/stations/{station_id}", tags=["directory"])
    def show_station(station_id: str) -> dict[str, Any]:
        return call(lambda: router.station(station_id))

    @app.post("/stations", tags=["directory"], dependencies=[Depends(require_token)])
    def add_station(body: StationIn) -> dict[str, Any]:
        """Register a station, or update it."""
        return call(
            lambda: router.add_station(
                body.id,
                body.key,
                body.recipient,
                project=body.project,
                webhook_url=body.webhook_url,
            )
        )

    @app.post("/stations/{station_id}/schema", tags=["directory"])
    def publish_schema(station_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """A station publishes the shape of the data sets it chooses (column names and types,
        row counts rounded to its disclosure threshold; never values), signed with its key
        (no token needed; see ``pht_airflow.schemadoc``). Replaces its previous schema;
        shown in ``GET /stations/{id}`` as ``schema``."""
        return call(lambda: router.publish_schema(station_id, document))

    @app.get("/keys", tags=["directory"])
    def list_trusted_keys() -> list[dict[str, Any]]:
        """Researchers' keys trusted for submission by a push to the incoming project."""
        return router.trusted_keys()

    @app.post("/keys", tags=["directory"], dependencies=[Depends(require_token)])
    def add_trusted_key(body: TrustedKeyIn) -> dict[str, Any]:
        """Register a researcher's key, or update it. A train pushed to the incoming project
        is submitted once its creator's key (registered here as ``creator``) and enough
        ``approver`` keys registered here have signed it."""
        return call(lambda: router.add_trusted_key(body.name, body.key, body.role))

    @app.get("/incoming", tags=["trains"])
    def incoming() -> dict[str, Any]:
        """Pushes to the incoming project waiting for signatures, and the latest refused ones
        with the reason."""
        return router.incoming_pushes()

    @app.post("/trains", tags=["trains"], dependencies=[Depends(require_token)])
    def submit_train(body: TrainIn) -> dict[str, Any]:
        """Verify the creator's signature and send the train to its first station(s)."""
        return call(lambda: router.submit(body.reference, body.creator_key))

    @app.get("/trains", tags=["trains"])
    def list_trains() -> list[dict[str, Any]]:
        return router.trains()

    @app.get("/trains/{train_id}", tags=["trains"])
    def show_train(train_id: str) -> dict[str, Any]:
        """A train's status, hops and event timeline."""
        return call(lambda: router.train(train_id))

    @app.post("/trains/{train_id}/retry", tags=["trains"], dependencies=[Depends(require_token)])
    def retry_train(train_id: str, body: RetryIn) -> dict[str, Any]:
        """Send one hop again."""
        return call(lambda: router.retry(train_id, body.hop))

    @app.post("/trains/{train_id}/failures", tags=["trains"])
    def station_failure(train_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """A station reports that its hop failed, signed with its key (no token needed).

        The body is the report ``pht_airflow.hopreport`` makes from the station's audit
        record. A report for a hop that is not in flight is answered but changes nothing.
        """
        return call(lambda: router.station_failure(train_id, report))

    @app.post("/reconcile", tags=["trains"], dependencies=[Depends(require_token)])
    def reconcile_now() -> dict[str, int]:
        """Run one reconciliation pass now."""
        return {"actions": call(router.reconcile)}

    app.mount(
        "/webhooks",
        create_webhook_app(secret_provider=webhook_secret, on_push=router.handle_push),
    )
    return app
