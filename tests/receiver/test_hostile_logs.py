"""Hostile input on the surfaces beside ALS: OTLP log records over gRPC and HTTP, the HTTP port's
edges, and the TLS front. Real clients (grpc, raw sockets, real TLS); every refusal is counted and
answered with a reason, and nothing a sender sends can cost other records or unbounded memory."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import ssl
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import bridge_config
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from support import mesh
from support.certs import mtls_receiver
from support.otlp_logs import export_grpc, export_request, post_logs, record_of
from support.waiting import eventually

from als2otel.app import Bridge
from als2otel.receiver import front as tls_front
from als2otel.receiver import otlp_logs
from als2otel.receiver.server import AlsServer
from als2otel.stats import Stats
from als2otel.translation.wire import varint
from als2otel.web import connections

GOOD = 20


def good_records(first: int = 0) -> list[tuple[dict[str, str], int]]:
    return [record_of(mesh.outbound(first + i), mesh.productpage()) for i in range(GOOD)]


def with_value(name: str, value: str) -> tuple[dict[str, str], int]:
    attributes, time_unix_nano = record_of(mesh.outbound(999), mesh.productpage())
    return {**attributes, name: value}, time_unix_nano


def small_records(count: int) -> bytes:
    """``count`` records of 11 bytes each (a time alone), their proxy's node id on the resource."""
    request = export_request([])
    resource_logs = request.resource_logs[0]
    resource_logs.resource.attributes.add(key="envoy.node.id").value.string_value = mesh.PRODUCTPAGE_NODE
    scope = resource_logs.scope_logs[0]
    for i in range(count):
        scope.log_records.add(time_unix_nano=1_700_000_000_000_000_000 + i)
    return request.SerializeToString()


def nest(payload: bytes, field: int) -> bytes:
    """``payload`` as the length-delimited field ``field`` of a message."""
    return bytes([field << 3 | 2]) + varint(len(payload)) + payload


def empty_records(count: int) -> bytes:
    """A request of ``count`` empty records (2 bytes each) in one scope of one resource."""
    return nest(nest(b"\x12\x00" * count, 2), 1)


def deep_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def tcp_record(received: str) -> tuple[dict[str, str], int]:
    attributes, time_unix_nano = with_value("envoy.log_type", "tcp")
    return {**attributes, "envoy.bytes_received": received}, time_unix_nano


HOSTILE = {
    "status_past_uint32": with_value("http.response.status_code", "99999999999"),
    "bytes_past_uint64": tcp_record("9" * 20),
    "start_past_year_9999": (with_value("envoy.start_time", "999999999999.5")[0], 0),
    "filter_state_5000_deep": with_value("envoy.filter_state.upstream_peer", deep_json(5000)),
    "filter_state_500_deep": with_value("envoy.filter_state.upstream_peer", deep_json(500)),
    "filter_state_400_digits": with_value("envoy.filter_state.upstream_peer", '{"a": ' + "9" * 400 + "}"),
    "filter_state_any_400_digits": with_value(
        "envoy.filter_state.upstream_peer",
        f'{{"@type": "{otlp_logs.STRUCT}", "value": {{"a": {"9" * 400}}}}}',
    ),
}


class TestOneRecordNeverCostsItsRequest:
    @pytest.mark.parametrize("name", sorted(HOSTILE))
    async def test_a_record_past_every_width_is_refused_alone(self, make_bridge: Any, name: str) -> None:
        """A record whose value overflows its field or nests too deep, beside 20 good ones, over gRPC
        and over HTTP: answered OK with that one record rejected and its reason, counted as invalid;
        the 20 good records become their calls."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        request = export_request([*good_records(), HOSTILE[name]])
        response = await export_grpc(bridge.receiver.port, request)
        assert response.partial_success.rejected_log_records == 1
        assert "malformed_attribute: 1" in response.partial_success.error_message
        status, body = await asyncio.to_thread(post_logs, bridge.http.port, request.SerializeToString())
        assert status == 200
        answer = logs_service_pb2.ExportLogsServiceResponse.FromString(body)
        assert answer.partial_success.rejected_log_records == 1
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("malformed_attribute") == 2
        assert bridge.stats.calls.get("client") == 2 * GOOD
        assert bridge.stats.entries_invalid.get("unexpected_error") == 0

    async def test_many_hostile_requests_log_a_few_lines(self, make_bridge: Any, caplog: Any) -> None:
        """300 requests each with a record nested 5,000 deep: a few rate-limited lines, no traceback
        (each once logged a full traceback: 546 KB of log in 2 s)."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        request = export_request([*good_records(), HOSTILE["filter_state_5000_deep"]])
        caplog.set_level(logging.INFO)
        await asyncio.gather(*(export_grpc(bridge.receiver.port, request) for _ in range(300)))
        assert bridge.stats.entries_invalid.get("malformed_attribute") == 300
        assert len(caplog.records) <= 3
        assert not any(record.exc_info for record in caplog.records)
        assert sum(len(record.getMessage()) for record in caplog.records) < 2000

    async def test_an_error_of_the_bridge_reaches_no_client_as_text(
        self, make_bridge: Any, monkeypatch: Any
    ) -> None:
        """Whatever a record's reading raises is refused as ``unexpected_error`` for that record alone;
        an error outside any record answers INTERNAL (gRPC) or 500 (HTTP) with a fixed text."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        original = bridge.receiver._records.read
        original_native = bridge.receiver._records.read_native

        def broken(attributes: Any, time_unix_nano: int) -> Any:
            if attributes.get("envoy.route_name") == "poison":
                raise RuntimeError("secret detail")
            return original(attributes, time_unix_nano)

        def broken_native(raw: bytes, start: int, end: int, shared: Any) -> Any:
            if b"poison" in raw[start:end]:  # read again by the Python path, which raises too
                raise RuntimeError("secret detail")
            return original_native(raw, start, end, shared)

        monkeypatch.setattr(bridge.receiver._records, "read", broken)
        monkeypatch.setattr(bridge.receiver._records, "read_native", broken_native)
        request = export_request([*good_records(), with_value("envoy.route_name", "poison")])
        response = await export_grpc(bridge.receiver.port, request)
        assert response.partial_success.rejected_log_records == 1
        assert "secret" not in response.partial_success.error_message
        assert bridge.stats.entries_invalid.get("unexpected_error") == 1

        async def fails(raw: bytes, peer: str) -> bytes:
            raise RuntimeError("secret detail")

        monkeypatch.setattr(bridge.receiver, "accept_logs", fails)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await export_grpc(bridge.receiver.port, request)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert error.value.details() == "internal_error: the request could not be processed"


class TestBoundedBySettings:
    async def test_records_past_the_bound_are_refused_unread(self, make_bridge: Any) -> None:
        """A request of MAX_RECORDS + 500 records: the first MAX_RECORDS taken, the rest answered as
        rejected (too_many_records), none silently lost."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        limit = otlp_logs.MAX_RECORDS
        response = await export_grpc(bridge.receiver.port, small_records(limit + 500))
        assert response.partial_success.rejected_log_records == 500
        assert "too_many_records: 500" in response.partial_success.error_message
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("too_many_records") == 500
        assert bridge.stats.entries_received.get("otlp", "http") == limit

    async def test_millions_of_empty_records_cost_their_bytes_not_72_times(self, make_bridge: Any) -> None:
        """2 million empty records (4 MB): each refused with a reason, read without building the
        request whole; over the size bound, gRPC's RESOURCE_EXHAUSTED and HTTP's 413."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        empty = 2_000_000
        raw = empty_records(empty)
        assert len(raw) < otlp_logs.MAX_REQUEST_BYTES
        response = await export_grpc(bridge.receiver.port, raw)
        assert response.partial_success.rejected_log_records == empty
        assert bridge.stats.entries_invalid.get("missing_node") == otlp_logs.MAX_RECORDS
        assert bridge.stats.entries_invalid.get("too_many_records") == empty - otlp_logs.MAX_RECORDS
        too_large = empty_records(otlp_logs.MAX_REQUEST_BYTES // 2)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await export_grpc(bridge.receiver.port, too_large)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await asyncio.to_thread(post_logs, bridge.http.port, too_large))[0] == 413
        assert (await asyncio.to_thread(post_logs, bridge.http.port, too_large, False))[0] == 413

    async def test_request_bodies_in_flight_are_bounded(self, make_bridge: Any, monkeypatch: Any) -> None:
        """Uploads held open mid-body take the bodies' budget; one more is answered 503 (retry) and
        counted, and once they are gone a request is taken again."""
        monkeypatch.setattr(connections, "MAX_BODY_BYTES_IN_FLIGHT", 3 * 1024 * 1024)
        bridge: Bridge = await make_bridge(bridge_config(None))
        port = bridge.http.port
        held = []
        part = 1024 * 1024
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                + f"Content-Length: {2 * part}\r\n\r\n".encode()
                + b"\x00" * part
            )
            held.append(sock)
        closed = bridge.stats.http_connections_closed
        assert await eventually(lambda: bridge.http._budget.held == 3 * part, 5)
        good = export_request(good_records()).SerializeToString()
        status, body = await asyncio.to_thread(post_logs, port, good)
        assert status == 503 and b"retry" in body
        assert closed.get("body_budget") == 1
        for sock in held:
            sock.close()
        assert await eventually(lambda: bridge.http._budget.held == 0, 5)
        status, _ = await asyncio.to_thread(post_logs, port, good)
        assert status == 200


class TestNoSilentLossNoFalseSuccess:
    async def test_a_large_http_request_is_answered_in_time_and_says_what_it_did(
        self, make_bridge: Any
    ) -> None:
        """150,000 small valid records (1.6 MiB) over HTTP: answered 200 well within the handler's
        timeout, every record taken or answered as rejected; received and refused add up."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        count = 150_000
        request = small_records(count)
        assert len(request) < 1.7 * 1024 * 1024
        status, body = await asyncio.to_thread(post_logs, bridge.http.port, request)
        assert status == 200
        answer = logs_service_pb2.ExportLogsServiceResponse.FromString(body)
        assert answer.partial_success.rejected_log_records == count - otlp_logs.MAX_RECORDS
        await bridge.pipeline.drain()
        stats = bridge.stats
        assert stats.entries_received.get("otlp", "http") == otlp_logs.MAX_RECORDS
        assert stats.entries_invalid.get("too_many_records") == count - otlp_logs.MAX_RECORDS

    async def test_records_analysis_has_no_room_for_are_answered_as_rejected(self) -> None:
        """When analysis has no room (its queue full), the answer says how many records were dropped,
        and why: never OK with rejected=0."""
        server = AlsServer("127.0.0.1:0", lambda batch: False, Stats())
        await server.start()
        try:
            response = await export_grpc(server.port, export_request(good_records()))
        finally:
            await server.stop(0)
        assert response.partial_success.rejected_log_records == GOOD
        assert f"queue_full: {GOOD}" in response.partial_success.error_message


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def logs_post(encoding: str, body: bytes) -> bytes:
    return (
        b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nConnection: close\r\n"
        + f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class TestHttpEdges:
    @pytest.mark.parametrize(
        ("encoding", "body", "says"),
        [
            ("gzip", b"not gzip at all", b"does not decompress"),
            ("deflate", gzip.compress(b"gzip, not deflate") + b"\x00", b"does not decompress"),
            ("br", b"\x00\x01", b"reads gzip, deflate"),
            ("zstd", b"\x00\x01", b"reads gzip, deflate"),
            ("compress", b"\x00\x01", b"reads gzip, deflate"),
        ],
    )
    async def test_a_body_not_as_its_encoding_says_is_a_400(
        self, make_bridge: Any, encoding: str, body: bytes, says: bytes
    ) -> None:
        """gzip on a body that is not gzip, deflate on gzip, and encodings als2otel does not read:
        400 with the reason, never a 500, never advice to install a package."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        answer = await asyncio.to_thread(raw_http, bridge.http.port, logs_post(encoding, body))
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer
        assert says in answer and b"install" not in answer.lower()

    async def test_good_deflate_is_read(self, make_bridge: Any) -> None:
        """deflate (zlib) as OTLP/HTTP clients may send it: read."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        body = zlib.compress(export_request(good_records()).SerializeToString())
        answer = await asyncio.to_thread(raw_http, bridge.http.port, logs_post("deflate", body))
        assert answer.startswith(b"HTTP/1.1 200")

    async def test_metrics_over_http_1_0_is_the_whole_page_unchunked(self, make_bridge: Any) -> None:
        """An HTTP/1.0 client (no chunked encoding) gets the page, ended by the connection's close."""
        bridge: Bridge = await make_bridge(bridge_config(None))
        answer = await asyncio.to_thread(raw_http, bridge.http.port, b"GET /metrics HTTP/1.0\r\n\r\n")
        head, _, page = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        assert page.decode().endswith("\n") and "als2otel_streams_active 0" in page.decode()


class TestTlsFront:
    async def test_a_client_closing_at_once_is_logged_as_closed(
        self, make_bridge: Any, pki: Any, tmp_path: Path, caplog: Any
    ) -> None:
        """A client that connects and closes at once is counted and logged as having closed the
        connection, not as a handshake that never came within the timeout."""
        bridge = await make_bridge(bridge_config(None, receiver=mtls_receiver(pki, tmp_path)))
        socket.create_connection(("127.0.0.1", bridge.receiver.port)).close()
        failed = bridge.stats.tls_handshakes_failed
        assert await eventually(lambda: failed.get("closed") == 1, 5)
        (line,) = [r.getMessage() for r in caplog.records if "TLS handshake from" in r.getMessage()]
        assert "closed the connection" in line and "within" not in line

    async def test_pending_handshakes_are_bounded_and_a_real_client_still_gets_in(
        self, make_bridge: Any, pki: Any, tmp_path: Path, monkeypatch: Any
    ) -> None:
        """Twice the bound of silent connections: the oldest pending handshakes are cut to make room
        (counted as overload), never more than the bound are held, and a real client's handshake
        made meanwhile succeeds."""
        monkeypatch.setattr(tls_front, "MAX_PENDING_HANDSHAKES", 8)
        bridge = await make_bridge(bridge_config(None, receiver=mtls_receiver(pki, tmp_path)))
        port = bridge.receiver.port
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        failed = bridge.stats.tls_handshakes_failed
        front = bridge.receiver._front
        assert await eventually(lambda: failed.get("overload") == 8, 5), failed.values
        assert len(front._handshaking) <= 8

        def handshake() -> bytes:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(pki["ca"].cert)
            context.load_cert_chain(pki["client"].cert, pki["client"].key)
            context.set_alpn_protocols(["h2"])
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                return tls.recv(9)  # the gRPC server's SETTINGS frame, relayed

        assert len(await asyncio.to_thread(handshake)) == 9
        for sock in silent:
            sock.close()
        assert failed.get("certificate") == 0
