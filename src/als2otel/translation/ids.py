"""Trace and span IDs, derived so that both sides of a call agree without meeting.

* trace id: from ``traceparent``, else B3 (``x-b3-traceid`` or ``b3``), when
  Envoy logged them; else from ``x-request-id`` (a UUID is the 128 bits
  themselves, anything else is hashed); else from the connection (TCP).
* a hop is one request on one connection, named the same from both ends: the
  client's (upstream_local -> upstream_remote) is the server's
  (downstream_direct_remote -> downstream_local).
* sampling decides on a hash of the trace id, so every side and replica agree.
* client span id = H(trace, "client", hop, n), where n counts the earlier
  requests of the same trace on the same hop: a proxy logs the requests of one
  connection in the order they ran, at both ends, so the n-th is the n-th on
  both. The server span's parent is the client span id of the same hop and n,
  which the server side computes from its own entries.
* server span id = H(trace, "server", proxy, n), where n counts the proxy's
  earlier inbound requests of the same trace. The proxy's outbound entries for
  the same request compute it too (n = its inbound requests of that trace that
  had ended before the outbound one began, on the proxy's own clock), so a
  proxy's CLIENT spans are children of its SERVER span and a request's hops
  form one tree. n = 0 adds nothing to the hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

from ..model import SocketAddr

try:
    from . import _spans as native  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler, or with ALS2OTEL_NO_EXTENSIONS=1
    native = None

TraceContext = tuple[bytes, bytes]
"""(trace id, parent span id); the parent is b"" when the request carried no span of its own."""


def _hex_bytes(text: str, length: int) -> bytes | None:
    """``length`` bytes from exactly ``2 * length`` hex digits, not all zero; else None."""
    if len(text) != 2 * length:
        text = text.strip()
        if len(text) != 2 * length:
            return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        return None
    # fromhex skips spaces between pairs: fewer bytes then means the text was not all digits.
    return value if len(value) == length and any(value) else None


def _digest(*parts: str | bytes, size: int) -> bytes:
    """BLAKE2b of the parts, each followed by a 0x1f separator."""
    data = b"\x1f".join(part.encode() if isinstance(part, str) else part for part in parts) + b"\x1f"
    return _checked(hashlib.blake2b(data, digest_size=size).digest())


def _checked(value: bytes) -> bytes:
    """An all-zero id is invalid in OTLP."""
    return value if any(value) else b"\x01" * len(value)


_SPAN_HASH = hashlib.blake2b(digest_size=8)  # copied per id: cheaper than a new one with its parameters


def trace_context(headers: Mapping[str, str] | None, request_id: str, connection: str) -> TraceContext:
    """A request's trace id and the span it came from: natively where ``_spans`` is built and the
    values are ordinary, else (and for what it leaves) by :func:`trace_context_python`."""
    if native is not None:
        found = native.trace_context(headers, request_id, connection)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return trace_context_python(headers, request_id, connection)


def trace_context_python(headers: Mapping[str, str] | None, request_id: str, connection: str) -> TraceContext:
    """:func:`trace_context`, the definition: ``traceparent``, B3, ``x-request-id``, else the connection."""
    if headers:
        traceparent = headers.get("traceparent")
        if traceparent:
            parts = traceparent.split("-")
            if len(parts) >= 4:
                trace_id, span_id = _hex_bytes(parts[1], 16), _hex_bytes(parts[2], 8)
                if trace_id and span_id:
                    return trace_id, span_id
        b3_trace = headers.get("x-b3-traceid")
        if b3_trace:
            trace_id = _hex_bytes(b3_trace.rjust(32, "0"), 16)
            if trace_id:
                return trace_id, _hex_bytes(headers.get("x-b3-spanid", ""), 8) or b""
        b3 = headers.get("b3")
        if b3 and "-" in b3:
            parts = b3.split("-")
            trace_id = _hex_bytes(parts[0].rjust(32, "0"), 16)
            if trace_id:
                return trace_id, _hex_bytes(parts[1], 8) or b""
    if request_id:
        trace_id = _hex_bytes(request_id.replace("-", ""), 16) or _digest(request_id, size=16)
        return trace_id, b""
    # Both ends see the connection; not the time (each side's clock and start differ).
    return _digest("connection", connection, size=16), b""


def connection_key(client: SocketAddr | None, server: SocketAddr | None) -> str:
    """``client_ip:port>server_ip:port``, a connection's name in its hops and trace ids. Made each
    time: compiled, this is as quick as a cached key's lookup was, and keeps no table."""
    # The ports through str(): compiled, an int in an f-string goes through format(), ten times dearer.
    client_port = str(client.port) if client else "0"
    if server is None:
        return f"{client.ip if client else ''}:{client_port}>"
    server_port = str(server.port)
    return f"{client.ip if client else ''}:{client_port}>{server.ip}:{server_port}"


CLIENT = b"\x1fclient\x1f"
SERVER = b"\x1fserver\x1f"
"""The ``kind`` of :func:`span_id` (with the separators around it), and of :class:`Repeats`' keys."""
HOP = b"\x1fhop\x1f"
"""The :class:`Repeats` kind counting a server side's view of its hops (a client span id's ``n``)."""

_ZERO_ID = bytes(8)


def span_id(trace_id: bytes, kind: bytes, key: str, repeat: int = 0) -> bytes:
    """``_digest(trace_id, kind, key[, repeat], size=8)``: it runs once or twice for every span.

    ``kind`` :data:`CLIENT` with the hop, or :data:`SERVER` with the proxy's node id. Natively
    where ``_spans`` is built (BLAKE2b in C), else :func:`span_id_python`, the definition.
    """
    if native is not None:
        return native.span_id(trace_id, kind, key, repeat)  # type: ignore[no-any-return]
    return span_id_python(trace_id, kind, key, repeat)


def span_id_python(trace_id: bytes, kind: bytes, key: str, repeat: int = 0) -> bytes:
    """:func:`span_id` through hashlib, spelled out."""
    data = b"".join((trace_id, kind, key.encode(), b"\x1f%d\x1f" % repeat if repeat else b"\x1f"))
    hasher = _SPAN_HASH.copy()
    hasher.update(data)
    digest = hasher.digest()
    return digest if digest != _ZERO_ID else b"\x01" * 8


MAX_REMEMBERED = 65_536
"""Keys per generation of :class:`Repeats`: a request's repeats are told apart while it is this recent."""


class RepeatCounts(Protocol):
    """What the translator asks of :class:`Repeats` (or of its native twin)."""

    def add(self, trace_id: bytes, kind: bytes, key: str, end: int = 0) -> int: ...

    def ended_before(self, trace_id: bytes, kind: bytes, key: str, start: int) -> int: ...


def repeats(max_entries: int = MAX_REMEMBERED) -> RepeatCounts:
    """A :class:`Repeats`: in C where ``_spans`` is built (the same counts for the same calls,
    its keys in a compact table rather than tuples and lists in dicts)."""
    if native is not None:
        return native.Repeats(max_entries)  # type: ignore[no-any-return]
    return Repeats(max_entries)


class Repeats:
    """Which repeat of a (trace, hop) or (trace, proxy) an entry is, among those this process saw.

    Each proxy's entries reach one bridge on one stream in the order the proxy
    logged them, so both ends of a connection count its requests alike. Two
    generations of keys bound the memory: a key lives for at least
    :data:`MAX_REMEMBERED` newer keys.
    """

    def __init__(self, max_entries: int = MAX_REMEMBERED) -> None:
        self._max = max_entries
        self._new: dict[tuple[bytes, bytes, str], list[int]] = {}
        self._old: dict[tuple[bytes, bytes, str], list[int]] = {}

    def add(self, trace_id: bytes, kind: bytes, key: str, end: int = 0) -> int:
        """How many earlier entries had this trace and key; records this one (ending at ``end``)."""
        full_key = (trace_id, kind, key)
        ends = self._new.get(full_key)
        if ends is None:  # spelled out, not shared with ended_before(): it runs twice per span
            ends = self._old.get(full_key)
            if ends is None:
                ends = [end]
                self._remember(full_key, ends)
                return 0
            self._remember(full_key, ends)
        ends.append(end)
        return len(ends) - 1

    def ended_before(self, trace_id: bytes, kind: bytes, key: str, start: int) -> int:
        """How many recorded entries with this trace and key ended before ``start``."""
        full_key = (trace_id, kind, key)
        ends = self._new.get(full_key)
        if ends is None:
            ends = self._old.get(full_key)
            if ends is None:
                return 0
            self._remember(full_key, ends)
        return sum(1 for end in ends if end < start)

    def _remember(self, key: tuple[bytes, bytes, str], ends: list[int]) -> None:
        """Into the new generation; a full one becomes the old one, and the old one is dropped."""
        if len(self._new) >= self._max:
            self._old, self._new = self._new, {}
        self._new[key] = ends


def sampled(trace_id: bytes, ratio: float) -> bool:
    """Consistent per trace: the same trace id is kept or dropped everywhere.

    Decided on a hash of the whole id: ids derived from ``x-request-id`` need not
    have random low bits (a request id is any string, or a UUID of any version).
    """
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    draw = int.from_bytes(hashlib.blake2b(trace_id, digest_size=8).digest(), "big")
    return draw < int(ratio * (1 << 64))
