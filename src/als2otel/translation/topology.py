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

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..model import USER, Call, Workload
from . import semconv

BUCKET_SECONDS = 10
MAX_WINDOW = 3600.0
"""Seconds of history kept per edge."""
MAX_EDGES = 10_000
"""Edges tracked at once (between workloads); beyond it, new edges are dropped and counted."""
MAX_CODES = 32
"""Distinct response codes (and flags) kept per bucket; more are counted as ``other``."""
MAX_PODS = 64
"""Pods remembered per workload (the ones seen last); older ones are forgotten first."""
MAX_SERIES_POINTS = 360
"""Points of an edge's ``series`` at most; a smaller step over a longer window is widened."""
LEVELS = ("service", "workload")

# Latency histogram: bucket i holds durations up to 2**(i/4) ms (about 19% steps).
_LATENCY_BUCKETS = 100


def _latency_bucket(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(_LATENCY_BUCKETS - 1, math.ceil(4 * math.log2(ms)))


def _bucket_upper_ms(index: int) -> float:
    return 2 ** (index / 4)


class View(NamedTuple):
    """What a snapshot shows: its window, its level, the step of its series (0: none), and whether
    edges carry their latency histograms (so that several processes' snapshots merge)."""

    window: float
    level: str = "service"
    step: int = 0
    histograms: bool = False


@dataclass(slots=True)
class _Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * _LATENCY_BUCKETS)
    codes: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0  # TCP: from the source to the target
    bytes_received: int = 0


@dataclass(slots=True)
class Node:
    """A workload (or ``user``, an external host, ``unknown``), and the service it belongs to."""

    id: str
    name: str
    namespace: str
    kind: str  # "service", "external", "user" or "unknown"
    service_id: str = ""
    service: str = ""
    version: str = ""
    pods: dict[str, float] = field(default_factory=dict)  # pod -> when last seen (unix seconds)


@dataclass(slots=True)
class _Edge:
    source: str  # workload-level node ids
    target: str
    protocol: str
    buckets: deque[_Bucket] = field(default_factory=deque)


def node_for(workload: Workload | None, outside: bool) -> Node:
    """The workload-level node of a call's end."""
    if outside:
        return Node(USER, USER, "", "user", USER)
    if workload is None:
        return Node("unknown", "unknown", "", "unknown", "unknown")
    if workload.external:
        return Node(workload.service_name, workload.service_name, "", "external", workload.service_name)
    namespace, service = workload.namespace, workload.service_name
    service_id = f"{namespace}/{service}" if namespace else service
    name = workload.workload_name or (f"{service}-{workload.version}" if workload.version else service)
    node_id = f"{namespace}/{name}" if namespace else name
    return Node(node_id, name, namespace, "service", service_id, service, workload.version)


def _count(counts: dict[str, int], key: str) -> None:
    if key not in counts and len(counts) >= MAX_CODES:
        key = "other"
    counts[key] = counts.get(key, 0) + 1


def response_code(entry: Any) -> str:
    """The code an edge counts a request under: a gRPC status name for gRPC, else the HTTP code."""
    if entry.protocol == "grpc" and entry.grpc_status >= 0:
        return semconv.grpc_status_name(entry.grpc_status)
    return str(entry.response_code)


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
        entry = call.entry
        key = (source.id, target.id, entry.protocol)
        edge = self._edges.get(key)
        if edge is None:
            if len(self._edges) >= MAX_EDGES:
                if self._dropped is not None:
                    self._dropped.inc("topology", "edge_limit")
                return
            edge = self._edges[key] = _Edge(*key)
        now = self._clock()
        self._seen(source, call.source, now)
        self._seen(target, destination, now)
        start = int(now) // BUCKET_SECONDS * BUCKET_SECONDS
        buckets = edge.buckets
        if not buckets or buckets[-1].start < start:  # a clock stepped back adds to the newest
            buckets.append(_Bucket(start))
            while buckets and buckets[0].start < start - MAX_WINDOW:
                buckets.popleft()
        bucket = buckets[-1]
        bucket.requests += 1
        if semconv.error_type(entry, "client"):
            bucket.errors += 1
        bucket.latency[_latency_bucket(seconds * 1000.0)] += 1
        if entry.protocol == "tcp":
            bucket.bytes_sent += entry.received_bytes  # what the proxy received from the source
            bucket.bytes_received += entry.sent_bytes
        else:
            _count(bucket.codes, response_code(entry))
        for flag in entry.response_flags:
            _count(bucket.flags, flag)

    def _seen(self, node: Node, workload: Workload | None, now: float) -> None:
        known = self._nodes.setdefault(node.id, node)
        pod = workload.pod_name if workload is not None else ""
        if pod:
            pods = known.pods
            if pod not in pods and len(pods) >= MAX_PODS:
                del pods[min(pods, key=pods.__getitem__)]
            pods[pod] = now

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
        for node in self._nodes.values():
            for pod in [pod for pod, seen in node.pods.items() if seen < oldest]:
                del node.pods[pod]
        if idle:
            named = {end for edge in self._edges.values() for end in (edge.source, edge.target)}
            self._nodes = {node_id: node for node_id, node in self._nodes.items() if node_id in named}
            if self._expired is not None:
                self._expired.inc("topology", by=len(idle))
        return len(idle)

    def snapshot(self, view: View | float, now_s: float, histograms: bool = False) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}`` over the last ``view.window`` seconds, at the view's
        level (``service``: workloads grouped into their service; ``workload``: one node each), each
        edge with its requests, errors, rate, percentiles, response codes and flags (TCP: connections
        and bytes), and with ``view.step`` its ``series``."""
        if not isinstance(view, View):
            view = View(view, histograms=histograms)
        since = now_s - view.window
        by_service = view.level == "service"
        groups: dict[tuple[str, str, str], list[_Bucket]] = {}
        for edge in self._edges.values():
            live = [b for b in edge.buckets if b.start + BUCKET_SECONDS > since]
            if not live:
                continue
            source, target = edge.source, edge.target
            if by_service:
                source, target = self._nodes[source].service_id, self._nodes[target].service_id
            groups.setdefault((source, target, edge.protocol), []).extend(live)
        edges = [_edge_of(key, buckets, view, now_s) for key, buckets in groups.items()]
        edges = [edge for edge in edges if edge["requests"]]
        used = {end for edge in edges for end in (edge["source"], edge["target"])}
        nodes = self._service_nodes(used) if by_service else self._workload_nodes(used)
        edges.sort(key=lambda e: (e["source"], e["target"], e["protocol"]))
        nodes.sort(key=lambda n: n["id"])
        return {"window_seconds": view.window, "level": view.level, "nodes": nodes, "edges": edges}

    def _workload_nodes(self, used: set[str]) -> list[dict[str, Any]]:
        return [_workload_json(node) for node in self._nodes.values() if node.id in used]

    def _service_nodes(self, used: set[str]) -> list[dict[str, Any]]:
        services: dict[str, dict[str, Any]] = {}
        for node in self._nodes.values():
            if node.service_id not in used:
                continue
            service = services.setdefault(
                node.service_id,
                {
                    "id": node.service_id,
                    "name": node.service or node.name,
                    "namespace": node.namespace,
                    "kind": node.kind,
                    "workloads": [],
                },
            )
            if node.kind == "service":
                service["workloads"].append(_workload_json(node, brief=True))
        for service in services.values():
            service["workloads"].sort(key=lambda w: w["name"])
        return list(services.values())


def _workload_json(node: Node, brief: bool = False) -> dict[str, Any]:
    pods = sorted(node.pods)
    out: dict[str, Any] = {"name": node.name, "version": node.version, "pods": pods}
    out["last_seen"] = {pod: round(node.pods[pod], 3) for pod in pods}
    if brief:
        return out
    return {"id": node.id, "namespace": node.namespace, "kind": node.kind, "service": node.service, **out}


def _edge_of(key: tuple[str, str, str], buckets: list[_Bucket], view: View, now_s: float) -> dict[str, Any]:
    source, target, protocol = key
    requests = sum(b.requests for b in buckets)
    latency = [sum(column) for column in zip(*(b.latency for b in buckets), strict=True)]
    codes: dict[str, int] = {}
    flags: dict[str, int] = {}
    for bucket in buckets:
        for code, n in bucket.codes.items():
            codes[code] = codes.get(code, 0) + n
        for flag, n in bucket.flags.items():
            flags[flag] = flags.get(flag, 0) + n
    oldest = min((b.start for b in buckets), default=int(now_s))
    edge: dict[str, Any] = {
        "source": source,
        "target": target,
        "protocol": protocol,
        "requests": requests,
        "errors": sum(b.errors for b in buckets),
        "rps": round(requests / max(min(view.window, now_s - oldest), 1.0), 3),
        "codes": dict(sorted(codes.items())),
        "flags": dict(sorted(flags.items())),
        **_percentiles(latency),
    }
    if protocol == "tcp":
        edge["connections"] = requests
        edge["bytes_sent"] = sum(b.bytes_sent for b in buckets)
        edge["bytes_received"] = sum(b.bytes_received for b in buckets)
    if view.step:
        edge["series"] = _series(buckets, view, now_s)
    if view.histograms:
        edge["latency"] = latency
    return edge


def series_step(step: float, window: float) -> int:
    """A series step in whole buckets (10 s), no more than :data:`MAX_SERIES_POINTS` over the window."""
    buckets = max(math.ceil(step / BUCKET_SECONDS), math.ceil(window / BUCKET_SECONDS / MAX_SERIES_POINTS), 1)
    return buckets * BUCKET_SECONDS


def _series(buckets: list[_Bucket], view: View, now_s: float) -> list[dict[str, int]]:
    """Requests and errors per step over the window, oldest first, empty steps included."""
    step = view.step
    last = int(now_s) // step * step
    first = int(now_s - view.window) // step * step + step
    points = {t: [0, 0] for t in range(first, last + 1, step)}
    for bucket in buckets:
        point = points.get(bucket.start // step * step)
        if point is not None:
            point[0] += bucket.requests
            point[1] += bucket.errors
    return [{"t": t, "requests": r, "errors": e} for t, (r, e) in points.items()]


def _percentiles(latency: list[int]) -> dict[str, float]:
    return {f"p{int(q * 100)}_ms": round(_percentile(latency, q), 2) for q in (0.50, 0.90, 0.99)}


def merge_snapshots(snapshots: list[dict[str, Any]], view: View | float) -> dict[str, Any]:
    """Snapshots of several processes (taken with ``histograms``) as one: counts, codes, flags, bytes,
    rates and series summed per edge, percentiles from the summed latency histograms, each node's
    workloads and pods together."""
    if not isinstance(view, View):
        view = View(view)
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for node in snapshot["nodes"]:
            _merge_node(nodes, node)
        for edge in snapshot["edges"]:
            key = (edge["source"], edge["target"], edge["protocol"])
            merged = edges.get(key)
            if merged is None:
                edges[key] = json.loads(json.dumps(edge))
                continue
            for name in ("requests", "errors", "connections", "bytes_sent", "bytes_received"):
                if name in edge:
                    merged[name] = merged.get(name, 0) + edge[name]
            merged["rps"] = round(merged["rps"] + edge["rps"], 3)
            merged["latency"] = [a + b for a, b in zip(merged["latency"], edge["latency"], strict=True)]
            for name in ("codes", "flags"):
                for code, n in edge.get(name, {}).items():
                    merged[name][code] = merged[name].get(code, 0) + n
            if "series" in edge:
                by_t = {point["t"]: point for point in merged["series"]}
                for point in edge["series"]:
                    mine = by_t.setdefault(point["t"], {"t": point["t"], "requests": 0, "errors": 0})
                    if mine is not point:
                        mine["requests"] += point["requests"]
                        mine["errors"] += point["errors"]
                merged["series"] = [by_t[t] for t in sorted(by_t)]
    for edge in edges.values():
        latency = edge.pop("latency")
        edge.update(_percentiles(latency))
        if view.histograms:
            edge["latency"] = latency
        for name in ("codes", "flags"):
            edge[name] = dict(sorted(edge.get(name, {}).items()))
    return {
        "window_seconds": view.window,
        "level": view.level,
        "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
        "edges": sorted(edges.values(), key=lambda e: (e["source"], e["target"], e["protocol"])),
    }


def _merge_node(nodes: dict[str, dict[str, Any]], node: dict[str, Any]) -> None:
    known = nodes.get(node["id"])
    if known is None:
        nodes[node["id"]] = json.loads(json.dumps(node))
        return
    _merge_pods(known, node)
    workloads = {w["name"]: w for w in known.get("workloads", [])}
    for workload in node.get("workloads", []):
        if workload["name"] in workloads:
            _merge_pods(workloads[workload["name"]], workload)
        else:
            known.setdefault("workloads", []).append(json.loads(json.dumps(workload)))
    if "workloads" in known:
        known["workloads"].sort(key=lambda w: w["name"])


def _merge_pods(known: dict[str, Any], other: dict[str, Any]) -> None:
    if "pods" not in other:
        return
    seen = {**known.get("last_seen", {})}
    for pod, when in other.get("last_seen", {}).items():
        seen[pod] = max(seen.get(pod, 0), when)
    known["last_seen"] = dict(sorted(seen.items()))
    known["pods"] = sorted(set(known.get("pods", [])) | set(other["pods"]))


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
