"""OTLP spans built in place (no SDK span objects): the batch that groups them per resource
into a request, and the attributes that differ per call."""

from __future__ import annotations

from .. import __version__
from ..model import Call, Workload
from . import wire
from .resources import resource_attributes


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
