"""Envoy's OpenTelemetry access logger in: OTLP log records into the entries ALS would carry.

Envoy's ``envoy.access_loggers.open_telemetry`` (Istio's ``envoyOtelAls`` provider) sends
each access log as an OTLP log record whose attributes its configuration names; Istio
sends nothing usable unless the provider's ``logFormat.labels`` ask for it. The attribute
set below is the contract: :data:`ATTRIBUTES` maps each name to the Envoy command operator
that fills it (deploy/istio/otel-als.yaml configures exactly these). Each record becomes
the encoded ALS entry the same call would have arrived as, and its proxy the identity an
ALS stream's identifier would give, so both loggers give the same spans (ids included),
metric series and topology edges. A record without the proxy's node id, or with a value
that cannot be read, is invalid with its reason; nothing is guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from .. import istio
from ..model import Proxy
from ..net import split_hostport
from ..stats import Counter
from ._proto import accesslog_pb2, als_pb2, core_pb2
from .identity import identify
from .normalize import HTTP_VERSIONS, METHOD_NAMES, RESPONSE_FLAG_CODES, InvalidEntry

try:
    from . import _entries as native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler, or with ALS2OTEL_NO_EXTENSIONS=1
    native = None

NATIVE_RECORD_FIELDS = {
    "LogRecord": {1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12},
    "KeyValue": {1, 2, 3},
    "AnyValue": {1, 2, 3, 4, 5, 6, 7, 8},
}
"""The fields of OTLP's messages the native record reader knows; another version of
opentelemetry-proto (other fields, which protobuf would check) reads records through protobuf."""
native_records = (
    native
    if native is not None
    and {
        message.DESCRIPTOR.name: {f.number for f in message.DESCRIPTOR.fields}
        for message in (logs_pb2.LogRecord, common_pb2.KeyValue, common_pb2.AnyValue)
    }
    == NATIVE_RECORD_FIELDS
    else None
)

STRUCT = "type.googleapis.com/google.protobuf.Struct"
BYTES_VALUE = "type.googleapis.com/" + wrappers_pb2.BytesValue.DESCRIPTOR.full_name
PEER_KEYS = ("upstream_peer", "downstream_peer", "wasm.upstream_peer", "wasm.downstream_peer")
"""Istio's exchanged peer metadata, both generations (the keys mx-mesh reads)."""
UPSTREAM_PEER = "envoy.upstream_filter_state.upstream_peer"
"""Istio 1.24+'s upstream peer where the upstream connection's filter state holds it (the client side
of TCP, and of HTTP over Istio's mutual TLS): read when ``envoy.filter_state.upstream_peer`` is empty."""
NODE_METADATA = ("NAME", "NAMESPACE", "WORKLOAD_NAME", "OWNER", "CLUSTER_ID", "INSTANCE_IPS")
NODE_LABELS = (
    "app",
    "version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/name",
)

ATTRIBUTES: dict[str, str] = {
    # The reporting proxy (what an ALS stream's identifier carries).
    "envoy.node.id": "%CEL(xds.node.id)%",
    **{f"envoy.node.metadata.{key}": f"%CEL(xds.node.metadata.{key})%" for key in NODE_METADATA},
    **{f"envoy.node.labels.{label}": f"%CEL(xds.node.metadata.LABELS['{label}'])%" for label in NODE_LABELS},
    # The connection and the request's path through the proxy.
    "envoy.downstream.remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "envoy.downstream.direct_remote_address": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "envoy.downstream.local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "envoy.upstream.remote_address": "%UPSTREAM_REMOTE_ADDRESS%",
    "envoy.upstream.local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "envoy.upstream.cluster": "%UPSTREAM_CLUSTER_RAW%",
    "envoy.route_name": "%ROUTE_NAME%",
    "envoy.access_log_type": "%ACCESS_LOG_TYPE%",
    "envoy.response_flags": "%RESPONSE_FLAGS%",
    "envoy.downstream.peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    # Times: the record's time is the start; offsets from it in nanoseconds.
    "envoy.start_time": "%START_TIME(%s.%9f)%",
    "envoy.duration_ns": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:ns)%",
    "envoy.upstream.request_start_ns": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:ns)%",
    "envoy.upstream.response_end_ns": "%COMMON_DURATION(DS_RX_BEG:US_RX_END:ns)%",
    # HTTP, named as OpenTelemetry's semantic conventions name them where they do.
    "http.request.method": "%REQ(:METHOD)%",
    "url.scheme": "%REQ(:SCHEME)%",
    "http.request.header.host": "%REQ(:AUTHORITY)%",
    "url.path": "%REQ(:PATH)%",  # with the query, as :path carries it
    "user_agent.original": "%REQ(USER-AGENT)%",
    "http.request.header.x-request-id": "%REQ(X-REQUEST-ID)%",
    "http.request.header.traceparent": "%REQ(TRACEPARENT)%",
    "http.request.header.tracestate": "%REQ(TRACESTATE)%",
    "http.request.header.b3": "%REQ(B3)%",
    "http.request.header.x-b3-traceid": "%REQ(X-B3-TRACEID)%",
    "http.request.header.x-b3-spanid": "%REQ(X-B3-SPANID)%",
    "http.request.header.content-type": "%REQ(CONTENT-TYPE)%",
    "http.response.status_code": "%RESPONSE_CODE%",
    "http.response.header.grpc-status": "%RESP(GRPC-STATUS)%",
    "http.response.trailer.grpc-status": "%TRAILER(GRPC-STATUS)%",
    "network.protocol.name": "%PROTOCOL%",
    # TCP (a record with envoy.log_type "tcp").
    "envoy.log_type": "http",
    "envoy.bytes_received": "%BYTES_RECEIVED%",
    "envoy.bytes_sent": "%BYTES_SENT%",
    # Istio's exchanged peer metadata: 1.24+ a Struct; up to 1.23 a FlatNode in a WasmState, which
    # Envoy serialises as an Any holding a BytesValue. %FILTER_STATE% writes either as JSON.
    **{f"envoy.filter_state.{key}": f"%FILTER_STATE({key})%" for key in PEER_KEYS},
    # From 1.24 the TCP metadata exchange (also HTTP over Istio mTLS) keeps the client side's peer in
    # the upstream connection's filter state, where only %UPSTREAM_FILTER_STATE% reads it.
    UPSTREAM_PEER: "%UPSTREAM_FILTER_STATE(upstream_peer)%",
}
"""Every attribute als2otel reads from a record, and the Envoy command operator that fills it."""
if native is not None and not set(native.record_attributes()) <= ATTRIBUTES.keys():
    raise RuntimeError("_entries.c reads record attributes ATTRIBUTES does not name: rebuild it")

# Names -> the enum values ALS carries (the inverse of normalisation's tables).
_METHODS = {name: number for number, name in enumerate(METHOD_NAMES) if name}
_PROTOCOLS = {f"HTTP/{version}": number for number, version in enumerate(HTTP_VERSIONS) if version}
_FLAG_FIELDS = {code: name for name, code in RESPONSE_FLAG_CODES}
_ACCESS_LOG_TYPES = {name: number for name, number in accesslog_pb2.AccessLogType.items()}
MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""An OTLP logs request's size at most, serialized (decompressed over HTTP): the OpenTelemetry
Collector's default for OTLP/gRPC. Envoy's logger sends a request per 16 KiB buffered."""

MAX_RECORDS = 10_000
"""Records read from one request at most; the rest are refused unread (``too_many_records``)."""

MAX_CACHED_PROXIES = 4096
"""Reporting proxies kept identified (by their node attributes); the table starts over when full."""


def read_record(raw: bytes, start: int, end: int) -> tuple[dict[str, str], int]:
    """The log record in ``raw[start:end]``: its attributes as text (:func:`strings`) and its
    ``time_unix_nano``. Raises :class:`InvalidEntry` (``malformed_entry``) when it does not parse.

    Natively where the entry reader was built (``_entries.c``), for every record out of nothing
    but what this version of OTLP declares; else, and for anything out of the ordinary, through
    protobuf, which stays the definition (tests/receiver/test_native.py compares the two).
    """
    if native_records is not None:
        read: tuple[dict[str, str], int] | None = native_records.record(raw, start, end)
        if read is not None:
            return read
    return read_record_python(raw, start, end)


def read_record_python(raw: bytes, start: int, end: int) -> tuple[dict[str, str], int]:
    """:func:`read_record` through protobuf alone."""
    try:
        record = logs_pb2.LogRecord.FromString(raw[start:end])
    except DecodeError:
        raise InvalidEntry("malformed_entry", "the record does not parse") from None
    return strings(record.attributes), record.time_unix_nano


def strings(key_values: Any) -> dict[str, str]:
    """Attributes as text: strings as they are; whole numbers, doubles and booleans as written."""
    out = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind in ("int_value", "double_value", "bool_value"):
            out[kv.key] = str(getattr(value, kind))
    return out


class RecordReader:
    """Turns records into (proxy, log type, encoded ALS entry); remembers the proxies it identified."""

    def __init__(
        self, name_labels: tuple[str, ...] = istio.NAME_LABELS, rotations: Counter | None = None
    ) -> None:
        """``rotations`` counts each time the full table starts over (``cache="otlp_proxies"``)."""
        self._name_labels = name_labels
        # By their node attributes' values, or the native reader's key of them (same proxies).
        self._proxies: dict[tuple[str, ...] | bytes, Proxy] = {}
        self._rotations = rotations

    def read(self, attributes: Mapping[str, str], time_unix_nano: int) -> tuple[Proxy, str, bytes]:
        """Raises :class:`InvalidEntry` (``missing_node``, ``malformed_attribute``)."""
        return self.proxy(attributes), *entry_of(attributes, time_unix_nano)

    def read_native(
        self, raw: bytes, start: int, end: int, shared: dict[str, str]
    ) -> tuple[Proxy, str, bytes] | None:
        """:meth:`read` of the record in ``raw[start:end]`` under its resource's attributes
        ``shared`` (those of :data:`ATTRIBUTES`, none of the proxy's: :func:`native_shared`), from
        its bytes, with no string made of its values (``_entries.record_entry``); None where the
        Python path reads it (:func:`read_record`, then :meth:`read`)."""
        if native_records is None:
            return None
        found: tuple[bytes, str, bytes] | None = native_records.record_entry(raw, start, end, shared)
        if found is None:
            return None
        key, log_type, entry = found
        proxy = self._proxies.get(key)
        if proxy is None:
            proxy = self._remember(key, self.proxy(read_record(raw, start, end)[0]))
        return proxy, log_type, entry

    def proxy(self, attributes: Mapping[str, str]) -> Proxy:
        node_id = _value(attributes, "envoy.node.id")
        if not node_id:
            raise InvalidEntry("missing_node", "the record has no envoy.node.id")
        key = tuple(map(attributes.get, _NODE_KEYS, _NO_NODE_VALUES))
        proxy = self._proxies.get(key)
        if proxy is None:
            proxy = self._remember(key, identify(identifier_of(attributes), self._name_labels))
        return proxy

    def _remember(self, key: tuple[str, ...] | bytes, proxy: Proxy) -> Proxy:
        if len(self._proxies) >= MAX_CACHED_PROXIES:
            self._proxies.clear()
            if self._rotations is not None:
                self._rotations.inc("otlp_proxies")
        self._proxies[key] = proxy
        return proxy


_NODE_KEYS = tuple(name for name in ATTRIBUTES if name.startswith("envoy.node."))
_NO_NODE_VALUES = ("",) * len(_NODE_KEYS)
if native is not None and set(native.node_attributes()) != set(_NODE_KEYS):
    raise RuntimeError("_entries.c names a record's proxy by other attributes than _NODE_KEYS: rebuild it")


def native_shared(shared: dict[str, str]) -> dict[str, str] | None:
    """What :meth:`RecordReader.read_native` takes of a resource's attributes: those entries are made
    of; None when the resource names the proxy (its records are read by the Python path)."""
    if any(name in shared for name in _NODE_KEYS):
        return None
    return {name: value for name, value in shared.items() if name in ATTRIBUTES}


def identifier_of(attributes: Mapping[str, str]) -> als_pb2.StreamAccessLogsMessage.Identifier:
    """The identifier an ALS stream of the same proxy would carry (node id and metadata)."""
    identifier = als_pb2.StreamAccessLogsMessage.Identifier(log_name="otel_envoy_accesslog")
    identifier.node.id = _value(attributes, "envoy.node.id")
    metadata: dict[str, Any] = {}
    for key in NODE_METADATA:
        value = _value(attributes, f"envoy.node.metadata.{key}")
        if value:
            metadata[key] = value
    labels = {label: v for label in NODE_LABELS if (v := _value(attributes, f"envoy.node.labels.{label}"))}
    if labels:
        metadata["LABELS"] = labels
    if metadata:
        identifier.node.metadata.update(metadata)
    return identifier


def log_type_of(attributes: Mapping[str, str]) -> str:
    """ "tcp" for a record of a TCP connection (``envoy.log_type``), else "http"."""
    return "tcp" if attributes.get("envoy.log_type") == "tcp" else "http"


def entry_of(attributes: Mapping[str, str], time_unix_nano: int) -> tuple[str, bytes]:
    """The log type and the encoded ALS entry of a record: natively where the extension is built
    and the record is ordinary (no filter state, every value readable), else by
    :func:`entry_of_python`, the definition of both, which raises for what cannot be read."""
    if native is not None:
        found = native.entry(attributes, time_unix_nano)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return entry_of_python(attributes, time_unix_nano)


def entry_of_python(attributes: Mapping[str, str], time_unix_nano: int) -> tuple[str, bytes]:
    """:func:`entry_of` through protobuf's messages."""
    tcp = log_type_of(attributes) == "tcp"
    entry: Any = accesslog_pb2.TCPAccessLogEntry() if tcp else accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    start = time_unix_nano or _start_time(attributes)
    if not start:
        raise InvalidEntry("missing_start_time", "the record has neither a time nor envoy.start_time")
    common.start_time.FromNanoseconds(start)
    for field, name in (
        ("downstream_remote_address", "envoy.downstream.remote_address"),
        ("downstream_direct_remote_address", "envoy.downstream.direct_remote_address"),
        ("downstream_local_address", "envoy.downstream.local_address"),
        ("upstream_remote_address", "envoy.upstream.remote_address"),
        ("upstream_local_address", "envoy.upstream.local_address"),
    ):
        address = _value(attributes, name)
        if address:
            setattr(common, field, _address(address, name))
    common.upstream_cluster = _value(attributes, "envoy.upstream.cluster")
    common.route_name = _value(attributes, "envoy.route_name")
    kind = _value(attributes, "envoy.access_log_type")
    if kind:
        common.access_log_type = _ACCESS_LOG_TYPES.get(kind, accesslog_pb2.NotSet)
    for field, name in (
        ("duration" if tcp else "time_to_last_downstream_tx_byte", "envoy.duration_ns"),
        ("time_to_first_upstream_tx_byte", "envoy.upstream.request_start_ns"),
        ("time_to_last_upstream_rx_byte", "envoy.upstream.response_end_ns"),
    ):
        nanos = _number(attributes, name, DURATION_MAX_NS)
        if nanos:
            getattr(common, field).FromNanoseconds(nanos)
    for code in _value(attributes, "envoy.response_flags").split(","):
        flag = _FLAG_FIELDS.get(code)
        if flag is not None and flag != "unauthorized_details":
            setattr(common.response_flags, flag, True)
    san = _value(attributes, "envoy.downstream.peer_uri_san")
    if san:
        common.tls_properties.peer_certificate_properties.subject_alt_name.add().uri = san.encode()
    for key in PEER_KEYS:
        state = _value(attributes, f"envoy.filter_state.{key}")
        if not state and key == "upstream_peer":
            state = _value(attributes, UPSTREAM_PEER)
        if state:
            common.filter_state_objects[key].CopyFrom(_filter_state_any(state, key))
    if tcp:
        entry.connection_properties.received_bytes = _number(attributes, "envoy.bytes_received")
        entry.connection_properties.sent_bytes = _number(attributes, "envoy.bytes_sent")
        return "tcp", entry.SerializeToString()
    _http(entry, attributes)
    return "http", entry.SerializeToString()


def _http(entry: accesslog_pb2.HTTPAccessLogEntry, attributes: Mapping[str, str]) -> None:
    entry.protocol_version = _PROTOCOLS.get(_value(attributes, "network.protocol.name"), 0)  # type: ignore[assignment]
    request = entry.request
    request.request_method = _METHODS.get(_value(attributes, "http.request.method"), 0)  # type: ignore[assignment]
    request.scheme = _value(attributes, "url.scheme").encode()
    request.authority = _value(attributes, "http.request.header.host").encode()
    request.path = _value(attributes, "url.path").encode()
    request.user_agent = _value(attributes, "user_agent.original").encode()
    request.request_id = _value(attributes, "http.request.header.x-request-id").encode()
    for name in ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "content-type"):
        value = _value(attributes, f"http.request.header.{name}")
        if value:
            request.request_headers[name] = value.encode()
    code = _number(attributes, "http.response.status_code", UINT32_MAX)
    if code:
        entry.response.response_code.value = code
    status = _value(attributes, "http.response.header.grpc-status")
    if status:
        entry.response.response_headers["grpc-status"] = status.encode()
    status = _value(attributes, "http.response.trailer.grpc-status")
    if status:
        entry.response.response_trailers["grpc-status"] = status.encode()


def _value(attributes: Mapping[str, str], name: str) -> str:
    """An attribute's text; Envoy's "-" (nothing there) reads as empty."""
    value = attributes.get(name, "")
    return "" if value == "-" else value


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
DURATION_MAX_NS = 315_576_000_000 * 1_000_000_000
"""protobuf's Duration: at most 10,000 years."""
TIMESTAMP_MAX_S = 253_402_300_799
"""protobuf's Timestamp: at most 9999-12-31T23:59:59Z."""
MAX_FILTER_STATE_DEPTH = 16
"""Levels of nesting a filter state's JSON may have; Istio's peer metadata has three."""


def _number(attributes: Mapping[str, str], name: str, maximum: int = UINT64_MAX) -> int:
    """A whole number from 0 to ``maximum`` (the width of the ALS field it fills)."""
    text = _value(attributes, name)
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise InvalidEntry("malformed_attribute", f"{name} is not a whole number")
    number = int(text)
    if number > maximum:
        raise InvalidEntry("malformed_attribute", f"{name} is out of range (at most {maximum})")
    return number


def _start_time(attributes: Mapping[str, str]) -> int:
    text = _value(attributes, "envoy.start_time")
    seconds, _, fraction = text.partition(".")
    if not text:
        return 0
    if not (seconds.isascii() and seconds.isdigit() and len(seconds) <= 12) or not (
        fraction == "" or (fraction.isascii() and fraction.isdigit() and len(fraction) <= 9)
    ):
        raise InvalidEntry("malformed_attribute", "envoy.start_time is not seconds.nanoseconds")
    if int(seconds) > TIMESTAMP_MAX_S:
        raise InvalidEntry("malformed_attribute", "envoy.start_time is past the year 9999")
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


def _address(text: str, name: str) -> bytes:
    """``ip:port`` or ``[v6]:port`` as an encoded ``Address``."""
    parts = split_hostport(text)
    if parts is None:
        raise InvalidEntry("malformed_attribute", f"{name} is not ip:port")
    socket = core_pb2.SocketAddress(address=parts[0], port_value=parts[1])
    return core_pb2.Address(socket_address=socket).SerializeToString()


def _filter_state_any(text: str, key: str) -> any_pb2.Any:
    """Filter state as JSON, as the Any ALS would carry: an Any's own JSON (``{"@type": ...,
    "value": ...}``, how Envoy writes a WasmState's BytesValue), or a Struct's JSON object."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the interpreter's limit
        raise InvalidEntry("malformed_attribute", f"envoy.filter_state.{key} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidEntry("malformed_attribute", f"envoy.filter_state.{key} is not a JSON object")
    if _depth(value) > MAX_FILTER_STATE_DEPTH:
        raise InvalidEntry(
            "malformed_attribute", f"envoy.filter_state.{key} is nested past {MAX_FILTER_STATE_DEPTH} levels"
        )
    wrapped = any_pb2.Any()
    if "@type" in value:
        if value["@type"] not in (STRUCT, BYTES_VALUE):
            raise InvalidEntry("malformed_attribute", f"envoy.filter_state.{key} is of an unknown type")
        try:
            json_format.ParseDict(value, wrapped)
        except (json_format.ParseError, ValueError, TypeError, OverflowError):
            raise InvalidEntry(
                "malformed_attribute", f"envoy.filter_state.{key} is not a valid Any"
            ) from None
        return wrapped
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (ValueError, TypeError, OverflowError):  # OverflowError: a number past a double's range
        raise InvalidEntry("malformed_attribute", f"envoy.filter_state.{key} is not a Struct") from None
    wrapped.Pack(struct)
    return wrapped


def _depth(value: Any) -> int:
    """How deeply JSON arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_FILTER_STATE_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest
