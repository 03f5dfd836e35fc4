"""Translation: a fixed set of calls in, the exact spans and metric points out (golden)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import als, mesh
from support.golden import assert_golden
from support.otlp_receiver import attributes

from als2otel import net
from als2otel.analysis import AnalyzerChain, ProxyAnalyzer
from als2otel.export.otlp_metrics import metrics_request
from als2otel.model import Call, Workload
from als2otel.receiver import identify
from als2otel.receiver.normalize import normalize_http, normalize_tcp
from als2otel.stats import Stats
from als2otel.translation import MetricRecorder, MetricStore, SpanBatch, Translator, ids

PRODUCTPAGE = identify(mesh.productpage())
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
    grpc_call.response.response_trailers["grpc-status"] = b"14"
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


RATINGS = identify(
    als.identifier(
        "sidecar~10.1.0.12~ratings-v1-7d9c8b6f5-x2x7p.default~default.svc.cluster.local",
        als.sidecar_metadata("ratings-v1-7d9c8b6f5-x2x7p", "default", "ratings"),
    )
)


def repeated_request() -> dict[str, list[Call]]:
    """One request in which productpage calls reviews twice on one keep-alive connection,
    and reviews calls ratings each time: each proxy's calls in the order it logs them."""
    chain = AnalyzerChain([], ProxyAnalyzer(), Stats())
    # (caller, callee, caller ip, callee ip, client port) -> one connection per edge, reused.
    edges = {
        "reviews": (PRODUCTPAGE, REVIEWS, "10.1.0.4", "10.1.0.9", 50000),
        "ratings": (REVIEWS, RATINGS, "10.1.0.9", "10.1.0.12", 51000),
    }

    def exchange(callee: str, start_ms: int, duration_ms: int) -> tuple[Call, Call]:
        caller_proxy, callee_proxy, caller_ip, callee_ip, port = edges[callee]
        common = {"path": f"/{callee}/0", "authority": f"{callee}:9080", "request_id": RID}
        client = als.http_entry(
            downstream_remote=(caller_ip, 40000),
            downstream_local=("10.96.0.9", 9080),
            upstream_remote=(callee_ip, 9080),
            upstream_local=(caller_ip, port),
            cluster=f"outbound|9080||{callee}.default.svc.cluster.local",
            start_ms=start_ms,
            duration_ms=duration_ms,
            **common,
        )
        server = als.http_entry(
            downstream_remote=(caller_ip, port),
            downstream_local=(callee_ip, 9080),
            upstream_remote=(callee_ip, 9080),
            upstream_local=("127.0.0.6", 41000),
            cluster="inbound|9080||",
            start_ms=start_ms + 1,
            duration_ms=duration_ms - 2,
            **common,
        )
        (client_call,) = chain.resolve(normalize_http(client, "v3"), caller_proxy)
        (server_call,) = chain.resolve(normalize_http(server, "v3"), callee_proxy)
        return client_call, server_call

    first, second = exchange("reviews", 10, 20), exchange("reviews", 40, 20)
    inner_first, inner_second = exchange("ratings", 13, 8), exchange("ratings", 43, 8)
    return {
        "productpage": [first[0], second[0]],
        # reviews logs each outbound call before the inbound request that made it ends.
        "reviews": [inner_first[0], first[1], inner_second[0], second[1]],
        "ratings": [inner_first[1], inner_second[1]],
    }


class TestRepeatedCalls:
    @pytest.mark.parametrize("order", list(itertools.permutations(["productpage", "reviews", "ratings"])))
    def test_repeated_calls_in_one_request_stay_apart(self, order: tuple[str, ...]) -> None:
        """Two calls on one edge in one request: two client spans, two server spans, each hop under
        its own parent, whichever proxy's entries arrive first."""
        per_proxy = repeated_request()
        translator = Translator(None)
        batch = SpanBatch()
        for proxy in order:
            for call in per_proxy[proxy]:
                translator.add(call, batch)
        request = ExportTraceServiceRequest.FromString(batch.take()[0])
        spans: dict[tuple[str, int], list[Any]] = {}
        for rs in request.resource_spans:
            for span in rs.scope_spans[0].spans:
                key = (rs.resource.attributes[0].value.string_value, span.kind)
                spans.setdefault(key, []).append(span)
        for group in spans.values():
            group.sort(key=lambda span: span.start_time_unix_nano)
        ids_seen = [span.span_id for group in spans.values() for span in group]
        assert len(ids_seen) == len(set(ids_seen)) == 8
        client, server = spans[("productpage", 3)], spans[("reviews", 2)]
        inner_client, inner_server = spans[("reviews", 3)], spans[("ratings", 2)]
        for i in range(2):
            assert server[i].parent_span_id == client[i].span_id
            assert inner_client[i].parent_span_id == server[i].span_id
            assert inner_server[i].parent_span_id == inner_client[i].span_id
        assert len({span.trace_id for group in spans.values() for span in group}) == 1


class TestMetrics:
    def test_golden_points(self) -> None:
        """http.server/client.request.duration points per resource, with bounded attributes."""
        _, store = translate()
        request, points = metrics_request(store, 2, Workload(service_name="als2otel"))
        assert points == 6 + 12  # six http series, and als2otel's own counters that start at 0
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
    def test_repeats_count_per_trace_and_key_within_a_bound(self) -> None:
        """Repeats count per (trace, kind, key); a key outlives at least ``max_entries`` newer ones."""
        repeats = ids.Repeats(max_entries=2)
        trace, other = b"t" * 16, b"u" * 16
        assert [repeats.add(trace, ids.CLIENT, "hop") for _ in range(3)] == [0, 1, 2]
        assert repeats.add(other, ids.CLIENT, "hop") == 0
        assert repeats.add(trace, ids.SERVER, "hop", end=10) == 0
        assert repeats.add(trace, ids.SERVER, "hop", end=30) == 1
        assert repeats.ended_before(trace, ids.SERVER, "hop", 20) == 1
        assert repeats.ended_before(trace, ids.SERVER, "hop", 10) == 0
        for i in range(2):
            repeats.add(trace, ids.CLIENT, f"new-{i}")
        assert repeats.add(trace, ids.SERVER, "hop") == 2  # one generation old: still known
        for i in range(4):
            repeats.add(trace, ids.CLIENT, f"newer-{i}")
        assert repeats.add(trace, ids.CLIENT, "hop") == 0  # two generations old: forgotten

    def test_request_id_uuid_is_the_trace_id(self) -> None:
        """A UUID x-request-id is taken as the 128-bit trace id as it is."""
        e = normalize_http(
            als.http_entry(downstream_remote=("1.1.1.1", 1), downstream_local=("2.2.2.2", 2), request_id=RID),
            "v3",
        )
        assert ids.trace_context(e.request_headers, e.request_id, "")[0].hex() == RID.replace("-", "")

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
        assert ids.trace_context(e.request_headers, e.request_id, "") == (
            bytes.fromhex("0000000000000000463ac35c9f6413ad"),
            bytes.fromhex("a2fb4a1d1a96d312"),
        )
        e.request_headers = {"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}
        assert (
            ids.trace_context(e.request_headers, e.request_id, "")[0].hex()
            == "80f198ee56343ba864fe8b2a57d3eff7"
        )

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
        assert ids.trace_context(e.request_headers, e.request_id, "")[0].hex() == RID.replace("-", "")

    def test_sampling_is_consistent(self) -> None:
        """About ratio of ids are kept, and a trace kept at a lower ratio is kept at every higher one
        (the decision is a threshold on the trace id's hash, so every side and replica agree)."""
        import random

        rng = random.Random(20261130)
        trace_ids = [rng.randbytes(16) for _ in range(20_000)]
        kept = {t for t in trace_ids if ids.sampled(t, 0.1)}
        assert 1700 < len(kept) < 2300
        wider = {t for t in trace_ids if ids.sampled(t, 0.5)}
        assert kept < wider and 9300 < len(wider) < 10700


class TestAuthority:
    @pytest.mark.parametrize(
        ("authority", "expected"),
        [
            ("reviews:9080", ("reviews", 9080)),
            ("reviews", ("reviews", None)),
            ("[fd00::1]:8443", ("fd00::1", 8443)),
            ("[fd00::1]", ("fd00::1", None)),
            ("[fd00::1", ("[fd00::1", None)),
            ("fd00::1", ("fd00::1", None)),
            ("reviews:", ("reviews:", None)),
            ("reviews:http", ("reviews:http", None)),
            ("reviews:\N{SUPERSCRIPT TWO}", ("reviews:\N{SUPERSCRIPT TWO}", None)),  # a digit int() refuses
            ("reviews:\u0663", ("reviews:\u0663", None)),
            ("reviews:" + "9" * 5000, ("reviews:" + "9" * 5000, None)),
        ],
    )
    def test_one_parser_of_authorities(self, authority: str, expected: tuple[str, int | None]) -> None:
        assert net.split_authority(authority) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("127.0.0.1:0", ("127.0.0.1", 0)),
            ("[::]:11800", ("::", 11800)),
            ("0.0.0.0:65535", ("0.0.0.0", 65535)),
            ("0.0.0.0:65536", None),
            ("localhost", None),
            (":9464", None),
            ("a:b:80", None),
            ("[::1]", None),
        ],
    )
    def test_host_and_port_required(self, text: str, expected: tuple[str, int] | None) -> None:
        """Listen addresses and the addresses Envoy's logger prints: the same parser, a port required."""
        assert net.split_hostport(text) == expected

    def test_a_port_in_another_script_is_not_an_error(self) -> None:
        """Host headers are anyone's to write: one ending in digits int() refuses still makes spans."""
        raw = mesh.outbound(1, authority="reviews:\N{SUPERSCRIPT TWO}")
        (call,) = AnalyzerChain([], ProxyAnalyzer(), Stats()).resolve(normalize_http(raw, "v3"), PRODUCTPAGE)
        batch = SpanBatch()
        Translator(None).add(call, batch)
        request = ExportTraceServiceRequest.FromString(batch.take()[0])
        (span,) = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        assert attributes(span.attributes)["server.address"] == "reviews:\N{SUPERSCRIPT TWO}"
        assert attributes(span.attributes)["server.port"] == 80
