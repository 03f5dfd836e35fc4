"""Calls into OTLP spans, grouped per resource and built in place (no SDK span objects).

:class:`Translator` keeps no state but the batch and store it writes into and
the count of repeated hops (:class:`ids.Repeats`): the same calls in the same
order give the same spans and points, which the golden tests pin.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1 import trace_pb2

from .. import __version__
from ..model import Call, Entry, Workload
from . import ids, semconv, wire
from .metric_sets import MetricRecorder, Plan
from .resources import resource_attributes
from .topology import Topology

_CLIENT_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_CLIENT)
_SERVER_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_SERVER)


class SpanBatch:
    """Encoded spans waiting for export, grouped by workload (one ``ResourceSpans`` each)."""

    def __init__(self) -> None:
        self._spans: dict[Workload, list[bytes]] = {}
        self.count = 0

    def add(self, workload: Workload, span: bytes) -> None:
        group = self._spans.get(workload)
        if group is None:
            group = self._spans[workload] = []
        group.append(span)
        self.count += 1

    def take(self, max_bytes: int = 4 * 1024 * 1024) -> list[tuple[bytes, int]]:
        """The spans so far as serialized ``ExportTraceServiceRequest`` s of at most ``max_bytes``
        each (a single span larger than that goes alone), with their span counts; the batch empties."""
        requests: list[tuple[bytes, int]] = []
        groups: list[bytes] = []
        size = count = 0
        for workload, spans in self._spans.items():
            resource = resource_attributes(workload)
            overhead = len(wire.resource_spans(resource, _SCOPE, [])) + _FRAMING
            start = 0
            while start < len(spans):
                end, used = start, overhead
                while end < len(spans) and size + used + len(spans[end]) + _FRAMING <= max_bytes:
                    used += len(spans[end]) + _FRAMING
                    end += 1
                if end == start and groups:  # the request is full: send it, then go on
                    requests.append((wire.export_request(groups), count))
                    groups, size, count = [], 0, 0
                    continue
                end = max(end, start + 1)
                groups.append(wire.resource_spans(resource, _SCOPE, spans[start:end]))
                size += used
                count += end - start
                start = end
        if groups:
            requests.append((wire.export_request(groups), count))
        self._spans = {}
        self.count = 0
        return requests


_SCOPE = wire.scope("als2otel", __version__)
_FRAMING = 12
"""Bytes a span's or a group's tag and length add, at most."""


def peer_name(workload: Workload | None) -> str:
    return workload.service_name if workload is not None else ""


class Translator:
    """Writes each call's span into a :class:`SpanBatch` and its points through a :class:`MetricRecorder`."""

    def __init__(
        self,
        metrics: MetricRecorder | None,
        *,
        traces: bool = True,
        sampling_ratio: float = 1.0,
        topology: Topology | None = None,
    ) -> None:
        self._metrics = metrics
        self._topology = topology
        self._traces = traces
        self._ratio = sampling_ratio
        self._shapes: dict[tuple[object, ...], _Shape] = {}
        self._repeats = ids.Repeats()

    def add(self, call: Call, batch: SpanBatch) -> None:
        entry = call.entry
        side = call.side
        client = side == "client"
        owner = call.source if client else call.destination
        if owner is None:
            return
        # The server side's peer is Entry.caller_address, read without the property's call.
        peer = (
            entry.upstream_remote if client else (entry.downstream_direct_remote or entry.downstream_remote)
        )
        # Everything a call's error, span name, repeating attributes and metric series depend on.
        key = (
            side,
            call.source,
            call.destination,
            call.from_outside,
            entry.protocol,
            entry.method,
            entry.response_code,
            entry.http_version,
            entry.authority,
            entry.scheme,
            entry.grpc_status,
            entry.path if entry.protocol == "grpc" else "",
            entry.response_flags,
            entry.upstream_cluster,
            entry.route_name,
            peer.ip if peer is not None else "",
            "" if client else entry.user_agent,
        )
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key, call, owner)
        error, name, attributes, plan = shape
        start, end = semconv.timing(entry, side)
        seconds = (end - start) / 1e9
        metrics = self._metrics
        if metrics is not None:
            metrics.record(plan, seconds)
            if metrics.istio:
                metrics.record_istio(call, seconds)
        if self._topology is not None:
            self._topology.record(call, seconds)
        if self._traces:
            self._add_span(call, owner, batch, start, end, error, name, attributes + unique_attributes(call))

    def forget_shapes(self) -> None:
        """Work every call shape out again: the metric store removed series that plans held."""
        self._shapes.clear()

    def _shape(self, key: tuple[object, ...], call: Call, owner: Workload) -> _Shape:
        """What calls of one shape share, worked out once: error, name, attributes, metric series."""
        entry = call.entry
        error = semconv.error_type(entry, call.side)
        name = wire.span_name(semconv.span_name(entry))
        attributes = b"".join(wire.attribute(k, v) for k, v in common_attributes(call, error))
        plan = None
        if self._metrics is not None:
            plan = self._metrics.plan(call, owner, error)
            if plan is None:
                # The store is full: not kept, so each such call asks (and is counted) again.
                return error, name, attributes, None
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
        shape = self._shapes[key] = (error, name, attributes, plan)
        return shape

    def _add_span(
        self,
        call: Call,
        owner: Workload,
        batch: SpanBatch,
        start: int,
        end: int,
        error: str,
        name: bytes,
        attributes: bytes,
    ) -> None:
        entry = call.entry
        client = call.side == "client"
        if client:
            connection = ids.connection_key(entry.upstream_local, entry.upstream_remote)
        else:
            caller = entry.downstream_direct_remote or entry.downstream_remote
            connection = ids.connection_key(caller, entry.downstream_local)
        trace_id, app_span = ids.trace_context(entry, connection)
        if self._ratio < 1.0 and not ids.sampled(trace_id, self._ratio):
            return
        hop = f"{connection}|{entry.method}|{entry.path}"  # one request on one connection
        node = call.proxy.node_id
        repeats = self._repeats
        if client:
            span_id = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, "client", hop))
            # Under the app's own span when it propagated one, else under this proxy's server side.
            if not app_span or call.proxy.is_gateway:
                app_span = ids.span_id(
                    trace_id, ids.SERVER, node, repeats.ended_before(trace_id, "server", node, start)
                )
            parent = app_span
            kind = _CLIENT_KIND
        else:
            span_id = ids.span_id(trace_id, ids.SERVER, node, repeats.add(trace_id, "server", node, end))
            if call.from_outside:
                parent = app_span
            else:
                parent = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, "hop", hop))
            kind = _SERVER_KIND
        batch.add(owner, wire.span(trace_id, span_id, parent, name, kind, start, end, attributes, error))


MAX_SHAPES = 65_536
"""Call shapes kept worked out (:meth:`Translator._shape`); the table starts over when full."""

_Shape = tuple[str, bytes, bytes, Plan | None]
"""error.type (or ""), encoded span name, encoded repeating attributes, metric series."""


def common_attributes(call: Call, error: str) -> list[tuple[str, str | int]]:
    """A span's semantic-convention attributes whose values repeat across calls.

    Reads only what :meth:`Translator.add` keys its shapes on.
    """
    entry = call.entry
    out: list[tuple[str, str | int]] = []
    client = call.side == "client"
    if entry.protocol == "tcp":
        out.append(("network.transport", "tcp"))
    else:
        _http_attributes(entry, client, out)
    if client:
        out.append(("peer.service", peer_name(call.destination) or "unknown"))
    peer = entry.upstream_remote if client else entry.caller_address
    if peer is not None:
        out.append(("network.peer.address", peer.ip))
    if error:
        out.append(("error.type", error))
    if entry.response_flags:
        out.append(("envoy.response_flags", ",".join(entry.response_flags)))
    if entry.upstream_cluster:
        out.append(("envoy.upstream_cluster", entry.upstream_cluster))
    if entry.route_name:
        out.append(("envoy.route_name", entry.route_name))
    return out


_URL_FULL = wire.key("url.full")
_URL_PATH = wire.key("url.path")
_URL_QUERY = wire.key("url.query")
_CLIENT_ADDRESS = wire.key("client.address")
_PEER_PORT = wire.key("network.peer.port")
_REQUEST_ID = wire.key("envoy.request_id")
_BYTES_RECEIVED = wire.key("envoy.bytes_received")
_BYTES_SENT = wire.key("envoy.bytes_sent")
_PORTS: dict[int, bytes] = {}  # network.peer.port, encoded


def unique_attributes(call: Call) -> bytes:
    """A span's encoded attributes that differ per call: URL, ports, request id, byte counts."""
    entry = call.entry
    client = call.side == "client"
    out: list[bytes] = []
    if entry.protocol == "tcp":
        out += (
            wire.int_attribute(_BYTES_RECEIVED, entry.received_bytes),
            wire.int_attribute(_BYTES_SENT, entry.sent_bytes),
        )
    elif client:
        out.append(
            wire.string_attribute(_URL_FULL, f"{entry.scheme or 'http'}://{entry.authority}{entry.path}")
        )
    else:
        path, _, query = entry.path.partition("?")
        out.append(wire.string_attribute(_URL_PATH, path))
        if query:
            out.append(wire.string_attribute(_URL_QUERY, query))
    if not client and entry.downstream_remote is not None:
        out.append(wire.string_attribute(_CLIENT_ADDRESS, entry.downstream_remote.ip))
    peer = entry.upstream_remote if client else entry.caller_address
    if peer is not None:
        port = _PORTS.get(peer.port)
        if port is None:  # at most one per port number
            port = _PORTS[peer.port] = wire.int_attribute(_PEER_PORT, peer.port)
        out.append(port)
    if entry.request_id:
        out.append(wire.string_attribute(_REQUEST_ID, entry.request_id))
    return b"".join(out)


def _http_attributes(entry: Entry, client: bool, out: list[tuple[str, str | int]]) -> None:
    add = out.append
    host, port = semconv.split_authority(entry.authority, entry.scheme)
    if entry.protocol == "grpc":
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
    if not client:
        add(("url.scheme", entry.scheme or "http"))
        if entry.user_agent:
            add(("user_agent.original", entry.user_agent))
