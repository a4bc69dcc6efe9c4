"""A small FastAPI app that receives registry webhooks and hands each push to a callback.

Shared by the station plugin and the central service; it knows nothing of Airflow. One
route, ``POST {path}``:

1. a ``Content-Length`` over :data:`~pht_airflow.webhooks.MAX_BODY_BYTES` is refused (413)
   before anything is read;
2. ``unavailable()``, when given, says why the receiver cannot take pushes now (the
   station's config is broken, its DAG is paused): 503 with that reason in the JSON body,
   logged, so the registry delivers again later instead of the push being lost; so is a
   secret that cannot be read;
3. the ``Authorization`` header must carry the secret (:func:`check_authorization`), else
   401 with a JSON error and no ``WWW-Authenticate`` challenge, before any of the body is
   read (every refusal before reading closes the connection, so the rest is never received);
4. the body is streamed and reading stops at the limit (413, also for chunked bodies);
5. :func:`~pht_airflow.webhooks.parse_events` turns it into manifest pushes (4xx with the
   reason on bad input), events outside ``projects()`` are counted as ignored;
6. ``on_push(event)`` runs for each remaining event, in a worker thread, and returns what it
   made of it (a run id, say) or None for a push it had already handled. Deduplication is
   the callback's job: every delivery is passed on. If it raises, the answer is 500 so the
   registry delivers the envelope again.

The answer is ``200 {"accepted": [{"event_id", "repository", "digest", "tag", "result"}],
"ignored": n}``. Logs name event ids and field paths only: never the secret, the
``Authorization`` header or the body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import WebhookError
from ..text import safe_text
from ..webhooks import (
    MAX_BODY_BYTES,
    PushEvent,
    check_authorization,
    filter_project,
    parse_events,
)

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/registry-events"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _unread(status: int, message: str) -> JSONResponse:
    """A refusal before the body is read: the rest of the body stays unread, so the
    connection is closed after the answer (no more of the body is received)."""
    response = _error(status, message)
    response.headers["Connection"] = "close"
    return response


def _too_large() -> JSONResponse:
    return _unread(413, f"body is larger than {MAX_BODY_BYTES} bytes")


def create_app(
    *,
    secret_provider: Callable[[], str],
    on_push: Callable[[PushEvent], str | None],
    projects: Callable[[], Collection[str]] | None = None,
    path: str = DEFAULT_PATH,
    unavailable: Callable[[], str | None] | None = None,
) -> FastAPI:
    """The webhook receiver as an ASGI app (serve it with uvicorn or mount it).

    :param secret_provider: returns the shared secret, asked on every request so it can be
        rotated; an empty secret refuses every request (503, logged).
    :param on_push: called once per manifest push in the body (duplicates included).
    :param projects: returns the projects (first repository component) to pass on; None
        passes every project.
    :param path: the route; must start with ``/``.
    :param unavailable: returns why the receiver cannot take pushes now (503 with the reason,
        logged), or None; asked on every request before the secret. Its reason is shown to
        whoever calls, so it must not hold secrets or file contents.
    """
    if not path.startswith("/"):
        raise ValueError(f"webhook path {path!r} must start with '/'")

    app = FastAPI(
        title="pht-airflow registry webhooks",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.post(path)
    async def registry_events(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return _unread(400, "Content-Length is not a non-negative integer")
            if int(declared) > MAX_BODY_BYTES:
                logger.warning("refused a webhook body of %s bytes (over the limit)", declared)
                return _too_large()

        if unavailable is not None:
            try:
                reason = await run_in_threadpool(unavailable)
            except Exception as exc:  # noqa: BLE001 - a broken check must not look like 500
                logger.error(
                    "refusing registry notifications: the readiness check failed: %s: %s",
                    type(exc).__name__,
                    safe_text(exc, limit=1000),
                )
                reason = "the station cannot tell whether it is ready; see the receiver's log"
            if reason:
                logger.error("refusing registry notifications (503): %s", safe_text(reason))
                return _unread(503, reason)
        try:
            secret = await run_in_threadpool(secret_provider)
        except Exception as exc:  # noqa: BLE001 - e.g. a config that no longer loads
            # Only the type: the secret's reader may have had the secret in hand.
            logger.error(
                "refusing registry notifications: the webhook secret cannot be read (%s)",
                type(exc).__name__,
            )
            return _unread(503, "the webhook secret cannot be read; see the receiver's log")
        if not secret:
            logger.error("no webhook secret is configured; refusing registry notifications")
            return _unread(503, "the webhook secret is not configured on this receiver")
        headers = request.headers.getlist("authorization")
        if len(headers) != 1 or not check_authorization(headers[0], secret):
            client = request.client.host if request.client else "?"
            logger.warning("refused a registry notification from %s: bad Authorization", client)
            return _unread(401, "missing or wrong Authorization header")

        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                logger.warning("refused a streamed webhook body over %d bytes", MAX_BODY_BYTES)
                return _too_large()

        try:
            events = parse_events(bytes(body), request.headers.get("content-type"))
        except WebhookError as exc:
            logger.warning(
                "refused a registry notification (%d) at %s", exc.status, exc.where or "body"
            )
            return _error(exc.status, str(exc))

        wanted = events
        if projects is not None:
            allowed = await run_in_threadpool(projects)
            wanted = filter_project(events, allowed)
        ignored = len(events) - len(wanted)

        accepted: list[dict[str, Any]] = []
        for event in wanted:
            try:
                result = await run_in_threadpool(on_push, event)
            except Exception as exc:  # noqa: BLE001 - answer 500 so the registry retries
                logger.error(
                    "handling push %s failed: %s: %s",
                    event.event_id,
                    type(exc).__name__,
                    safe_text(exc, limit=1000),
                )
                return _error(500, f"could not handle {event.event_id}; deliver again later")
            logger.info("registry push %s -> %s", event.event_id, safe_text(result or "duplicate"))
            accepted.append(
                {
                    "event_id": event.event_id,
                    "repository": event.repository,
                    "digest": event.digest,
                    "tag": event.tag,
                    "result": result,
                }
            )
        return JSONResponse({"accepted": accepted, "ignored": ignored})

    return app
