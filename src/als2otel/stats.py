"""als2otel's own counters, and rate-limited logging of bad input.

Every counter is rendered on ``/metrics`` under its Prometheus name and sent in
OTLP (under ``service.name=als2otel``) as a cumulative sum named without the
``_total`` suffix, which the OTLP-to-Prometheus rules add back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class Counter:
    """A monotonic counter with a fixed set of label names."""

    name: str  # Prometheus name, ending in _total
    help: str
    labels: tuple[str, ...]
    values: dict[tuple[str, ...], int] = field(default_factory=dict)

    def inc(self, *label_values: str, by: int = 1) -> None:
        key = label_values
        self.values[key] = self.values.get(key, 0) + by

    def get(self, *label_values: str) -> int:
        return self.values.get(label_values, 0)

    @property
    def otlp_name(self) -> str:
        return self.name.removesuffix("_total")


@dataclass
class Gauge:
    name: str
    help: str
    value: float = 0.0


class Stats:
    """The counters the receiver, pipeline and exporters update."""

    def __init__(self) -> None:
        self.entries_received = Counter(
            "als2otel_entries_received_total",
            "Access-log entries received, by ALS API version and log type.",
            ("api_version", "log_type"),
        )
        self.entries_invalid = Counter(
            "als2otel_entries_invalid_total",
            "Entries or messages rejected as bad input, by reason.",
            ("reason",),
        )
        self.entries_unresolved = Counter(
            "als2otel_entries_unresolved_total",
            "Final entries that no analyzer turned into a call, by reason.",
            ("reason",),
        )
        self.entries_intermediate = Counter(
            "als2otel_entries_intermediate_total",
            "Periodic or start-of-stream entries, not counted as calls.",
            ("log_type",),
        )
        self.calls = Counter(
            "als2otel_calls_total",
            "Call sides resolved from entries, by side.",
            ("side",),
        )
        self.export_failures = Counter(
            "als2otel_export_failures_total",
            "OTLP export attempts that failed, by signal.",
            ("signal",),
        )
        self.export_retries = Counter(
            "als2otel_export_retries_total",
            "OTLP export requests sent again after a transient failure or a late answer, by signal.",
            ("signal",),
        )
        self.dropped = Counter(
            "als2otel_dropped_total",
            "Entries, spans or metric points given up on, by signal and reason.",
            ("signal", "reason"),
        )
        self.expired = Counter(
            "als2otel_expired_total",
            "Metric series and topology edges forgotten after going idle (metrics.expire_after), by table.",
            ("table",),
        )
        self.cache_rotations = Counter(
            "als2otel_cache_rotations_total",
            "Bounded caches that filled and started over, by cache: decoded addresses,"
            " call shapes, decoded peers, OpenTelemetry-logger proxies.",
            ("cache",),
        )
        self.streams_ended = Counter(
            "als2otel_streams_ended_total",
            "ALS streams that ended, by reason: the client closed or cancelled it, it sent bad input,"
            " its connection reached max_connection_age, or its worker shed the connection to even"
            " out the workers' load (rebalance).",
            ("reason",),
        )
        self.tls_handshakes_failed = Counter(
            "als2otel_tls_handshakes_failed_total",
            "TLS handshakes on the ALS port that failed, by reason: certificate (none, or not one the"
            " client CA signed), version (below min_version), not_tls, protocol, timeout, closed, or"
            " overload (cut to make room for a newer one while too many were under way).",
            ("reason",),
        )
        self.http_connections_closed = Counter(
            "als2otel_http_connections_closed_total",
            "HTTP connections the bridge closed itself, by reason: connection_limit (refused: too many"
            " open, each with a request), evicted (idle longest, closed at the bound to make room),"
            " timeout (too slow), or body_budget (a request body refused while other bodies held the"
            " memory set aside for them).",
            ("reason",),
        )
        self.worker_restarts = Counter(
            "als2otel_worker_restarts_total",
            "Worker processes (receiver.workers > 1) replaced, by reason: exited (died), or"
            " unresponsive (no heartbeat for 10 s, then killed).",
            ("reason",),
        )
        self.worker_connections = Counter(
            "als2otel_worker_connections_total",
            "ALS connections the workers' parent handed to each worker (the ready one with the fewest"
            " open connections, the least loaded among equals; the least loaded for 5 s after a worker"
            ' was asked to shed), by worker; "none" when no worker was ready (the connection was'
            " closed, and Envoy connects again).",
            ("worker",),
        )
        self.worker_connections_shed = Counter(
            "als2otel_worker_connections_shed_total",
            "ALS connections a worker shed because it carried more than its share of the load (a"
            " GOAWAY; the client reconnects, and the parent deals the connection again), by worker.",
            ("worker",),
        )
        self.k8s_errors = Counter(
            "als2otel_k8s_watch_errors_total",
            "Kubernetes list or watch requests that failed and were retried, by resource.",
            ("resource",),
        )
        self.queue_corrupt_files = Counter(
            "als2otel_sending_queue_corrupt_files_total",
            "Files of the sending queue's storage found torn or corrupt at start, by signal: set aside"
            " under corrupt/ and skipped.",
            ("signal",),
        )
        self.queue_resumed = Counter(
            "als2otel_sending_queue_resumed_total",
            "Spans or metric points an earlier run left in the sending queue's storage, resumed at start"
            " (a request in flight at that run's stop may arrive twice).",
            ("signal",),
        )
        self.streams_active = Gauge("als2otel_streams_active", "ALS streams open now.")
        self.queue_storage_bytes = Gauge(
            "als2otel_sending_queue_storage_bytes", "Bytes of export requests kept in sending_queue.storage."
        )
        self.queue_storage_requests = Gauge(
            "als2otel_sending_queue_storage_requests", "Export requests kept in sending_queue.storage."
        )
        self.metric_series = Gauge(
            "als2otel_metric_series", "Metric series held (idle ones expire after metrics.expire_after)."
        )
        self.topology_edges = Gauge("als2otel_topology_edges", "Topology edges held (idle ones expire).")
        # Known label sets start at 0, so rate() and alerts work from the first scrape.
        for api_version in ("v2", "v3", "otlp"):
            for log_type in ("http", "tcp"):
                self.entries_received.inc(api_version, log_type, by=0)
        for reason in ("exited", "unresponsive"):
            self.worker_restarts.inc(reason, by=0)
        for signal in ("traces", "metrics"):
            self.export_failures.inc(signal, by=0)
            self.export_retries.inc(signal, by=0)

    def counters(self) -> list[Counter]:
        return [v for v in vars(self).values() if isinstance(v, Counter)]

    def gauges(self) -> list[Gauge]:
        return [v for v in vars(self).values() if isinstance(v, Gauge)]


class LogLimiter:
    """Logs a message per reason at most once every ``interval`` seconds, saying how many it held back."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log at WARNING unless this reason was logged within the interval; ``exc_info`` adds a traceback."""
        now = time.monotonic()
        if now < self._next.get(reason, 0.0):
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        if len(self._next) >= MAX_LIMITED_REASONS and reason not in self._next:
            self._next.clear()
            self._held.clear()
        held = self._held.pop(reason, 0)
        self._next[reason] = now + self._interval
        suffix = f" ({held} more like this since the last report)" if held else ""
        self._logger.warning(message + suffix, *args, exc_info=exc_info)


MAX_LIMITED_REASONS = 1024
"""Reasons a :class:`LogLimiter` remembers; it starts over when full (reasons are a fixed set in practice)."""
