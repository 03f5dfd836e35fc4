"""Envoy's HTTP and TCP access-log entries (v2 or v3: the same bytes) into :class:`Entry`.

The hot path: each function reads the ~20 fields the analysis needs once.
:func:`decode_entry` is the stage the pipeline runs on each encoded entry: it
parses the entry alone (one that does not parse spoils nothing else), decodes
the values Envoy copies from traffic leniently (a byte that is not UTF-8
becomes U+FFFD in that value alone), and refuses times that cannot be a
recent call before they reach metrics or the topology.

Two builds, one behaviour. Where ``pip install .`` had a C compiler, ``_entries.c`` reads
each ordinary final entry straight from its bytes into the same :class:`Entry` this module's
Python path makes; anything out of the ordinary (and every entry, without the extension) takes
the Python path below, which is the definition of both: its rules for bad input are the only
ones (tests/receiver/test_native.py compares the two entry by entry).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from google.protobuf.message import DecodeError

from ..model import AnyValue, Entry, Protocol, SocketAddr
from ..stats import Counter
from ._proto import accesslog_pb2, core_pb2

try:
    from . import _entries as native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler, or with ALS2OTEL_NO_EXTENSIONS=1
    native = None

_FINAL_TYPES = frozenset(
    {
        accesslog_pb2.NotSet,
        accesslog_pb2.TcpConnectionEnd,
        accesslog_pb2.DownstreamEnd,
        accesslog_pb2.UdpSessionEnd,
    }
)

METHOD_NAMES = ("", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
"""Envoy's RequestMethod names, by enum value."""
HTTP_VERSIONS = ("", "1.0", "1.1", "2", "3")
"""HTTPAccessLogEntry.HTTPVersion as ``network.protocol.version``, by enum value."""

# Enum values -> names; unknown values read as "".
_METHODS = dict(enumerate(METHOD_NAMES))
_HTTP_VERSIONS = dict(enumerate(HTTP_VERSIONS))

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


MAX_CLOCK_SKEW_NS: Final = 24 * 3600 * 1_000_000_000
"""How far an entry's end may lie from the bridge's clock, either way; beyond it the entry is invalid."""

MAX_DURATION_NS = 366 * 24 * 3600 * 1_000_000_000
"""The longest offset an entry may record (a TCP connection can last for months, not longer)."""


def decode_entry(encoded: bytes, log_type: str, api_version: str, now_ns: int, cache: AddressCache) -> Entry:
    """One encoded entry of a message into an :class:`Entry`, checked against the bridge's clock.

    Raises :class:`InvalidEntry` (``malformed_entry``, ``time_out_of_range``, or a reason of
    :func:`normalize_http`) or :class:`IntermediateEntry`.
    """
    entry = native.decode(encoded, log_type == "http", api_version, cache) if native is not None else None
    if entry is None:
        entry = decode_entry_python(encoded, log_type, api_version, cache)
    end_ns = entry.start_ns + max(entry.downstream_end_ns, 0)
    skew = end_ns - now_ns
    if skew <= -MAX_CLOCK_SKEW_NS or skew >= MAX_CLOCK_SKEW_NS:
        raise InvalidEntry(
            "time_out_of_range", f"the entry ends {skew / 3.6e12:+.1f} h from the bridge's clock"
        )
    return entry


def decode_entry_python(encoded: bytes, log_type: str, api_version: str, cache: AddressCache) -> Entry:
    """:func:`decode_entry`'s parsing on the Python path alone (no check of the clock)."""
    try:
        if log_type == "http":
            entry = normalize_http(accesslog_pb2.HTTPAccessLogEntry.FromString(encoded), api_version, cache)
        else:
            entry = normalize_tcp(accesslog_pb2.TCPAccessLogEntry.FromString(encoded), api_version, cache)
    except DecodeError:
        raise InvalidEntry("malformed_entry", f"a {log_type.upper()} entry that does not parse") from None
    return entry


def _from_traffic(value: bytes) -> str:
    """A value Envoy copied from traffic, with any byte that is not UTF-8 replaced."""
    return value.decode("utf-8", "replace")


def _text_map(values: Any) -> dict[str, str] | None:
    """A logged header or trailer map, values decoded as by :func:`_from_traffic`; None when empty."""
    if not values:
        return None
    return {name: value.decode("utf-8", "replace") for name, value in values.items()}


MAX_CACHED_ADDRESSES = 16_384
"""Distinct encoded addresses kept decoded; the cache starts over when full."""


class AddressCache:
    """Encoded ``Address`` values and ``port_value`` fields, each decoded once.

    One per pipeline, which the bridge owns. Addresses are bounded by
    :data:`MAX_CACHED_ADDRESSES` (the table starts over when full, counted in
    ``rotations``); port fields by what they can encode (65,536 ports).
    """

    def __init__(self, rotations: Counter | None = None, max_addresses: int = MAX_CACHED_ADDRESSES) -> None:
        self.addresses: dict[bytes, SocketAddr] = {}
        self._ports: dict[bytes, int] = {}
        self.max_addresses = max_addresses
        self._rotations = rotations

    def decode(self, encoded: bytes, which_field: str) -> SocketAddr | None:
        """The socket address an encoded ``Address`` holds; an unset field (b"") is None.

        Callers look in :attr:`addresses` first.
        """
        if not encoded:
            return None
        found = self._ip_socket(encoded) or _any_address(encoded, which_field)
        if found is not None:
            if len(self.addresses) >= self.max_addresses:
                self.addresses.clear()
                if self._rotations is not None:
                    self._rotations.inc("addresses")
            self.addresses[encoded] = found
        return found

    def _ip_socket(self, encoded: bytes) -> SocketAddr | None:
        """The usual encoding read directly: ``Address{socket_address{address, port_value}}``.

        None for anything else (UDP, other kinds, named ports, unusual layouts),
        which :func:`_any_address` then decodes with the generated message.
        """
        try:
            n = encoded[3]  # the IP's length, after socket_address (1) and address (2) tags
            if encoded[0] != 0x0A or encoded[2] != 0x12 or encoded[1] != len(encoded) - 2:
                return None
            ip = encoded[4 : 4 + n].decode()
        except (IndexError, UnicodeDecodeError):
            return None
        port_field = encoded[4 + n :]
        port = self._ports.get(port_field)
        if port is None:
            port = self._port_field(port_field)
        return _new_tuple(SocketAddr, (ip, port)) if ip and port is not None else None

    def _port_field(self, field: bytes) -> int | None:
        """The port a ``port_value`` field of one to three bytes encodes; else None."""
        if not 2 <= len(field) <= 4 or field[0] != 0x18:
            return None
        port = shift = 0
        for i, byte in enumerate(field[1:], 1):
            port |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if i != len(field) - 1 or port > 0xFFFF:
                    return None
                self._ports[field] = port
                return port
        return None


_new_tuple = tuple.__new__  # SocketAddr without the Python-level __new__ a NamedTuple adds


def _any_address(encoded: bytes, which_field: str) -> SocketAddr | None:
    try:
        addr = core_pb2.Address.FromString(encoded)
    except DecodeError:
        raise InvalidEntry("malformed_address", f"{which_field} is not an Address") from None
    kind = addr.WhichOneof("address")
    if kind == "socket_address":
        socket = addr.socket_address
        return SocketAddr(socket.address, socket.port_value) if socket.address else None
    if kind == "envoy_internal_address":
        # Istio's internal listeners put the real "ip:port" in endpoint_id.
        ip, sep, port = addr.envoy_internal_address.endpoint_id.rpartition(":")
        if sep and port.isdigit() and ip:
            return SocketAddr(ip.strip("[]"), int(port))
        raise InvalidEntry("address_kind", f"{which_field} is an internal address without an endpoint")
    if kind is not None:
        raise InvalidEntry("address_kind", f"{which_field} is a {kind}, not an IP socket address")
    return None


if native is not None:
    if native.fields() != tuple(f.name for f in dataclasses.fields(Entry)):
        raise RuntimeError("_entries.c fills other fields than model.Entry has: rebuild it with them")
    native.configure(
        Entry,
        SocketAddr,
        AnyValue,
        METHOD_NAMES,
        HTTP_VERSIONS,
        tuple(code for _, code in RESPONSE_FLAG_CODES),
        tuple(accesslog_pb2.AccessLogType.Name(value) for value in range(14)),
    )


def _response_flags(common: accesslog_pb2.AccessLogCommon) -> tuple[str, ...]:
    if not common.HasField("response_flags"):
        return ()
    present = {fd.name for fd, _ in common.response_flags.ListFields()}
    if not present:
        return ()
    return tuple(code for name, code in RESPONSE_FLAG_CODES if name in present)


def _begin(raw: Any, protocol: Protocol, api_version: str, cache: AddressCache) -> Entry:
    """An Entry with everything AccessLogCommon holds, HTTP or TCP alike.

    The hot path: each field is read once, sub-messages held in locals, since
    every access to a sub-message builds a Python object. A duration that is
    unset (or zero) reads as not recorded (-1).
    """
    common = raw.common_properties
    if common.intermediate_log_entry or common.access_log_type not in _FINAL_TYPES:
        raise IntermediateEntry
    ts = common.start_time
    start_ns = ts.seconds * 1_000_000_000 + ts.nanos
    if not start_ns:
        if not raw.HasField("common_properties"):
            raise InvalidEntry(
                "missing_common_properties", f"{protocol.upper()} entry has no common_properties"
            )
        if not common.HasField("start_time"):
            raise InvalidEntry("missing_start_time", "entry has no start_time")
    # Fields set one by one: keyword arguments to a 30-field __init__ cost more than the stores.
    entry = Entry(api_version, protocol, start_ns)
    cached, decode = cache.addresses.get, cache.decode
    encoded = common.downstream_remote_address
    entry.downstream_remote = cached(encoded) or decode(encoded, "downstream_remote_address")
    encoded = common.downstream_direct_remote_address
    entry.downstream_direct_remote = cached(encoded) or decode(encoded, "downstream_direct_remote_address")
    encoded = common.downstream_local_address
    entry.downstream_local = cached(encoded) or decode(encoded, "downstream_local_address")
    encoded = common.upstream_remote_address
    entry.upstream_remote = cached(encoded) or decode(encoded, "upstream_remote_address")
    encoded = common.upstream_local_address
    entry.upstream_local = cached(encoded) or decode(encoded, "upstream_local_address")
    d = common.time_to_first_upstream_tx_byte
    first_tx = d.seconds * 1_000_000_000 + d.nanos
    d = common.time_to_last_upstream_rx_byte
    last_rx = d.seconds * 1_000_000_000 + d.nanos
    d = common.time_to_last_downstream_tx_byte
    end = d.seconds * 1_000_000_000 + d.nanos
    if not end:  # TCP entries, and HTTP ones that never answered, have only the duration
        d = common.duration
        end = d.seconds * 1_000_000_000 + d.nanos
    if not 0 <= first_tx <= MAX_DURATION_NS or not 0 <= last_rx <= MAX_DURATION_NS:
        raise InvalidEntry("bad_duration", "an upstream offset is negative or longer than a year")
    if not 0 <= end <= MAX_DURATION_NS:
        raise InvalidEntry("bad_duration", "the duration is negative or longer than a year")
    entry.first_upstream_tx_ns = first_tx or -1
    entry.last_upstream_rx_ns = last_rx or -1
    entry.downstream_end_ns = end or -1
    entry.upstream_cluster = common.upstream_cluster
    entry.route_name = common.route_name
    has = common.HasField
    if has("response_flags"):
        entry.response_flags = _response_flags(common)
    filter_state = common.filter_state_objects
    if filter_state:
        entry.filter_state = filter_state
    if has("tls_properties"):
        for san in common.tls_properties.peer_certificate_properties.subject_alt_name:
            if san.uri:
                entry.mtls = True
                entry.peer_principal = _from_traffic(san.uri)
                break
    return entry


def normalize_http(
    raw: accesslog_pb2.HTTPAccessLogEntry, api_version: str, cache: AddressCache | None = None
) -> Entry:
    """One HTTP entry; raises :class:`InvalidEntry` or :class:`IntermediateEntry`.

    ``cache``: the pipeline's; without one (a single entry, in tests or tools) a fresh one.
    """
    entry = _begin(raw, "http", api_version, cache or AddressCache())
    entry.http_version = _HTTP_VERSIONS.get(raw.protocol_version, "")
    request = raw.request
    entry.method = _METHODS.get(request.request_method, "")
    # What _from_traffic does, inline: five calls an entry cost more than the decoding itself.
    entry.scheme = request.scheme.decode("utf-8", "replace")
    entry.authority = request.authority.decode("utf-8", "replace")
    entry.path = request.path.decode("utf-8", "replace")
    entry.user_agent = request.user_agent.decode("utf-8", "replace")
    entry.request_id = request.request_id.decode("utf-8", "replace")
    request_headers = entry.request_headers = _text_map(request.request_headers)
    response = raw.response
    entry.response_code = response.response_code.value
    response_headers = entry.response_headers = _text_map(response.response_headers)
    trailers = response.response_trailers
    grpc_status: str | bytes | None = (trailers.get("grpc-status") if trailers else None) or (
        response_headers.get("grpc-status") if response_headers else None
    )
    content_type = request_headers.get("content-type", "") if request_headers else ""
    if content_type.startswith("application/grpc") or grpc_status is not None:
        entry.protocol = "grpc"
        if grpc_status is not None:
            entry.grpc_status = _grpc_status(grpc_status)
    return entry


def _grpc_status(value: str | bytes) -> int:
    """A ``grpc-status`` value as its code (0-16 are defined); -1 for anything else.

    ASCII digits only, and few of them: ``str.isdigit`` also accepts "²" and "٣",
    which ``int`` refuses, and a 5,000-digit value costs quadratic time to convert.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not 0 < len(value) <= 3 or not value.isdigit():  # bytes.isdigit: ASCII digits only
        return -1
    return int(value)


def normalize_tcp(
    raw: accesslog_pb2.TCPAccessLogEntry, api_version: str, cache: AddressCache | None = None
) -> Entry:
    """One TCP entry; raises :class:`InvalidEntry` or :class:`IntermediateEntry`."""
    entry = _begin(raw, "tcp", api_version, cache or AddressCache())
    conn = raw.connection_properties
    entry.received_bytes = conn.received_bytes
    entry.sent_bytes = conn.sent_bytes
    return entry
