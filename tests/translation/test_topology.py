"""The topology store behind /api/topology, and the endpoint itself."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from conftest import bridge_config
from support import als, mesh, peers

from als2otel.analysis import AnalyzerChain, MxMeshAnalyzer, ProxyAnalyzer
from als2otel.receiver import identify, normalize_http
from als2otel.stats import Stats
from als2otel.translation import Topology
from als2otel.translation.topology import BUCKET_SECONDS

PRODUCTPAGE, REVIEWS = peers.pod("productpage"), peers.pod("reviews")


def calls(status: int, duration_ms: int, outside: bool = False) -> list[Any]:
    proxy = identify(
        als.identifier(
            f"sidecar~10.1.0.9~{REVIEWS.name}.default~default.svc.cluster.local", REVIEWS.node_metadata()
        )
    )
    state = None if outside else peers.filter_state("struct", "downstream", PRODUCTPAGE)
    entry = normalize_http(
        mesh.inbound(status=status, duration_ms=duration_ms, filter_state=state),
        "v3",
    )
    return AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats()).resolve(entry, proxy)


class TestTopology:
    def test_edges_requests_errors_and_percentiles(self) -> None:
        """Requests and errors per edge over the window, p50/p99 from the latency histogram."""
        now = 1_000_000.0
        topology = Topology(clock=lambda: now)
        for i in range(100):
            for call in calls(500 if i < 5 else 200, 10 if i < 90 else 200):
                topology.record(call, (10 if i < 90 else 200) / 1000)
        snap = topology.snapshot(300, now)
        (edge,) = snap["edges"]
        assert (edge["source"], edge["target"], edge["protocol"]) == (
            "default/productpage",
            "default/reviews",
            "http",
        )
        assert (edge["requests"], edge["errors"]) == (100, 5)
        assert 9 <= edge["p50_ms"] <= 12
        assert 190 <= edge["p99_ms"] <= 240
        assert {n["id"] for n in snap["nodes"]} == {"default/productpage", "default/reviews"}

    def test_window(self) -> None:
        """Calls older than the window are left out."""
        topology = Topology(clock=lambda: 1000.0)
        for call in calls(200, 5):
            topology.record(call, 0.005)
        assert topology.snapshot(60, 1000.0 + 10 * BUCKET_SECONDS)["edges"] == []
        assert topology.snapshot(600, 1000.0 + 10 * BUCKET_SECONDS)["edges"][0]["requests"] == 1

    def test_callers_outside_the_mesh_are_user(self) -> None:
        """A gateway's caller from outside is the node ``user``."""
        topology = Topology(clock=lambda: 50.0)
        gateway = peers.Peer(
            "istio-ingressgateway-x", "istio-system", "istio-ingressgateway", {"app": "istio-ingressgateway"}
        )
        proxy = identify(
            als.identifier("router~10.1.0.2~istio-ingressgateway-x.istio-system~x", gateway.node_metadata())
        )
        entry = normalize_http(
            als.http_entry(
                downstream_remote=("203.0.113.9", 1),
                downstream_local=("10.1.0.2", 8080),
                upstream_remote=("10.1.0.4", 9080),
                upstream_local=("10.1.0.2", 2),
                cluster="outbound|9080||productpage.default.svc.cluster.local",
            ),
            "v3",
        )
        for call in AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats()).resolve(entry, proxy):
            topology.record(call, 0.01)
        sources = {(e["source"], e["target"]) for e in topology.snapshot(60, 50.0)["edges"]}
        assert ("user", "istio-system/istio-ingressgateway") in sources

    def test_idle_edges_are_forgotten(self) -> None:
        """An edge with no call for longer than the largest window leaves, with its nodes; the edge
        cap then admits new edges again."""
        from als2otel.stats import Stats
        from als2otel.translation import topology as topology_module

        now = [1_000_000.0]
        stats = Stats()
        topology = Topology(stats.dropped, clock=lambda: now[0], expired=stats.expired)
        for call in calls(200, 5):
            topology.record(call, 0.005)
        now[0] += topology_module.MAX_WINDOW / 2
        assert topology.expire() == 0
        now[0] += topology_module.MAX_WINDOW
        assert topology.expire() == 1
        assert topology.snapshot(3600, now[0]) == {"window_seconds": 3600, "nodes": [], "edges": []}
        assert stats.expired.get("topology") == 1
        for call in calls(200, 5):
            topology.record(call, 0.005)
        assert len(topology.snapshot(60, now[0])["edges"]) == 1


class TestEndpoint:
    async def test_api_topology(self, make_bridge: Any) -> None:
        """/api/topology serves the JSON; a bad window is a 400 with a reason."""
        bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"]))
        base = f"http://127.0.0.1:{bridge.http.port}"
        proxy_ident = als.identifier(
            f"sidecar~10.1.0.9~{REVIEWS.name}.default~default.svc.cluster.local", REVIEWS.node_metadata()
        )
        entry = als.http_entry(
            downstream_remote=("10.1.0.4", 1),
            downstream_local=("10.1.0.9", 9080),
            cluster="inbound|9080||",
            filter_state=peers.filter_state("flatnode", "downstream", PRODUCTPAGE),
        )

        entry.common_properties.start_time.FromNanoseconds(als.synthetic_clock())
        await als.send(f"127.0.0.1:{bridge.receiver.port}", [als.http_message([entry], proxy_ident)])
        await asyncio.sleep(0.1)

        def get(path: str) -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        status, body = await asyncio.to_thread(get, "/api/topology?window=5m")
        assert status == 200
        assert [(e["source"], e["target"]) for e in body["edges"]] == [
            ("default/productpage", "default/reviews")
        ]
        status, body = await asyncio.to_thread(get, "/api/topology?window=forever")
        assert status == 400 and "window" in body["error"]
