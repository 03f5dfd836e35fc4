"""What an HTTP client can make the bridge hold, over real connections: connections, time,
query parameters, the /metrics page and the log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from conftest import bridge_config

from als2otel.app import Bridge
from als2otel.config import parse_duration
from als2otel.model import Workload
from als2otel.translation.metric_sets import HTTP_SERVER_DURATION
from als2otel.translation.metrics import DEFAULT_MAX_SAMPLES, MAX_LABEL_VALUE_LENGTH
from als2otel.web import connections


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; the status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionResetError):
        return isinstance(reader.exception(), ConnectionResetError)


class TestConnections:
    async def test_idle_and_slow_connections_are_closed(self, make_bridge: Any, monkeypatch: Any) -> None:
        """A connection that sends nothing, or a request head a byte at a time, is closed and counted."""
        monkeypatch.setattr(connections, "REQUEST_HEAD_TIMEOUT", 0.5)
        bridge: Bridge = await make_bridge(bridge_config(None))
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", bridge.http.port)
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", bridge.http.port)
        for byte in b"GET /h":
            slow.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await closed_by_server(idle_reader, 5)
        assert await closed_by_server(slow_reader, 5)
        idle.close()
        slow.close()
        assert bridge.stats.http_connections_closed.get("timeout") == 2
        assert (await request(bridge.http.port, get("/healthz")))[0] == 200

    async def test_a_flood_of_idle_connections_never_keeps_a_probe_out(self, make_bridge: Any) -> None:
        """300 idle connections held on the HTTP port (past its 256): each new one closes the connection
        idle longest to make room, counted as evicted, and /healthz answers 200 within 1 s throughout."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        port = bridge.http.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(300)]
        assert await eventually_open(bridge, connections.MAX_CONNECTIONS)
        for _ in range(10):
            start = time.monotonic()
            assert (await request(port, get("/healthz")))[0] == 200
            assert time.monotonic() - start < 1
            held.append(await asyncio.open_connection("127.0.0.1", port))  # the flood goes on
        closed = bridge.stats.http_connections_closed
        assert closed.get("evicted") >= 300 - connections.MAX_CONNECTIONS + 10
        assert closed.get("connection_limit") == 0
        assert bridge.http.open_connections <= connections.MAX_CONNECTIONS
        for _, w in held:
            w.close()

    async def test_connections_each_busy_with_a_request_refuse_a_new_one(
        self, make_bridge: Any, monkeypatch: Any
    ) -> None:
        """At the bound with every connection in the middle of a request (uploads mid-body), a new
        connection is closed at once and counted (connection_limit)."""
        monkeypatch.setattr(connections, "MAX_CONNECTIONS", 4)
        bridge: Bridge = await make_bridge(bridge_config(None))
        held = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.http.port)
            writer.write(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000\r\n\r\n\x0a"
            )
            held.append((reader, writer))
        assert await eventually_open(bridge, 4)
        await asyncio.sleep(0.2)  # each request head is complete and handled
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.http.port)
        assert await closed_by_server(reader, 1)
        writer.close()
        assert bridge.stats.http_connections_closed.get("connection_limit") == 1
        assert bridge.stats.http_connections_closed.get("evicted") == 0
        for _, w in held:
            w.close()
        for _ in range(200):
            if bridge.http.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert (await request(bridge.http.port, get("/healthz")))[0] == 200

    async def test_no_version_banner(self, make_bridge: Any) -> None:
        """Responses, an error for malformed HTTP included, name no software version."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        for raw in (get("/healthz"), get("/nowhere"), b"NOT-HTTP \x00\x01\r\n\r\n"):
            _, headers, _ = await request(bridge.http.port, raw)
            assert headers["server"] == "als2otel", headers

    async def test_malformed_http_logged_once_per_interval(self, make_bridge: Any, caplog: Any) -> None:
        """Twenty malformed requests: at most one log line, a warning without a traceback."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        caplog.set_level(logging.DEBUG)
        for _ in range(20):
            await request(bridge.http.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n")
        records = [r for r in caplog.records if r.name.startswith("aiohttp")]
        assert len(records) <= 1
        assert all(r.levelno <= logging.WARNING and r.exc_info is None for r in records)


async def eventually_open(bridge: Bridge, count: int) -> bool:
    for _ in range(200):
        if bridge.http.open_connections >= count:
            return True
        await asyncio.sleep(0.01)
    return False


class TestQuery:
    def test_duration_parsing_is_bounded(self) -> None:
        """A duration's text is read in linear time and refused past 64 characters."""
        started = time.process_time()
        assert parse_duration("9" * 100_000) is None
        assert parse_duration("1" * 60 + "s") == float("1" * 60)
        assert parse_duration("1h" * 40) is None
        assert time.process_time() - started < 0.5

    async def test_long_window_is_a_400(self, make_bridge: Any) -> None:
        """window= with 8,000 digits: a 400 naming the parameter, and its value cut short."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        status, _, body = await request(bridge.http.port, get("/api/topology?window=" + "9" * 8000))
        assert status == 400 and b"window" in body and len(body) < 300


class TestMetricsPage:
    async def test_page_is_bounded_in_samples_and_label_length(self, make_bridge: Any) -> None:
        """100,000 would-be series with long label values: the store stops at its sample cap (counted),
        values are cut, the page is bounded, and the event loop keeps running while it is written."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        owner = Workload("reviews", "default")
        for code in range(100_000):
            bridge.metrics.series_for(
                HTTP_SERVER_DURATION, owner, (("http.response.status_code", f"{code}" + "x" * 400),)
            )
        assert bridge.metrics.samples <= DEFAULT_MAX_SAMPLES
        assert bridge.stats.dropped.get("metrics", "series_limit") > 0
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        status, headers, body = await request(bridge.http.port, get("/metrics"))
        stop.set()
        await ticking
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        samples = [line for line in body.split(b"\r\n") if line.startswith(b"http_server")]
        assert samples
        longest = max(len(v) for line in samples for v in line.split(b'"')[1::2])
        assert longest <= MAX_LABEL_VALUE_LENGTH
        assert ticks > 100  # the loop ran between chunks

    @pytest.mark.parametrize("scrapers", [10])
    async def test_concurrent_scrapes_render_one_at_a_time(self, make_bridge: Any, scrapers: int) -> None:
        """Ten scrapes at once all get the whole page; /healthz answers meanwhile."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        owner = Workload("reviews", "default")
        for code in range(5_000):
            bridge.metrics.series_for(
                HTTP_SERVER_DURATION, owner, (("http.response.status_code", str(code)),)
            )
        pages = asyncio.gather(*(request(bridge.http.port, get("/metrics")) for _ in range(scrapers)))
        health = await request(bridge.http.port, get("/healthz"))
        results = await pages
        assert health[0] == 200
        assert {status for status, _, _ in results} == {200}
        assert len({body.count(b"http_server_request_duration_seconds_count") for _, _, body in results}) == 1
