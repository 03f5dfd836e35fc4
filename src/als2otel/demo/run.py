"""Runs the bookinfo demo with the bridge in the middle, and prints where to look."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .. import config as cfg
from ..app import Bridge
from .bookinfo import GATEWAY_IP, GATEWAY_PORT, Bookinfo

SUMMARY_INTERVAL = 5.0


def demo_config(http_listen: str, otlp_endpoint: str | None) -> cfg.Config:
    return cfg.parse(
        {
            "receiver": {"listen": "127.0.0.1:0"},
            "http": {"listen": http_listen},
            "analyzers": ["mx-mesh"],
            "exporters": {
                "otlp": {"enabled": otlp_endpoint is not None, "endpoint": otlp_endpoint or "localhost:4317"}
            },
            "metrics": {"sets": ["http", "servicegraph", "istio"], "export_interval": "5s"},
            "shutdown_timeout": "5s",
        },
        {},
    )


async def run_demo(
    duration: float | None, http_listen: str, otlp_endpoint: str | None, rate: float, out: TextIO = sys.stdout
) -> int:
    bridge = Bridge(demo_config(http_listen, otlp_endpoint))
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="als2otel-demo-"))
    mesh = Bookinfo(("127.0.0.1", bridge.receiver.port), workdir, rate=rate, database=True)
    try:
        await asyncio.to_thread(mesh.start)
        host = http_listen.rpartition(":")[0] or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        base = f"http://{host}:{bridge.http.port}"
        print(
            f"als2otel demo: bookinfo on real Envoys ({len(mesh.envoys)} proxies, logs in {workdir})\n"
            f"  topology page:  {base}/topology\n"
            f"  topology JSON:  {base}/api/topology?window=1m\n"
            f"  metrics:        {base}/metrics\n"
            f"  the mesh:       http://{GATEWAY_IP}:{GATEWAY_PORT}/productpage\n"
            + (f"  OTLP export to: {otlp_endpoint}\n" if otlp_endpoint else "")
            + ("  Ctrl-C to stop." if duration is None else f"  running for {duration:.0f}s."),
            file=out,
            flush=True,
        )
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            timeout = (
                SUMMARY_INTERVAL if deadline is None else min(SUMMARY_INTERVAL, deadline - time.monotonic())
            )
            if timeout <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            print(summary(bridge, mesh), file=out, flush=True)
    finally:
        await asyncio.to_thread(mesh.stop)
        await bridge.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("als2otel demo: stopped; every process it started has exited.", file=out, flush=True)
    return 0


def summary(bridge: Bridge, mesh: Bookinfo) -> str:
    snapshot = bridge.topology.snapshot(30.0, time.time())
    edges = ", ".join(
        f"{e['source'].rpartition('/')[2]}->{e['target'].rpartition('/')[2]} {e['rps']:.1f}/s"
        for e in snapshot["edges"]
    )
    calls = sum(e["rps"] for e in snapshot["edges"])
    sent = f"sent {mesh.sent} ({mesh.failed} failed)"
    return f"[{time.strftime('%H:%M:%S')}] {calls:.1f} calls/s over 30s; {sent}; {edges}"
