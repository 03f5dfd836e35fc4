"""The topology store behind /api/topology, and the endpoint itself."""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from conftest import bridge_config
from support import als, mesh, peers

from als2otel.analysis import AnalyzerChain, MxMeshAnalyzer, ProxyAnalyzer
from als2otel.receiver import identify
from als2otel.receiver.normalize import normalize_http
from als2otel.stats import Stats
from als2otel.translation import Topology
from als2otel.translation import topology as topology_module
from als2otel.translation.topology import BUCKET_SECONDS, View, merge_snapshots

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
        assert topology.snapshot(3600, now[0]) == {
            "window_seconds": 3600,
            "level": "service",
            "nodes": [],
            "edges": [],
        }
        assert stats.expired.get("topology") == 1
        for call in calls(200, 5):
            topology.record(call, 0.005)
        assert len(topology.snapshot(60, now[0])["edges"]) == 1


def server_calls(caller: peers.Peer, callee: peers.Peer, ip: str, **entry: Any) -> list[Any]:
    """The server side of one call from ``caller`` to ``callee`` (its proxy at ``ip``), by mx-mesh."""
    proxy = identify(
        als.identifier(
            f"sidecar~{ip}~{callee.name}.default~default.svc.cluster.local", callee.node_metadata()
        )
    )
    state = peers.filter_state("struct", "downstream", caller)
    if entry.pop("tcp", False):
        raw = als.tcp_entry(
            downstream_remote=("10.1.0.4", 50000),
            downstream_local=(ip, 27017),
            upstream_remote=(ip, 27017),
            upstream_local=("127.0.0.6", 41000),
            cluster="inbound|27017||",
            **entry,
        )
        for key, value in state.items():
            raw.common_properties.filter_state_objects[key].CopyFrom(value)
        from als2otel.receiver.normalize import normalize_tcp

        normalized = normalize_tcp(raw, "v3")
    else:
        normalized = normalize_http(mesh.inbound(filter_state=state, **entry), "v3")
    return AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats()).resolve(normalized, proxy)


class TestVersionsProtocolsAndDetail:
    def bookinfo(self, now: list[float]) -> Topology:
        """productpage -> reviews v1, v2, v3; reviews v2 and v3 -> ratings (some 503s with flags, a
        gRPC call); ratings -> mongodb over TCP."""
        topology = Topology(clock=lambda: now[0])
        reviews = {v: peers.pod("reviews", v, suffix=f"{v}-pod") for v in ("v1", "v2", "v3")}
        ratings, mongodb = peers.pod("ratings"), peers.pod("mongodb")
        for i in range(30):
            version = ("v1", "v2", "v3")[i % 3]
            for call in server_calls(PRODUCTPAGE, reviews[version], "10.1.0.9", duration_ms=10 + i):
                topology.record(call, (10 + i) / 1000)
            if version != "v1":
                failed = i % 10 == 2
                extra: dict[str, Any] = (
                    {"status": 503, "flags": ["upstream_connection_failure"]} if failed else {}
                )
                for call in server_calls(reviews[version], ratings, "10.1.0.11", **extra):
                    topology.record(call, 0.005)
            now[0] += 1
        for call in server_calls(ratings, mongodb, "10.1.0.12", tcp=True, received=1000, sent=5000):
            topology.record(call, 0.5)
        return topology

    def test_versions_inside_their_service_and_a_workload_graph(self) -> None:
        """Service level: one node per service, its workloads (versions, pods) inside, edges between
        services; workload level: reviews-v1/v2/v3 each with their own edges, only v2 and v3 to ratings."""
        now = [10_000.0]
        topology = self.bookinfo(now)
        services = topology.snapshot(View(300), now[0])
        reviews = next(n for n in services["nodes"] if n["id"] == "default/reviews")
        assert [(w["name"], w["version"]) for w in reviews["workloads"]] == [
            ("reviews-v1", "v1"),
            ("reviews-v2", "v2"),
            ("reviews-v3", "v3"),
        ]
        assert reviews["workloads"][0]["pods"] == ["reviews-v1-v1-pod"]
        assert set(reviews["workloads"][0]["last_seen"]) == {"reviews-v1-v1-pod"}
        pairs = {(e["source"], e["target"], e["protocol"]) for e in services["edges"]}
        assert pairs == {
            ("default/productpage", "default/reviews", "http"),
            ("default/reviews", "default/ratings", "http"),
            ("default/ratings", "default/mongodb", "tcp"),
        }
        workloads = topology.snapshot(View(300, "workload"), now[0])
        assert {
            (e["source"], e["target"]) for e in workloads["edges"] if e["target"] == "default/ratings-v1"
        } == {
            ("default/reviews-v2", "default/ratings-v1"),
            ("default/reviews-v3", "default/ratings-v1"),
        }
        v2 = next(n for n in workloads["nodes"] if n["id"] == "default/reviews-v2")
        assert (v2["service"], v2["version"], v2["pods"]) == ("reviews", "v2", ["reviews-v2-v2-pod"])

    def test_codes_flags_percentiles_tcp_bytes_and_series(self) -> None:
        """An edge's response codes and flags, p50/p90/p99, a TCP edge's connections and bytes, and
        with a step its requests and errors per step over the window, empty steps included."""
        now = [10_000.0]
        topology = self.bookinfo(now)
        snap = topology.snapshot(View(300, step=20), now[0])
        edge = next(e for e in snap["edges"] if e["target"] == "default/ratings")
        assert edge["codes"] == {"200": 18, "503": 2} and edge["flags"] == {"UF": 2}
        assert edge["errors"] == 2 and edge["p50_ms"] <= edge["p90_ms"] <= edge["p99_ms"]
        tcp = next(e for e in snap["edges"] if e["protocol"] == "tcp")
        assert (tcp["connections"], tcp["bytes_sent"], tcp["bytes_received"]) == (1, 1000, 5000)
        assert "codes" in tcp and tcp["codes"] == {}
        series = edge["series"]
        assert len(series) == 300 // 20 and all(b["t"] - a["t"] == 20 for a, b in itertools.pairwise(series))
        assert sum(p["requests"] for p in series) == 20 and sum(p["errors"] for p in series) == 2

    def test_snapshots_of_workers_merge_into_the_one_process_answer(self) -> None:
        """Two processes' snapshots (with histograms) merged give the counts, codes, bytes, series,
        percentiles and workloads of one process that saw every call."""
        now = [10_000.0]
        whole = self.bookinfo(now)
        view = View(300, step=20, histograms=True)
        expected = whole.snapshot(View(300, step=20), now[0])
        halves = [self.bookinfo([10_000.0]) for _ in range(2)]
        merged = merge_snapshots([h.snapshot(view, now[0]) for h in halves], View(300, step=20))
        for edge, one in zip(merged["edges"], expected["edges"], strict=True):
            assert edge["requests"] == 2 * one["requests"]
            assert edge["codes"] == {code: 2 * n for code, n in one["codes"].items()}
            assert [p["requests"] for p in edge["series"]] == [2 * p["requests"] for p in one["series"]]
            assert (edge["p50_ms"], edge["p99_ms"]) == (one["p50_ms"], one["p99_ms"])
        assert [n["id"] for n in merged["nodes"]] == [n["id"] for n in expected["nodes"]]

    def test_hostile_response_codes_stay_bounded(self) -> None:
        """Thousands of distinct response codes on one edge: at most MAX_CODES keys, the rest as other."""
        now = [10_000.0]
        topology = Topology(clock=lambda: now[0])
        for code in range(1000, 3000):
            for call in server_calls(PRODUCTPAGE, REVIEWS, "10.1.0.9", status=code):
                topology.record(call, 0.001)
        (edge,) = topology.snapshot(View(300), now[0])["edges"]
        assert len(edge["codes"]) <= topology_module.MAX_CODES + 1 and edge["codes"]["other"] > 0


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
        assert body["trace_url"] is None and body["health"] == {"degraded": 0.001, "failure": 0.2}
        assert [(e["source"], e["target"]) for e in body["edges"]] == [
            ("default/productpage", "default/reviews")
        ]
        status, body = await asyncio.to_thread(get, "/api/topology?window=forever")
        assert status == 400 and "window" in body["error"]
        status, body = await asyncio.to_thread(get, "/api/topology?window=5m&level=workload&step=15s")
        assert status == 200 and body["level"] == "workload"
        ((edge,), nodes) = body["edges"], {n["id"]: n for n in body["nodes"]}
        assert (edge["source"], edge["target"]) == ("default/productpage-v1", "default/reviews-v1")
        assert nodes["default/reviews-v1"]["service"] == "reviews"
        assert len(edge["series"]) == 300 // 20  # the step in whole 10 s buckets
        for query, name in (("level=pods", "level"), ("step=0s", "step"), ("step=2h", "step")):
            status, body = await asyncio.to_thread(get, f"/api/topology?window=5m&{query}")
            assert status == 400 and body["error"].startswith(name)
