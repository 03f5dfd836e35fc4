"""The longest the bridge's event loop is held while it takes the worst a client can send.

Runs a real bridge (gRPC receiver and HTTP server on loopback) in this process and
a ticker task on its loop that notes the longest gap between its turns, while:

1. one ALS message of ~64 MiB (about 100,000 entries) arrives over gRPC and is processed;
2. ``/metrics`` is scraped with the metric store at its sample cap, label values
   at their length bound (100,000 would-be series offered);
3. ten such scrapes at once.

Also prints the worst ``/healthz`` latency seen by a client polling during each phase,
and the page's size.

Usage: python bench/stall.py
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


class Ticker:
    """Notes the longest gap between turns of the event loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.worst


async def get(port: int, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    body = await reader.read()
    writer.close()
    return time.perf_counter() - started, len(body)


def scrape(port: int) -> tuple[float, int]:
    """A scrape from another thread, so that reading the page does not load the bridge's loop."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


async def poll_healthz(port: int, done: asyncio.Event) -> float:
    worst = 0.0
    while not done.is_set():
        latency, _ = await get(port, "/healthz")
        worst = max(worst, latency)
        await asyncio.sleep(0.01)
    return worst


async def main() -> None:
    from conftest import bridge_config
    from support import als, mesh

    from als2otel.app import Bridge
    from als2otel.model import Workload
    from als2otel.translation.metric_sets import HTTP_SERVER_DURATION

    bridge = Bridge(bridge_config(None))
    await bridge.start()
    ticker = Ticker()
    entry = mesh.outbound(0, path="/reviews/" + "x" * 450, start_ms=als.real_now_ms()).SerializeToString()
    count = (64 * 1024 * 1024 - 4096) // (len(entry) + 3)
    message = als.http_message([], mesh.productpage())
    message.http_logs.log_entry.extend([entry] * count)
    raw = message.SerializeToString()

    done = asyncio.Event()
    ticker.start()
    polling = asyncio.ensure_future(poll_healthz(bridge.http.port, done))
    started = time.perf_counter()
    await als.send(f"127.0.0.1:{bridge.receiver.port}", [raw])
    while bridge.stats.calls.get("client") < count:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    done.set()
    healthz = await polling
    stall = await ticker.stop()
    print(
        f"64 MiB message ({count:,} entries, {len(raw) / 2**20:.1f} MiB) received and processed "
        f"in {elapsed:.1f} s: worst loop stall {stall * 1000:.1f} ms, worst /healthz {healthz * 1000:.1f} ms"
    )

    owner = Workload("reviews", "default")
    for code in range(100_000):
        bridge.metrics.series_for(
            HTTP_SERVER_DURATION, owner, (("http.response.status_code", f"{code:0256d}"),)
        )
    for scrapers in (1, 10):
        done = asyncio.Event()
        ticker.start()
        polling = asyncio.ensure_future(poll_healthz(bridge.http.port, done))
        started = time.perf_counter()
        results: list[Any] = await asyncio.gather(
            *(get(bridge.http.port, "/metrics") for _ in range(scrapers))
        )
        elapsed = time.perf_counter() - started
        done.set()
        healthz = await polling
        stall = await ticker.stop()
        size = max(size for _, size in results)
        print(
            f"/metrics at the cap ({bridge.metrics.samples:,} samples, {size / 2**20:.1f} MiB), "
            f"{scrapers} scrape(s) at once, all done in {elapsed:.1f} s: "
            f"worst loop stall {stall * 1000:.1f} ms, worst /healthz {healthz * 1000:.1f} ms"
        )
    await bridge.stop()


if __name__ == "__main__":
    asyncio.run(main())
