"""The mesh's topology over a recent window: nodes, and edges with rates, errors and latency.

Calls are aggregated into 10-second buckets per edge, each with a small
log-scale latency histogram, so any window up to :data:`MAX_WINDOW` gives
requests, errors and p50/p99 without keeping individual calls. Edges are
counted like the servicegraph: once per request (by the server side, or by
the client side when the destination is outside the mesh).

A call is placed by the bridge's clock when it is recorded, not by the time
its entry claims: no entry can rewind an edge's history or spread it over
buckets that are never trimmed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model import USER, Call, Workload
from . import semconv

BUCKET_SECONDS = 10
MAX_WINDOW = 3600.0
"""Seconds of history kept per edge."""
MAX_EDGES = 10_000
"""Edges tracked at once; beyond it, new edges are dropped and counted."""

# Latency histogram: bucket i holds durations up to 2**(i/4) ms (about 19% steps).
_LATENCY_BUCKETS = 100


def _latency_bucket(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(_LATENCY_BUCKETS - 1, math.ceil(4 * math.log2(ms)))


def _bucket_upper_ms(index: int) -> float:
    return 2 ** (index / 4)


@dataclass(slots=True)
class _Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * _LATENCY_BUCKETS)


@dataclass(slots=True)
class Node:
    id: str
    name: str
    namespace: str
    kind: str  # "service", "external" or "user"


@dataclass(slots=True)
class _Edge:
    source: str
    target: str
    protocol: str
    buckets: deque[_Bucket] = field(default_factory=deque)


def node_for(workload: Workload | None, outside: bool) -> Node:
    if outside:
        return Node(USER, USER, "", "user")
    if workload is None:
        return Node("unknown", "unknown", "", "unknown")
    if workload.external:
        return Node(workload.service_name, workload.service_name, "", "external")
    node_id = f"{workload.namespace}/{workload.service_name}" if workload.namespace else workload.service_name
    return Node(node_id, workload.service_name, workload.namespace, "service")


class Topology:
    def __init__(
        self, dropped: Any = None, clock: Callable[[], float] = time.time, expired: Any = None
    ) -> None:
        self._nodes: dict[str, Node] = {}
        self._edges: dict[tuple[str, str, str], _Edge] = {}
        self._dropped = dropped
        self._expired = expired
        self._clock = clock

    def record(self, call: Call, seconds: float) -> None:
        """One call of ``seconds``, in the current bucket of its edge."""
        destination = call.destination
        if call.side == "client" and not (destination is None or destination.external):
            return  # the server side counts this request
        source = node_for(call.source, call.from_outside)
        target = node_for(destination, False)
        key = (source.id, target.id, call.entry.protocol)
        edge = self._edges.get(key)
        if edge is None:
            if len(self._edges) >= MAX_EDGES:
                if self._dropped is not None:
                    self._dropped.inc("topology", "edge_limit")
                return
            edge = self._edges[key] = _Edge(*key)
        self._nodes.setdefault(source.id, source)
        self._nodes.setdefault(target.id, target)
        start = int(self._clock()) // BUCKET_SECONDS * BUCKET_SECONDS
        buckets = edge.buckets
        if not buckets or buckets[-1].start < start:  # a clock stepped back adds to the newest
            buckets.append(_Bucket(start))
            while buckets and buckets[0].start < start - MAX_WINDOW:
                buckets.popleft()
        bucket = buckets[-1]
        bucket.requests += 1
        if semconv.error_type(call.entry, "client"):
            bucket.errors += 1
        bucket.latency[_latency_bucket(seconds * 1000.0)] += 1

    @property
    def edge_count(self) -> int:
        return len(self._edges)

    def expire(self) -> int:
        """Forget edges with no call within :data:`MAX_WINDOW` and nodes no edge names; the edges gone."""
        oldest = int(self._clock()) - MAX_WINDOW - BUCKET_SECONDS
        idle = [
            key for key, edge in self._edges.items() if not edge.buckets or edge.buckets[-1].start < oldest
        ]
        for key in idle:
            del self._edges[key]
        if idle:
            named = {end for edge in self._edges.values() for end in (edge.source, edge.target)}
            self._nodes = {node_id: node for node_id, node in self._nodes.items() if node_id in named}
            if self._expired is not None:
                self._expired.inc("topology", by=len(idle))
        return len(idle)

    def snapshot(self, window_s: float, now_s: float, histograms: bool = False) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}`` over the last ``window_s`` seconds.

        ``histograms``: each edge also carries its latency histogram (``latency``), so that
        snapshots of several processes can be merged (:func:`merge_snapshots`).
        """
        since = now_s - window_s
        edges = []
        used: set[str] = set()
        for edge in self._edges.values():
            live = [b for b in edge.buckets if b.start + BUCKET_SECONDS > since]
            requests = sum(b.requests for b in live)
            if not requests:
                continue
            latency = [sum(column) for column in zip(*(b.latency for b in live), strict=True)]
            edges.append(
                {
                    "source": edge.source,
                    "target": edge.target,
                    "protocol": edge.protocol,
                    "requests": requests,
                    "errors": sum(b.errors for b in live),
                    "rps": round(requests / max(min(window_s, now_s - live[0].start), 1.0), 3),
                    "p50_ms": round(_percentile(latency, 0.50), 2),
                    "p99_ms": round(_percentile(latency, 0.99), 2),
                    **({"latency": latency} if histograms else {}),
                }
            )
            used.update((edge.source, edge.target))
        nodes = [
            {"id": n.id, "name": n.name, "namespace": n.namespace, "kind": n.kind}
            for n in self._nodes.values()
            if n.id in used
        ]
        edges.sort(key=lambda e: (e["source"], e["target"], e["protocol"]))
        nodes.sort(key=lambda n: n["id"])
        return {"window_seconds": window_s, "nodes": nodes, "edges": edges}


def merge_snapshots(snapshots: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    """Snapshots of several processes (taken with ``histograms``) as one: requests, errors and
    rates summed per edge, percentiles from the summed latency histograms."""
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for node in snapshot["nodes"]:
            nodes.setdefault(node["id"], node)
        for edge in snapshot["edges"]:
            key = (edge["source"], edge["target"], edge["protocol"])
            merged = edges.get(key)
            if merged is None:
                edges[key] = {**edge, "latency": list(edge["latency"])}
                continue
            merged["requests"] += edge["requests"]
            merged["errors"] += edge["errors"]
            merged["rps"] = round(merged["rps"] + edge["rps"], 3)
            merged["latency"] = [a + b for a, b in zip(merged["latency"], edge["latency"], strict=True)]
    for edge in edges.values():
        latency = edge.pop("latency")
        edge["p50_ms"] = round(_percentile(latency, 0.50), 2)
        edge["p99_ms"] = round(_percentile(latency, 0.99), 2)
    return {
        "window_seconds": window_s,
        "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
        "edges": sorted(edges.values(), key=lambda e: (e["source"], e["target"], e["protocol"])),
    }


def _percentile(histogram: list[int], q: float) -> float:
    total = sum(histogram)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return _bucket_upper_ms(index)
    return _bucket_upper_ms(len(histogram) - 1)
