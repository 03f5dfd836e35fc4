"""Delivery to backends with their default limits, over real gRPC and HTTP: bounded requests,
refusals by kind, parallel sending, replicas that share a mesh, and series that expire."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers
from support.mesh import sides, stream
from support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, Partial, Received, Refusal, attributes
from support.waiting import eventually

from als2otel.app import INSTANCE_ATTRIBUTE, Bridge, default_instance_id
from als2otel.export import render

MiB = 1024 * 1024


def span_ids(received: Received) -> Counter[bytes]:
    return Counter(span.span_id for _, span in received.spans())


async def stream_calls(bridge: Bridge, calls: int, first: int = 0, **pods: Any) -> None:
    """Both sides of ``calls`` calls, client and server streams at once, as fast as gRPC takes them."""
    client, server = sides(calls, first=first, **pods)
    caller, callee = pods.get("caller"), pods.get("callee")
    target = f"127.0.0.1:{bridge.receiver.port}"
    results = await asyncio.gather(
        als.send(target, stream(caller, "10.1.0.4", client) if caller else _stream("caller", client)),
        als.send(target, stream(callee, "10.1.0.9", server) if callee else _stream("callee", server)),
    )
    assert results == [None, None]
    await bridge.pipeline.drain()


def _stream(side: str, entries: list[Any]) -> list[Any]:
    from support.mesh import CALLEE, CALLER

    return stream(CALLER, "10.1.0.4", entries) if side == "caller" else stream(CALLEE, "10.1.0.9", entries)


async def deliver_calls(make_bridge: Any, receiver: Any, protocol: str, calls: int) -> Bridge:
    """Both sides of ``calls`` calls through a bridge exporting to ``receiver``; waits until every
    span has arrived exactly once (and a little longer, so that a duplicate would show)."""
    exporters = {"otlp": {"endpoint": receiver.endpoint, "protocol": protocol}}
    bridge: Bridge = await make_bridge(
        bridge_config(receiver.endpoint, analyzers=["mx-mesh"], exporters=exporters)
    )
    await stream_calls(bridge, calls)
    bridge.flush_spans()
    assert await eventually(lambda: sum(span_ids(receiver.received).values()) >= 2 * calls, 60)
    await asyncio.sleep(0.5)
    ids = span_ids(receiver.received)
    assert len(ids) == 2 * calls and set(ids.values()) == {1}
    return bridge


class TestBoundedRequests:
    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    async def test_every_span_once_to_a_default_backend(self, make_bridge: Any, protocol: str) -> None:
        """20,000 calls (40,000 spans, ~30 MB) at full speed: every span arrives exactly once, in
        requests within 4 MiB, to a receiver with gRPC's default limit (or plain HTTP)."""
        receiver = GrpcOtlpReceiver().start() if protocol == "grpc" else HttpOtlpReceiver().start()
        try:
            bridge = await deliver_calls(make_bridge, receiver, protocol, 20_000)
            sizes = [r.ByteSize() for r in receiver.received.traces]
            assert max(sizes) <= 4 * MiB < 2 * 4 * MiB < sum(sizes)  # one flush would have been larger
            assert bridge.stats.dropped.values == {}
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            receiver.stop()

    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    async def test_a_backend_that_refuses_above_1_mib_still_gets_every_span(
        self, make_bridge: Any, protocol: str
    ) -> None:
        """RESOURCE_EXHAUSTED (gRPC) or 413 (HTTP) for anything over 1 MiB: requests are split and resent,
        never retried as they were, until every span has arrived once."""
        if protocol == "grpc":
            receiver: Any = GrpcOtlpReceiver(max_message=MiB).start()
        else:
            receiver = HttpOtlpReceiver(max_body=MiB).start()
        try:
            bridge = await deliver_calls(make_bridge, receiver, protocol, 6_000)
            assert bridge.stats.export_failures.get("traces") > 0  # the refusals happened
            assert bridge.stats.dropped.get("traces", "too_large") == 0
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            receiver.stop()

    def test_metrics_requests_are_split(self) -> None:
        """68,000 series (a 12 MB snapshot) make several metrics requests, each within the limit,
        with every point once and each keeping its resource and metric."""
        from als2otel.export.otlp_metrics import metrics_request
        from als2otel.export.split import split
        from als2otel.model import Workload
        from als2otel.stats import Stats
        from als2otel.translation.metric_sets import HTTP_SERVER_DURATION, SG_REQUESTS
        from als2otel.translation.metrics import MetricStore

        store = MetricStore(0, Stats())
        for i in range(60_000):
            series = store.series_for(SG_REQUESTS, None, (("client", f"c{i}"), ("server", "s")))
            assert series is not None
            series.value = i
        for i in range(8_000):
            series = store.series_for(HTTP_SERVER_DURATION, Workload(f"svc{i % 50}"), (("code", str(i)),))
            assert series is not None
            series.record(0.01)
        request, points = metrics_request(store, 1, Workload("als2otel"))
        assert request.ByteSize() > 4 * MiB
        pieces = split("metrics", request.SerializeToString(), 4 * MiB)
        assert len(pieces) > 1
        assert all(len(payload) <= 4 * MiB for payload, _ in pieces)
        assert sum(count for _, count in pieces) == points
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        seen = Counter()
        for payload, _ in pieces:
            for rm in ExportMetricsServiceRequest.FromString(payload).resource_metrics:
                service = attributes(rm.resource.attributes)["service.name"]
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            seen[
                                (service, metric.name, tuple(sorted(attributes(point.attributes).items())))
                            ] += 1
        assert len(seen) == points and set(seen.values()) == {1}


class TestRefusals:
    @pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
    async def test_permanent_refusal_is_dropped_at_once_and_counted(
        self, make_bridge: Any, protocol: str, caplog: Any
    ) -> None:
        """INVALID_ARGUMENT (or 400): dropped, counted as refused, logged with the backend's message;
        the requests behind it still go."""
        receiver: Any = GrpcOtlpReceiver().start() if protocol == "grpc" else HttpOtlpReceiver().start()
        refused: list[int] = []

        def reply(signal: str, request: Any) -> Any:
            if signal == "traces" and not refused:
                refused.append(sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
                return Refusal("INVALID_ARGUMENT", 400, "span 3 has no trace id")
            return None

        receiver.received.reply = reply
        try:
            exporters = {"otlp": {"endpoint": receiver.endpoint, "protocol": protocol}}
            bridge = await make_bridge(
                bridge_config(receiver.endpoint, analyzers=["mx-mesh"], exporters=exporters)
            )
            await stream_calls(bridge, 100)
            bridge.flush_spans()
            assert await eventually(lambda: bool(refused))
            await stream_calls(bridge, 100, first=100)
            bridge.flush_spans()
            assert await eventually(lambda: bridge.stats.dropped.get("traces", "refused") == refused[0])
            assert await eventually(lambda: len(receiver.received.spans()) == 400 - refused[0])
            assert any("span 3 has no trace id" in r.getMessage() for r in caplog.records)
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            receiver.stop()

    async def test_partial_success_is_counted(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """A partial_success that rejected 7 spans: 7 counted as dropped, with the message logged."""
        otlp.received.reply = lambda signal, request: (
            Partial(7, "7 spans too old") if signal == "traces" else None
        )
        bridge = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
        await stream_calls(bridge, 50)
        bridge.flush_spans()
        assert await eventually(lambda: bridge.stats.dropped.get("traces", "partial_success") == 7)

    async def test_late_answer_means_sent_again(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """A backend that answers after the timeout gets the request again (at least once), counted."""
        answered: list[int] = []

        def slow_first(signal: str, request: Any) -> None:
            if signal == "traces" and not answered:
                answered.append(1)
                import time

                time.sleep(1.5)

        otlp.received.reply = slow_first
        config = bridge_config(
            otlp.endpoint,
            analyzers=["mx-mesh"],
            exporters={"otlp": {"endpoint": otlp.endpoint, "timeout": "0.5s"}},
        )
        bridge = await make_bridge(config)
        await stream_calls(bridge, 50)
        bridge.flush_spans()
        assert await eventually(lambda: len(span_ids(otlp.received)) == 100)
        # The late answer is kept at 1.5 s; the resend is counted once its first backoff (1 s) after
        # the 0.5 s timeout is over: about the same moment, so it is waited for, not assumed.
        assert await eventually(lambda: bridge.stats.export_retries.get("traces") >= 1)
        assert bridge.stats.dropped.values == {}

    async def test_requests_in_flight_at_once(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """With a backend taking 0.5 s per request, num_consumers (4) requests are in flight at once."""
        otlp.received.delay = 0.5
        bridge = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
        for k in range(8):
            await stream_calls(bridge, 20, first=20 * k)
            bridge.flush_spans()
        assert await eventually(lambda: len(otlp.received.spans()) == 320)
        assert otlp.received.most_in_flight["traces"] == 4


def series_identities(received: Received) -> dict[tuple[Any, ...], float]:
    """Each series of the newest snapshot as Prometheus's OTLP receiver would name it by default:
    metric, job (service.namespace/service.name), instance (service.instance.id), point attributes."""
    found: dict[tuple[Any, ...], float] = {}
    for (name, resource), points in received.latest_metrics().items():
        res = dict(resource)
        for point in points:
            attrs = tuple(sorted(attributes(point.attributes).items()))
            key = (
                name,
                res.get("service.namespace"),
                res.get("service.name"),
                res.get("service.instance.id"),
                attrs,
            )
            found[key] = point.count if hasattr(point, "bucket_counts") else point.as_double or point.as_int
    return found


class TestReplicas:
    @pytest.mark.parametrize(
        ("temporality", "named"), [("cumulative", True), ("delta", True), ("cumulative", False)]
    )
    async def test_two_bridges_never_write_one_series(
        self, make_bridge: Any, temporality: str, named: bool, monkeypatch: Any
    ) -> None:
        """Each proxy's two worker streams split over two bridges on one host, named by the
        configuration or by default (host:port): spans exact, no series written by both (under the
        Prometheus OTLP translation), and the counts add up to the calls."""
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        receivers = [GrpcOtlpReceiver().start(), GrpcOtlpReceiver().start()]
        try:
            bridges = [
                await make_bridge(
                    bridge_config(
                        r.endpoint,
                        analyzers=["mx-mesh"],
                        metrics={"export_interval": "0.5s", "temporality": temporality}
                        | ({"instance_id": f"bridge-{n}"} if named else {}),
                    )
                )
                for n, r in enumerate(receivers)
            ]
            if not named:
                assert [b.instance_id for b in bridges] == [
                    f"{socket.gethostname()}:{b.http.port}" for b in bridges
                ]
            client, server = sides(400)
            from support.mesh import CALLEE, CALLER

            halves = [(client[:200], server[200:]), (client[200:], server[:200])]
            for bridge, (c, s) in zip(bridges, halves, strict=True):
                target = f"127.0.0.1:{bridge.receiver.port}"
                await als.send(target, stream(CALLER, "10.1.0.4", c))
                await als.send(target, stream(CALLEE, "10.1.0.9", s))
                await bridge.pipeline.drain()
                bridge.flush_spans()
            assert await eventually(lambda: sum(len(r.received.spans()) for r in receivers) == 800)
            ids = Counter(span.span_id for r in receivers for _, span in r.received.spans())
            assert len(ids) == 800
            await asyncio.sleep(1.2)  # two metric exports
            a, b = (series_identities(r.received) for r in receivers)
            assert a and b and not set(a) & set(b)
            requests = "traces_service_graph_request_total"
            if temporality == "cumulative":
                total = sum(v for k, v in {**a, **b}.items() if k[0] == requests)
            else:
                total = sum(
                    point.as_double
                    for r in receivers
                    for request in r.received.metrics
                    for rm in request.resource_metrics
                    for sm in rm.scope_metrics
                    for metric in sm.metrics
                    if metric.name == requests
                    for point in metric.sum.data_points
                )
            assert total == 400
            for r, name in zip(receivers, (b.instance_id for b in bridges), strict=True):
                points = [p for pts in r.received.latest_metrics().values() for p in pts]
                per_service = [p for p in points if INSTANCE_ATTRIBUTE in attributes(p.attributes)]
                assert per_service and {
                    attributes(p.attributes)[INSTANCE_ATTRIBUTE] for p in per_service
                } == {name}
            for bridge in bridges:  # before their receivers go, which their last flush reaches
                await bridge.stop()
        finally:
            for r in receivers:
                r.stop()

    def test_the_default_identity_is_host_and_port_and_the_pod_name_in_kubernetes(self) -> None:
        """Unique per bridge on a host (no two listen on one HTTP port) and the same across its
        restarts; in Kubernetes the host name alone, which is the pod's name."""
        host = socket.gethostname()
        assert default_instance_id(9464, {}) == f"{host}:9464"
        assert default_instance_id(9464, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == host


class TestExpiry:
    async def test_pod_churn_leaves_only_live_pods(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """Generations of new pods: after expire_after only the live generation's series remain in
        /metrics and the newest OTLP export, idle edges leave the topology, and the store stays small."""
        config = bridge_config(
            otlp.endpoint,
            analyzers=["mx-mesh"],
            metrics={"export_interval": "0.3s", "expire_after": "1s"},
        )
        bridge = await make_bridge(config)
        sizes = []
        for generation in range(6):
            caller = peers.pod("productpage", suffix=f"gen{generation}-aaaaa")
            callee = peers.pod(f"reviews{generation}", suffix=f"gen{generation}-bbbbb")
            await stream_calls(bridge, 20, first=generation * 20, caller=caller, callee=callee)
            await asyncio.sleep(1.6)  # longer than expire_after, and several exports
            sizes.append(len(bridge.metrics.series))
        page = render(bridge.metrics, bridge.stats)
        assert "reviews5" in page and "reviews4" not in page and "reviews0" not in page
        newest = otlp.received.metrics[-1]
        services = {attributes(rm.resource.attributes).get("service.name") for rm in newest.resource_metrics}
        assert "reviews5" in services and "reviews4" not in services
        assert max(sizes) == sizes[0]  # the store holds one generation at a time
        assert bridge.stats.expired.get("metrics") > 0
