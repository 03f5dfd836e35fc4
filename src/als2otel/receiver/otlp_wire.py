"""An OTLP ``ExportLogsServiceRequest`` read record by record, without building it whole.

Parsed whole, a request costs about 72 times its bytes (an empty log record is 2 bytes on
the wire and a Python-visible message once parsed), so what a sender sends, not the
configuration, would bound the bridge's memory. :func:`scan` walks the request's outer
layers (resource logs, scope logs) on the wire instead and notes where each record's
bytes are, up to a bound; records are then parsed one at a time. What is held at once is
the request's bytes, the list of record positions, and one record.

Field numbers are opentelemetry-proto's (collector/logs/v1, logs/v1, resource/v1). A request
whose outer layers are not valid protobuf raises :class:`DecodeError`, as parsing it whole
would; a record that does not parse is the caller's to refuse alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry.proto.resource.v1 import resource_pb2

# Field numbers, named by the message and field.
REQUEST_RESOURCE_LOGS = 1  # ExportLogsServiceRequest.resource_logs
RESOURCE_LOGS_RESOURCE = 1  # ResourceLogs.resource
RESOURCE_LOGS_SCOPE_LOGS = 2  # ResourceLogs.scope_logs
SCOPE_LOGS_LOG_RECORDS = 2  # ScopeLogs.log_records

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


@dataclass(slots=True)
class Scan:
    """Where a request's records are: the first ``limit`` of them, and how many more there were."""

    records: list[tuple[resource_pb2.Resource, int, int]] = field(default_factory=list)
    """Each record's resource (shared by the records of one ResourceLogs) and its bytes' span."""
    beyond_limit: int = 0


def scan(raw: bytes, limit: int, into: Scan) -> Iterator[None]:
    """Walks the request, filling in ``into``; yields every few thousand records so that an async
    caller can yield to its event loop between them. ``into`` is whole once the walk ends.

    Raises :class:`DecodeError` where the outer layers are not valid protobuf.
    """
    seen = 0
    for start, end in _fields_of(raw, 0, len(raw), REQUEST_RESOURCE_LOGS):
        resource = _resource(raw, start, end)
        for scope_start, scope_end in _fields_of(raw, start, end, RESOURCE_LOGS_SCOPE_LOGS):
            for record_start, record_end in _fields_of(raw, scope_start, scope_end, SCOPE_LOGS_LOG_RECORDS):
                seen += 1
                if len(into.records) < limit:
                    into.records.append((resource, record_start, record_end))
                else:
                    into.beyond_limit += 1
                if seen % SCAN_SLICE == 0:
                    yield


SCAN_SLICE = 4096
"""Records walked between two yields of :func:`scan`."""


def _resource(raw: bytes, start: int, end: int) -> resource_pb2.Resource:
    """The ResourceLogs' resource; several occurrences merge, as protobuf's parsers merge them."""
    parts = [raw[s:e] for s, e in _fields_of(raw, start, end, RESOURCE_LOGS_RESOURCE)]
    try:
        return resource_pb2.Resource.FromString(b"".join(parts))
    except DecodeError:
        raise DecodeError("a resource does not parse") from None


def _fields_of(raw: bytes, start: int, end: int, wanted: int) -> Iterator[tuple[int, int]]:
    """The spans of the length-delimited fields numbered ``wanted`` in ``raw[start:end]``; every
    other field is checked for its wire type and skipped."""
    position = start
    while position < end:
        key, position = _varint(raw, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            _, position = _varint(raw, position, end)
        elif wire_type == FIXED64:
            position += 8
        elif wire_type == FIXED32:
            position += 4
        elif wire_type == LENGTH_DELIMITED:
            length, position = _varint(raw, position, end)
            value_start, position = position, position + length
            if position <= end and number == wanted:
                yield value_start, position
        else:  # groups (3, 4) are not in OTLP; 6 and 7 are not wire types
            raise DecodeError(f"wire type {wire_type}")
        if position > end:
            raise DecodeError("a field runs past the end of its message")


def _varint(raw: bytes, position: int, end: int) -> tuple[int, int]:
    byte = raw[position] if position < end else 0x100
    if byte < 0x80:  # one byte: nearly every tag and length here
        return byte, position + 1
    value = shift = 0
    while position < end and shift < 64:
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise DecodeError("a varint runs past the end of its message or past 10 bytes")
