"""The central service's REST API (FastAPI): station directory, trains, registry webhooks.

Reads are open (the directory holds public keys only); writes need ``Authorization: Bearer
<token>``. Registry webhooks use their own shared secret. A background thread reconciles the
database with the registry when the service starts and every ``reconcile_seconds`` after.
OpenAPI docs are served at ``/docs``.

Request bodies are bounded on the stream (:class:`BodyLimit`): a declared ``Content-Length``
over :data:`MAX_BODY_BYTES` is refused before anything is read, and a chunked body is cut off
with 413 once it passes the limit, so no more than the limit (plus one chunk) is ever held.
The token is checked before the body is read (:func:`create_app`'s route class: FastAPI
would otherwise parse the body for the pydantic model before any dependency runs). Every
early refusal closes the connection, so the unread rest of a body is never received.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..central.router import Router, RouterError
from ..errors import PhtError, VerificationError
from .webhook_app import create_app as create_webhook_app

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""The largest request body the central service reads (1 MiB; a train spec is a few KiB)."""

_CLOSE = {"Connection": "close"}  # the rest of the body stays unread: end the connection

Bearer = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description="the API token (PHT_CENTRAL_TOKEN)")),
]


def _too_large() -> str:
    return f"request body is larger than {MAX_BODY_BYTES} bytes"


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes are refused with 413.

    A declared ``Content-Length`` over the limit is answered before the app runs; a body
    without one (chunked) is counted as the app reads it, and the read that passes the limit
    raises a 413 :class:`HTTPException` (the app answers it; FastAPI passes it through its
    body parsing). Either way the connection is closed after the answer.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            status, message = (
                (413, _too_large()) if declared.isdigit() else (400, "bad Content-Length")
            )
            log.warning("refused a request body: %s", message)
            await JSONResponse({"detail": message}, status, headers=_CLOSE)(scope, receive, send)
            return
        received = 0
        started = False

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    log.warning("refused a streamed request body over %d bytes", self.limit)
                    raise HTTPException(413, _too_large(), headers=_CLOSE)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except HTTPException as exc:  # raised by limited() where no handler answered it
            if started or exc.status_code != 413:
                raise
            await JSONResponse({"detail": exc.detail}, 413, headers=_CLOSE)(scope, receive, send)


# --- request and response bodies ---------------------------------------------------------


class StationIn(BaseModel):
    """A station to register: its id, signing public key (PEM), age recipient, project."""

    id: str = Field(examples=["station-a"])
    key: str = Field(description="SubjectPublicKeyInfo PEM of the station's signing key")
    recipient: str = Field(examples=["age1…"])
    project: str | None = Field(None, description="default: station-<id>")
    webhook_url: str | None = None


class StationOut(BaseModel):
    """A station in the directory."""

    model_config = ConfigDict(extra="allow")

    id: str
    key: str = Field(description="SubjectPublicKeyInfo PEM of the station's signing key")
    key_id: str
    recipient: str
    project: str
    webhook_url: str | None
    removed: str | None = Field(
        None,
        description="when the station was removed (UTC; it takes no new trains), or null",
    )


class TrustedKeyIn(BaseModel):
    """A researcher's key: a creator whose pushes to the incoming project submit trains,
    or an approver whose signatures count towards such a submission."""

    name: str = Field(examples=["alice"])
    role: Literal["creator", "approver"]
    key: str = Field(description="SubjectPublicKeyInfo PEM of the researcher's signing key")


class TrustedKeyOut(BaseModel):
    name: str
    role: Literal["creator", "approver"]
    key: str
    key_id: str


class TrainIn(BaseModel):
    """A train to submit: its reference in pht-incoming and the creator's public key."""

    reference: str = Field(examples=["harbor.example.org/pht-incoming/3b1f…:train"])
    creator_key: str = Field(description="PEM of the creator's signing public key")


class RetryIn(BaseModel):
    hop: int


class HopOut(BaseModel):
    """One hop: ``pending``, ``sent``, ``done``, or ended without a result: ``failed``,
    ``rejected`` (a person at the station refused to run it), ``withheld`` (a person at the
    station refused to release its output)."""

    hop: int
    station: str
    state: str
    result_digest: str | None
    sent_at: str | None
    done_at: str | None
    note: str | None = Field(None, description="why the hop ended without a result")


class EventOut(BaseModel):
    time: str
    kind: str
    message: str


class TrainSummary(BaseModel):
    """A train and where it is on its route."""

    id: str
    digest: str
    name: str
    mode: str
    route: list[str]
    status: str = Field(
        description="routing, done, or ended without reaching the outbox: failed, rejected "
        "(a station's person refused to run it) or withheld (a station's person refused to "
        "release its output); reason says why"
    )
    reason: str | None
    created: str
    updated: str
    hops: list[HopOut]


class TrainOut(TrainSummary):
    """A train with its event timeline."""

    events: list[EventOut]


class WaitingPush(BaseModel):
    repository: str
    digest: str
    waiting_for: str
    first_seen: str


class IncomingOut(BaseModel):
    waiting: list[WaitingPush]
    refused: list[EventOut]


class SchemaPublished(BaseModel):
    """A station's schema document was checked and stored."""

    station: str
    time: str = Field(description="when the station made the document (UTC)")
    datasets: list[str] = Field(description="the data sets it describes")


class FailureOut(BaseModel):
    """Whether a station's report changed the train (and the train if it did)."""

    accepted: bool
    why: str | None = None
    train: TrainOut | None = None


class ReconcileOut(BaseModel):
    actions: int


class ErrorOut(BaseModel):
    """A refusal, with what to do about it."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """The request did not match the schema (FastAPI's validation error)."""

    detail: list[ValidationIssue]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error answers a route gives."""
    described = {
        400: "invalid input (the detail says which)",
        401: "a valid API token is required",
        404: "not found",
        409: "conflicts with what is registered",
        413: f"request body over {MAX_BODY_BYTES} bytes",
        422: "refused: the request is well-formed but does not hold",
    }
    answers: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model: Any = ErrorOut | ValidationErrorOut if code == 422 else ErrorOut
        answers[code] = {"model": model, "description": described[code]}
    return answers


READ = _errors(404, 422)
WRITE = _errors(400, 401, 404, 409, 413, 422)


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
        # The first pass runs at start: what was pushed while the service was down (the
        # registry's notifications of it lost) is routed at once, not an interval later.
        while True:
            try:
                actions = router.reconcile()
                if actions:
                    log.info("reconciliation took %d action(s)", actions)
            except Exception:  # noqa: BLE001 - keep the loop alive, say what broke
                log.exception("reconciliation failed")
            if stop.wait(reconcile_seconds):
                return

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        thread = threading.Thread(target=reconcile_loop, name="pht-reconcile", daemon=True)
        if reconcile_seconds > 0:
            thread.start()
        yield
        stop.set()

    def check_token(authorization: str | None) -> None:
        expected = api_token()
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(
                401, "a valid API token is required (Authorization: Bearer …)", headers=_CLOSE
            )

    def require_token(request: Request, _: Bearer) -> None:
        """Documents the bearer token in OpenAPI; :class:`TokenFirst` checked it already."""
        check_token(request.headers.get("authorization"))

    class TokenFirst(APIRoute):
        """Routes that depend on :func:`require_token` check the token before the body is
        read (FastAPI reads and parses a body before it solves any dependency)."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            if not any(d.dependency is require_token for d in self.dependencies):
                return handler

            async def token_first(request: Request) -> Response:
                await run_in_threadpool(check_token, request.headers.get("authorization"))
                return await handler(request)

            return token_first

    app = FastAPI(
        title="pht-airflow central service",
        description="Station directory, train routing between station projects, registry "
        "webhooks. Holds no key that can read a result.",
        lifespan=lifespan,
    )
    app.router.route_class = TokenFirst
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    token = [Depends(require_token)]

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
    def list_stations() -> list[StationOut]:
        """Every registered station with its public key, key id, recipient and project."""
        return [StationOut(**r) for r in router.stations()]

    @app.get("/stations/{station_id}", tags=["directory"], responses=READ)
    def show_station(station_id: str) -> StationOut:
        """A station's entry, with ``schema``: the signed description of the data sets it
        publishes (``POST /stations/{id}/schema``; check it with the station's ``key``), or
        null."""
        return StationOut(**call(lambda: router.station(station_id)))

    @app.post("/stations", tags=["directory"], dependencies=token, responses=WRITE)
    def add_station(body: StationIn) -> StationOut:
        """Register a station, or update it (a removed station is put back)."""
        return StationOut(
            **call(
                lambda: router.add_station(
                    body.id,
                    body.key,
                    body.recipient,
                    project=body.project,
                    webhook_url=body.webhook_url,
                )
            )
        )

    @app.delete(
        "/stations/{station_id}", tags=["directory"], dependencies=token,
        responses=_errors(401, 404),
    )  # fmt: skip
    def remove_station(station_id: str) -> StationOut:
        """Remove a station: it takes no new trains (a submission whose route names it is
        refused with 422 naming it, and a train whose next hop is it fails, saying so), and
        its hops in flight fail. Its entry stays, marked ``removed``, as its trains' history
        names it; removing it again changes nothing, adding it again (``POST /stations``)
        puts it back. Revoking its registry robot is ``pht central stations remove``'s other
        half."""
        return StationOut(**call(lambda: router.remove_station(station_id)))

    @app.post(
        "/stations/{station_id}/schema", tags=["directory"], responses=_errors(404, 409, 413, 422)
    )
    def publish_schema(station_id: str, document: dict[str, Any]) -> SchemaPublished:
        """A station publishes the shape of the data sets it chooses (column names and types,
        row counts rounded to its disclosure threshold; never values), signed with its key
        (no token needed; the format is ``pht_airflow.schemadoc``). It replaces the station's
        previous schema (an older document is refused with 409) and shows in
        ``GET /stations/{id}`` as ``schema``."""
        return SchemaPublished(**call(lambda: router.publish_schema(station_id, document)))

    @app.get("/keys", tags=["directory"])
    def list_trusted_keys() -> list[TrustedKeyOut]:
        """Researchers' keys trusted for submission by a push to the incoming project."""
        return [TrustedKeyOut(**r) for r in router.trusted_keys()]

    @app.post("/keys", tags=["directory"], dependencies=token, responses=WRITE)
    def add_trusted_key(body: TrustedKeyIn) -> TrustedKeyOut:
        """Register a researcher's key, or update it. A train pushed to the incoming project
        is submitted once its creator's key (registered here as ``creator``) and enough
        ``approver`` keys registered here have signed it."""
        return TrustedKeyOut(**call(lambda: router.add_trusted_key(body.name, body.key, body.role)))

    @app.get("/incoming", tags=["trains"])
    def incoming() -> IncomingOut:
        """Pushes to the incoming project waiting for signatures, and the latest refused ones
        with the reason."""
        return IncomingOut(**router.incoming_pushes())

    @app.post("/trains", tags=["trains"], dependencies=token, responses=WRITE)
    def submit_train(body: TrainIn) -> TrainOut:
        """Verify the creator's signature and send the train to its first station(s)."""
        return TrainOut(**call(lambda: router.submit(body.reference, body.creator_key)))

    @app.get("/trains", tags=["trains"])
    def list_trains() -> list[TrainSummary]:
        return [TrainSummary(**t) for t in router.trains()]

    @app.get("/trains/{train_id}", tags=["trains"], responses=READ)
    def show_train(train_id: str) -> TrainOut:
        """A train's status, hops and event timeline."""
        return TrainOut(**call(lambda: router.train(train_id)))

    @app.post("/trains/{train_id}/retry", tags=["trains"], dependencies=token, responses=WRITE)
    def retry_train(train_id: str, body: RetryIn) -> TrainOut:
        """Send one hop again."""
        return TrainOut(**call(lambda: router.retry(train_id, body.hop)))

    @app.post(
        "/trains/{train_id}/failures",
        tags=["trains"],
        responses=_errors(400, 404, 413, 422),
        response_model_exclude_none=True,
    )
    def station_failure(train_id: str, report: dict[str, Any]) -> FailureOut:
        """A station reports its hop's final outcome, signed with its key (no token needed):
        ``failed``, ``rejected`` (a person at the station refused to run the train; who and
        why) or ``withheld`` (the train ran and a person refused to release its output).

        The body is the report ``pht_airflow.hopreport`` makes (version 2; version 1 reports,
        without an outcome, read as failed). A sequential train ends with the hop's outcome
        as its status; a parallel train's other hops go on. A report for a hop that is not in
        flight is answered but changes nothing.
        """
        return FailureOut(**call(lambda: router.station_failure(train_id, report)))

    @app.post("/reconcile", tags=["trains"], dependencies=token, responses=_errors(400, 401))
    def reconcile_now() -> ReconcileOut:
        """Run one reconciliation pass now."""
        return ReconcileOut(actions=call(router.reconcile))

    app.mount(
        "/webhooks",
        create_webhook_app(secret_provider=webhook_secret, on_push=router.handle_push),
    )
    return app
