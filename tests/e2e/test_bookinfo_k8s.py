"""The k8s-mesh seed article's bookinfo: both sides of every call, IPs resolved through a list/watch cache."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, kube_api, servicegraph
from support.kube_api import FakeKubeApi
from support.otlp_receiver import GrpcOtlpReceiver

from als2otel.demo import bookinfo
from als2otel.receiver._proto import accesslog_pb2

USER = ("203.0.113.5", 51000)
GATEWAY = "10.4.0.2"
PODS = {  # name: (ip, app, version, namespace)
    "istio-ingressgateway-5d9c7b8f6-gw001": (GATEWAY, "istio-ingressgateway", "", "istio-system"),
    "productpage-v1-6b746f74dc-aaaaa": ("10.4.0.10", "productpage", "v1", "default"),
    "details-v1-79f774bdb9-bbbbb": ("10.4.0.11", "details", "v1", "default"),
    "reviews-v1-545db77b95-ccccc": ("10.4.0.12", "reviews", "v1", "default"),
    "reviews-v2-7bf8c9648f-ddddd": ("10.4.0.13", "reviews", "v2", "default"),
    "reviews-v3-84779c7bbc-eeeee": ("10.4.0.14", "reviews", "v3", "default"),
    "ratings-v1-b6994bb9-fffff": ("10.4.0.15", "ratings", "v1", "default"),
}


def ip_of(app: str, version: str = "v1") -> str:
    return next(ip for ip, a, v, _ in PODS.values() if a == app and (v == version or not v))


def populate(kube: FakeKubeApi, pods: dict[str, tuple[str, str, str, str]] = PODS) -> None:
    """``pods``: name -> (ip, app, version, namespace); one Service per app selects its pods."""
    kube.put(kube_api.node("node-1", "10.0.0.5"))
    services: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for name, (ip, app, version, namespace) in pods.items():
        labels = {"app": app, **({"version": version} if version else {})}
        kube.put(kube_api.pod(namespace, name, ip, labels, replicaset=name.rsplit("-", 1)[0]))
        services.setdefault((namespace, app), []).append((name, ip, True))
    for (namespace, app), members in services.items():
        kube.put(kube_api.service(namespace, app, {"app": app}))
        kube.put(kube_api.endpoint_slice(namespace, app, members))


def streams(requests: int) -> list[list[Any]]:
    """Per proxy: its entries for ``requests`` user requests (bookinfo: reviews v1/v2/v3 in turn)."""
    per: dict[str, list[Any]] = {name: [] for name in PODS}
    port = 20000

    def hop(caller_pod: str | None, callee_pod: str, service: str, rid: str, path: str) -> None:
        nonlocal port
        port += 1
        callee_ip = PODS[callee_pod][0]
        if caller_pod is not None:
            caller_ip = PODS[caller_pod][0]
            per[caller_pod].append(
                als.http_entry(
                    downstream_remote=(caller_ip, port + 10000),
                    downstream_local=(caller_ip, 15001),
                    upstream_remote=(callee_ip, 9080),
                    upstream_local=(caller_ip, port),
                    cluster=f"outbound|9080||{service}.default.svc.cluster.local",
                    path=path,
                    request_id=rid,
                )
            )
            per[callee_pod].append(
                als.http_entry(
                    downstream_remote=(*USER[:1], 0),
                    downstream_direct_remote=(caller_ip, port),
                    downstream_local=(callee_ip, 9080),
                    upstream_remote=(callee_ip, 9080),
                    upstream_local=("127.0.0.6", port),
                    cluster="inbound|9080||",
                    path=path,
                    request_id=rid,
                )
            )

    gateway_pod = "istio-ingressgateway-5d9c7b8f6-gw001"
    reviews = ["reviews-v1-545db77b95-ccccc", "reviews-v2-7bf8c9648f-ddddd", "reviews-v3-84779c7bbc-eeeee"]
    for i in range(requests):
        rid = f"{i:08x}-1111-4000-8000-000000000000"
        port += 1
        per[gateway_pod].append(
            als.http_entry(
                downstream_remote=USER,
                downstream_local=(GATEWAY, 8080),
                upstream_remote=(ip_of("productpage"), 9080),
                upstream_local=(GATEWAY, port),
                cluster="outbound|9080||productpage.default.svc.cluster.local",
                path="/productpage",
                request_id=rid,
            )
        )
        per["productpage-v1-6b746f74dc-aaaaa"].append(
            als.http_entry(
                downstream_remote=(USER[0], 0),
                downstream_direct_remote=(GATEWAY, port),
                downstream_local=(ip_of("productpage"), 9080),
                upstream_remote=(ip_of("productpage"), 9080),
                upstream_local=("127.0.0.6", port),
                cluster="inbound|9080||",
                path="/productpage",
                request_id=rid,
            )
        )
        hop("productpage-v1-6b746f74dc-aaaaa", "details-v1-79f774bdb9-bbbbb", "details", rid, "/details/0")
        version = reviews[i % 3]
        hop("productpage-v1-6b746f74dc-aaaaa", version, "reviews", rid, "/reviews/0")
        if not version.startswith("reviews-v1"):
            hop(version, "ratings-v1-b6994bb9-fffff", "ratings", rid, "/ratings/0")
    out = []
    for name, entries in per.items():
        ip, _, _, namespace = PODS[name]
        role = "router" if name.startswith("istio-ingressgateway") else "sidecar"
        ident = als.identifier(f"{role}~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
        out.append(
            [
                als.http_message(entries[k : k + 20], ident if k == 0 else None)
                for k in range(0, len(entries), 20)
            ]
        )
    return out


async def version_rule_bridge(
    make_bridge: Any,
    otlp: GrpcOtlpReceiver,
    kube: FakeKubeApi,
    tmp_path: Path,
    clock: Callable[[], int] = als.synthetic_clock,
) -> Any:
    """A bridge resolving with k8s-mesh alone and the seed article's version rule, its cache listed."""
    config = bridge_config(
        otlp.endpoint,
        analyzers=["k8s-mesh"],
        k8s={
            "kubeconfig": str(kube.kubeconfig(tmp_path)),
            "service_name_rule": "${service.metadata.name}-${pod.metadata.labels.version}",
        },
    )
    bridge = await make_bridge(config, clock=clock)
    assert await _synced(bridge)
    return bridge


async def test_bookinfo_with_version_rule(make_bridge: Any, otlp: GrpcOtlpReceiver, tmp_path: Path) -> None:
    """Exactly the bookinfo edges and counts; the rule names reviews-v1, reviews-v2, reviews-v3."""
    kube = FakeKubeApi().start()
    bridge = None
    try:
        populate(kube)
        bridge = await version_rule_bridge(make_bridge, otlp, kube, tmp_path)
        requests = 30
        errors = await asyncio.gather(
            *(als.send(f"127.0.0.1:{bridge.receiver.port}", s) for s in streams(requests))
        )
        assert set(errors) == {None}
        expected = Counter(
            {
                ("user", "istio-ingressgateway"): requests,
                ("istio-ingressgateway", "productpage-v1"): requests,
                ("productpage-v1", "details-v1"): requests,
                ("productpage-v1", "reviews-v1"): requests // 3,
                ("productpage-v1", "reviews-v2"): requests // 3,
                ("productpage-v1", "reviews-v3"): requests // 3,
                ("reviews-v2", "ratings-v1"): requests // 3,
                ("reviews-v3", "ratings-v1"): requests // 3,
            }
        )
        spans = await spans_matching(otlp, expected, users=requests)
        resources = {r["service.name"]: r for r, _ in spans}
        assert resources["reviews-v2"]["k8s.deployment.name"] == "reviews-v2"
        assert resources["reviews-v2"]["k8s.pod.name"] == "reviews-v2-7bf8c9648f-ddddd"
        # Every request's hops form one tree: one root (the gateway's server side), every parent present.
        traces: dict[bytes, list[Any]] = {}
        for _, span in spans:
            traces.setdefault(span.trace_id, []).append(span)
        assert len(traces) == requests
        for members in traces.values():
            ids = {span.span_id for span in members}
            roots = [span for span in members if not span.parent_span_id]
            assert len(roots) == 1 and roots[0].kind == servicegraph.SERVER
            assert all(span.parent_span_id in ids for span in members if span.parent_span_id)
        assert bridge.stats.entries_unresolved.values == {}
    finally:
        if bridge is not None:
            await bridge.stop()
        kube.stop()


async def test_chain_mx_then_k8s(make_bridge: Any, otlp: GrpcOtlpReceiver, tmp_path: Path) -> None:
    """mx-mesh resolves entries with peer metadata, k8s-mesh the rest; every call side is emitted once."""
    from support import peers

    kube = FakeKubeApi().start()
    bridge = None
    try:
        populate(kube)
        config = bridge_config(
            otlp.endpoint,
            analyzers=["mx-mesh", "k8s-mesh"],
            k8s={"kubeconfig": str(kube.kubeconfig(tmp_path))},
        )
        bridge = await make_bridge(config)
        assert await _synced(bridge)
        all_streams = streams(30)
        # Give half the server-side entries Istio's peer metadata, naming the caller differently than
        # the cluster would: whoever resolved a side shows in its name.
        marked = 0
        for stream_messages in all_streams:
            for message in stream_messages:
                encoded = message.http_logs.log_entry
                for i, raw in enumerate(encoded):
                    entry = accesslog_pb2.HTTPAccessLogEntry.FromString(raw)
                    if entry.common_properties.upstream_cluster == "inbound|9080||" and marked % 2 == 0:
                        peer = peers.Peer("mx-pod", "default", "mx-caller", {"app": "mx-caller"})
                        entry.common_properties.filter_state_objects["downstream_peer"].CopyFrom(
                            peers.struct_any(peer)
                        )
                        encoded[i] = entry.SerializeToString()
                    if entry.common_properties.upstream_cluster == "inbound|9080||":
                        marked += 1
        errors = await asyncio.gather(
            *(als.send(f"127.0.0.1:{bridge.receiver.port}", s) for s in all_streams)
        )
        assert set(errors) == {None}
        await bridge.pipeline.drain()
        server_sides = marked
        assert bridge.stats.calls.get("server") == server_sides + 30  # + the gateway's own server side
        assert bridge.stats.entries_unresolved.values == {}
        edges: Counter[str] = Counter()
        for series in bridge.metrics.series.values():
            if series.metric.name == "traces_service_graph_request_total":
                attrs = dict(series.attributes)
                edges[attrs["client"]] += int(series.value)
        assert edges["mx-caller"] == (server_sides + 1) // 2
        assert sum(edges.values()) == server_sides + 30
    finally:
        if bridge is not None:
            await bridge.stop()
        kube.stop()


async def spans_matching(otlp: GrpcOtlpReceiver, expected: Counter[tuple[str, str]], users: int) -> list[Any]:
    """Every span of the expected edges (two a call, one for the user's), which pair into exactly them."""
    total = 2 * sum(expected.values()) - users  # the user has no client span
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(otlp.received.spans()) < total:
        await asyncio.sleep(0.1)
    spans = otlp.received.spans()
    assert servicegraph.edges(spans) == expected
    assert len(spans) == total
    return spans


async def _synced(bridge: Any) -> bool:
    deadline = time.monotonic() + 20
    while bridge.kube is None or not bridge.kube.synced.is_set():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("loggers", ["als", "otel", "mixed"])
async def test_real_envoys_resolved_by_ip(
    make_bridge: Any, otlp: GrpcOtlpReceiver, tmp_path: Path, loggers: str
) -> None:
    """Bookinfo on real Envoys with no metadata exchange: k8s-mesh names every hop from the IPs the
    API server knows, and the edges count exactly what the apps themselves counted, whether the
    proxies use Envoy's gRPC access logger (ALS), its OpenTelemetry one, or half of each."""
    kube = FakeKubeApi().start()
    bridge = None
    mesh = None
    try:
        pods = {bookinfo.GATEWAY_POD: (bookinfo.GATEWAY_IP, "istio-ingressgateway", "", "istio-system")}
        pods |= {pod.name: (pod.ip, pod.app, pod.version, "default") for pod in bookinfo.PODS}
        populate(kube, pods)
        bridge = await version_rule_bridge(make_bridge, otlp, kube, tmp_path, clock=time.time_ns)
        mesh = bookinfo.Bookinfo(
            ("127.0.0.1", bridge.receiver.port),
            tmp_path / "envoy",
            rate=20,
            exchange_metadata=False,
            loggers=loggers,
        )
        await asyncio.to_thread(mesh.start)
        await asyncio.sleep(4)
        await asyncio.to_thread(mesh.stop_load)

        apps = {f"{app.pod.app}-{app.pod.version}": app for app in mesh.apps}
        expected = Counter(
            {
                ("user", "istio-ingressgateway"): mesh.sent,
                ("istio-ingressgateway", "productpage-v1"): apps["productpage-v1"].received,
                ("productpage-v1", "details-v1"): apps["details-v1"].received,
                ("productpage-v1", "reviews-v1"): apps["reviews-v1"].received,
                ("productpage-v1", "reviews-v2"): apps["reviews-v2"].received,
                ("productpage-v1", "reviews-v3"): apps["reviews-v3"].received,
                ("reviews-v2", "ratings-v1"): apps["reviews-v2"].made["ratings"],
                ("reviews-v3", "ratings-v1"): apps["reviews-v3"].made["ratings"],
            }
        )
        assert mesh.sent >= 20 and mesh.failed == 0
        assert apps["productpage-v1"].made["reviews"] == sum(
            apps[f"reviews-{v}"].received for v in ("v1", "v2", "v3")
        )
        spans = await spans_matching(otlp, expected, users=mesh.sent)
        assert bridge.stats.entries_unresolved.values == {}
        resources = {r["service.name"]: r for r, _ in spans}
        assert resources["reviews-v3"]["k8s.pod.name"] == next(
            p.name for p in bookinfo.PODS if (p.app, p.version) == ("reviews", "v3")
        )
    finally:
        if mesh is not None:
            await asyncio.to_thread(mesh.stop)
        if bridge is not None:
            await bridge.stop()
        kube.stop()
