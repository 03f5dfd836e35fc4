"""The metric sets: ``http`` (OpenTelemetry HTTP conventions), ``servicegraph``
(the Collector servicegraph connector's series) and ``istio`` (Istio's standard
metrics, for Kiali). Every call side is recorded whatever the trace sampling.

Counting an edge request once when both sides are seen: the server side counts
it; the client side counts it only when its destination has no proxy of its
own to report (a host outside the mesh), as the connector's virtual nodes do.
"""

from __future__ import annotations

from typing import NamedTuple

from ..model import USER, Call, Workload
from . import semconv
from .metrics import HTTP_DURATION_BUCKETS, Attributes, Kind, MetricDef, MetricStore, Series

UNKNOWN = "unknown"

HTTP_SERVER_DURATION = MetricDef(
    "http.server.request.duration",
    "http_server_request_duration_seconds",
    Kind.HISTOGRAM,
    "s",
    "Duration of HTTP server requests.",
    HTTP_DURATION_BUCKETS,
)
HTTP_CLIENT_DURATION = MetricDef(
    "http.client.request.duration",
    "http_client_request_duration_seconds",
    Kind.HISTOGRAM,
    "s",
    "Duration of HTTP client requests.",
    HTTP_DURATION_BUCKETS,
)

# The servicegraph connector's names, units and default buckets (seconds).
SERVICEGRAPH_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.05,
    0.1,
    0.2,
    0.4,
    0.8,
    1.0,
    1.4,
    2.0,
    5.0,
    10.0,
    15.0,
)
SG_REQUESTS = MetricDef(
    "traces_service_graph_request_total",
    "traces_service_graph_request_total",
    Kind.SUM,
    "1",
    "Requests between two nodes of the service graph.",
)
SG_FAILED = MetricDef(
    "traces_service_graph_request_failed_total",
    "traces_service_graph_request_failed_total",
    Kind.SUM,
    "1",
    "Failed requests between two nodes of the service graph.",
)
SG_SERVER = MetricDef(
    "traces_service_graph_request_server",
    "traces_service_graph_request_server_seconds",
    Kind.HISTOGRAM,
    "s",
    "Server-side request duration between two nodes.",
    SERVICEGRAPH_BUCKETS,
)
SG_CLIENT = MetricDef(
    "traces_service_graph_request_client",
    "traces_service_graph_request_client_seconds",
    Kind.HISTOGRAM,
    "s",
    "Client-side request duration between two nodes.",
    SERVICEGRAPH_BUCKETS,
)

# Istio's standard metrics, with Istio's default duration buckets (milliseconds).
ISTIO_MS_BUCKETS = (
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
)
ISTIO_REQUESTS = MetricDef(
    "istio_requests_total", "istio_requests_total", Kind.SUM, "1", "Requests, per reporter."
)
ISTIO_DURATION = MetricDef(
    "istio_request_duration_milliseconds",
    "istio_request_duration_milliseconds",
    Kind.HISTOGRAM,
    "ms",
    "Request duration, per reporter.",
    ISTIO_MS_BUCKETS,
)
ISTIO_TCP_SENT = MetricDef(
    "istio_tcp_sent_bytes_total",
    "istio_tcp_sent_bytes_total",
    Kind.SUM,
    "By",
    "Bytes sent during TCP connections.",
)
ISTIO_TCP_RECEIVED = MetricDef(
    "istio_tcp_received_bytes_total",
    "istio_tcp_received_bytes_total",
    Kind.SUM,
    "By",
    "Bytes received during TCP connections.",
)


class Plan(NamedTuple):
    """The series one call shape updates (each None where its set is off or does not count it)."""

    http: Series | None  # http.{server,client}.request.duration
    duration: Series | None  # the servicegraph's server or client duration
    requests: Series | None  # the edge's requests (counted by one side)
    failed: Series | None  # the edge's failures, when this shape failed


class MetricRecorder:
    """Records call sides into the configured sets of a :class:`MetricStore`.

    Calls of one shape (sides, service, method, status, ...) land in the same
    series: :meth:`plan` names the series a shape updates, once, and
    :meth:`record` updates them for each call of that shape.
    """

    def __init__(
        self, store: MetricStore, sets: list[str] | tuple[str, ...] = ("http", "servicegraph")
    ) -> None:
        self.store = store
        self._http = "http" in sets
        self._servicegraph = "servicegraph" in sets
        self.istio = "istio" in sets

    def record(self, plan: Plan | None, seconds: float) -> None:
        """One call of a planned shape; None when the store refused its series (already counted)."""
        if plan is None:
            return
        http, duration, requests, failed = plan
        if http is not None:
            http.record(seconds)
        if duration is not None:
            duration.record(seconds)
        if requests is not None:
            requests.value += 1
        if failed is not None:
            failed.value += 1

    def plan(self, call: Call, owner: Workload, error: str) -> Plan | None:
        """The series a call of this shape updates; None once the store refuses new series."""
        store = self.store
        http = None
        if self._http and call.entry.protocol != "tcp":
            http = store.series_for(*_http_series_key(call, owner, error))
            if http is None:
                return None
        duration = requests = failed = None
        if self._servicegraph:
            source, destination = call.source, call.destination
            client = USER if call.from_outside else (source.service_name if source else UNKNOWN)
            server = destination.service_name if destination else UNKNOWN
            virtual = call.from_outside or destination is None or destination.external
            labels = (
                ("client", client),
                ("server", server),
                ("connection_type", "virtual_node" if virtual else ""),
            )
            duration = store.series_for(SG_SERVER if call.side == "server" else SG_CLIENT, None, labels)
            # The server side counts the edge; the client side only for a destination with no proxy.
            if call.side == "server" or destination is None or destination.external:
                requests = store.series_for(SG_REQUESTS, None, labels)
                # Created at 0 either way, so every edge has its failed series.
                failed_series = store.series_for(SG_FAILED, None, labels)
                if requests is None or failed_series is None:
                    return None
                failed_series.follows = requests  # alive while the edge has requests, failed or not
                # The connector fails an edge when either span is an error: the client's view is the stricter.
                if semconv.error_type(call.entry, "client"):
                    failed = failed_series
            if duration is None:
                return None
        return Plan(http, duration, requests, failed)

    def record_istio(self, call: Call, seconds: float) -> None:
        """The istio set: its labels hold per-call values (principal, mTLS), so no plan."""
        entry = call.entry
        labels = istio_labels(call)
        if entry.protocol == "tcp":
            self.store.add(ISTIO_TCP_SENT, None, labels, entry.sent_bytes)
            self.store.add(ISTIO_TCP_RECEIVED, None, labels, entry.received_bytes)
            return
        self.store.add(ISTIO_REQUESTS, None, labels)
        self.store.record(ISTIO_DURATION, None, labels, seconds * 1000.0)


def _http_series_key(call: Call, owner: Workload, error: str) -> tuple[MetricDef, Workload, Attributes]:
    """The http set's series for a call side: metric, resource and data-point attributes."""
    entry = call.entry
    attrs: list[tuple[str, str]] = [("http.request.method", entry.method or "_OTHER")]
    if entry.response_code:
        attrs.append(("http.response.status_code", str(entry.response_code)))
    if entry.http_version:
        attrs.append(("network.protocol.version", entry.http_version))
    if call.side == "client":
        server = call.destination.service_name if call.destination else ""
        attrs.append(("server.address", server or semconv.split_authority(entry.authority, entry.scheme)[0]))
        metric = HTTP_CLIENT_DURATION
    else:
        metric = HTTP_SERVER_DURATION
    if entry.scheme:
        attrs.append(("url.scheme", entry.scheme))
    if error:
        attrs.append(("error.type", error))
    return metric, owner, tuple(attrs)


def _workload_labels(prefix: str, w: Workload | None, principal: str) -> list[tuple[str, str]]:
    if w is None or w.external:
        return [
            (f"{prefix}_{k}", UNKNOWN)
            for k in (
                "workload",
                "workload_namespace",
                "principal",
                "app",
                "version",
                "canonical_service",
                "canonical_revision",
                "cluster",
            )
        ]
    return [
        (f"{prefix}_workload", w.workload_name or w.service_name),
        (f"{prefix}_workload_namespace", w.namespace or UNKNOWN),
        (f"{prefix}_principal", principal or UNKNOWN),
        (f"{prefix}_app", w.canonical_service or w.service_name),
        (f"{prefix}_version", w.version or UNKNOWN),
        (f"{prefix}_canonical_service", w.canonical_service or w.service_name),
        (f"{prefix}_canonical_revision", w.canonical_revision or w.version or "latest"),
        (f"{prefix}_cluster", w.cluster or UNKNOWN),
    ]


def istio_labels(call: Call) -> tuple[tuple[str, str], ...]:
    """Every label Kiali reads, as data-point attributes; "unknown" where nothing says."""
    entry = call.entry
    source, destination = call.source, call.destination
    source_principal = entry.peer_principal if call.side == "server" else ""
    labels = [("reporter", "source" if call.side == "client" else "destination")]
    labels += _workload_labels("source", source, source_principal)
    labels += _workload_labels("destination", destination, "")
    if destination is not None and destination.external:
        service = destination.service_name
        labels += [
            ("destination_service", service),
            ("destination_service_name", service),
            ("destination_service_namespace", UNKNOWN),
        ]
    elif destination is not None:
        namespace = destination.namespace or "default"
        labels += [
            ("destination_service", f"{destination.service_name}.{namespace}.svc.cluster.local"),
            ("destination_service_name", destination.service_name),
            ("destination_service_namespace", namespace),
        ]
    else:
        labels += [
            (k, UNKNOWN)
            for k in ("destination_service", "destination_service_name", "destination_service_namespace")
        ]
    protocol = entry.protocol
    labels += [
        ("request_protocol", protocol),
        ("response_code", str(entry.response_code) if protocol != "tcp" else "0"),
        ("grpc_response_status", str(entry.grpc_status) if entry.grpc_status >= 0 else ""),
        ("response_flags", ",".join(entry.response_flags) or "-"),
        (
            "connection_security_policy",
            "mutual_tls" if entry.mtls else ("none" if call.side == "server" else UNKNOWN),
        ),
    ]
    return tuple(labels)
