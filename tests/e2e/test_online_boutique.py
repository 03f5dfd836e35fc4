"""The mx-mesh seed article's Online Boutique: pods and VMs, both sides of every call through the receiver."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers, servicegraph
from support.otlp_receiver import GrpcOtlpReceiver

VMS = {"frontend", "checkoutservice", "paymentservice"}
SERVICES = [
    "frontend",
    "productcatalogservice",
    "currencyservice",
    "cartservice",
    "recommendationservice",
    "shippingservice",
    "checkoutservice",
    "paymentservice",
    "emailservice",
    "adservice",
    "loadgenerator",
]
# (caller, callee, calls): the Online Boutique's call graph for a few user sessions.
PLAN = [
    ("loadgenerator", "frontend", 40),
    ("frontend", "productcatalogservice", 30),
    ("frontend", "currencyservice", 25),
    ("frontend", "cartservice", 12),
    ("frontend", "recommendationservice", 10),
    ("frontend", "shippingservice", 6),
    ("frontend", "adservice", 8),
    ("frontend", "checkoutservice", 4),
    ("recommendationservice", "productcatalogservice", 10),
    ("checkoutservice", "productcatalogservice", 4),
    ("checkoutservice", "shippingservice", 8),
    ("checkoutservice", "currencyservice", 8),
    ("checkoutservice", "cartservice", 8),
    ("checkoutservice", "paymentservice", 4),
    ("checkoutservice", "emailservice", 4),
]


def workload(name: str) -> peers.Peer:
    if name in VMS:
        return peers.vm(name, f"{name}-vm-1")
    return peers.pod(name, suffix="6c8d9f7b5-abcde")


IPS = {name: f"10.8.0.{i + 10}" for i, name in enumerate(SERVICES)}


def messages(kind: str) -> dict[str, list[Any]]:
    """Per reporting proxy: its stream's messages (client entries outbound, server entries inbound)."""
    per_proxy: dict[str, list[Any]] = {name: [] for name in SERVICES}
    port = 30000
    for caller, callee, count in PLAN:
        for i in range(count):
            port += 1
            rid = f"{port:08x}-0000-4000-8000-{i:012d}"
            grpc_call = caller != "loadgenerator"
            method, path = (3, f"/hipstershop.{callee}/Call") if grpc_call else (1, "/")
            headers = {"content-type": "application/grpc"} if grpc_call else None
            per_proxy[caller].append(
                als.http_entry(
                    downstream_remote=(IPS[caller], port + 20000),
                    downstream_local=("10.96.0.1", 5050),
                    upstream_remote=(IPS[callee], 5050),
                    upstream_local=(IPS[caller], port),
                    cluster=f"outbound|5050||{callee}.default.svc.cluster.local",
                    method=method,
                    path=path,
                    request_id=rid,
                    headers=headers,
                    filter_state=peers.filter_state(kind, "upstream", workload(callee)),
                )
            )
            per_proxy[callee].append(
                als.http_entry(
                    downstream_remote=(IPS[caller], port),
                    downstream_local=(IPS[callee], 5050),
                    upstream_remote=(IPS[callee], 5050),
                    upstream_local=("127.0.0.6", port + 1000),
                    cluster="inbound|5050||",
                    method=method,
                    path=path,
                    request_id=rid,
                    headers=headers,
                    filter_state=peers.filter_state(kind, "downstream", workload(caller)),
                )
            )
    streams = {}
    for name, entries in per_proxy.items():
        w = workload(name)
        ident = als.identifier(
            f"sidecar~{IPS[name]}~{w.name}.default~default.svc.cluster.local", w.node_metadata()
        )
        streams[name] = [
            als.http_message(entries[i : i + 25], ident if i == 0 else None)
            for i in range(0, len(entries), 25)
        ]
    return streams


async def send_all(bridge: Any, otlp: GrpcOtlpReceiver, kind: str) -> list[Any]:
    """Every proxy's stream through the receiver; the spans once all have arrived."""
    target = f"127.0.0.1:{bridge.receiver.port}"
    errors = await asyncio.gather(*(als.send(target, stream) for stream in messages(kind).values()))
    assert errors == [None] * len(SERVICES)
    expected_spans = 2 * sum(count for _, _, count in PLAN)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(otlp.received.spans()) < expected_spans:
        await asyncio.sleep(0.1)
    spans = otlp.received.spans()
    assert len(spans) == expected_spans
    return spans


@pytest.mark.parametrize("kind", ["flatnode", "struct"])
async def test_online_boutique_topology(make_bridge: Any, otlp: GrpcOtlpReceiver, kind: str) -> None:
    """Spans at the OTLP receiver draw exactly the planned edges and counts; VMs are named like pods."""
    bridge = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
    spans = await send_all(bridge, otlp, kind)
    assert servicegraph.edges(spans) == Counter({(a, b): n for a, b, n in PLAN})
    resources = {r["service.name"]: r for r, _ in spans}
    assert resources["checkoutservice"]["service.instance.id"] == "checkoutservice-vm-1"
    assert "k8s.pod.name" not in resources["checkoutservice"]
    assert resources["cartservice"]["k8s.pod.name"] == "cartservice-v1-6c8d9f7b5-abcde"
    assert bridge.stats.entries_unresolved.values == {}


async def test_naming_labels_from_config(make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
    """``service_name_labels`` reaches both sides: with no such label, workloads name services."""
    config = bridge_config(
        otlp.endpoint, analyzers=["mx-mesh"], service_name_labels=["team.example.com/service"]
    )
    bridge = await make_bridge(config)
    spans = await send_all(bridge, otlp, "flatnode")

    def named(service: str) -> str:
        return workload(service).workload

    expected = Counter({(named(a), named(b)): n for a, b, n in PLAN})
    assert servicegraph.edges(spans) == expected
    assert ("checkoutservice", "cartservice-v1") in expected
