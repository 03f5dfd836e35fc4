"""Serialized OTLP export requests cut into requests of at most a given size.

The unit that is never cut is a span (traces) or a data point (metrics); each
piece keeps its resource, scope and, for a point, its metric's name, unit,
description and temporality. A single item larger than the limit travels
alone: the backend then says whether it takes it.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_REQUESTS: dict[str, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}
_POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
_FRAMING = 12
"""Bytes a nested message's tag and length may add, at most, counted for every container and item."""


def count_items(signal: str, payload: bytes) -> int:
    """Spans or data points in a serialized request."""
    return _count(signal == "traces", _REQUESTS[signal].FromString(payload))


def split(signal: str, payload: bytes, max_bytes: int) -> list[tuple[bytes, int]]:
    """``payload`` as requests of at most ``max_bytes`` each, with their item counts."""
    if len(payload) <= max_bytes:
        return [(payload, count_items(signal, payload))]
    return split_request(signal, _REQUESTS[signal].FromString(payload), max_bytes)


def split_request(signal: str, request: Any, max_bytes: int) -> list[tuple[bytes, int]]:
    """A request message as serialized requests of at most ``max_bytes`` each, with their item counts."""
    if request.ByteSize() <= max_bytes:
        return [(request.SerializeToString(), _count(signal == "traces", request))]
    return _Packer(signal, max_bytes).pack(request)


def halve(signal: str, payload: bytes) -> list[tuple[bytes, int]]:
    """A request cut in two of about half the size each (one, when it holds a single item)."""
    return split(signal, payload, max(len(payload) // 2 + 1, 1))


class _Packer:
    """Fills requests item by item, opening a container in the current request when an item needs it."""

    def __init__(self, signal: str, max_bytes: int) -> None:
        self._traces = signal == "traces"
        self._new = _REQUESTS[signal]
        self._max = max_bytes
        self._out: list[tuple[bytes, int]] = []
        self._start()

    def _start(self) -> None:
        self._request = self._new()
        self._size = 0
        self._items = 0
        self._containers: dict[tuple[int, ...], Any] = {}

    def _flush(self) -> None:
        if self._items:
            self._out.append((self._request.SerializeToString(), self._items))
        self._start()

    def pack(self, request: Any) -> list[tuple[bytes, int]]:
        if self._traces:
            for r, rs in enumerate(request.resource_spans):
                for s, ss in enumerate(rs.scope_spans):
                    for span in ss.spans:
                        self._add((r, s), (rs, ss), span)
        else:
            for r, rm in enumerate(request.resource_metrics):
                for s, sm in enumerate(rm.scope_metrics):
                    for m, metric in enumerate(sm.metrics):
                        for point in _points(metric):
                            self._add((r, s, m), (rm, sm, metric), point)
        self._flush()
        return self._out

    def _add(self, path: tuple[int, ...], parents: tuple[Any, ...], item: Any) -> None:
        size = item.ByteSize() + _FRAMING
        needed = size + self._opening_cost(path, parents)
        if self._items and self._size + needed > self._max:
            self._flush()
            needed = size + self._opening_cost(path, parents)
        container = self._container(path, parents)
        if self._traces:
            container.spans.append(item)
        else:
            _points(container).append(item)
        self._size += needed
        self._items += 1

    def _opening_cost(self, path: tuple[int, ...], parents: tuple[Any, ...]) -> int:
        cost = 0
        for depth in range(1, len(path) + 1):
            if path[:depth] not in self._containers:
                cost += _header_size(parents[depth - 1], depth) + _FRAMING
        return cost

    def _container(self, path: tuple[int, ...], parents: tuple[Any, ...]) -> Any:
        """The copy of the innermost parent in the current request, opening what is missing."""
        found = self._request
        for depth in range(1, len(path) + 1):
            key = path[:depth]
            existing = self._containers.get(key)
            if existing is None:
                existing = self._containers[key] = _empty_copy(found, parents[depth - 1], depth, self._traces)
            found = existing
        return found


def _count(traces: bool, request: Any) -> int:
    """Spans or data points in a request message."""
    if traces:
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    return sum(
        len(_points(metric))
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


def _points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind in _POINT_FIELDS else []


def _header_size(parent: Any, depth: int) -> int:
    """The bytes of a container without its items: resource, scope, or metric description."""
    if depth == 1:
        return int(parent.resource.ByteSize()) + len(parent.schema_url)
    if depth == 2:
        return int(parent.scope.ByteSize()) + len(parent.schema_url)
    return len(parent.name) + len(parent.description) + len(parent.unit) + 8


def _empty_copy(into: Any, parent: Any, depth: int, traces: bool) -> Any:
    """A copy of ``parent`` without its items, added under ``into``."""
    if depth == 1:
        copy = into.resource_spans.add() if traces else into.resource_metrics.add()
        copy.resource.CopyFrom(parent.resource)
        copy.schema_url = parent.schema_url
        return copy
    if depth == 2:
        copy = into.scope_spans.add() if traces else into.scope_metrics.add()
        copy.scope.CopyFrom(parent.scope)
        copy.schema_url = parent.schema_url
        return copy
    copy = into.metrics.add()
    copy.name, copy.description, copy.unit = parent.name, parent.description, parent.unit
    kind = parent.WhichOneof("data")
    data, source = getattr(copy, kind), getattr(parent, kind)
    data.SetInParent()
    for field in ("aggregation_temporality", "is_monotonic"):
        if hasattr(source, field):
            setattr(data, field, getattr(source, field))
    return copy
