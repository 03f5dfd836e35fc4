"""Call shapes: what calls of one shape share, worked out once and found with one lookup.

A call's *shape* is every field its error, span name, repeating span attributes and metric
series depend on (:func:`shape_key`). :class:`Shape` holds those values; everything that
computes them reads only what the key holds: :func:`common_attributes` here,
``semconv.error_type`` and ``semconv.span_name``, and ``MetricRecorder.plan``. A value read
from anywhere else would be shared wrongly between calls of one shape:
tests/translation/test_shape_cache.py translates thousands of calls with the cache and with
it forgotten before every call, and fails on any byte of difference.
"""

from __future__ import annotations

from typing import NamedTuple

from ..model import Call, Entry
from . import semconv, wire
from .metric_sets import Plan

MAX_SHAPES = 65_536
"""Call shapes kept worked out; the table starts over when full."""


class Shape(NamedTuple):
    """What every call of one shape shares."""

    error: str  # error.type, or ""
    name: bytes  # the span name, encoded
    attributes: bytes  # the repeating span attributes, encoded
    plan: Plan | None  # the metric series it updates; None when the store refused them


def shape_key(call: Call) -> tuple[object, ...]:
    """Everything a call's :class:`Shape` depends on."""
    entry = call.entry
    client = call.side == "client"
    # The server side's peer is Entry.caller_address, read without the property's call.
    peer = entry.upstream_remote if client else (entry.downstream_direct_remote or entry.downstream_remote)
    return (
        call.side,
        call.source,
        call.destination,
        call.from_outside,
        entry.protocol,
        entry.method,
        entry.response_code,
        entry.http_version,
        entry.authority,
        entry.scheme,
        entry.grpc_status,
        entry.path if entry.protocol == "grpc" else "",
        entry.response_flags,
        entry.upstream_cluster,
        entry.route_name,
        peer.ip if peer is not None else "",
        "" if client else entry.user_agent,
    )


def span_name_and_attributes(call: Call, error: str) -> tuple[bytes, bytes]:
    """The encoded span name and repeating attributes of a call's shape."""
    name = wire.span_name(semconv.span_name(call.entry))
    attributes = b"".join(wire.attribute(k, v) for k, v in common_attributes(call, error))
    return name, attributes


def common_attributes(call: Call, error: str) -> list[tuple[str, str | int]]:
    """A span's semantic-convention attributes whose values repeat across calls.

    Reads only what :func:`shape_key` holds.
    """
    entry = call.entry
    out: list[tuple[str, str | int]] = []
    client = call.side == "client"
    if entry.protocol == "tcp":
        out.append(("network.transport", "tcp"))
    else:
        _http_attributes(entry, client, out)
    if client:
        destination = call.destination
        out.append(("peer.service", (destination.service_name if destination else "") or "unknown"))
    peer = entry.upstream_remote if client else entry.caller_address
    if peer is not None:
        out.append(("network.peer.address", peer.ip))
    if error:
        out.append(("error.type", error))
    if entry.response_flags:
        out.append(("envoy.response_flags", ",".join(entry.response_flags)))
    if entry.upstream_cluster:
        out.append(("envoy.upstream_cluster", entry.upstream_cluster))
    if entry.route_name:
        out.append(("envoy.route_name", entry.route_name))
    return out


def _http_attributes(entry: Entry, client: bool, out: list[tuple[str, str | int]]) -> None:
    add = out.append
    host, port = semconv.split_authority(entry.authority, entry.scheme)
    if entry.protocol == "grpc":
        add(("rpc.system.name", "grpc"))
        method = semconv.grpc_method(entry.path)
        if method:
            add(("rpc.method", method))
        if entry.grpc_status >= 0:
            add(("rpc.response.status_code", semconv.grpc_status_name(entry.grpc_status)))
    add(("http.request.method", entry.method or "_OTHER"))
    if entry.response_code:
        add(("http.response.status_code", entry.response_code))
    if entry.http_version:
        add(("network.protocol.version", entry.http_version))
    if host:
        add(("server.address", host))
        add(("server.port", port))
    if not client:
        add(("url.scheme", entry.scheme or "http"))
        if entry.user_agent:
            add(("user_agent.original", entry.user_agent))
