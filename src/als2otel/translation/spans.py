"""OTLP spans built in place (no SDK span objects): one side of a call as its span, and the
batch that groups spans per resource into a request."""

from __future__ import annotations

from opentelemetry.proto.trace.v1 import trace_pb2

from .. import __version__
from ..model import Call, Workload
from . import ids, wire
from .resources import resource_attributes

try:
    from . import _spans as native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler, or with ALS2OTEL_NO_EXTENSIONS=1
    native = None


class SpanBatch:
    """Encoded spans waiting for export, grouped by workload (one ``ResourceSpans`` each)."""

    def __init__(self) -> None:
        self._spans: dict[Workload, list[bytes]] = {}
        self.count = 0
        self.size = 0  # bytes of the encoded spans

    def add(self, workload: Workload, span: bytes) -> None:
        group = self._spans.get(workload)
        if group is None:
            group = self._spans[workload] = []
        group.append(span)
        self.count += 1
        self.size += len(span)

    def take(self) -> tuple[bytes, int]:
        """The spans so far as one serialized ``ExportTraceServiceRequest``, and their count; the
        batch empties. (The exporter cuts it to its backend's limit: ``export/split.py``.)"""
        request = wire.export_request(
            wire.resource_spans(resource_attributes(workload), _SCOPE, spans)
            for workload, spans in self._spans.items()
        )
        count = self.count
        self._spans = {}
        self.count = self.size = 0
        return request, count


_SCOPE = wire.scope("als2otel", __version__)


_CLIENT_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_CLIENT)
_SERVER_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_SERVER)


def call_span(
    call: Call,
    start: int,
    end: int,
    error: str,
    name: bytes,
    attributes: bytes,
    repeats: ids.RepeatCounts,
    ratio: float,
    ports: dict[int, bytes],
) -> bytes:
    """One side of a call as its encoded span, or b"" where sampling leaves its trace out.

    ``error``, ``name`` and ``attributes`` are its shape's (the attributes that repeat from call to
    call, encoded); ``repeats`` counts the hops and spans seen; ``ports`` as :func:`unique_attributes`
    keeps them. Natively where ``_spans`` is built (the whole span in one call, reading the entry's
    fields where they are), else, and for the values it leaves, :func:`call_span_python`, the definition.
    """
    if native is not None:
        proxy = call.proxy
        span = native.call_span(
            repeats, call.entry, call.side == "client", proxy.node_id, proxy.is_gateway,
            call.from_outside, start, end, name, attributes, error, ratio,
        )  # fmt: skip
        if span is not None:
            return span  # type: ignore[no-any-return]
    return call_span_python(call, start, end, error, name, attributes, repeats, ratio, ports)


def call_span_python(
    call: Call,
    start: int,
    end: int,
    error: str,
    name: bytes,
    attributes: bytes,
    repeats: ids.RepeatCounts,
    ratio: float,
    ports: dict[int, bytes],
) -> bytes:
    """:func:`call_span` spelled out: ids from ``ids``, the call's own attributes after the
    shape's, the bytes from ``wire``."""
    entry = call.entry
    client = call.side == "client"
    if client:
        connection = ids.connection_key(entry.upstream_local, entry.upstream_remote)
    else:
        caller = entry.downstream_direct_remote or entry.downstream_remote
        connection = ids.connection_key(caller, entry.downstream_local)
    trace_id, app_span = ids.trace_context(entry.request_headers, entry.request_id, connection)
    if ratio < 1.0 and not ids.sampled(trace_id, ratio):
        return b""
    hop = f"{connection}|{entry.method}|{entry.path}"  # one request on one connection
    node = call.proxy.node_id
    if client:
        span_id = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, ids.CLIENT, hop))
        # Under the app's own span when it propagated one, else under this proxy's server side.
        if not app_span or call.proxy.is_gateway:
            app_span = ids.span_id(
                trace_id, ids.SERVER, node, repeats.ended_before(trace_id, ids.SERVER, node, start)
            )
        parent = app_span
        kind = _CLIENT_KIND
    else:
        span_id = ids.span_id(trace_id, ids.SERVER, node, repeats.add(trace_id, ids.SERVER, node, end))
        if call.from_outside:
            parent = app_span
        else:
            parent = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, ids.HOP, hop))
        kind = _SERVER_KIND
    own = unique_attributes(call, ports)
    return wire.span(trace_id, span_id, parent, name, kind, start, end, attributes + own, error)


_URL_FULL = wire.key("url.full")
_URL_PATH = wire.key("url.path")
_URL_QUERY = wire.key("url.query")
_CLIENT_ADDRESS = wire.key("client.address")
_PEER_PORT = wire.key("network.peer.port")
_REQUEST_ID = wire.key("envoy.request_id")
_BYTES_RECEIVED = wire.key("envoy.bytes_received")
_BYTES_SENT = wire.key("envoy.bytes_sent")


def unique_attributes(call: Call, ports: dict[int, bytes]) -> bytes:
    """A span's encoded attributes that differ per call: URL, ports, request id, byte counts.

    ``ports``: ``network.peer.port`` attributes already encoded, by port (at most 65,536).
    """
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
        port = ports.get(peer.port)
        if port is None:  # at most one per port number
            port = ports[peer.port] = wire.int_attribute(_PEER_PORT, peer.port)
        out.append(port)
    if entry.request_id:
        out.append(wire.string_attribute(_REQUEST_ID, entry.request_id))
    return b"".join(out)
