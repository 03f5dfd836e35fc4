"""aiohttp server on the bridge's event loop: ``/metrics``, ``/healthz``, ``/readyz``,
``/api/topology`` (JSON) and ``/topology`` (a page that draws it, with no outside requests).

Every connection is bounded by :mod:`.connections`. ``/metrics`` is rendered
and written a chunk at a time, yielding to the event loop between chunks, one
scrape at a time, so a large page never stalls ALS intake. No response names
the server's software.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web, web_response
from aiohttp.http_exceptions import ContentEncodingError
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]

from ..net import split_hostport
from ..receiver.otlp_logs import MAX_REQUEST_BYTES
from ..settings import HttpTlsConfig, parse_duration
from ..stats import Counter
from ..tls import CertificateFiles
from ..translation.topology import LEVELS, MAX_WINDOW, View, series_step
from .connections import IDLE_TIMEOUT, REQUEST_HEAD_TIMEOUT, BodyBudget, ConnectionGuard, RateLimitedLog

T = TypeVar("T")

_PAGE = Path(__file__).with_name("topology.html").read_text(encoding="utf-8")

log = logging.getLogger("als2otel.http")

MAX_QUERY_VALUE = 32
"""Characters of a query parameter's value read at most (``window=``); a longer one is a 400."""

CERTIFICATE_CHECK_INTERVAL = 5.0
"""Seconds between looks at the HTTP certificate's files."""

MAX_LOGS_BODY = MAX_REQUEST_BYTES
"""Bytes of an OTLP/HTTP logs request read at most (decompressed): the same bound as on the ALS
port. A larger one is a 413."""

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

CLIENT_CAUSED_LOGGERS = ("aiohttp.server", "aiohttp.web", "asyncio")
"""Where aiohttp and asyncio log what a client's malformed request or dropped connection did."""


CONTENT_ENCODINGS = ("", "identity", "gzip", "deflate")
"""The ``Content-Encoding`` values of an OTLP/HTTP request that als2otel reads (OTLP's gzip, and
deflate, which aiohttp decodes as well)."""

UNSUPPORTED_ENCODING = "unsupported Content-Encoding: als2otel reads gzip, deflate or an uncompressed body"


class _Handler(web.RequestHandler):
    """aiohttp's handler of one connection; its own answer to an encoding it cannot decode says
    which ones it can (aiohttp's suggests installing a package)."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ContentEncodingError):
            message = UNSUPPORTED_ENCODING
        return super().handle_error(request, status, exc, message)


class Refused(Exception):
    """What a logs handler raises to answer other than with success: the HTTP status and the
    body (a serialized google.rpc.Status), passed on as they are."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _otlp_error(status: int, message: str) -> web.Response:
    body = status_pb2.Status(code=GRPC_CODES.get(status, 2), message=message).SerializeToString()
    response = web.Response(status=status, body=body, content_type="application/x-protobuf")
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


GRPC_CODES = {400: 3, 413: 8, 415: 3, 500: 13, 503: 14}
"""The google.rpc code a Status body carries for each HTTP status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE); UNKNOWN otherwise."""


async def _resolved(value: T | Awaitable[T]) -> T:
    return await value if inspect.isawaitable(value) else value


def _hide_version_banner() -> None:
    """Every response's Server header says "als2otel" alone.

    aiohttp fills in its own (Python's and aiohttp's versions) where a response has none,
    including the error responses it writes before any handler or signal of ours runs.
    """
    web_response.SERVER_SOFTWARE = "als2otel"  # type: ignore[attr-defined]


def _limit_client_caused_logs() -> None:
    for name in CLIENT_CAUSED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(RateLimitedLog())


def _query_duration(text: str) -> float | None:
    return parse_duration(text) if len(text) <= MAX_QUERY_VALUE else None


def _query_error(name: str, text: str, expected: str) -> web.Response:
    shown = text if len(text) <= MAX_QUERY_VALUE else text[:MAX_QUERY_VALUE] + "..."
    return web.json_response({"error": f"{name} must be {expected}; got {shown!r}"}, status=400)


def _closing(response: web.Response) -> web.Response:
    """The response, and the connection closed after it: the rest of the body is not read."""
    response.force_close()
    return response


class HttpServer:
    def __init__(
        self,
        listen: str,
        *,
        metrics: Callable[[], Iterator[str] | Awaitable[Iterator[str]]] | None,
        ready: Callable[[], bool | Awaitable[bool]],
        healthy: Callable[[], bool] = lambda: True,
        topology: Callable[[View], dict[str, Any] | Awaitable[dict[str, Any]]] | None = None,
        closed: Counter | None = None,
        tls: HttpTlsConfig | None = None,
        logs: Callable[[bytes, str], Awaitable[bytes]] | None = None,
        page: dict[str, Any] | None = None,
    ) -> None:
        """Each provider may answer at once or be awaited (a supervisor asks its workers)."""
        self._tls = CertificateFiles(tls) if tls is not None and tls.enabled else None
        self._refresh: asyncio.Task[None] | None = None
        self._topology = topology
        self._page = page or {}
        self._logs = logs
        self._healthy = healthy
        self._listen = listen
        self._metrics = metrics
        self._ready = ready
        self._guard = ConnectionGuard(
            closed or Counter("als2otel_http_connections_closed_total", "", ("reason",))
        )
        self._scrape = asyncio.Lock()
        self._budget = BodyBudget()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard.middleware], client_max_size=MAX_LOGS_BODY)
        # (client_max_size bounds request.read(); /v1/logs reads its body itself, within _budget.)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._serve_metrics)
        if self._logs is not None:
            app.router.add_post("/v1/logs", self._otlp_logs)
        if self._topology is not None:
            app.router.add_get("/api/topology", self._api_topology)
            app.router.add_get("/topology", self._topology_page)
        return app

    async def start(self) -> None:
        _limit_client_caused_logs()
        _hide_version_banner()
        hostport = split_hostport(self._listen)
        assert hostport is not None  # validated with the configuration
        host, port = hostport
        self._runner = web.AppRunner(self._app(), access_log=None, keepalive_timeout=IDLE_TIMEOUT)
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        context = self._tls.ssl_context() if self._tls is not None else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._guard.protocol(
                # access_log=None (no access log) as AppRunner passes it; aiohttp's types say Logger.
                _Handler(handlers, loop=loop, access_log=None, keepalive_timeout=IDLE_TIMEOUT)  # type: ignore[arg-type]
            ),
            host or None,
            port,
            reuse_address=True,
            ssl=context,
            ssl_handshake_timeout=REQUEST_HEAD_TIMEOUT if context is not None else None,
        )
        if self._tls is not None and context is not None:
            self._refresh = asyncio.ensure_future(self._refresh_certificates(self._tls, context))
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else port
        log.info("HTTP endpoints on %s (port %d)", self._listen, self.port)

    async def _refresh_certificates(self, files: CertificateFiles, context: ssl.SSLContext) -> None:
        while True:
            await asyncio.sleep(CERTIFICATE_CHECK_INTERVAL)
            files.reload(lambda: context.load_cert_chain(files.cert_file, files.key_file), "HTTP")

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def open_connections(self) -> int:
        return self._guard.open

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="processing has stopped\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if await _resolved(self._ready()):
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _api_topology(self, request: web.Request) -> web.Response:
        """``?window=5m`` (up to 1h), ``&level=service|workload``, ``&step=15s`` (a series per edge)."""
        assert self._topology is not None
        query = request.query
        window = _query_duration(query.get("window", "5m"))
        if window is None or not 0 < window <= MAX_WINDOW:
            return _query_error(
                "window", query.get("window", ""), f"a duration up to {MAX_WINDOW:.0f}s (30s, 5m, 1h)"
            )
        level = query.get("level", "service")
        if level not in LEVELS:
            return _query_error("level", level, " or ".join(LEVELS))
        step = 0
        if "step" in query:
            seconds = _query_duration(query["step"])
            if seconds is None or not 0 < seconds <= window:
                return _query_error("step", query["step"], "a duration up to the window (15s, 1m)")
            step = series_step(seconds, window)
        view = View(window, level, step, query.get("histograms") == "1")
        return web.json_response({**await _resolved(self._topology(view)), **self._page})

    async def _otlp_logs(self, request: web.Request) -> web.Response:
        """OTLP/HTTP logs (protobuf, gzip or not): 400 with a google.rpc.Status for what does not parse,
        413 past :data:`MAX_LOGS_BODY`, 503 (retry) while other bodies hold the budget, 500 with a
        fixed text for an error of the bridge's own."""
        assert self._logs is not None
        if request.content_type != "application/x-protobuf":
            return _otlp_error(415, "als2otel takes OTLP/HTTP logs as application/x-protobuf")
        if request.headers.get("Content-Encoding", "").strip().lower() not in CONTENT_ENCODINGS:
            return _otlp_error(400, UNSUPPORTED_ENCODING)
        if (request.content_length or 0) > MAX_LOGS_BODY:
            return _closing(_otlp_error(413, f"request body larger than {MAX_LOGS_BODY} bytes"))
        parts: list[bytes] = []
        held = 0
        try:
            try:
                async for chunk in request.content.iter_any():
                    held += len(chunk)
                    if held > MAX_LOGS_BODY:
                        return _closing(_otlp_error(413, f"request body larger than {MAX_LOGS_BODY} bytes"))
                    if not self._budget.take(len(chunk)):
                        held -= len(chunk)
                        self._guard.closed.inc("body_budget")
                        return _closing(_otlp_error(503, "too many request bodies in flight; retry"))
                    parts.append(chunk)
            except (web.RequestPayloadError, ValueError):  # a body that does not decompress
                return _closing(
                    _otlp_error(
                        400, "malformed_message: the body does not decompress as its Content-Encoding says"
                    )
                )
            body = b"".join(parts)
            parts.clear()
            try:
                reply = await self._logs(body, request.remote or "")
            except DecodeError:
                return _otlp_error(400, "malformed_message: not an ExportLogsServiceRequest")
            except Refused as refused:
                return web.Response(
                    status=refused.status, body=refused.body, content_type="application/x-protobuf"
                )
            except Exception:  # the client learns no details
                log.warning("OTLP/HTTP logs from %s failed unexpectedly", request.remote, exc_info=True)
                return _otlp_error(500, "internal_error: the request could not be processed")
            return web.Response(body=reply, content_type="application/x-protobuf")
        finally:
            self._budget.give_back(held)

    async def _topology_page(self, request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    async def _serve_metrics(self, request: web.Request) -> web.StreamResponse:
        assert self._metrics is not None
        async with self._scrape:  # one page in the making at a time, however many scrapers
            response = web.StreamResponse(headers={"Content-Type": METRICS_CONTENT_TYPE})
            if request.version >= (1, 1):
                response.enable_chunked_encoding()
            # else HTTP/1.0, which has no chunks: the page ends where the connection closes.
            await response.prepare(request)
            for chunk in await _resolved(self._metrics()):
                await response.write(chunk.encode())
                await asyncio.sleep(0)  # write() yields only when the socket's buffer is full
            await response.write_eof()
            return response
