"""Metric aggregation in our own code: cumulative sums and histograms per series.

A series is (metric, resource workload or None, data-point attributes). The
store is bounded in rendered samples (a sum is one, a histogram one per bucket
plus its sum and count): past ``max_samples`` new series are refused and
counted, so a high-cardinality mesh cannot exhaust memory or make ``/metrics``
large. Label values are cut to :data:`MAX_LABEL_VALUE_LENGTH` characters when
a series is created. The store only aggregates: ``export/otlp_metrics.py`` and
``export/prometheus.py`` render it.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..model import Workload
from ..stats import Stats

Attributes = tuple[tuple[str, str], ...]

# OpenTelemetry's advisory buckets for http.*.request.duration (seconds).
HTTP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

DEFAULT_MAX_SAMPLES = 250_000
"""Samples (lines of ``/metrics``) the store holds at most: ~14,700 histogram series of 14 buckets."""

MAX_LABEL_VALUE_LENGTH = 256
"""Characters of a label value (data-point or resource attribute) kept; longer ones are cut."""


class Kind(Enum):
    SUM = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricDef:
    name: str  # OTLP name
    prom_name: str  # name on /metrics (histograms: without _bucket/_sum/_count)
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] = ()

    @property
    def samples(self) -> int:
        """Lines one series renders on ``/metrics``: each bucket and +Inf, sum and count; or one."""
        return len(self.buckets) + 3 if self.kind is Kind.HISTOGRAM else 1


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]  # upper bounds; counts has one more, for +Inf
    counts: list[int]
    total: float = 0.0
    count: int = 0
    minimum: float = float("inf")
    maximum: float = float("-inf")


@dataclass(slots=True)
class Series:
    metric: MetricDef
    resource: Workload | None
    attributes: Attributes
    value: float = 0.0  # sums
    histogram: Histogram | None = None
    follows: Series | None = None
    """Another series whose updates keep this one alive (an edge's failures follow its requests)."""
    seen: float = 0.0  # value or count at the last sweep
    last_change: float = 0.0  # clock seconds when a sweep last saw it change (or its creation)
    exported: tuple[float, list[int]] | None = None  # delta: sum or total and bucket counts last sent

    @property
    def observed(self) -> float:
        """What grows with every update: the sum's value or the histogram's count."""
        return self.histogram.count if self.histogram is not None else self.value

    def record(self, value: float) -> None:
        """One histogram observation: the bucket its value falls in, sum, count, min and max."""
        h = self.histogram
        if h is not None:
            h.counts[bisect_left(h.buckets, value)] += 1
            h.total += value
            h.count += 1
            # Compared inline: min() and max() are calls, and this runs for every observation.
            if value < h.minimum:  # noqa: PLR1730
                h.minimum = value
            if value > h.maximum:  # noqa: PLR1730
                h.maximum = value


SeriesKey = tuple[MetricDef, Workload | None, Attributes]


@dataclass
class MetricStore:
    start_ns: int
    stats: Stats
    max_samples: int = DEFAULT_MAX_SAMPLES
    expire_after: float = 0.0
    """Seconds a series may go without an update before :meth:`expire` removes it; 0 = never."""
    clock: Callable[[], float] = time.monotonic
    series: dict[SeriesKey, Series] = field(default_factory=dict)
    by_metric: dict[MetricDef, list[Series]] = field(default_factory=dict)
    """The same series grouped by metric, in creation order: how both encodings walk them."""
    samples: int = 0
    last_export_ns: int = 0
    """When the last delta export ended (its points start there); the start time before the first."""

    def expire(self) -> int:
        """Remove the series not updated for ``expire_after`` seconds; how many went.

        Updates are seen by comparing each series with the last sweep, so recording
        costs nothing more. Callers must forget anything that holds removed series.
        """
        if not self.expire_after:
            return 0
        now = self.clock()
        for series in self.series.values():
            observed = series.observed
            if observed != series.seen:
                series.seen = observed
                series.last_change = now
        deadline = now - self.expire_after
        stale = [
            key
            for key, series in self.series.items()
            if series.last_change < deadline
            and (series.follows is None or series.follows.last_change < deadline)
        ]
        for key in stale:
            series = self.series.pop(key)
            self.samples -= series.metric.samples
        if stale:
            for metric, members in list(self.by_metric.items()):
                kept = [s for s in members if (s.metric, s.resource, s.attributes) in self.series]
                if kept:
                    self.by_metric[metric] = kept
                else:
                    del self.by_metric[metric]
            self.stats.expired.inc("metrics", by=len(stale))
        return len(stale)

    def series_for(
        self, metric: MetricDef, resource: Workload | None, attributes: Attributes
    ) -> Series | None:
        """The series, created on first use; None (and counted) once the store is full."""
        key = (metric, resource, attributes)
        found = self.series.get(key)
        if found is None:
            bounded = _bounded_key(key)
            if bounded is not key:
                found = self.series.get(bounded)
                if found is not None:
                    return found
                metric, resource, attributes = key = bounded
            if self.samples + metric.samples > self.max_samples:
                self.stats.dropped.inc("metrics", "series_limit")
                return None
            histogram = (
                Histogram(metric.buckets, [0] * (len(metric.buckets) + 1))
                if metric.kind is Kind.HISTOGRAM
                else None
            )
            found = self.series[key] = Series(
                metric, resource, attributes, histogram=histogram, last_change=self.clock()
            )
            self.by_metric.setdefault(metric, []).append(found)
            self.samples += metric.samples
        return found

    def add(
        self,
        metric: MetricDef,
        resource: Workload | None,
        attributes: Attributes,
        value: float = 1.0,
    ) -> None:
        series = self.series_for(metric, resource, attributes)
        if series is not None:
            series.value += value

    def record(
        self, metric: MetricDef, resource: Workload | None, attributes: Attributes, value: float
    ) -> None:
        series = self.series_for(metric, resource, attributes)
        if series is not None:
            series.record(value)


def _bounded_key(key: SeriesKey) -> SeriesKey:
    """The key with label values cut to :data:`MAX_LABEL_VALUE_LENGTH`; the same object if none is longer."""
    metric, resource, attributes = key
    limit = MAX_LABEL_VALUE_LENGTH
    if any(len(value) > limit for _, value in attributes):
        attributes = tuple((name, value[:limit]) for name, value in attributes)
    if resource is not None and any(isinstance(v, str) and len(v) > limit for v in resource):
        resource = Workload._make([v[:limit] if isinstance(v, str) else v for v in resource])
    if attributes is key[2] and resource is key[1]:
        return key
    return metric, resource, attributes
