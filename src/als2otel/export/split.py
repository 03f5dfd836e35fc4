"""Serialized OTLP export requests cut into requests of at most a given size: the one splitter.

A flush of spans, a metrics snapshot, and a request the backend refused as too large (gRPC
``RESOURCE_EXHAUSTED``, HTTP 413) all pass through :func:`split`. It reads the request's
bytes down to its items, a span or a data point, without a protobuf object for any of them,
and packs the items in order into pieces; each piece keeps the other fields of every
container it holds an item of: resource and schema URL, scope, and for a point its metric's
name, description, unit, temporality and monotonicity. A single item larger than the limit
travels alone: the backend then says whether it takes it.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

from ..protowire import fields
from ..translation.wire import varint

LEVELS: dict[str, tuple[tuple[int, ...], ...]] = {
    # ExportTraceServiceRequest.resource_spans, ResourceSpans.scope_spans, ScopeSpans.spans
    "traces": ((1,), (2,), (2,)),
    # ExportMetricsServiceRequest.resource_metrics, ResourceMetrics.scope_metrics,
    # ScopeMetrics.metrics, Metric's data (gauge, sum, histogram, exponential histogram,
    # summary), its data_points
    "metrics": ((1,), (2,), (2,), (5, 7, 9, 10, 11), (1,)),
}
"""Where each signal's items are, level by level: the fields of a container holding the next level."""

FRAMING = 12
"""Bytes a field's tag and length add to a nested message, at most: counted for every item and
for every container a piece opens, so that a piece never exceeds its limit."""


def split(signal: str, payload: bytes, max_bytes: int, count: int | None = None) -> list[tuple[bytes, int]]:
    """``payload`` (a serialized export request of ``signal``, of ``count`` items when the caller
    knows) as requests of at most ``max_bytes`` each, with their item counts. ValueError when it
    is not one."""
    items = _items(payload, LEVELS[signal], ())
    if len(payload) <= max_bytes:
        return [(payload, sum(1 for _ in items) if count is None else count)]
    packer = _Packer(max_bytes)
    for path, item in items:
        packer.add(path, item)
    pieces = packer.finish()
    return pieces if len(pieces) > 1 else [(payload, packer.items_total)]  # one piece: the request as it was


def halve(signal: str, payload: bytes) -> list[tuple[bytes, int]]:
    """A request cut in two of about half the size each (one, when it holds a single item)."""
    return split(signal, payload, max(len(payload) // 2 + 1, 1))


class _Container:
    """A message holding items or containers: the tag it sits under and its other fields."""

    __slots__ = ("header", "tag")

    def __init__(self, tag: bytes, header: bytes) -> None:
        self.tag = tag
        self.header = header


Path = tuple[_Container, ...]


def _items(
    data: bytes, levels: tuple[tuple[int, ...], ...], path: Path, tag: bytes | None = None
) -> Iterator[tuple[Path, bytes]]:
    """Every item under the message ``data`` (of the first of ``levels``; under ``tag`` in its
    container, None for the request itself), with its containers, framed under its own tag."""
    holders = levels[0]
    header = bytearray()
    children: list[tuple[bytes, bytes]] = []
    for number, _, start, tag_end, value, end in _fields(data):
        if number in holders:
            children.append((data[start:tag_end], data[value:end]))
        else:
            header += data[start:end]
    if tag is not None:
        path = (*path, _Container(tag, bytes(header)))
    if len(levels) == 1:
        for item_tag, item in children:
            yield path, item_tag + varint(len(item)) + item
        return
    for child_tag, child in children:
        yield from _items(child, levels[1:], path, child_tag)


class _Packer:
    """Fills pieces item by item, opening in the current piece the containers an item needs."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._out: list[tuple[bytes, int]] = []
        self.items_total = 0
        self._start()

    def _start(self) -> None:
        self._root: list[bytes | _Open] = []
        self._opened: dict[_Container, _Open] = {}
        self._size = 0
        self._items = 0

    def add(self, path: Path, item: bytes) -> None:
        """One item, framed, with its containers outermost first."""
        self.items_total += 1
        needed = len(item) + FRAMING + self._opening_cost(path)
        if self._items and self._size + needed > self._max:
            self._flush()
            needed = len(item) + FRAMING + self._opening_cost(path)
        children = self._root
        for container in path:
            opened = self._opened.get(container)
            if opened is None:
                opened = self._opened[container] = _Open(container)
                children.append(opened)
            children = opened.children
        children.append(item)
        self._size += needed
        self._items += 1

    def finish(self) -> list[tuple[bytes, int]]:
        self._flush()
        return self._out

    def _opening_cost(self, path: Path) -> int:
        return sum(len(c.header) + FRAMING for c in path if c not in self._opened)

    def _flush(self) -> None:
        if self._items:
            self._out.append((_join(self._root), self._items))
        self._start()


class _Open:
    """A container opened in the piece being filled, and what it holds there so far."""

    __slots__ = ("children", "container")

    def __init__(self, container: _Container) -> None:
        self.container = container
        self.children: list[bytes | _Open] = []

    def framed(self) -> bytes:
        body = self.container.header + _join(self.children)
        return self.container.tag + varint(len(body)) + body


def _join(children: list[bytes | _Open]) -> bytes:
    return b"".join(child if isinstance(child, bytes) else child.framed() for child in children)


def _fields(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """:func:`protowire.fields` of a whole message, its errors as ValueError: a request that is not
    valid protobuf cannot be cut (none the bridge makes)."""
    try:
        yield from fields(data, 0, len(data))
    except DecodeError as exc:
        raise ValueError(f"not an OTLP export request: {exc}") from None
