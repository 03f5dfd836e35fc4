"""Normalisation: v2 and v3, HTTP and TCP entries into one Entry (golden)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support import als
from support.golden import assert_golden

from als2otel.model import Entry
from als2otel.receiver import InvalidEntry
from als2otel.receiver._proto import accesslog_pb2, core_pb2
from als2otel.receiver.normalize import IntermediateEntry, normalize_http, normalize_tcp

RID = "6e1c8a54-1b7f-4f8e-9d43-1f4e5d6c7b8a"


def as_dict(entry: Entry) -> dict[str, Any]:
    out = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    for key in ("filter_state", "request_headers", "response_headers"):
        value = getattr(entry, key)
        out[key] = dict(value) if value is not None else None
    out["filter_state"] = sorted(out["filter_state"]) if out["filter_state"] else None
    out["protocol"] = entry.protocol
    for key in (
        "downstream_remote",
        "downstream_direct_remote",
        "downstream_local",
        "upstream_remote",
        "upstream_local",
    ):
        out[key] = list(out[key]) if out[key] else None
    out["response_flags"] = list(entry.response_flags)
    return out


def outbound_entry() -> accesslog_pb2.HTTPAccessLogEntry:
    return als.http_entry(
        downstream_remote=("10.1.0.4", 41234),
        downstream_local=("10.96.12.5", 9080),
        upstream_remote=("10.1.0.9", 9080),
        upstream_local=("10.1.0.4", 52000),
        cluster="outbound|9080||reviews.default.svc.cluster.local",
        path="/reviews/0?x=1",
        authority="reviews:9080",
        request_id=RID,
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        start_ms=1500,
        duration_ms=12,
    )


class TestHttp:
    @pytest.mark.parametrize("api_version", ["v2", "v3"])
    def test_outbound_sidecar_entry(self, api_version: str) -> None:
        """A sidecar's outbound HTTP entry keeps every field the analysis reads (same bytes for v2)."""
        raw = accesslog_pb2.HTTPAccessLogEntry.FromString(outbound_entry().SerializeToString())
        assert_golden(f"normalize/http_outbound_{api_version}", as_dict(normalize_http(raw, api_version)))

    def test_inbound_after_gateway_uses_direct_remote(self) -> None:
        """X-Forwarded-For's user address stays downstream_remote; the caller is the direct remote."""
        raw = als.http_entry(
            downstream_remote=("203.0.113.7", 0),
            downstream_direct_remote=("10.1.0.2", 40100),
            downstream_local=("10.1.0.5", 9080),
            upstream_remote=("10.1.0.5", 9080),
            upstream_local=("127.0.0.6", 43000),
            cluster="inbound|9080||",
            status=500,
            flags=["upstream_remote_reset"],
        )
        entry = normalize_http(raw, "v3")
        assert entry.caller_address == ("10.1.0.2", 40100)
        assert entry.downstream_remote == ("203.0.113.7", 0)
        assert entry.response_flags == ("UR",)
        assert entry.response_code == 500

    def test_grpc_from_content_type_and_trailers(self) -> None:
        """content-type application/grpc makes a gRPC entry; grpc-status comes from the trailers."""
        raw = outbound_entry()
        raw.request.request_headers["content-type"] = b"application/grpc"
        raw.request.path = b"/hipstershop.CartService/GetCart"
        raw.response.response_trailers["grpc-status"] = b"14"
        entry = normalize_http(raw, "v3")
        assert entry.protocol == "grpc"
        assert entry.grpc_status == 14

    def test_no_response(self) -> None:
        """An entry without a response code reads as code 0, with its flags."""
        raw = als.http_entry(
            downstream_remote=("10.1.0.4", 1),
            downstream_local=("10.1.0.4", 15001),
            status=None,
            flags=["no_healthy_upstream"],
        )
        entry = normalize_http(raw, "v3")
        assert entry.response_code == 0
        assert entry.response_flags == ("UH",)


class TestTcp:
    @pytest.mark.parametrize("api_version", ["v2", "v3"])
    def test_tcp_entry(self, api_version: str) -> None:
        """A TCP connection's final entry with its byte counts."""
        raw = als.tcp_entry(
            downstream_remote=("10.1.0.7", 50000),
            downstream_local=("10.1.0.8", 27017),
            upstream_remote=("10.1.0.8", 27017),
            upstream_local=("127.0.0.6", 40000),
            cluster="inbound|27017||",
            received=1234,
            sent=5678,
        )
        assert_golden(f"normalize/tcp_inbound_{api_version}", as_dict(normalize_tcp(raw, api_version)))


class TestSkipped:
    @pytest.mark.parametrize(
        ("log_type", "kind"),
        [
            ("http", accesslog_pb2.DownstreamStart),
            ("http", accesslog_pb2.DownstreamPeriodic),
            ("tcp", accesslog_pb2.TcpUpstreamConnected),
            ("tcp", accesslog_pb2.TcpPeriodic),
        ],
    )
    def test_intermediate_types_are_not_calls(self, log_type: str, kind: int) -> None:
        """Start-of-stream and periodic entries are not counted as calls."""
        addr = {"downstream_remote": ("10.0.0.1", 1), "downstream_local": ("10.0.0.2", 2)}
        if log_type == "http":
            raw: Any = als.http_entry(**addr, access_log_type=kind)
            with pytest.raises(IntermediateEntry):
                normalize_http(raw, "v3")
        else:
            raw = als.tcp_entry(**addr, access_log_type=kind)
            with pytest.raises(IntermediateEntry):
                normalize_tcp(raw, "v3")

    def test_deprecated_intermediate_flag(self) -> None:
        """intermediate_log_entry=true is intermediate whatever the type says."""
        raw = als.http_entry(
            downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2), intermediate=True
        )
        with pytest.raises(IntermediateEntry):
            normalize_http(raw, "v3")


class TestInvalid:
    def test_missing_common_properties(self) -> None:
        """An entry without common properties is invalid, with a reason."""
        with pytest.raises(InvalidEntry) as caught:
            normalize_http(accesslog_pb2.HTTPAccessLogEntry(), "v3")
        assert caught.value.reason == "missing_common_properties"

    def test_missing_start_time(self) -> None:
        """Without a start time there is no span to place."""
        raw = accesslog_pb2.TCPAccessLogEntry()
        raw.common_properties.upstream_cluster = "x"
        with pytest.raises(InvalidEntry) as caught:
            normalize_tcp(raw, "v3")
        assert caught.value.reason == "missing_start_time"

    def test_pipe_address(self) -> None:
        """A Unix pipe is not an address the analysis can place."""
        raw = als.http_entry(downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2))
        raw.common_properties.downstream_remote_address = core_pb2.Address(
            pipe=core_pb2.Pipe(path="/var/run/x.sock")
        ).SerializeToString()
        with pytest.raises(InvalidEntry) as caught:
            normalize_http(raw, "v3")
        assert caught.value.reason == "address_kind"

    def test_internal_address_with_endpoint_id(self) -> None:
        """An Envoy internal address whose endpoint_id is ip:port is read as that address."""
        raw = als.http_entry(downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2))
        internal = core_pb2.EnvoyInternalAddress(server_listener_name="connect", endpoint_id="10.0.0.9:8080")
        raw.common_properties.upstream_remote_address = core_pb2.Address(
            envoy_internal_address=internal
        ).SerializeToString()
        assert normalize_http(raw, "v3").upstream_remote == ("10.0.0.9", 8080)


class TestAddresses:
    """Addresses arrive as encoded ``Address`` bytes, read directly in the usual layout and cached."""

    @pytest.mark.parametrize("ip", ["10.1.0.4", "fd00:10:244::1a", "::1"])
    @pytest.mark.parametrize("port", [0, 1, 127, 128, 16383, 16384, 65535])
    @pytest.mark.parametrize("protocol", [core_pb2.SocketAddress.TCP, core_pb2.SocketAddress.UDP])
    def test_read_as_the_generated_message_reads_them(self, ip: str, port: int, protocol: int) -> None:
        socket = core_pb2.SocketAddress(address=ip, port_value=port, protocol=protocol)  # type: ignore[arg-type]
        raw = als.http_entry(downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2))
        raw.common_properties.upstream_remote_address = core_pb2.Address(
            socket_address=socket
        ).SerializeToString()
        for _ in range(2):  # decoded, then from the cache
            assert normalize_http(raw, "v3").upstream_remote == (ip, port)

    def test_named_port_is_no_port(self) -> None:
        """A named port (never in access logs) is not misread as a number."""
        socket = core_pb2.SocketAddress(address="10.0.0.9", named_port="http")
        raw = als.http_entry(downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2))
        raw.common_properties.upstream_remote_address = core_pb2.Address(
            socket_address=socket
        ).SerializeToString()
        assert normalize_http(raw, "v3").upstream_remote == ("10.0.0.9", 0)

    @pytest.mark.parametrize("encoded", [b"\x0a\x09\x12\x03abc", b"\x0a\x0c\x12\x0810.0.0.", b"\xff\xff\xff"])
    def test_malformed_address_is_an_invalid_entry(self, encoded: bytes) -> None:
        raw = als.http_entry(downstream_remote=("10.0.0.1", 1), downstream_local=("10.0.0.2", 2))
        raw.common_properties.upstream_local_address = encoded
        with pytest.raises(InvalidEntry) as caught:
            normalize_http(raw, "v3")
        assert caught.value.reason == "malformed_address"
