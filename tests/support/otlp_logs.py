"""OTLP log records as Envoy's OpenTelemetry access logger sends them, for the same calls the
ALS helpers build, and ways to send them (OTLP/gRPC on the ALS port, OTLP/HTTP)."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from support import als

from als2otel.receiver._proto import accesslog_pb2
from als2otel.receiver.otlp_logs import ATTRIBUTES, PEER_KEYS

LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def address_text(encoded: bytes) -> str:
    from als2otel.receiver._proto import core_pb2

    socket = core_pb2.Address.FromString(encoded).socket_address
    return f"{socket.address}:{socket.port_value}"


def record_of(raw: accesslog_pb2.HTTPAccessLogEntry, ident: Any) -> tuple[dict[str, str], int]:
    """The attributes Envoy's OpenTelemetry logger, configured as deploy/istio/otel-als.yaml says,
    would send for the call ``raw`` (an ALS entry) logged by the proxy ``ident``."""
    c, request = raw.common_properties, raw.request
    meta = json_format.MessageToDict(ident.node.metadata)
    attributes = {"envoy.node.id": ident.node.id}
    for key in ("NAME", "NAMESPACE", "WORKLOAD_NAME", "OWNER", "CLUSTER_ID", "INSTANCE_IPS"):
        if key in meta:
            attributes[f"envoy.node.metadata.{key}"] = str(meta[key])
    for label, value in meta.get("LABELS", {}).items():
        if f"envoy.node.labels.{label}" in ATTRIBUTES:
            attributes[f"envoy.node.labels.{label}"] = value
    for field, name in (
        ("downstream_remote_address", "envoy.downstream.remote_address"),
        ("downstream_local_address", "envoy.downstream.local_address"),
        ("upstream_remote_address", "envoy.upstream.remote_address"),
        ("upstream_local_address", "envoy.upstream.local_address"),
    ):
        value = getattr(c, field)
        attributes[name] = address_text(value) if value else "-"
    attributes["envoy.upstream.cluster"] = c.upstream_cluster or "-"
    attributes["envoy.access_log_type"] = "DownstreamEnd"
    attributes["envoy.response_flags"] = "-"
    attributes["envoy.duration_ns"] = str(c.time_to_last_downstream_tx_byte.ToNanoseconds())
    attributes["envoy.upstream.request_start_ns"] = str(c.time_to_first_upstream_tx_byte.ToNanoseconds())
    attributes["envoy.upstream.response_end_ns"] = str(c.time_to_last_upstream_rx_byte.ToNanoseconds())
    for key in PEER_KEYS:
        if key in c.filter_state_objects:
            attributes[f"envoy.filter_state.{key}"] = filter_state_json(c.filter_state_objects[key])
    attributes["http.request.method"] = (
        accesslog_pb2.HTTPAccessLogEntry.DESCRIPTOR.file.pool.FindEnumTypeByName(
            "envoy.config.core.v3.RequestMethod"
        )
        .values_by_number[request.request_method]
        .name
    )
    attributes["url.scheme"] = request.scheme.decode()
    attributes["http.request.header.host"] = request.authority.decode() or "-"
    attributes["url.path"] = request.path.decode()
    attributes["http.request.header.x-request-id"] = request.request_id.decode() or "-"
    for name, value in request.request_headers.items():
        attributes[f"http.request.header.{name}"] = value.decode()
    attributes["http.response.status_code"] = str(raw.response.response_code.value)
    attributes["network.protocol.name"] = "HTTP/1.1"
    return attributes, c.start_time.ToNanoseconds()


def export_request(records: list[tuple[dict[str, str], int]]) -> logs_service_pb2.ExportLogsServiceRequest:
    request = logs_service_pb2.ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for attributes, time_unix_nano in records:
        record = scope.log_records.add(time_unix_nano=time_unix_nano)
        for key, value in attributes.items():
            record.attributes.add(key=key).value.string_value = value
    return request


def otlp_stream(peer: Any, ip: str, entries: list[Any]) -> logs_service_pb2.ExportLogsServiceRequest:
    ident = als.identifier(
        f"sidecar~{ip}~{peer.name}.default~default.svc.cluster.local", peer.node_metadata()
    )
    return export_request([record_of(entry, ident) for entry in entries])


async def export_grpc(port: int, request: Any) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            LOGS_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        return logs_service_pb2.ExportLogsServiceResponse.FromString(await call(payload))


def post_logs(
    port: int, body: bytes, gzipped: bool = True, content_type: str = "application/x-protobuf"
) -> tuple[int, bytes]:
    headers = {"Content-Type": content_type}
    if gzipped:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/logs", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def filter_state_json(value: Any) -> str:
    """What Envoy's %FILTER_STATE% writes for a filter state object: a Struct as its JSON object
    (Istio 1.24+), anything else (a WasmState's BytesValue) as its Any's JSON."""
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    if value.Unpack(struct):
        return json.dumps(json_format.MessageToDict(struct))
    return json.dumps(json_format.MessageToDict(value))
