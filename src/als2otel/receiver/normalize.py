"""Envoy's HTTP and TCP access-log entries (v2 or v3: the same bytes) into :class:`Entry`.

The hot path: each function reads the ~20 fields the analysis needs once, with
sub-messages held in locals.
"""

from __future__ import annotations

from typing import Any

from ..model import Entry, Protocol, SocketAddr
from ._proto import accesslog_pb2, core_pb2

_FINAL_TYPES = frozenset(
    {
        accesslog_pb2.NotSet,
        accesslog_pb2.TcpConnectionEnd,
        accesslog_pb2.DownstreamEnd,
        accesslog_pb2.UdpSessionEnd,
    }
)

_METHODS = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_HTTP_VERSIONS = ("", "1.0", "1.1", "2", "3")

# ResponseFlags field -> Envoy's short code (%RESPONSE_FLAGS%), in field order.
RESPONSE_FLAG_CODES = (
    ("failed_local_healthcheck", "LH"),
    ("no_healthy_upstream", "UH"),
    ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"),
    ("upstream_remote_reset", "UR"),
    ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"),
    ("upstream_overflow", "UO"),
    ("no_route_found", "NR"),
    ("delay_injected", "DI"),
    ("fault_injected", "FI"),
    ("rate_limited", "RL"),
    ("unauthorized_details", "UAEX"),
    ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"),
    ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"),
    ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"),
)


class InvalidEntry(Exception):
    """An entry that cannot be used; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class IntermediateEntry(Exception):
    """A periodic or start-of-stream entry: not a call of its own."""


def _address(addr: core_pb2.Address, which_field: str) -> SocketAddr | None:
    socket = addr.socket_address
    ip = socket.address
    if ip:  # the usual case, without asking which oneof is set
        return SocketAddr(ip, socket.port_value)
    kind = addr.WhichOneof("address")
    if kind is None or kind == "socket_address":
        return None
    if kind == "envoy_internal_address":
        # Istio's internal listeners put the real "ip:port" in endpoint_id.
        ip, sep, port = addr.envoy_internal_address.endpoint_id.rpartition(":")
        if sep and port.isdigit() and ip:
            return SocketAddr(ip.strip("[]"), int(port))
    raise InvalidEntry("address_kind", f"{which_field} is a {kind}, not an IP socket address")


def _response_flags(common: accesslog_pb2.AccessLogCommon) -> tuple[str, ...]:
    if not common.HasField("response_flags"):
        return ()
    present = {fd.name for fd, _ in common.response_flags.ListFields()}
    if not present:
        return ()
    return tuple(code for name, code in RESPONSE_FLAG_CODES if name in present)


_new_tuple = tuple.__new__  # SocketAddr without the Python-level __new__ a NamedTuple adds


def _common(entry: Entry, common: accesslog_pb2.AccessLogCommon) -> None:
    # Written out field by field: this runs for every entry, and each access to a
    # sub-message builds a Python object. The usual address (an IP socket) is read
    # inline; anything else (unset, internal, pipe) goes through _address.
    if common.intermediate_log_entry or common.access_log_type not in _FINAL_TYPES:
        raise IntermediateEntry
    addr = common.downstream_remote_address
    socket = addr.socket_address
    ip = socket.address
    entry.downstream_remote = (
        _new_tuple(SocketAddr, (ip, socket.port_value)) if ip else _address(addr, "downstream_remote_address")
    )
    addr = common.downstream_direct_remote_address
    socket = addr.socket_address
    ip = socket.address
    entry.downstream_direct_remote = (
        _new_tuple(SocketAddr, (ip, socket.port_value))
        if ip
        else _address(addr, "downstream_direct_remote_address")
    )
    addr = common.downstream_local_address
    socket = addr.socket_address
    ip = socket.address
    entry.downstream_local = (
        _new_tuple(SocketAddr, (ip, socket.port_value)) if ip else _address(addr, "downstream_local_address")
    )
    addr = common.upstream_remote_address
    socket = addr.socket_address
    ip = socket.address
    entry.upstream_remote = (
        _new_tuple(SocketAddr, (ip, socket.port_value)) if ip else _address(addr, "upstream_remote_address")
    )
    addr = common.upstream_local_address
    socket = addr.socket_address
    ip = socket.address
    entry.upstream_local = (
        _new_tuple(SocketAddr, (ip, socket.port_value)) if ip else _address(addr, "upstream_local_address")
    )
    has = common.HasField
    if has("duration"):
        d = common.duration
        entry.duration_ns = d.seconds * 1_000_000_000 + d.nanos
    if has("time_to_first_upstream_tx_byte"):
        d = common.time_to_first_upstream_tx_byte
        entry.first_upstream_tx_ns = d.seconds * 1_000_000_000 + d.nanos
    if has("time_to_last_upstream_rx_byte"):
        d = common.time_to_last_upstream_rx_byte
        entry.last_upstream_rx_ns = d.seconds * 1_000_000_000 + d.nanos
    if has("time_to_last_downstream_tx_byte"):
        d = common.time_to_last_downstream_tx_byte
        entry.last_downstream_tx_ns = d.seconds * 1_000_000_000 + d.nanos
    entry.upstream_cluster = common.upstream_cluster
    entry.route_name = common.route_name
    entry.upstream_failure = common.upstream_transport_failure_reason
    if has("response_flags"):
        entry.response_flags = _response_flags(common)
    filter_state = common.filter_state_objects
    if filter_state:
        entry.filter_state = filter_state
    if has("tls_properties"):
        for san in common.tls_properties.peer_certificate_properties.subject_alt_name:
            if san.uri:
                entry.mtls = True
                entry.peer_principal = san.uri
                break


def _start_ns(common: accesslog_pb2.AccessLogCommon) -> int:
    if not common.HasField("start_time"):
        raise InvalidEntry("missing_start_time", "entry has no start_time")
    ts = common.start_time
    return int(ts.seconds * 1_000_000_000 + ts.nanos)


def _begin(raw: Any, protocol: Protocol, api_version: str) -> Entry:
    """An Entry with everything AccessLogCommon holds, HTTP or TCP alike."""
    if not raw.HasField("common_properties"):
        raise InvalidEntry("missing_common_properties", f"{protocol.upper()} entry has no common_properties")
    common = raw.common_properties
    entry = Entry(api_version, protocol, _start_ns(common))
    _common(entry, common)
    return entry


def normalize_http(raw: accesslog_pb2.HTTPAccessLogEntry, api_version: str) -> Entry:
    """One HTTP entry; raises :class:`InvalidEntry` or :class:`IntermediateEntry`."""
    entry = _begin(raw, "http", api_version)
    version = raw.protocol_version
    entry.http_version = _HTTP_VERSIONS[version] if 0 <= version < len(_HTTP_VERSIONS) else ""
    request = raw.request
    method = request.request_method
    entry.method = _METHODS[method] if 0 <= method < len(_METHODS) else ""
    entry.scheme = request.scheme
    entry.authority = request.authority
    entry.path = request.path
    entry.user_agent = request.user_agent
    entry.request_id = request.request_id
    entry.received_bytes = request.request_headers_bytes + request.request_body_bytes
    request_headers = request.request_headers
    if request_headers:
        entry.request_headers = request_headers
    response = raw.response
    if response.HasField("response_code"):
        entry.response_code = response.response_code.value
    entry.sent_bytes = response.response_headers_bytes + response.response_body_bytes
    response_headers = response.response_headers
    trailers = response.response_trailers
    if response_headers:
        entry.response_headers = response_headers
    grpc_status = None
    if trailers or response_headers:
        grpc_status = trailers.get("grpc-status") or response_headers.get("grpc-status")
    content_type = request_headers.get("content-type", "") if request_headers else ""
    if content_type.startswith("application/grpc") or grpc_status is not None:
        entry.protocol = "grpc"
        if grpc_status is not None and grpc_status.isdigit():
            entry.grpc_status = int(grpc_status)
    return entry


def normalize_tcp(raw: accesslog_pb2.TCPAccessLogEntry, api_version: str) -> Entry:
    """One TCP entry; raises :class:`InvalidEntry` or :class:`IntermediateEntry`."""
    entry = _begin(raw, "tcp", api_version)
    conn = raw.connection_properties
    entry.received_bytes = conn.received_bytes
    entry.sent_bytes = conn.sent_bytes
    return entry
