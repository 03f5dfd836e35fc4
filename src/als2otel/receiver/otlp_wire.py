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

from ..protowire import LENGTH_DELIMITED, fields

# Field numbers, named by the message and field.
REQUEST_RESOURCE_LOGS = 1  # ExportLogsServiceRequest.resource_logs
RESOURCE_LOGS_RESOURCE = 1  # ResourceLogs.resource
RESOURCE_LOGS_SCOPE_LOGS = 2  # ResourceLogs.scope_logs
SCOPE_LOGS_LOG_RECORDS = 2  # ScopeLogs.log_records


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
    for number, wire_type, _, _, value_start, field_end in fields(raw, start, end):
        if number == wanted and wire_type == LENGTH_DELIMITED:
            yield value_start, field_end
