"""`als2otel demo` as a user runs it: bookinfo on real Envoys, read back through /api/topology."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from support.net import free_port

EXPECTED_EDGES = {
    ("user", "istio-system/istio-ingressgateway"),
    ("istio-system/istio-ingressgateway", "default/productpage"),
    ("default/productpage", "default/details"),
    ("default/productpage", "default/reviews"),
    ("default/reviews", "default/ratings"),
    ("default/ratings", "mongodb.databases.example"),  # TCP, to a database outside the mesh
}


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def envoy_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"envoy") and any(b"als2otel-demo-" in part for part in cmd):
                pids.add(int(entry))
    return pids


def test_demo_draws_bookinfo_and_cleans_up() -> None:
    """The bookinfo edges appear with non-zero rates, and every process the demo started is gone after."""
    port = free_port()
    before = envoy_pids()
    process = subprocess.Popen(
        [sys.executable, "-m", "als2otel", "demo", "--duration", "60", "--http-listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        topology: dict[str, Any] = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                topology = fetch_json(f"http://127.0.0.1:{port}/api/topology?window=1m")
            except OSError:
                continue
            if {(e["source"], e["target"]) for e in topology["edges"]} >= EXPECTED_EDGES:
                break
        edges = {(e["source"], e["target"]): e for e in topology.get("edges", [])}
        assert set(edges) == EXPECTED_EDGES
        for edge in edges.values():
            assert edge["requests"] > 0 and edge["rps"] > 0 and edge["p99_ms"] >= edge["p50_ms"] > 0
        database = edges[("default/ratings", "mongodb.databases.example")]
        assert database["protocol"] == "tcp" and database["bytes_received"] >= 8192 * database["connections"]
        assert len(envoy_pids() - before) == 7
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "/topology" in output and "calls/s" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert envoy_pids() - before == set()
