"""Bounded HTTP: every body read with a limit on decoded bytes, every operation a deadline.

Used by the registry client (:mod:`.client`), its token exchange (:mod:`.auth`) and the
central service client (:mod:`pht_airflow.central_client`), so the two rules live here once.

**Size.** :func:`read_body` reads a response incrementally with ``decode_content=True`` and
stops at ``limit + 1`` *decoded* bytes, so a ``Content-Encoding: gzip`` body of a few KiB on
the wire that inflates to gigabytes costs at most the limit in memory (urllib3 >= 2.6 hands
the decompressor a ``max_length``, so it never inflates more than it was asked for). Over the
limit it raises :class:`~pht_airflow.errors.ResponseTooLargeError` naming what and the limit.
:func:`read_prefix` reads at most a limit and reports whether that was all (error bodies,
which only feed a message). The limits by kind are the ``*_LIMIT`` constants below.

**Time.** requests' ``timeout`` is per socket operation: a server that sends one byte every
few seconds never trips it, in the headers or in the body. A :class:`Deadline` is a total
budget for one operation (all its requests, token exchange included). A single watchdog
thread shuts down the sockets of every connection an expired operation uses, which ends a
blocked read at once; the reader then raises
:class:`~pht_airflow.errors.DeadlineExceededError`. Connections register themselves when a
request starts on them (:class:`_WatchedAdapter`), for whichever operation is
:meth:`Deadline.active` in the calling thread. With ``min_rate``, the deadline moves later by
one second per ``min_rate`` bytes moved (a minimum-throughput rule for blobs, whose size a
fixed deadline cannot fit). Connection setup is bounded by requests' connect timeout, which
is capped by the time left.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

from ..errors import DeadlineExceededError, RegistryError, ResponseTooLargeError
from .media import MAX_MANIFEST_BYTES

KiB = 1024
MiB = 1024 * KiB

MANIFEST_LIMIT = MAX_MANIFEST_BYTES
"""A manifest or index (4 MiB, what distribution accepts)."""
LIST_LIMIT = 4 * MiB
"""One page of a tag list or the catalog, and any other small JSON answer from a registry."""
ERROR_BODY_LIMIT = 64 * KiB
"""An error body: read only for the message; the rest is not read."""
TOKEN_LIMIT = 256 * KiB
"""A token service's answer (JWTs from Harbor or Keycloak are a few KiB)."""
CENTRAL_LIMIT = 16 * MiB
"""One answer from the central service (lists of stations, keys, trains)."""

_READ = 64 * KiB  # decoded bytes per read when reading a bounded body

_ACTIVE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "pht_active_deadline", default=None
)


def _size(n: float) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{int(n // MiB)} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{int(n // KiB)} KiB"
    return f"{int(n)} bytes"


class Deadline:
    """A total time budget for one network operation, enforced by the watchdog.

    Use as a context manager (watched from ``__enter__`` to ``__exit__``) and wrap the calls
    that open requests in :meth:`active`. ``min_rate`` (bytes per second) moves the deadline
    later by ``moved / min_rate`` seconds as :meth:`add` counts bytes.
    """

    def __init__(self, seconds: float, what: str, *, min_rate: float | None = None) -> None:
        if seconds <= 0:
            raise ValueError("a deadline must be positive")
        if min_rate is not None and min_rate <= 0:
            raise ValueError("min_rate must be positive")
        self.seconds = float(seconds)
        self.what = what
        self.min_rate = min_rate
        self.moved = 0
        self.start = time.monotonic()
        self.expired = False
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._watched = False

    # --- time -------------------------------------------------------------------------

    def due(self) -> float:
        """The monotonic time at which the operation is out of time."""
        extra = self.moved / self.min_rate if self.min_rate else 0.0
        return self.start + self.seconds + extra

    def remaining(self) -> float:
        return self.due() - time.monotonic()

    def add(self, n: int) -> None:
        """Count ``n`` bytes moved (extends the deadline when ``min_rate`` is set)."""
        self.moved += n

    def is_over(self) -> bool:
        return self.expired or self.remaining() <= 0

    def error(self) -> DeadlineExceededError:
        rule = f"{self.seconds:g} s"
        if self.min_rate:
            rule += f" plus 1 s per {_size(self.min_rate)} moved ({self.moved} bytes moved)"
        return DeadlineExceededError(
            f"{self.what} did not finish within its deadline ({rule}); the server is too "
            "slow or stalled. Try again later, or raise the deadline if the link is slow"
        )

    def check(self) -> None:
        """Raise :class:`DeadlineExceededError` if the time is up."""
        if self.is_over():
            self.expired = True
            raise self.error()

    def timeout(self, per_read: float) -> tuple[float, float]:
        """requests' ``(connect, read)`` timeout: each capped by the time left."""
        left = max(self.remaining(), 0.01)
        return (min(per_read, left), min(per_read, left))

    # --- watching ---------------------------------------------------------------------

    def __enter__(self) -> Deadline:
        self._watched = True
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching; connections this operation used are left alone from now on."""
        if self._watched:
            _WATCHDOG.unwatch(self)
            self._watched = False
        with self._lock:
            self._connections.clear()

    @contextlib.contextmanager
    def active(self) -> Iterator[Deadline]:
        """Requests started in this block (in this thread) count against this deadline."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def _attach(self, conn: HTTPConnection) -> None:
        # The connection's latest operation owns it: once back in the pool and taken by
        # another operation, an earlier one running out of time must not cut it.
        conn._pht_deadline = self  # type: ignore[attr-defined]
        with self._lock:
            if conn not in self._connections:
                self._connections.append(conn)

    def _expire(self) -> None:
        """Called by the watchdog: cut every connection so a blocked read returns now."""
        with self._lock:
            self.expired = True
            conns, self._connections = self._connections, []
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is not None and getattr(conn, "_pht_deadline", None) is self:
                with contextlib.suppress(OSError):
                    # socket.socket.shutdown on the file descriptor, also under TLS: it wakes
                    # a thread blocked in recv; closing alone would not.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def current() -> Deadline | None:
    """The deadline :meth:`Deadline.active` in this thread, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def operation(seconds: float, what: str) -> Iterator[Deadline]:
    """The active deadline if there is one (a token fetch inside a registry operation counts
    against that operation), else a new one of ``seconds``, active for the block."""
    outer = current()
    if outer is not None:
        yield outer
        return
    with Deadline(seconds, what) as deadline, deadline.active():
        yield deadline


class _Watchdog:
    """One daemon thread that expires deadlines when they are due."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: set[Deadline] = set()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            self._deadlines.add(deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="pht-http-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def unwatch(self, deadline: Deadline) -> None:
        with self._cond:
            self._deadlines.discard(deadline)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wait: float | None = None
                for deadline in list(self._deadlines):
                    due = deadline.due()
                    if due <= now:
                        self._deadlines.discard(deadline)
                        deadline._expire()
                    else:
                        wait = due - now if wait is None else min(wait, due - now)
                # min_rate deadlines move later without telling us: waking at the old due
                # time just recomputes it.
                self._cond.wait(timeout=wait)


_WATCHDOG = _Watchdog()


class _Watched:
    """Mixin for urllib3 connections: join the active deadline when a request starts."""

    def putrequest(self, *args: Any, **kwargs: Any) -> None:
        deadline = _ACTIVE.get()
        if deadline is not None:
            deadline._attach(self)  # type: ignore[arg-type]
        super().putrequest(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections the watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def make_session(user_agent: str = "pht-airflow") -> requests.Session:
    """A session whose requests deadlines can cut, ignoring proxy and netrc settings."""
    session = requests.Session()
    session.trust_env = False  # no proxies or ~/.netrc from the environment
    session.headers["User-Agent"] = user_agent
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --- reading ---------------------------------------------------------------------------

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)
"""What a read or request can raise when the connection breaks (or a deadline cut it)."""


def broken(
    exc: BaseException, what: str, deadline: Deadline | None, url: str | None = None
) -> RegistryError:
    """The error for a request or read that failed: the deadline's, if it ran out."""
    if deadline is not None and deadline.is_over():
        deadline.expired = True
        return deadline.error()
    return RegistryError(f"{what} broke off: {type(exc).__name__}: {str(exc)[:200]}", url=url)


def _read(resp: requests.Response, want: int, deadline: Deadline | None) -> bytes:
    if deadline is not None:
        deadline.check()
    data: bytes = resp.raw.read(want, decode_content=True)
    return data


def read_body(
    resp: requests.Response, limit: int, what: str, deadline: Deadline | None = None
) -> bytes:
    """The whole (decoded) body of a streamed response, at most ``limit`` bytes; closes it.

    Raises :class:`ResponseTooLargeError` past the limit, :class:`DeadlineExceededError` when
    the deadline runs out, :class:`RegistryError` when the connection breaks.
    """
    buf = bytearray()
    try:
        while len(buf) <= limit:
            block = _read(resp, min(_READ, limit + 1 - len(buf)), deadline)
            if not block:
                break
            buf += block
    except TRANSPORT_ERRORS as exc:
        raise broken(exc, f"reading {what}", deadline, resp.url) from None
    finally:
        resp.close()
    if len(buf) > limit:
        raise ResponseTooLargeError(
            f"{what} is larger than the limit of {_size(limit)} (decoded); refusing to read more",
            url=resp.url,
            status=resp.status_code,
        )
    return bytes(buf)


def read_prefix(
    resp: requests.Response, limit: int, deadline: Deadline | None = None
) -> tuple[bytes, bool]:
    """Up to ``limit`` decoded bytes of a body and whether that was all of it; closes it.

    For bodies that only feed a message (errors): a broken connection just ends the text,
    but a deadline that ran out still raises :class:`DeadlineExceededError`.
    """
    buf = bytearray()
    complete = False
    try:
        while len(buf) <= limit:
            block = _read(resp, min(_READ, limit + 1 - len(buf)), deadline)
            if not block:
                complete = True
                break
            buf += block
    except DeadlineExceededError:
        raise
    except TRANSPORT_ERRORS:
        if deadline is not None and deadline.is_over():
            deadline.expired = True
            raise deadline.error() from None
    finally:
        resp.close()
    return bytes(buf[:limit]), complete and len(buf) <= limit


def ensure_loaded(
    resp: requests.Response, limit: int, what: str, deadline: Deadline | None = None
) -> requests.Response:
    """Read a streamed response's body with :func:`read_body` and keep it on the response,
    so ``resp.content``, ``resp.text`` and ``resp.json()`` work on the bounded bytes."""
    body = read_body(resp, limit, what, deadline)
    resp._content = body  # requests' own cache of the body, which .json() and .text read
    resp._content_consumed = True  # type: ignore[attr-defined]
    return resp
