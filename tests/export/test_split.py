"""The one splitter (export/split.py): flushes of spans, metrics snapshots and requests a backend
refused as too large, cut by their bytes into pieces within a limit, each item once with its
containers' other fields."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from support.otlp_receiver import attributes

from als2otel.export.split import halve, split


def traces(services: int, spans: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for s in range(services):
        rs = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc{s}"
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = "als2otel", "1"
        for i in range(spans):
            span = ss.spans.add(name=f"GET /{i}", trace_id=bytes([s + 1]) * 16, span_id=i.to_bytes(8, "big"))
            span.attributes.add(key="url.path").value.string_value = f"/{i}" + "x" * (i % 50)
    return request


def span_keys(payloads: list[bytes]) -> Counter[tuple[str, str, str, bytes]]:
    seen: Counter[tuple[str, str, str, bytes]] = Counter()
    for payload in payloads:
        for rs in ExportTraceServiceRequest.FromString(payload).resource_spans:
            service = attributes(rs.resource.attributes)["service.name"]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    seen[(service, rs.schema_url, ss.scope.name, span.SerializeToString())] += 1
    return seen


class TestTraces:
    def test_pieces_within_the_limit_with_every_span_once(self) -> None:
        request = traces(7, 300)
        payload = request.SerializeToString()
        pieces = split("traces", payload, 16 * 1024)
        assert len(pieces) > 5
        assert all(len(piece) <= 16 * 1024 for piece, _ in pieces)
        assert sum(count for _, count in pieces) == 7 * 300
        assert span_keys([piece for piece, _ in pieces]) == span_keys([payload])
        for piece, count in pieces:
            message = ExportTraceServiceRequest.FromString(piece)
            assert count == sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)

    def test_a_request_within_the_limit_is_sent_as_it_is(self) -> None:
        payload = traces(2, 3).SerializeToString()
        assert split("traces", payload, len(payload)) == [(payload, 6)]

    def test_a_span_larger_than_the_limit_travels_alone(self) -> None:
        request = traces(1, 3)
        request.resource_spans[0].scope_spans[0].spans[1].name = "x" * 5000
        pieces = split("traces", request.SerializeToString(), 2000)
        assert [count for _, count in pieces] == [1, 1, 1]
        assert len(pieces[1][0]) > 5000

    def test_halving(self) -> None:
        """Pieces of at most half the size (two, or three where the framing bound rounds up); a
        request of one item stays whole."""
        payload = traces(3, 40).SerializeToString()
        halves = halve("traces", payload)
        assert len(halves) in (2, 3) and all(len(h) <= len(payload) // 2 + 1 for h, _ in halves)
        assert span_keys([h for h, _ in halves]) == span_keys([payload])
        single = traces(1, 1).SerializeToString()
        assert halve("traces", single) == [(single, 1)]

    @pytest.mark.parametrize("garbage", [b"\x0a\x05abc", b"\x0f", b"\x0a\x80"])
    def test_not_a_request(self, garbage: bytes) -> None:
        with pytest.raises(ValueError, match="not an OTLP export request"):
            split("traces", garbage, 1)


class TestMetrics:
    def test_points_keep_their_metric(self) -> None:
        request = ExportMetricsServiceRequest()
        rm = request.resource_metrics.add()
        rm.resource.attributes.add(key="service.name").value.string_value = "reviews"
        sm = rm.scope_metrics.add()
        sm.scope.name = "als2otel"
        kinds: dict[str, Any] = {}
        total = metrics_pb2.Metric(name="calls", unit="1", description="Calls.")
        total.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        total.sum.is_monotonic = True
        for i in range(500):
            total.sum.data_points.add(as_int=i).attributes.add(key="code").value.int_value = i
        kinds["sum"] = total
        duration = metrics_pb2.Metric(name="duration", unit="s")
        duration.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
        for i in range(300):
            duration.histogram.data_points.add(count=i, bucket_counts=[i, 0, 1], explicit_bounds=[0.1, 1.0])
        kinds["histogram"] = duration
        sm.metrics.extend(kinds.values())
        payload = request.SerializeToString()
        pieces = split("metrics", payload, 4096)
        assert len(pieces) > 3 and all(len(p) <= 4096 for p, _ in pieces)
        assert sum(count for _, count in pieces) == 800
        points: Counter[tuple[str, str, bytes]] = Counter()
        for piece, _ in pieces:
            for rm_ in ExportMetricsServiceRequest.FromString(piece).resource_metrics:
                assert attributes(rm_.resource.attributes)["service.name"] == "reviews"
                for sm_ in rm_.scope_metrics:
                    assert sm_.scope.name == "als2otel"
                    for metric in sm_.metrics:
                        kind = metric.WhichOneof("data")
                        original = kinds[kind]
                        assert (metric.name, metric.unit, metric.description) == (
                            original.name,
                            original.unit,
                            original.description,
                        )
                        data, source = getattr(metric, kind), getattr(original, kind)
                        assert data.aggregation_temporality == source.aggregation_temporality
                        if kind == "sum":
                            assert data.is_monotonic
                        for point in data.data_points:
                            points[(metric.name, kind, point.SerializeToString())] += 1
        assert len(points) == 800 and set(points.values()) == {1}
