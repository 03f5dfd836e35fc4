"""A real Prometheus scrapes /metrics; the PromQL of Grafana's service graph and of Kiali gets the edges."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers
from support.net import free_port
from support.waiting import eventually

PROMETHEUS = shutil.which("prometheus")
EDGES = [("productpage", "details", 30, 0), ("productpage", "reviews", 30, 3), ("reviews", "ratings", 20, 2)]


def server_stream(caller: str, callee: str, count: int, failures: int, offset: int) -> list[Any]:
    server = peers.pod(callee)
    ident = als.identifier(
        f"sidecar~10.3.0.{offset}~{server.name}.default~default.svc.cluster.local", server.node_metadata()
    )
    now_ms = als.real_now_ms()
    entries = [
        als.http_entry(
            downstream_remote=("10.3.1.1", 30000 + offset * 100 + i),
            downstream_local=(f"10.3.0.{offset}", 9080),
            cluster="inbound|9080||",
            status=500 if i < failures else 200,
            start_ms=now_ms,
            duration_ms=20,
            filter_state=peers.filter_state("struct", "downstream", peers.pod(caller)),
        )
        for i in range(count)
    ]
    return [als.http_message(entries, ident)]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is installed by `make test`")
async def test_prometheus_queries(make_bridge: Any, tmp_path: Path) -> None:
    """Prometheus accepts the exposition; service-graph and Kiali queries return the sent edges."""
    bridge = await make_bridge(
        bridge_config(None, analyzers=["mx-mesh"], metrics={"sets": ["http", "servicegraph", "istio"]}),
        clock=time.time_ns,
    )
    for n, (caller, callee, count, failures) in enumerate(EDGES):
        await als.send(
            f"127.0.0.1:{bridge.receiver.port}", server_stream(caller, callee, count, failures, n + 1)
        )
    await bridge.pipeline.drain()
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: als2otel\n    static_configs: [{{targets: ['127.0.0.1:{bridge.http.port}']}}]\n"
    )
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def scraped() -> bool:
            try:
                return bool(query(base, 'up{job="als2otel"} == 1')) and bool(
                    query(base, "traces_service_graph_request_total")
                )
            except OSError:
                return False

        assert await eventually(scraped, timeout=60)
        graph = await asyncio.to_thread(
            query, base, "sum by (client, server) (traces_service_graph_request_total)"
        )
        assert {(r["metric"]["client"], r["metric"]["server"]): float(r["value"][1]) for r in graph} == {
            (caller, callee): float(count) for caller, callee, count, _ in EDGES
        }
        failed = await asyncio.to_thread(
            query, base, "sum by (client, server) (traces_service_graph_request_failed_total)"
        )
        # Every edge has its failed series, at 0 until a request fails, so rate() works from the start.
        assert {(r["metric"]["client"], r["metric"]["server"]): float(r["value"][1]) for r in failed} == {
            (caller, callee): float(f) for caller, callee, _, f in EDGES
        }
        latency = await asyncio.to_thread(
            query,
            base,
            "histogram_quantile(0.5, sum by (client, server, le) "
            "(traces_service_graph_request_server_seconds_bucket))",
        )
        assert len(latency) == len(EDGES) and all(0 < float(r["value"][1]) <= 0.05 for r in latency)
        kiali = await asyncio.to_thread(
            query,
            base,
            "sum by (source_workload, destination_service_name, response_code) "
            '(istio_requests_total{reporter="destination", destination_workload_namespace="default"})',
        )
        got = {
            (
                r["metric"]["source_workload"],
                r["metric"]["destination_service_name"],
                r["metric"]["response_code"],
            ): float(r["value"][1])
            for r in kiali
        }
        assert got[("reviews-v1", "ratings", "500")] == 2.0
        assert got[("productpage-v1", "details", "200")] == 30.0
        rate = await asyncio.to_thread(
            query, base, "sum by (client, server) (rate(traces_service_graph_request_total[1m]))"
        )
        assert {(r["metric"]["client"], r["metric"]["server"]) for r in rate} <= {
            (c, s) for c, s, _, _ in EDGES
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
