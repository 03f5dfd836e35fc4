"""Protobuf wire encoding of OTLP spans, written by hand for the hot path.

Building a span through upb objects costs ~10 us; here a span is a join of
byte strings, and the translator keeps the encoded attributes that repeat from
call to call (method, cluster, peer, status) to reuse them. Field numbers are
opentelemetry-proto's (trace/v1, common/v1, resource/v1); the golden tests parse
the result with opentelemetry-proto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

try:
    from . import _spans as native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler, or with ALS2OTEL_NO_EXTENSIONS=1
    native = None

# Field tags (field number << 3 | wire type: 0 varint, 1 fixed64, 2 length-delimited),
# named by the message and field they open.
EXPORT_RESOURCE_SPANS = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
RESOURCE_SPANS_RESOURCE = b"\x0a"  # ResourceSpans.resource = 1
RESOURCE_SPANS_SCOPE_SPANS = b"\x12"  # ResourceSpans.scope_spans = 2
RESOURCE_ATTRIBUTE = b"\x0a"  # Resource.attributes = 1
SCOPE_SPANS_SCOPE = b"\x0a"  # ScopeSpans.scope = 1
SCOPE_SPANS_SPAN = b"\x12"  # ScopeSpans.spans = 2
SCOPE_NAME = b"\x0a"  # InstrumentationScope.name = 1
SCOPE_VERSION = b"\x12"  # InstrumentationScope.version = 2
KEY_VALUE_KEY = b"\x0a"  # KeyValue.key = 1
KEY_VALUE_VALUE = b"\x12"  # KeyValue.value = 2
ANY_STRING = b"\x0a"  # AnyValue.string_value = 1
ANY_INT = b"\x18"  # AnyValue.int_value = 3, varint
SPAN_START_TIME = 0x39  # Span.start_time_unix_nano = 7, fixed64
SPAN_END_TIME = 0x41  # Span.end_time_unix_nano = 8, fixed64
SPAN_TRACE_ID = b"\x0a\x10"  # field 1, 16 bytes
SPAN_SPAN_ID = b"\x12\x08"  # field 2, 8 bytes
SPAN_PARENT_ID = b"\x22\x08"  # field 4, 8 bytes
SPAN_NAME = b"\x2a"  # field 5
SPAN_KIND = b"\x30"  # field 6, varint
SPAN_ATTRIBUTE = b"\x4a"  # field 9
SPAN_STATUS = b"\x7a"  # field 15
STATUS_MESSAGE = b"\x12"  # Status.message = 2
STATUS_CODE_ERROR = b"\x18\x02"  # Status.code = 3: STATUS_CODE_ERROR

_SMALL_VARINTS = [bytes((n,)) for n in range(128)]


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def key(name: str) -> bytes:
    """A ``KeyValue``'s key (field 1), encoded once for :func:`string_attribute` and :func:`int_attribute`."""
    return length_delimited(KEY_VALUE_KEY, name.encode())


_KEYS: dict[str, bytes] = {}


def _any_value(value: str | int) -> bytes:
    """An ``AnyValue``: string = 1, int = 3 (negative ints as two's complement)."""
    if isinstance(value, int):
        return ANY_INT + varint(value if value >= 0 else value & 0xFFFFFFFFFFFFFFFF)
    text = value.encode()
    return ANY_STRING + varint(len(text)) + text


def key_value(name: str, value: str | int) -> bytes:
    """One ``KeyValue`` message: key = 1, value = 2."""
    encoded = _KEYS.get(name)
    if encoded is None:  # a fixed, small set of attribute names
        encoded = _KEYS[name] = key(name)
    any_value = _any_value(value)
    return encoded + KEY_VALUE_VALUE + varint(len(any_value)) + any_value


def attribute(name: str, value: str | int) -> bytes:
    """A span's ``attributes`` field (9) holding one KeyValue."""
    kv = key_value(name, value)
    return SPAN_ATTRIBUTE + varint(len(kv)) + kv


def string_attribute(encoded_key: bytes, value: str) -> bytes:
    """:func:`attribute` for a string, with the key from :func:`key`: the per-call attributes' path.
    Natively where ``_spans`` is built, else :func:`string_attribute_python`, the definition."""
    if native is not None:
        return native.string_attribute(encoded_key, value)  # type: ignore[no-any-return]
    return string_attribute_python(encoded_key, value)


def string_attribute_python(encoded_key: bytes, value: str) -> bytes:
    """:func:`string_attribute` as a join of byte strings."""
    text = value.encode()
    n = len(text)
    size = len(encoded_key) + n + 4  # the KeyValue when every length fits one byte
    if size < 128:
        return b"".join(
            (SPAN_ATTRIBUTE, _SMALL_VARINTS[size], encoded_key, KEY_VALUE_VALUE, _SMALL_VARINTS[n + 2],
             ANY_STRING, _SMALL_VARINTS[n], text)
        )  # fmt: skip
    any_value = ANY_STRING + varint(n) + text
    kv = encoded_key + KEY_VALUE_VALUE + varint(len(any_value)) + any_value
    return SPAN_ATTRIBUTE + varint(len(kv)) + kv


def int_attribute(encoded_key: bytes, value: int) -> bytes:
    """:func:`attribute` for an int, with the key from :func:`key`."""
    any_value = ANY_INT + varint(value if value >= 0 else value & 0xFFFFFFFFFFFFFFFF)
    kv = encoded_key + KEY_VALUE_VALUE + varint(len(any_value)) + any_value
    return SPAN_ATTRIBUTE + varint(len(kv)) + kv


_PACK_TIMES = struct.Struct("<BQBQ").pack  # start = 7 and end = 8, both fixed64


def span_kind(kind: int) -> bytes:
    """The encoded ``kind`` field (6) for :func:`span`."""
    return SPAN_KIND + _SMALL_VARINTS[kind]


def span(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes,
    name: bytes,
    kind: bytes,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    error: str,
) -> bytes:
    """One ``Span``, framed as a ``ScopeSpans.spans`` field (2), which is where every span goes:
    :func:`resource_spans` joins them as they are. ``name`` from :func:`span_name`, ``kind`` from
    :func:`span_kind`; the ids are 16 and 8 bytes. Natively where ``_spans`` is built, else (and
    for what it leaves: ids of other widths, times past 64 bits) :func:`span_python`, the definition."""
    if native is not None:
        encoded = native.span(
            trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, error
        )
        if encoded is not None:
            return encoded  # type: ignore[no-any-return]
    return span_python(trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, attributes, error)


def span_python(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes,
    name: bytes,
    kind: bytes,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    error: str,
) -> bytes:
    """:func:`span` as a join of byte strings."""
    status = (
        length_delimited(SPAN_STATUS, length_delimited(STATUS_MESSAGE, error.encode()) + STATUS_CODE_ERROR)
        if error
        else b""
    )
    times = _PACK_TIMES(SPAN_START_TIME, start_ns, SPAN_END_TIME, end_ns)
    size = len(name) + len(kind) + len(attributes) + len(status) + _IDS_AND_TIMES_SIZE
    if parent_span_id:
        size += _PARENT_SIZE
        return b"".join(
            (SCOPE_SPANS_SPAN, varint(size), SPAN_TRACE_ID, trace_id, SPAN_SPAN_ID, span_id,
             SPAN_PARENT_ID, parent_span_id, name, kind, times, attributes, status)
        )  # fmt: skip
    return b"".join(
        (SCOPE_SPANS_SPAN, varint(size), SPAN_TRACE_ID, trace_id, SPAN_SPAN_ID, span_id,
         name, kind, times, attributes, status)
    )  # fmt: skip


_IDS_AND_TIMES_SIZE = 2 + 16 + 2 + 8 + 18  # trace id, span id, start and end with their tags
_PARENT_SIZE = 2 + 8


def span_name(name: str) -> bytes:
    return length_delimited(SPAN_NAME, name.encode())


def resource_spans(resource: Iterable[tuple[str, str]], scope: bytes, spans: list[bytes]) -> bytes:
    """One ``ResourceSpans``: resource = 1 (attributes = 1), scope_spans = 2 (scope = 1, spans = 2);
    ``spans`` as :func:`span` makes them, framed."""
    resource_bytes = b"".join(length_delimited(RESOURCE_ATTRIBUTE, key_value(k, v)) for k, v in resource)
    scope_spans = scope + b"".join(spans)
    return length_delimited(RESOURCE_SPANS_RESOURCE, resource_bytes) + length_delimited(
        RESOURCE_SPANS_SCOPE_SPANS, scope_spans
    )


def scope(name: str, version: str) -> bytes:
    """``ScopeSpans.scope`` (field 1): an InstrumentationScope with name = 1, version = 2."""
    return length_delimited(
        SCOPE_SPANS_SCOPE,
        length_delimited(SCOPE_NAME, name.encode()) + length_delimited(SCOPE_VERSION, version.encode()),
    )


def export_request(groups: Iterable[bytes]) -> bytes:
    """``ExportTraceServiceRequest``: resource_spans = 1, repeated."""
    return b"".join(length_delimited(EXPORT_RESOURCE_SPANS, group) for group in groups)
