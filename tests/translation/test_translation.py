"""Translation: a fixed set of calls in, the exact spans and metric points out (golden)."""

from __future__ import annotations

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import als
from support.golden import assert_golden
from support.otlp_receiver import attributes

from als2otel.analysis import AnalyzerChain, ProxyAnalyzer
from als2otel.model import Call, Workload
from als2otel.receiver import identify, normalize_http, normalize_tcp
from als2otel.stats import Stats
from als2otel.translation import MetricRecorder, MetricStore, SpanBatch, Translator, ids

PRODUCTPAGE = identify(
    als.identifier(
        "sidecar~10.1.0.4~productpage-v1-6b746f74dc-9stfq.default~default.svc.cluster.local",
        als.sidecar_metadata("productpage-v1-6b746f74dc-9stfq", "default", "productpage"),
    )
)
REVIEWS = identify(
    als.identifier(
        "sidecar~10.1.0.9~reviews-v1-545db77b95-mffvn.default~default.svc.cluster.local",
        als.sidecar_metadata("reviews-v1-545db77b95-mffvn", "default", "reviews"),
    )
)
GATEWAY = identify(
    als.identifier(
        "router~10.1.0.2~istio-ingressgateway-5d9c7b8f6-abcde.istio-system~istio-system.svc.cluster.local",
        {
            "NAME": "istio-ingressgateway-5d9c7b8f6-abcde",
            "NAMESPACE": "istio-system",
            "LABELS": {"app": "istio-ingressgateway"},
        },
    )
)
RID = "0af76519-16cd-43dd-8448-eb211c80319c"


def calls() -> list[Call]:
    chain = AnalyzerChain([], ProxyAnalyzer(), Stats())
    out: list[Call] = []
    gateway = als.http_entry(
        downstream_remote=("203.0.113.7", 51000),
        downstream_local=("10.1.0.2", 8080),
        upstream_remote=("10.1.0.4", 9080),
        upstream_local=("10.1.0.2", 46000),
        cluster="outbound|9080||productpage.default.svc.cluster.local",
        path="/productpage",
        authority="bookinfo.example.com",
        request_id=RID,
        duration_ms=30,
    )
    out += chain.resolve(normalize_http(gateway, "v3"), GATEWAY)
    outbound = als.http_entry(
        downstream_remote=("10.1.0.4", 40000),
        downstream_local=("10.96.0.9", 9080),
        upstream_remote=("10.1.0.9", 9080),
        upstream_local=("10.1.0.4", 50000),
        cluster="outbound|9080||reviews.default.svc.cluster.local",
        path="/reviews/0",
        authority="reviews:9080",
        request_id=RID,
        start_ms=5,
        duration_ms=20,
        status=404,
    )
    out += chain.resolve(normalize_http(outbound, "v3"), PRODUCTPAGE)
    inbound = als.http_entry(
        downstream_remote=("10.1.0.4", 50000),
        downstream_local=("10.1.0.9", 9080),
        upstream_remote=("10.1.0.9", 9080),
        upstream_local=("127.0.0.6", 41000),
        cluster="inbound|9080||",
        path="/reviews/0",
        authority="reviews:9080",
        request_id=RID,
        start_ms=6,
        duration_ms=18,
        status=404,
    )
    out += chain.resolve(normalize_http(inbound, "v3"), REVIEWS)
    grpc_call = als.http_entry(
        downstream_remote=("10.1.0.4", 40001),
        downstream_local=("10.96.0.10", 7070),
        upstream_remote=("10.1.0.11", 7070),
        upstream_local=("10.1.0.4", 50001),
        cluster="outbound|7070||cartservice.default.svc.cluster.local",
        method=3,
        path="/hipstershop.CartService/GetCart",
        authority="cartservice:7070",
        headers={
            "content-type": "application/grpc",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
        start_ms=40,
        duration_ms=3,
    )
    grpc_call.response.response_trailers["grpc-status"] = "14"
    out += chain.resolve(normalize_http(grpc_call, "v3"), PRODUCTPAGE)
    failed = als.http_entry(
        downstream_remote=("10.1.0.4", 40002),
        downstream_local=("10.96.0.11", 9080),
        cluster="outbound|9080||details.default.svc.cluster.local",
        path="/details/0",
        authority="details:9080",
        request_id="not-a-uuid",
        start_ms=50,
        duration_ms=1,
        status=503,
        flags=["no_healthy_upstream"],
    )
    out += chain.resolve(normalize_http(failed, "v3"), PRODUCTPAGE)
    tcp = als.tcp_entry(
        downstream_remote=("10.1.0.9", 33000),
        downstream_local=("10.96.0.20", 27017),
        upstream_remote=("10.1.0.30", 27017),
        upstream_local=("10.1.0.9", 34000),
        cluster="outbound|27017||mongodb.default.svc.cluster.local",
        start_ms=60,
        duration_ms=500,
    )
    out += chain.resolve(normalize_tcp(tcp, "v3"), REVIEWS)
    return out


def translate(
    sampling_ratio: float = 1.0, sets: tuple[str, ...] = ("http",)
) -> tuple[SpanBatch, MetricStore]:
    store = MetricStore(start_ns=1, stats=Stats())
    translator = Translator(MetricRecorder(store, sets), sampling_ratio=sampling_ratio)
    batch = SpanBatch()
    for call in calls():
        translator.add(call, batch)
    return batch, store


class TestSpans:
    def test_golden_spans(self) -> None:
        """Spans, grouped by resource, with ids, parents, kinds, attributes and status."""
        batch, _ = translate()
        payload, count = batch.take()
        request = ExportTraceServiceRequest.FromString(payload)
        assert count == 7
        assert_golden("translation/spans", json_format.MessageToDict(request))

    def test_both_sides_of_a_call_link(self) -> None:
        """The server span's parent is the client span of the same hop, in one trace."""
        request = ExportTraceServiceRequest.FromString(translate()[0].take()[0])
        spans = {
            (rs.resource.attributes[0].value.string_value, span.kind): span
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
            if attributes(span.attributes).get("url.full", "").endswith("/reviews/0")
            or attributes(span.attributes).get("url.path") == "/reviews/0"
        }
        client, server = spans[("productpage", 3)], spans[("reviews", 2)]
        assert client.trace_id == server.trace_id == bytes.fromhex(RID.replace("-", ""))
        assert server.parent_span_id == client.span_id

    def test_gateway_client_is_child_of_its_server(self) -> None:
        """A gateway's upstream span hangs under its own server span; the server span is a root."""
        request = ExportTraceServiceRequest.FromString(translate()[0].take()[0])
        gateway = [
            s
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if rs.resource.attributes[0].value.string_value == "istio-ingressgateway"
        ]
        server = next(s for s in gateway if s.kind == 2)
        client = next(s for s in gateway if s.kind == 3)
        assert server.parent_span_id == b""
        assert client.parent_span_id == server.span_id

    def test_traceparent_joins_the_application_trace(self) -> None:
        """A logged traceparent gives the trace id and the parent of a client span."""
        request = ExportTraceServiceRequest.FromString(translate()[0].take()[0])
        span = next(
            s
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if s.name == "hipstershop.CartService/GetCart"
        )
        assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert span.parent_span_id.hex() == "00f067aa0ba902b7"

    def test_sampling_keeps_metrics(self) -> None:
        """At ratio 0 no span is built, yet every call is still counted in the metrics."""
        batch, store = translate(sampling_ratio=0.0)
        assert batch.count == 0
        counts = sum(s.histogram.count for s in store.series.values() if s.histogram is not None)
        assert counts == 6  # every HTTP and gRPC call side; TCP has no HTTP duration


class TestMetrics:
    def test_golden_points(self) -> None:
        """http.server/client.request.duration points per resource, with bounded attributes."""
        _, store = translate()
        request, points = store.to_otlp(2, Workload(service_name="als2otel"))
        assert points == 6 + 6  # six http series, and als2otel's own counters that start at 0
        assert_golden("translation/metrics", json_format.MessageToDict(request))


class TestMetricSets:
    def test_golden_servicegraph_and_istio(self) -> None:
        """The servicegraph and istio sets: names, labels, reporters and the edge counted once."""
        from als2otel.export.prometheus import render

        _, store = translate(sets=("servicegraph", "istio"))
        assert_golden("translation/metric_sets", render(store, Stats()).splitlines())

    def test_an_edge_seen_from_both_sides_counts_once(self) -> None:
        """productpage -> reviews is seen by both sidecars: one request on the edge, two istio reporters."""
        _, store = translate(sets=("servicegraph", "istio"))
        totals = {
            dict(s.attributes).get("server"): s.value
            for s in store.series.values()
            if s.metric.name == "traces_service_graph_request_total"
        }
        assert totals["reviews"] == 1
        reporters = sorted(
            dict(s.attributes)["reporter"]
            for s in store.series.values()
            if s.metric.name == "istio_requests_total"
            and dict(s.attributes)["destination_service_name"] == "reviews"
        )
        assert reporters == ["destination", "source"]


class TestIds:
    def test_request_id_uuid_is_the_trace_id(self) -> None:
        """A UUID x-request-id is taken as the 128-bit trace id as it is."""
        e = normalize_http(
            als.http_entry(downstream_remote=("1.1.1.1", 1), downstream_local=("2.2.2.2", 2), request_id=RID),
            "v3",
        )
        assert ids.trace_context(e, "").trace_id.hex() == RID.replace("-", "")

    def test_b3(self) -> None:
        """B3 multi-header and single-header contexts are read, 64-bit ids padded."""
        e = normalize_http(
            als.http_entry(
                downstream_remote=("1.1.1.1", 1),
                downstream_local=("2.2.2.2", 2),
                headers={"x-b3-traceid": "463ac35c9f6413ad", "x-b3-spanid": "a2fb4a1d1a96d312"},
            ),
            "v3",
        )
        assert ids.trace_context(e, "") == (
            bytes.fromhex("0000000000000000463ac35c9f6413ad"),
            bytes.fromhex("a2fb4a1d1a96d312"),
        )
        e.request_headers = {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}
        assert ids.trace_context(e, "").trace_id.hex() == "80f198ee56343ba864fe8b2a57d3eff7"

    def test_invalid_traceparent_falls_back(self) -> None:
        """An all-zero or malformed traceparent is ignored in favour of x-request-id."""
        e = normalize_http(
            als.http_entry(
                downstream_remote=("1.1.1.1", 1),
                downstream_local=("2.2.2.2", 2),
                request_id=RID,
                headers={"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
            ),
            "v3",
        )
        assert ids.trace_context(e, "").trace_id.hex() == RID.replace("-", "")

    def test_sampling_is_consistent(self) -> None:
        """The decision depends on the trace id alone, and about ratio of ids are kept."""
        import os

        trace_ids = [os.urandom(16) for _ in range(20_000)]
        kept = sum(ids.sampled(t, 0.1) for t in trace_ids)
        assert 1700 < kept < 2300
        assert all(ids.sampled(t, 0.1) == ids.sampled(t, 0.1) for t in trace_ids[:100])
