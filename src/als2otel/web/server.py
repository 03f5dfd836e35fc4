"""aiohttp server on the bridge's event loop: ``/metrics``, ``/healthz``, ``/readyz``,
``/api/topology`` (JSON) and ``/topology`` (a page that draws it, with no outside requests)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import parse_duration, split_hostport
from ..translation.topology import MAX_WINDOW

_PAGE = Path(__file__).with_name("topology.html").read_text(encoding="utf-8")

log = logging.getLogger("als2otel.http")


class HttpServer:
    def __init__(
        self,
        listen: str,
        *,
        metrics: Callable[[], str] | None,
        ready: Callable[[], bool],
        topology: Callable[[float], dict[str, Any]] | None = None,
    ) -> None:
        self._topology = topology
        self._listen = listen
        self._metrics = metrics
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._serve_metrics)
        if self._topology is not None:
            app.router.add_get("/api/topology", self._api_topology)
            app.router.add_get("/topology", self._topology_page)
        return app

    async def start(self) -> None:
        hostport = split_hostport(self._listen)
        assert hostport is not None  # validated with the configuration
        host, port = hostport
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("HTTP endpoints on %s (port %d)", self._listen, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _api_topology(self, request: web.Request) -> web.Response:
        assert self._topology is not None
        text = request.query.get("window", "5m")
        window = parse_duration(text)
        if window is None or not 0 < window <= MAX_WINDOW:
            return web.json_response(
                {"error": f"window must be a duration up to {MAX_WINDOW:.0f}s (30s, 5m, 1h); got {text!r}"},
                status=400,
            )
        return web.json_response(self._topology(window))

    async def _topology_page(self, request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        return web.Response(
            body=self._metrics().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
