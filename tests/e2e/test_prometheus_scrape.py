"""A real Prometheus scrapes /metrics; the PromQL of Grafana's service graph and of Kiali gets the edges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers
from support.prometheus import PROMETHEUS, query, scraping
from support.waiting import eventually

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
    with scraping(tmp_path, bridge.http.port) as base:
        await check_queries(base)


async def check_queries(base: str) -> None:
    """The service graph's and Kiali's queries return the sent edges."""

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
    assert {(r["metric"]["client"], r["metric"]["server"]) for r in rate} <= {(c, s) for c, s, _, _ in EDGES}


DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "als2otel-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$service": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """Every panel's PromQL (and the variables' queries), with Grafana's variables filled in."""
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query_text = variable.get("definition", "")
        if query_text.startswith("label_values("):  # Grafana's own function: the series it lists
            found.append((variable["name"], query_text.removeprefix("label_values(").rsplit(",", 1)[0]))
    out = []
    for title, expr in found:
        filled = expr
        for name, value in GRAFANA_VARIABLES.items():
            filled = filled.replace(name, value)
        out.append((title, filled))
    return out


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is installed by `make test`")
async def test_every_dashboard_query_returns_data(make_bridge: Any, tmp_path: Path) -> None:
    """Each PromQL query of examples/grafana/als2otel-dashboard.json, run by a real Prometheus
    scraping a bridge that carries traffic, returns data."""
    bridge = await make_bridge(
        bridge_config(None, analyzers=["mx-mesh"], metrics={"sets": ["http", "servicegraph"]}),
        clock=time.time_ns,
    )
    client_ident = als.identifier(
        "sidecar~10.3.0.9~productpage-v1-x.default~default.svc.cluster.local",
        peers.pod("productpage").node_metadata(),
    )
    outbound = [
        als.http_entry(
            downstream_remote=("10.3.0.9", 1),
            downstream_local=("10.96.0.1", 9080),
            upstream_remote=("10.3.0.1", 9080),
            upstream_local=("10.3.0.9", 20000 + i),
            cluster="outbound|9080||details.default.svc.cluster.local",
            start_ms=als.real_now_ms(),
            filter_state=peers.filter_state("struct", "upstream", peers.pod("details")),
        )
        for i in range(10)
    ]
    bad = als.http_entry(downstream_remote=("10.3.0.9", 2), downstream_local=("10.96.0.1", 9080), start_ms=0)
    target = f"127.0.0.1:{bridge.receiver.port}"
    with scraping(tmp_path, bridge.http.port) as base:
        for round_ in range(3):  # traffic over several scrapes, so that rate() has points to work on
            for n, (caller, callee, count, failures) in enumerate(EDGES):
                await als.send(target, server_stream(caller, callee, count, failures, 10 * round_ + n + 1))
            await als.send(target, [als.http_message([*outbound, bad], client_ident)])
            await asyncio.sleep(1.5)
        await bridge.pipeline.drain()
        queries = dashboard_queries()
        assert len(queries) >= 20

        def empty() -> list[str]:
            return [f"{title}: {expr}" for title, expr in queries if not query(base, expr)]

        assert await eventually(lambda: not empty(), timeout=30), empty()
