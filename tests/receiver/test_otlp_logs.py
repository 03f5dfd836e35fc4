"""Envoy's OpenTelemetry access logger in: OTLP log records over gRPC (on the ALS port) and
OTLP/HTTP, read as the same entries, proxies, spans and edges as the same calls over ALS."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

import grpc
import pytest
from conftest import bridge_config
from google.protobuf import json_format
from support import als, mesh, peers, servicegraph
from support.mesh import CALLEE, CALLER, sides, stream
from support.otlp_logs import export_grpc, export_request, otlp_stream, post_logs, record_of
from support.otlp_receiver import GrpcOtlpReceiver
from support.waiting import eventually

from als2otel.analysis import AnalyzerChain, MxMeshAnalyzer, ProxyAnalyzer
from als2otel.app import Bridge
from als2otel.export import render
from als2otel.receiver import identify
from als2otel.receiver._proto import accesslog_pb2
from als2otel.receiver.normalize import normalize_http
from als2otel.receiver.otlp_logs import RecordReader
from als2otel.stats import Stats


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

    @pytest.mark.parametrize("generation", ["struct", "flatnode"])
    def test_peer_metadata_of_each_istio_generation_reads_the_same(self, generation: str) -> None:
        """Both sides of a call with Istio's peer metadata, as 1.24+ (Struct) or up to 1.23 (a FlatNode
        that Envoy writes as an Any's JSON) keeps it: the same entries as over ALS, and mx-mesh names
        both ends from them."""
        reader = RecordReader()
        chain = AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats())
        for side, state, peer, own, ip in (
            ("client", "upstream", CALLEE, CALLER, "10.1.0.4"),
            ("server", "downstream", CALLER, CALLEE, "10.1.0.9"),
        ):
            raw = mesh.outbound(1) if side == "client" else mesh.inbound(1)
            raw.common_properties.filter_state_objects.clear()
            for key, value in peers.filter_state(generation, state, peer).items():
                raw.common_properties.filter_state_objects[key].CopyFrom(value)
            ident = als.identifier(
                f"sidecar~{ip}~{own.name}.default~default.svc.cluster.local", own.node_metadata()
            )
            attributes, time_unix_nano = record_of(raw, ident)
            assert (
                f"envoy.filter_state.{'wasm.' if generation == 'flatnode' else ''}{state}_peer" in attributes
            )
            proxy, _, encoded = reader.read(attributes, time_unix_nano)
            from_otlp = normalize_http(accesslog_pb2.HTTPAccessLogEntry.FromString(encoded), "v3")
            assert vars_of(from_otlp) == vars_of(normalize_http(raw, "v3"))
            (call,) = chain.resolve(from_otlp, proxy)
            assert call.resolved and call.side == side
            named = call.destination if side == "client" else call.source
            assert named is not None and named.pod_name == peer.name

    def test_istio_1_24_client_peer_from_the_upstream_filter_state(self) -> None:
        """Istio 1.24+ keeps the client side's peer (TCP, HTTP over its mTLS) in the upstream
        connection's filter state: %FILTER_STATE(upstream_peer)% is "-" and
        %UPSTREAM_FILTER_STATE(upstream_peer)% holds it. Read from there, mx-mesh names the peer as
        from the same entry over ALS."""
        from als2otel.receiver.otlp_logs import UPSTREAM_PEER

        raw = mesh.outbound(1)
        raw.common_properties.filter_state_objects.clear()
        for key, value in peers.filter_state("struct", "upstream", CALLEE).items():
            raw.common_properties.filter_state_objects[key].CopyFrom(value)
        ident = als.identifier(
            "sidecar~10.1.0.4~" + CALLER.name + ".default~default.svc.cluster.local", CALLER.node_metadata()
        )
        attributes, time_unix_nano = record_of(raw, ident)
        attributes[UPSTREAM_PEER] = attributes.pop("envoy.filter_state.upstream_peer")
        attributes["envoy.filter_state.upstream_peer"] = "-"
        proxy, _, encoded = RecordReader().read(attributes, time_unix_nano)
        from_otlp = normalize_http(accesslog_pb2.HTTPAccessLogEntry.FromString(encoded), "v3")
        assert vars_of(from_otlp) == vars_of(normalize_http(raw, "v3"))
        (call,) = AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats()).resolve(from_otlp, proxy)
        assert call.resolved and call.destination is not None and call.destination.pod_name == CALLEE.name

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
            await als_only.stop()  # before its receiver goes, which its last flush reaches
        finally:
            reference.stop()
        assert otlp_ids == als_ids
        assert render(mixed.metrics, mixed.stats).count("traces_service_graph_request_total{") == 1


def vars_of(entry: Any) -> dict[str, Any]:
    """An entry's fields, its filter state as the Structs it carries (others as type and bytes)."""
    from google.protobuf import struct_pb2

    out = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    states: dict[str, Any] = {}
    for key, value in (out["filter_state"] or {}).items():
        struct = struct_pb2.Struct()
        states[key] = (
            json_format.MessageToDict(struct) if value.Unpack(struct) else (value.type_url, value.value)
        )
    out["filter_state"] = states
    return out


class TestBounds:
    def test_the_proxy_table_starts_over_when_full_and_says_so(self, monkeypatch: Any) -> None:
        """Records of more proxies than the table holds: it starts over, counted as a rotation of
        cache="otlp_proxies", and every record is still read."""
        from als2otel.receiver import otlp_logs

        monkeypatch.setattr(otlp_logs, "MAX_CACHED_PROXIES", 3)
        stats = Stats()
        reader = RecordReader(rotations=stats.cache_rotations)
        for i in range(7):
            peer = peers.pod(f"svc{i}")
            ident = als.identifier(
                f"sidecar~10.1.0.{i}~{peer.name}.default~default.svc.cluster.local", peer.node_metadata()
            )
            attributes, at = record_of(mesh.outbound(i), ident)
            assert reader.read(attributes, at)[0].pod_name == peer.name
        assert stats.cache_rotations.get("otlp_proxies") == 2


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
