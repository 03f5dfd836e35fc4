"""Building and sending ALS messages the way Envoy and Istio do."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2

from als2otel.receiver._proto import accesslog_pb2, als_pb2, core_pb2

V3_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
V2_METHOD = "/envoy.service.accesslog.v2.AccessLogService/StreamAccessLogs"

START_S = 1_760_000_000
"""Synthetic entries are dated from here (the goldens pin these times)."""

_STARTED_NS = time.monotonic_ns()


def real_now_ms() -> int:
    """``start_ms`` that dates an entry now, for a bridge on the real clock (a process, a real Envoy's)."""
    return time.time_ns() // 1_000_000 - START_S * 1000


def synthetic_clock() -> int:
    """A bridge's clock for synthetic entries: START_S plus the time since the tests began.

    The bridge refuses entries dated far from its clock; real Envoys' entries go with the real one.
    """
    return START_S * 1_000_000_000 + time.monotonic_ns() - _STARTED_NS


def address(ip: str, port: int) -> bytes:
    """An encoded ``Address`` (AccessLogCommon declares its addresses as bytes)."""
    return core_pb2.Address(
        socket_address=core_pb2.SocketAddress(address=ip, port_value=port)
    ).SerializeToString()


def identifier(
    node_id: str, metadata: dict[str, Any] | None = None, log_name: str = "http_envoy_accesslog"
) -> als_pb2.StreamAccessLogsMessage.Identifier:
    ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name=log_name)
    ident.node.id = node_id
    if metadata:
        ident.node.metadata.update(metadata)
    return ident


def sidecar_metadata(pod: str, namespace: str, app: str, version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {
        "NAME": pod,
        "NAMESPACE": namespace,
        "LABELS": {
            "app": app,
            "version": version,
            "service.istio.io/canonical-name": app,
            "service.istio.io/canonical-revision": version,
        },
        "WORKLOAD_NAME": f"{app}-{version}",
        "CLUSTER_ID": "Kubernetes",
        **extra,
    }


def _connection(
    c: Any,
    start_ms: int,
    downstream_remote: tuple[str, int],
    downstream_local: tuple[str, int],
    upstream_remote: tuple[str, int] | None,
    upstream_local: tuple[str, int] | None,
    cluster: str,
) -> None:
    """What HTTP and TCP entries share: the start time, the addresses and the upstream cluster."""
    c.start_time.seconds = START_S + start_ms // 1000
    c.start_time.nanos = (start_ms % 1000) * 1_000_000
    c.downstream_remote_address = address(*downstream_remote)
    c.downstream_local_address = address(*downstream_local)
    if upstream_remote:
        c.upstream_remote_address = address(*upstream_remote)
    if upstream_local:
        c.upstream_local_address = address(*upstream_local)
    c.upstream_cluster = cluster


def http_entry(
    *,
    downstream_remote: tuple[str, int],
    downstream_local: tuple[str, int],
    upstream_remote: tuple[str, int] | None = None,
    upstream_local: tuple[str, int] | None = None,
    downstream_direct_remote: tuple[str, int] | None = None,
    cluster: str = "",
    method: int = 1,
    path: str = "/",
    authority: str = "",
    status: int | None = 200,
    request_id: str = "",
    start_ms: int = 0,
    duration_ms: int = 10,
    headers: dict[str, str] | None = None,
    filter_state: dict[str, Any] | None = None,
    access_log_type: int = accesslog_pb2.DownstreamEnd,
    intermediate: bool = False,
    flags: Sequence[str] = (),
) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry(protocol_version=accesslog_pb2.HTTPAccessLogEntry.HTTP11)
    c = entry.common_properties
    _connection(c, start_ms, downstream_remote, downstream_local, upstream_remote, upstream_local, cluster)
    if downstream_direct_remote:
        c.downstream_direct_remote_address = address(*downstream_direct_remote)
    c.time_to_last_rx_byte.nanos = 100_000
    c.time_to_first_upstream_tx_byte.nanos = 200_000
    c.time_to_last_upstream_rx_byte.FromMilliseconds(max(duration_ms - 1, 0))
    c.time_to_last_downstream_tx_byte.FromMilliseconds(duration_ms)
    c.duration.FromMilliseconds(duration_ms)
    c.access_log_type = access_log_type
    c.intermediate_log_entry = intermediate
    for flag in flags:
        setattr(c.response_flags, flag, True)
    for key, value in (filter_state or {}).items():
        c.filter_state_objects[key].CopyFrom(value)
    r = entry.request
    r.request_method = method
    r.scheme = b"http"
    r.authority = authority.encode()
    r.path = path.encode()
    r.request_id = request_id.encode()
    for key, value in (headers or {}).items():
        r.request_headers[key] = value.encode()
    if status is not None:
        entry.response.response_code.value = status
    return entry


def tcp_entry(
    *,
    downstream_remote: tuple[str, int],
    downstream_local: tuple[str, int],
    upstream_remote: tuple[str, int] | None = None,
    upstream_local: tuple[str, int] | None = None,
    cluster: str = "",
    received: int = 100,
    sent: int = 200,
    start_ms: int = 0,
    duration_ms: int = 50,
    access_log_type: int = accesslog_pb2.TcpConnectionEnd,
) -> accesslog_pb2.TCPAccessLogEntry:
    entry = accesslog_pb2.TCPAccessLogEntry()
    c = entry.common_properties
    _connection(c, start_ms, downstream_remote, downstream_local, upstream_remote, upstream_local, cluster)
    c.duration.FromMilliseconds(duration_ms)
    c.access_log_type = access_log_type
    entry.connection_properties.received_bytes = received
    entry.connection_properties.sent_bytes = sent
    return entry


def http_message(
    entries: Iterable[accesslog_pb2.HTTPAccessLogEntry], ident: Any = None
) -> als_pb2.StreamAccessLogsMessage:
    return _message("http_logs", entries, ident)


def tcp_message(
    entries: Iterable[accesslog_pb2.TCPAccessLogEntry], ident: Any = None
) -> als_pb2.StreamAccessLogsMessage:
    return _message("tcp_logs", entries, ident)


def _message(field: str, entries: Iterable[Any], ident: Any) -> als_pb2.StreamAccessLogsMessage:
    message = als_pb2.StreamAccessLogsMessage()
    if ident is not None:
        message.identifier.CopyFrom(ident)
    getattr(message, field).log_entry.extend(e.SerializeToString() for e in entries)
    return message


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def send(target: str, messages: Iterable[Any], method: str = V3_METHOD) -> grpc.aio.AioRpcError | None:
    """One ALS stream carrying ``messages`` (messages or raw bytes), on a connection of its own as
    each of Envoy's worker threads opens one; the error if the server ended it."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.stream_unary(method, request_serializer=_serialize, response_deserializer=lambda b: b)

        async def requests() -> Any:
            for message in messages:
                yield message

        try:
            await call(requests())
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def mutations(originals: Sequence[bytes], count: int, seed: int) -> Iterator[bytes]:
    """``count`` copies of the ``originals`` with bytes flipped, cut, inserted or repeated (one to
    four damages each), the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data))
            action = rng.randrange(4)
            if action == 0:
                data[where] = rng.randrange(256)
            elif action == 1:
                del data[where : where + rng.randint(1, 8)]
            elif action == 2:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                data[where:where] = data[max(0, where - 16) : where]
        yield bytes(data)
