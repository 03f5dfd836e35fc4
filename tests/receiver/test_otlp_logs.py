"""Envoy's OpenTelemetry access logger in: OTLP log records over gRPC (on the ALS port) and
OTLP/HTTP, read as the same entries, proxies, spans and edges as the same calls over ALS."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import grpc
from conftest import bridge_config
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from support import als, servicegraph
from support.mesh import CALLEE, CALLER, sides, stream
from support.otlp_receiver import GrpcOtlpReceiver
from support.waiting import eventually

from als2otel.app import Bridge
from als2otel.receiver import identify, normalize_http
from als2otel.receiver._proto import accesslog_pb2
from als2otel.receiver.otlp_logs import ATTRIBUTES, RecordReader

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
    for key in ("upstream_peer", "downstream_peer"):
        if key in c.filter_state_objects:
            from google.protobuf import struct_pb2

            struct = struct_pb2.Struct()
            c.filter_state_objects[key].Unpack(struct)
            attributes[f"envoy.filter_state.{key}"] = json.dumps(json_format.MessageToDict(struct))
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


class TestSameAnswers:
    def test_a_record_reads_as_the_same_entry_and_proxy(self) -> None:
        """One call as an ALS entry and as an OTLP record: equal normalized entries and proxies."""
        client, _ = sides(3)
        caller_ident = als.identifier(
            "sidecar~10.1.0.4~" + CALLER.name + ".default~default.svc.cluster.local", CALLER.node_metadata()
        )
        reader = RecordReader()
        for raw in client:
            attributes, time_unix_nano = record_of(raw, caller_ident)
            proxy, log_type, encoded = reader.read(attributes, time_unix_nano)
            assert log_type == "http"
            from_otlp = normalize_http(accesslog_pb2.HTTPAccessLogEntry.FromString(encoded), "v3")
            from_als = normalize_http(raw, "v3")
            assert vars_of(from_otlp) == vars_of(from_als)
            als_proxy = identify(caller_ident)
            assert dataclasses.replace(proxy, log_name="") == dataclasses.replace(als_proxy, log_name="")

    async def test_mixed_loggers_pair_every_call(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """Client sides over ALS, server sides over OTLP (gRPC and HTTP): every call pairs, and the spans
        equal those of the same calls all over ALS, ids included."""
        calls = 100
        client, server = sides(calls)
        mixed: Bridge = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
        await als.send(f"127.0.0.1:{mixed.receiver.port}", stream(CALLER, "10.1.0.4", client))
        response = await export_grpc(mixed.receiver.port, otlp_stream(CALLEE, "10.1.0.9", server[:50]))
        assert response.partial_success.rejected_log_records == 0
        status, _ = await asyncio.to_thread(
            post_logs, mixed.http.port, otlp_stream(CALLEE, "10.1.0.9", server[50:]).SerializeToString()
        )
        assert status == 200
        await mixed.pipeline.drain()
        mixed.flush_spans()
        assert await eventually(lambda: len(otlp.received.spans()) == 2 * calls)
        await asyncio.sleep(0.3)
        spans = otlp.received.spans()
        assert servicegraph.edges(spans) == Counter({("productpage", "reviews"): calls})
        assert mixed.stats.entries_received.get("otlp", "http") == calls
        otlp_ids = sorted((span.trace_id, span.span_id, span.parent_span_id) for _, span in spans)

        reference = GrpcOtlpReceiver().start()
        try:
            als_only: Bridge = await make_bridge(bridge_config(reference.endpoint, analyzers=["mx-mesh"]))
            await als.send(f"127.0.0.1:{als_only.receiver.port}", stream(CALLER, "10.1.0.4", client))
            await als.send(f"127.0.0.1:{als_only.receiver.port}", stream(CALLEE, "10.1.0.9", server))
            await als_only.pipeline.drain()
            als_only.flush_spans()
            assert await eventually(lambda: len(reference.received.spans()) == 2 * calls)
            als_ids = sorted(
                (span.trace_id, span.span_id, span.parent_span_id) for _, span in reference.received.spans()
            )
        finally:
            reference.stop()
        assert otlp_ids == als_ids
        assert mixed.render_metrics().count("traces_service_graph_request_total{") == 1


def vars_of(entry: Any) -> dict[str, Any]:
    """An entry's fields, its filter state as the Structs it carries."""
    from google.protobuf import struct_pb2

    out = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    states = {}
    for key, value in (out["filter_state"] or {}).items():
        struct = struct_pb2.Struct()
        value.Unpack(struct)
        states[key] = json_format.MessageToDict(struct)
    out["filter_state"] = states
    return out


class TestBadInput:
    async def test_malformed_requests(self, make_bridge: Any) -> None:
        """Bytes that are no request: INVALID_ARGUMENT over gRPC, 400 over HTTP; the wrong
        content type a 415; each counted, and the bridge goes on."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        try:
            await export_grpc(bridge.receiver.port, b"\xff\xff\xff")
            raise AssertionError("a malformed request was accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await asyncio.to_thread(post_logs, bridge.http.port, b"\xff\xff\xff"))[0] == 400
        assert (await asyncio.to_thread(post_logs, bridge.http.port, b"{}", False, "application/json"))[
            0
        ] == 415
        assert bridge.stats.entries_invalid.get("malformed_message") == 2

    async def test_records_without_the_attributes_are_refused_with_a_reason(self, make_bridge: Any) -> None:
        """A record without a node id, one with an address that is no ip:port: each refused and counted,
        reported in partial_success; the good record beside them goes through."""
        bridge: Bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"]))
        client, _ = sides(1)
        ident = als.identifier(
            "sidecar~10.1.0.4~" + CALLER.name + ".default~default.svc.cluster.local", CALLER.node_metadata()
        )
        good = record_of(client[0], ident)
        no_node = ({k: v for k, v in good[0].items() if k != "envoy.node.id"}, good[1])
        bad_address = ({**good[0], "envoy.upstream.remote_address": "not an address"}, good[1])
        response = await export_grpc(bridge.receiver.port, export_request([good, no_node, bad_address]))
        assert response.partial_success.rejected_log_records == 2
        assert "missing_node" in response.partial_success.error_message
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("missing_node") == 1
        assert bridge.stats.entries_invalid.get("malformed_attribute") == 1
        assert bridge.stats.calls.get("client") == 1
