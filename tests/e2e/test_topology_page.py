"""/topology in headless Chromium: the drawn graph shows the services and calls the bridge was fed."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=6000",
]

EDGES = [("productpage", "details", 0), ("productpage", "reviews", 0), ("reviews", "ratings", 2)]


def messages() -> list[list[Any]]:
    now_ms = als.real_now_ms()
    streams = []
    for caller, callee, errors in EDGES:
        server = peers.pod(callee)
        ident = als.identifier(
            f"sidecar~10.2.0.1~{server.name}.default~default.svc.cluster.local", server.node_metadata()
        )
        entries = [
            als.http_entry(
                downstream_remote=("10.2.0.9", 40000 + i),
                downstream_local=("10.2.0.1", 9080),
                cluster="inbound|9080||",
                start_ms=now_ms,
                duration_ms=5 + i,
                status=503 if i < errors else 200,
                filter_state=peers.filter_state("struct", "downstream", peers.pod(caller)),
            )
            for i in range(20)
        ]
        streams.append([als.http_message(entries, ident)])
    return streams


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by `make test`")
async def test_topology_page_draws_the_graph(make_bridge: Any) -> None:
    """Service names are text in the SVG, one arrow per edge, rates and errors labelled; screenshot kept."""
    bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"]), clock=time.time_ns)
    for stream in messages():
        assert await als.send(f"127.0.0.1:{bridge.receiver.port}", stream) is None
    await asyncio.sleep(0.2)
    url = f"http://127.0.0.1:{bridge.http.port}/topology"
    dom = await asyncio.to_thread(chromium, "--dump-dom", url)
    names = set(re.findall(r'<text[^>]*class="name"[^>]*>([^<]+)</text>', dom))
    assert names == {"productpage", "details", "reviews", "ratings"}
    assert len(re.findall(r'<g class="edge', dom)) == len(EDGES)
    labels = re.findall(r"<text[^>]*>([\d.]+/s · [\d.]+% err)</text>", dom)
    assert any(label.endswith("10.0% err") for label in labels)  # reviews -> ratings: 2 of 20 failed
    assert '<div id="graph"><svg' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "topology.png"
    await asyncio.to_thread(chromium, f"--screenshot={shot}", "--window-size=1400,700", url)
    assert shot.exists() and shot.stat().st_size > 10_000
