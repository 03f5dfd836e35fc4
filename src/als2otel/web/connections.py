"""The bounds on what an HTTP client can make the bridge hold: connections, time, logs.

aiohttp parses HTTP; this module puts every connection it serves behind three
bounds it has no setting for:

- at most :data:`MAX_CONNECTIONS` open at once: at the bound, the connection that has
  waited longest without a complete request is closed to make room (so a flood of idle
  connections cannot keep a probe out), or, when every one is busy with a request, the
  new one is closed on accept;
- a connection must deliver a complete request head within
  :data:`REQUEST_HEAD_TIMEOUT` of opening, and the next one within
  :data:`IDLE_TIMEOUT` of its last response (idle and slowloris clients alike
  are closed);
- a request's handling, response included, ends after :data:`HANDLER_TIMEOUT`
  (a scraper that stops reading cannot hold the page).

Malformed requests are logged at most once per :data:`LOG_INTERVAL` per kind,
without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..stats import Counter

MAX_CONNECTIONS = 256
"""Open HTTP connections at once; well below the usual 1,024 open files, so ALS streams keep theirs."""

REQUEST_HEAD_TIMEOUT = 10.0
"""Seconds from accepting a connection until its first request head is complete."""

IDLE_TIMEOUT = 30.0
"""Seconds from a response until the connection's next request head is complete."""

HANDLER_TIMEOUT = 30.0
"""Seconds one request may take to handle and answer, writing the response included."""

LOG_INTERVAL = 10.0

MAX_BODY_BYTES_IN_FLIGHT = 32 * 1024 * 1024
"""Bytes of request bodies (OTLP/HTTP logs, decompressed) held at once over every connection."""

log = logging.getLogger("als2otel.http")


class BodyBudget:
    """The bytes of request bodies held at once, up to a bound shared by every connection, so
    that what many slow or large uploads hold is bounded by configuration, not by senders."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_BODY_BYTES_IN_FLIGHT if limit is None else limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Takes ``size`` bytes of the budget; False, taking nothing, when it has not that many left."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class ConnectionGuard:
    """Counts the open connections and keeps the timer of each; one per HTTP server."""

    def __init__(self, closed: Counter) -> None:
        self.closed = closed
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        self._next_log = 0.0

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol(self, handler: asyncio.Protocol) -> asyncio.Protocol:
        """aiohttp's handler for one connection, behind the bounds."""
        return _Guarded(handler, self)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Stops a connection's head timer while its request is handled; bounds the handling."""
        guarded = self._open.get(request.transport) if request.transport is not None else None
        if guarded is not None:
            guarded.disarm()
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT):
                return await handler(request)
        finally:
            if guarded is not None:
                guarded.arm(IDLE_TIMEOUT)

    def _accept(self, transport: asyncio.BaseTransport, guarded: _Guarded) -> bool:
        if len(self._open) >= MAX_CONNECTIONS:
            idle = [g for g in self._open.values() if g.waiting_since is not None]
            if idle:
                min(idle, key=lambda g: g.waiting_since or 0.0).close("evicted")
                self._warn("HTTP connections at their bound (%d): closing the one idle longest")
            else:
                self.closed.inc("connection_limit")
                self._warn("HTTP connections refused: %d are open already, each with a request")
                return False
        self._open[transport] = guarded
        return True

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + LOG_INTERVAL
            log.warning(message, MAX_CONNECTIONS)

    def _release(self, transport: asyncio.BaseTransport) -> None:
        self._open.pop(transport, None)


class _Guarded(asyncio.Protocol):
    """Forwards one connection's events to aiohttp's handler, closing it when a bound is passed."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None
        """Since when it has waited for a complete request head (None while a request is handled)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard._accept(transport, self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport
        self.arm(REQUEST_HEAD_TIMEOUT)
        self._inner.connection_made(transport)

    def arm(self, seconds: float) -> None:
        """Wait at most ``seconds`` for the next complete request head."""
        self.disarm()
        if self._transport is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(seconds, self.close, "timeout")
            self.waiting_since = loop.time()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.waiting_since = None

    def close(self, reason: str) -> None:
        """Cut the connection, counted under ``reason``."""
        self._timer = None
        self.waiting_since = None
        if self._transport is not None:
            self._guard.closed.inc(reason)
            self._transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self._transport is None:
            return  # refused on accept: aiohttp never saw it
        self._guard._release(self._transport)
        self._transport = None
        self._inner.connection_lost(exc)


class RateLimitedLog(logging.Filter):
    """Lets a logger's records through once per :data:`LOG_INTERVAL` per message, as warnings
    without a traceback: what aiohttp and asyncio log about a client's malformed or failed
    connection is the client's doing, not the bridge's."""

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next.get(record.msg, 0.0):
            return False
        if len(self._next) >= 256:
            self._next.clear()
        self._next[record.msg] = now + LOG_INTERVAL
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
