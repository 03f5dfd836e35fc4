"""Calls into OTLP spans, grouped per resource and built in place (no SDK span objects).

:class:`Translator` is pure apart from the batch and store it writes into: the
same calls give the same spans and points, which the golden tests pin.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from .. import __version__
from ..model import Call, Entry, Protocol, Side, Workload
from . import ids, semconv
from .metrics import HTTP_CLIENT_DURATION, HTTP_SERVER_DURATION, MetricStore
from .resources import resource_attributes, set_attributes

SPAN_KIND = {
    Side.CLIENT: trace_pb2.Span.SPAN_KIND_CLIENT,
    Side.SERVER: trace_pb2.Span.SPAN_KIND_SERVER,
}
USER = "user"  # the servicegraph's name for callers outside the mesh


class SpanBatch:
    """Spans waiting for export, one ``ResourceSpans`` per workload."""

    def __init__(self) -> None:
        self._request = trace_service_pb2.ExportTraceServiceRequest()
        self._scopes: dict[Workload, trace_pb2.ScopeSpans] = {}
        self.count = 0

    def new_span(self, workload: Workload) -> trace_pb2.Span:
        scope = self._scopes.get(workload)
        if scope is None:
            rs = self._request.resource_spans.add()
            set_attributes(rs.resource.attributes, resource_attributes(workload))
            scope = self._scopes[workload] = rs.scope_spans.add()
            scope.scope.name = "als2otel"
            scope.scope.version = __version__
        self.count += 1
        return scope.spans.add()

    def take(self) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int]:
        """The request so far and its span count; the batch starts empty again."""
        request, count = self._request, self.count
        self.__init__()  # type: ignore[misc]
        return request, count


def peer_name(workload: Workload | None) -> str:
    return workload.service_name if workload is not None else ""


class Translator:
    """Writes each call's span into a :class:`SpanBatch` and its points into a :class:`MetricStore`."""

    def __init__(
        self, metrics: MetricStore | None, *, traces: bool = True, sampling_ratio: float = 1.0
    ) -> None:
        self._metrics = metrics
        self._traces = traces
        self._ratio = sampling_ratio

    def add(self, call: Call, batch: SpanBatch) -> None:
        entry = call.entry
        side = call.side
        start, end = semconv.timing(entry, side)
        error = semconv.error_type(entry, side)
        owner = call.source if side is Side.CLIENT else call.destination
        if owner is None:
            return
        if self._metrics is not None:
            self._record_metrics(call, owner, (end - start) / 1e9, error)
        if self._traces:
            self._add_span(call, owner, batch, start, end, error)

    def _add_span(
        self, call: Call, owner: Workload, batch: SpanBatch, start: int, end: int, error: str
    ) -> None:
        entry = call.entry
        side = call.side
        if side is Side.CLIENT:
            connection = ids.connection_key(entry.upstream_local, entry.upstream_remote)
        else:
            connection = ids.connection_key(entry.caller_address, entry.downstream_local)
        context = ids.trace_context(entry, connection)
        if not ids.sampled(context.trace_id, self._ratio):
            return
        hop = ids.hop_key(entry, connection)
        span = batch.new_span(owner)
        span.trace_id = context.trace_id
        if side is Side.CLIENT:
            span.span_id = ids.client_span_id(context.trace_id, hop)
            parent = context.parent_span_id
            if call.proxy.role.is_gateway or call.proxy.workload is None:
                # A gateway's upstream request is a child of its own server side.
                server_conn = ids.connection_key(entry.caller_address, entry.downstream_local)
                parent = ids.server_span_id(context.trace_id, ids.hop_key(entry, server_conn))
        else:
            span.span_id = ids.server_span_id(context.trace_id, hop)
            parent = (
                context.parent_span_id if call.from_outside else ids.client_span_id(context.trace_id, hop)
            )
        if parent:
            span.parent_span_id = parent
        span.name = semconv.span_name(entry)
        span.kind = SPAN_KIND[side]
        span.start_time_unix_nano = start
        span.end_time_unix_nano = end
        set_attributes(span.attributes, span_attributes(call, error))
        if error:
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            span.status.message = error

    def _record_metrics(self, call: Call, owner: Workload, seconds: float, error: str) -> None:
        entry = call.entry
        if entry.protocol is Protocol.TCP or self._metrics is None:
            return
        attrs: list[tuple[str, str]] = [("http.request.method", entry.method or "_OTHER")]
        if entry.response_code:
            attrs.append(("http.response.status_code", str(entry.response_code)))
        if entry.http_version:
            attrs.append(("network.protocol.version", entry.http_version))
        if call.side is Side.CLIENT:
            attrs.append(
                (
                    "server.address",
                    peer_name(call.destination) or semconv.split_authority(entry.authority, entry.scheme)[0],
                )
            )
            metric = HTTP_CLIENT_DURATION
        else:
            metric = HTTP_SERVER_DURATION
        if entry.scheme:
            attrs.append(("url.scheme", entry.scheme))
        if error:
            attrs.append(("error.type", error))
        self._metrics.record(metric, owner, tuple(attrs), seconds)


def span_attributes(call: Call, error: str) -> list[tuple[str, str | int]]:
    """The semantic-convention attributes of one side's span."""
    entry = call.entry
    attrs: list[tuple[str, str | int]] = []
    add = attrs.append
    client = call.side is Side.CLIENT
    if entry.protocol is Protocol.TCP:
        add(("network.transport", "tcp"))
        add(("envoy.bytes_received", entry.received_bytes))
        add(("envoy.bytes_sent", entry.sent_bytes))
    else:
        _http_attributes(entry, client, add)
    if client:
        add(("peer.service", peer_name(call.destination) or "unknown"))
        peer = entry.upstream_remote
    else:
        peer = entry.caller_address
        if entry.downstream_remote is not None:
            add(("client.address", entry.downstream_remote.ip))
    if peer is not None:
        add(("network.peer.address", peer.ip))
        add(("network.peer.port", peer.port))
    if error:
        add(("error.type", error))
    if entry.response_flags:
        add(("envoy.response_flags", ",".join(entry.response_flags)))
    if entry.upstream_cluster:
        add(("envoy.upstream_cluster", entry.upstream_cluster))
    if entry.route_name:
        add(("envoy.route_name", entry.route_name))
    if entry.request_id:
        add(("envoy.request_id", entry.request_id))
    return attrs


def _http_attributes(entry: Entry, client: bool, add: Any) -> None:
    host, port = semconv.split_authority(entry.authority, entry.scheme)
    if entry.protocol is Protocol.GRPC:
        add(("rpc.system.name", "grpc"))
        method = semconv.grpc_method(entry.path)
        if method:
            add(("rpc.method", method))
        if entry.grpc_status >= 0:
            add(("rpc.response.status_code", semconv.grpc_status_name(entry.grpc_status)))
    add(("http.request.method", entry.method or "_OTHER"))
    if entry.response_code:
        add(("http.response.status_code", entry.response_code))
    if entry.http_version:
        add(("network.protocol.version", entry.http_version))
    if host:
        add(("server.address", host))
        add(("server.port", port))
    path, _, query = entry.path.partition("?")
    if client:
        add(("url.full", f"{entry.scheme or 'http'}://{entry.authority}{entry.path}"))
    else:
        add(("url.path", path))
        if query:
            add(("url.query", query))
        add(("url.scheme", entry.scheme or "http"))
        if entry.user_agent:
            add(("user_agent.original", entry.user_agent))
