"""The OTLP encoding of the metric store: one ExportMetricsServiceRequest per export.

Beside the Prometheus text format (:mod:`.prometheus`): the store aggregates, these
two render it. Cumulative: every series from the store's start; delta: what changed
since the last delta export (kept on the series and the store).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from .. import __version__
from ..model import Workload
from ..translation.metrics import Attributes, Kind, MetricDef, MetricStore
from ..translation.resources import resource_attributes, set_attributes


def metrics_request(
    store: MetricStore,
    now_ns: int,
    self_resource: Workload,
    writer: Attributes = (),
    delta: bool = False,
) -> tuple[metrics_service_pb2.ExportMetricsServiceRequest, int]:
    """Every series plus als2otel's own counters, and the point count.

    Cumulative: every series from the store's start. ``delta``: what changed since
    the last delta export (series that did not change are left out). ``writer``
    (the bridge instance's attribute) goes on every point of a series, so that
    replicas and workers never write the same series.
    """
    temporality = (
        metrics_pb2.AGGREGATION_TEMPORALITY_DELTA if delta else metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    start_ns = (store.last_export_ns or store.start_ns) if delta else store.start_ns
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    by_resource: dict[Workload | None, dict[MetricDef, metrics_pb2.Metric]] = {}
    scopes: dict[Workload | None, metrics_pb2.ScopeMetrics] = {}
    points = 0

    def scope_for(resource: Workload | None) -> metrics_pb2.ScopeMetrics:
        scope = scopes.get(resource)
        if scope is None:
            rm = request.resource_metrics.add()
            set_attributes(rm.resource.attributes, resource_attributes(resource or self_resource))
            scope = scopes[resource] = rm.scope_metrics.add()
            scope.scope.name = "als2otel"
            scope.scope.version = __version__
            by_resource[resource] = {}
        return scope

    for series in (s for members in store.by_metric.values() for s in members):
        h = series.histogram
        total, counts = (h.total, h.counts) if h is not None else (series.value, [])
        if delta:
            last_total, last_counts = series.exported or (0.0, [0] * len(counts))
            series.exported = (total, list(counts))
            if series.observed == (sum(last_counts) if h is not None else last_total):
                continue  # nothing new since the last export
            total -= last_total
            counts = [now - before for now, before in zip(counts, last_counts, strict=True)]
        scope = scope_for(series.resource)
        metrics = by_resource[series.resource]
        metric = metrics.get(series.metric)
        if metric is None:
            metric = metrics[series.metric] = _new_metric(scope, series.metric, temporality)
        point: metrics_pb2.HistogramDataPoint | metrics_pb2.NumberDataPoint
        if h is not None:
            point = metric.histogram.data_points.add()
            point.bucket_counts.extend(counts)
            point.explicit_bounds.extend(series.metric.buckets)
            point.count = sum(counts)
            point.sum = total
            if h.count and not delta:  # min and max hold for the whole life, not a delta's interval
                point.min = h.minimum
                point.max = h.maximum
        else:
            number = point = metric.sum.data_points.add()
            number.as_double = total
        point.start_time_unix_nano = start_ns
        point.time_unix_nano = now_ns
        set_attributes(point.attributes, series.attributes + writer)
        points += 1
    if delta:
        store.last_export_ns = now_ns

    own = scope_for(None)
    for counter in store.stats.counters():
        if not counter.values:
            continue
        metric = own.metrics.add()
        metric.name = counter.otlp_name
        metric.description = counter.help
        metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        for labels, value in counter.values.items():
            count = metric.sum.data_points.add()
            count.as_int = value
            count.start_time_unix_nano = store.start_ns
            count.time_unix_nano = now_ns
            set_attributes(count.attributes, tuple(zip(counter.labels, labels, strict=True)))
            points += 1
    return request, points


def _new_metric(
    scope: metrics_pb2.ScopeMetrics, definition: MetricDef, temporality: Any
) -> metrics_pb2.Metric:
    metric = scope.metrics.add()
    metric.name = definition.name
    metric.unit = definition.unit
    metric.description = definition.description
    if definition.kind is Kind.HISTOGRAM:
        metric.histogram.aggregation_temporality = temporality
    else:
        metric.sum.aggregation_temporality = temporality
        metric.sum.is_monotonic = True
    return metric
