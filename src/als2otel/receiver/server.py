"""The ALS gRPC server: ``StreamAccessLogs`` of the v3 and v2 AccessLogService.

Messages arrive as raw bytes (a generic handler without a deserializer) and are
parsed here with our own wire-format messages. The identifier on a stream's
first message is read once into a :class:`Proxy`; each message's entries are
then handed to ``sink``, still encoded, without waiting for analysis or export
(Envoy drops logs when its receiver reads slowly).

Only a message that does not parse, an identifier that cannot be read, or
entries before any identifier end a stream, with INVALID_ARGUMENT and a fixed
text naming the reason; anything unexpected ends it with INTERNAL and a fixed
text. Exception texts go to the log (rate-limited), never to the client. A
stream whose connection has reached ``max_connection_age``, or whose connection
its worker shed (:meth:`AlsServer.shed`), is ended with OK right after a message,
so that Envoy reconnects having nothing in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from .. import istio
from ..model import Proxy
from ..settings import TlsConfig
from ..stats import LogLimiter, Stats
from . import otlp_logs, otlp_wire
from ._proto import als_pb2
from .front import Front
from .identity import identify
from .normalize import InvalidEntry

log = logging.getLogger("als2otel.receiver")

SERVICES = {
    "v3": "envoy.service.accesslog.v3.AccessLogService",
    "v2": "envoy.service.accesslog.v2.AccessLogService",
}
METHOD = "StreamAccessLogs"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
"""OTLP logs, from Envoy's OpenTelemetry access logger, on the same port."""

YIELD_EVERY_RECORDS = 128
"""OTLP records read between two yields to the event loop."""

AGE_JITTER = 0.1
"""gRPC spreads ``max_connection_age`` by this much either way: a connection's GOAWAY goes out
between 0.9 and 1.1 of the age."""

# Envoy's first message on a stream carries a ~70 KB node description; a batch
# at a large buffer_size_bytes can be several MB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class EntryBatch:
    """The entries of one message, each still encoded, with who sent them."""

    proxy: Proxy
    api_version: str
    log_type: str  # "http" or "tcp"
    entries: Sequence[bytes]  # encoded HTTPAccessLogEntry or TCPAccessLogEntry messages


Sink = Callable[[EntryBatch], bool]
"""Takes a batch without blocking; False when there was no room for it (dropped and counted)."""


RATE_SAMPLE = 1.0
"""Seconds between two measures of each connection's entries per second (:meth:`AlsServer.sample`)."""

MIN_SHED_GRACE = 1.0
"""Seconds at least between a shed connection's GOAWAY and its close."""


@dataclass(slots=True)
class _Connection:
    """A client connection, known by the streams open on it."""

    aged_at: float  # monotonic: from then on its GOAWAY has gone out, and its streams are ended
    streams: int = 0
    ending: str = "max_connection_age"  # why, once aged_at has passed
    entries: int = 0  # received on its streams
    counted: int = 0  # ... at the last sample
    rate: float = -1.0  # entries per second, smoothed over the samples; -1 before the first


class AlsServer:
    """grpc.aio server for both ALS API versions; ``sink`` must not block."""

    def __init__(
        self,
        listen: str,
        sink: Sink,
        stats: Stats,
        name_labels: tuple[str, ...] = istio.NAME_LABELS,
        max_connection_age: float = 0.0,
        max_connection_age_grace: float = 0.0,
        tls: TlsConfig | None = None,
        handed: bool = False,
    ) -> None:
        """``handed``: listen on no TCP port; serve the connections given to :meth:`take`."""
        self._listen = listen
        self._handed = handed
        self._tls = tls
        self._max_age = max_connection_age
        self._max_age_grace = max_connection_age_grace
        self._connections: dict[str, _Connection] = {}
        # Connections of OpenTelemetry loggers (OTLP/gRPC Export calls), measured to shed like ALS
        # ones when a front relays them; forgotten once a measure finds one idle.
        self._exporters: dict[str, _Connection] = {}
        self._sampled = time.monotonic()
        self._name_labels = name_labels
        self._sink = sink
        self._stats = stats
        self._limiter = LogLimiter(log)
        self._records = otlp_logs.RecordReader(name_labels, stats.cache_rotations)
        self._server: grpc.aio.Server | None = None
        self._front: Front | None = None
        self.port = 0

    async def start(self) -> None:
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second process on the port is an error, not a silent sharer
            # Streams last for days: keep idle connections alive, accept Envoy's pings.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        if self._max_age:
            # A connection this old gets a GOAWAY, so Envoy opens its next streams on a new
            # connection, which a Service spreads over every replica, new ones included. Envoy never
            # ends a stream itself: once the GOAWAY is surely out, each stream is ended here right
            # after a message (_read_stream), when Envoy has just flushed and has nothing in flight.
            # gRPC closes the connection, with any stream that stayed silent, the grace after that.
            grace = 2 * AGE_JITTER * self._max_age + self._max_age_grace
            options += [
                ("grpc.max_connection_age_ms", int(self._max_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(grace * 1000)),
            ]
        server = grpc.aio.server(options=options)
        handlers = {
            version: grpc.method_handlers_generic_handler(
                service,
                {METHOD: grpc.stream_unary_rpc_method_handler(self._handler(version))},
            )
            for version, service in SERVICES.items()
        }
        logs = grpc.method_handlers_generic_handler(
            LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export_logs)}
        )
        server.add_generic_rpc_handlers((*handlers.values(), logs))
        tls = self._tls if self._tls is not None and self._tls.enabled else None
        if tls is not None or self._handed:
            # TLS ends in the front, which sees (and counts) every refused handshake; connections
            # the workers' parent hands over come in through it too.
            self._front = Front(self._listen, tls, self._stats, self._limiter)
            address = f"unix:{self._front.backend}"
        else:
            address = self._listen
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio's word for a port it cannot bind
            port = 0
        if port == 0:
            raise OSError(f"cannot listen for ALS on {address} (in use by another process?)")
        await server.start()
        self._server = server
        if self._front is not None and not self._handed:
            port = await self._front.start()
        self.port = port
        mode = (
            "plaintext"
            if self._tls is None or not self._tls.enabled
            else ("mutual TLS" if self._tls.client_ca_file else "TLS")
        )
        if self._handed:
            log.info("ALS receiver taking the connections its parent hands over (%s)", mode)
        else:
            log.info("ALS receiver listening on %s (port %d, %s)", self._listen, port, mode)

    def take(self, sock: socket.socket) -> None:
        """Serve an ALS connection the workers' parent accepted and handed over."""
        assert self._front is not None, "started with handed=True"
        self._front.take(sock)

    @property
    def open_connections(self) -> int:
        """Client connections open now (counted where a front relays them)."""
        return self._front.open_connections if self._front is not None else len(self._connections)

    def sample(self, now: float) -> None:
        """Measure each connection's entries per second, once every :data:`RATE_SAMPLE` seconds
        (halving the weight of the measures before at each)."""
        elapsed = now - self._sampled
        if elapsed < RATE_SAMPLE:
            return
        self._sampled = now
        for connections in (self._connections, self._exporters):
            for connection in connections.values():
                rate = (connection.entries - connection.counted) / elapsed
                connection.rate = rate if connection.rate < 0 else (connection.rate + rate) / 2
                connection.counted = connection.entries
        self._exporters = {peer: c for peer, c in self._exporters.items() if c.rate >= 1.0}

    def shed(self, gap: float) -> int:
        """Shed connections carrying about half of ``gap`` entries per second (the difference between
        this worker's load and the least loaded one's), so that both end near the middle: each gets a
        GOAWAY from the front, so its client opens its next streams (or Export calls) on a new
        connection, and its ALS streams end right after their next message, as at
        ``max_connection_age``. The number of connections shed (none if no move would narrow the gap)."""
        if self._front is None:
            return 0
        now = time.monotonic()
        candidates = sorted(
            (
                (c.rate, peer, kind)
                for kind, connections in (("ALS", self._connections), ("OTLP", self._exporters))
                for peer, c in connections.items()
                if c.aged_at > now and c.rate > 0
            ),
            reverse=True,
        )
        target, moved, shed = gap / 2, 0.0, 0
        grace = max(self._max_age_grace, MIN_SHED_GRACE)
        for rate, peer, kind in candidates:
            if abs(target - moved - rate) < abs(target - moved) and self._front.goaway(peer, grace):
                connection = (self._connections if kind == "ALS" else self._exporters)[peer]
                connection.aged_at, connection.ending = now, "rebalance"
                moved += rate
                shed += 1
                log.info(
                    "Shedding the %s connection of %s (%.0f entries/s) to even the workers' load",
                    kind,
                    peer,
                    rate,
                )
        return shed

    async def stop(self, grace: float) -> None:
        """Stop taking streams; give open ones ``grace`` seconds to deliver what they sent."""
        if self._front is not None:
            await self._front.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._front is not None:
            self._front.close()
            self._front = None

    async def _reject(
        self, context: grpc.aio.ServicerContext[Any, Any], reason: str, what: str, status: str
    ) -> None:
        """Count, log (rate-limited) and end this stream alone with INVALID_ARGUMENT and a fixed text."""
        self._stats.entries_invalid.inc(reason)
        self._stats.streams_ended.inc(reason)
        self._limiter.warning(reason, "ALS stream from %s sent %s; ending the stream", context.peer(), what)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{reason}: {status}")

    async def _export_logs(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """OTLP/gRPC ``LogsService/Export``: RESOURCE_EXHAUSTED for a request over
        :data:`~.otlp_logs.MAX_REQUEST_BYTES`, INVALID_ARGUMENT for one that does not parse,
        INTERNAL (a fixed text) for an error of the bridge's own."""
        if len(raw) > otlp_logs.MAX_REQUEST_BYTES:
            self._stats.entries_invalid.inc("request_too_large")
            self._limiter.warning(
                "request_too_large",
                "OTLP logs from %s: a request of %d bytes refused",
                context.peer(),
                len(raw),
            )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request_too_large: at most {otlp_logs.MAX_REQUEST_BYTES} bytes a request",
            )
        peer = context.peer()
        connection = None
        if self._front is not None:  # a relayed connection, which shed() can shed
            connection = self._exporters.get(peer)
            if connection is None:
                connection = self._exporters[peer] = _Connection(math.inf)
        try:
            return await self.accept_logs(raw, peer, connection)
        except DecodeError:
            status, text = (
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed_message: not an ExportLogsServiceRequest",
            )
        except Exception:  # the client learns no details
            self._stats.entries_invalid.inc("unexpected_error")
            self._limiter.warning(
                "internal_error", "OTLP logs from %s failed unexpectedly", context.peer(), exc_info=True
            )
            status, text = grpc.StatusCode.INTERNAL, "internal_error: the request could not be processed"
        await context.abort(status, text)
        raise AssertionError("not reached: abort raises")

    async def accept_logs(self, raw: bytes, peer: str, connection: _Connection | None = None) -> bytes:
        """An ``ExportLogsServiceRequest``'s records into the pipeline, as the entries ALS would carry;
        the serialized response, whose ``partial_success`` counts every record not taken, by reason.

        The request is read record by record (:mod:`.otlp_wire`), at most
        :data:`~.otlp_logs.MAX_RECORDS` of them (the rest are refused unread), yielding to the event
        loop as it goes. A record that cannot be read is refused alone; one that analysis has no
        room for is dropped and counted. Raises :class:`DecodeError` (counted) for a request whose
        outer layers do not parse. ``connection``: the one it came on, whose records are counted.
        """
        stats = self._stats
        found = otlp_wire.Scan()
        try:
            for _ in otlp_wire.scan(raw, otlp_logs.MAX_RECORDS, found):
                await asyncio.sleep(0)
        except DecodeError:
            stats.entries_invalid.inc("malformed_message")
            self._limiter.warning("malformed_logs", "OTLP logs from %s do not parse", peer)
            raise
        if connection is not None:
            connection.entries += len(found.records)
        not_taken: dict[str, int] = {}
        if found.beyond_limit:
            stats.entries_invalid.inc("too_many_records", by=found.beyond_limit)
            not_taken["too_many_records"] = found.beyond_limit
            self._limiter.warning(
                "too_many_records",
                "OTLP logs from %s: %d records past the first %d of a request refused",
                peer,
                found.beyond_limit,
                otlp_logs.MAX_RECORDS,
            )
        # By the proxy's identity (a Proxy's own hash is a dataclass's, run as Python for each record).
        batches: dict[tuple[int, str], tuple[Proxy, list[bytes]]] = {}
        resources: dict[int, tuple[dict[str, str], dict[str, str] | None]] = {}
        for count, (resource, start, end) in enumerate(found.records, 1):
            try:
                proxy, log_type, encoded = self._read_record(raw, resource, start, end, resources)
            except InvalidEntry as exc:
                not_taken[exc.reason] = not_taken.get(exc.reason, 0) + 1
                stats.entries_invalid.inc(exc.reason)
                self._limiter.warning(exc.reason, "skipping an OTLP log record from %s: %s", peer, exc)
            else:
                batch = batches.get((id(proxy), log_type))
                if batch is None:
                    batch = batches[id(proxy), log_type] = (proxy, [])
                batch[1].append(encoded)
            if count % YIELD_EVERY_RECORDS == 0:
                await asyncio.sleep(0)
        for (_, log_type), (proxy, entries) in batches.items():
            if not self._sink(EntryBatch(proxy, "otlp", log_type, entries)):
                not_taken["queue_full"] = not_taken.get("queue_full", 0) + len(entries)
        response = logs_service_pb2.ExportLogsServiceResponse()
        if not_taken:
            refused = sum(not_taken.values())
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(not_taken.items()))
            response.partial_success.rejected_log_records = refused
            response.partial_success.error_message = (
                f"{refused} of {len(found.records) + found.beyond_limit} records not taken ({reasons})"
            )
        return response.SerializeToString()

    def _read_record(
        self,
        raw: bytes,
        resource: Any,
        start: int,
        end: int,
        resources: dict[int, tuple[dict[str, str], dict[str, str] | None]],
    ) -> tuple[Proxy, str, bytes]:
        """One record as (proxy, log type, encoded entry), counted as received once its attributes are
        read. Raises :class:`InvalidEntry` for anything in it that cannot be read, never another error."""
        cached = resources.get(id(resource))
        if cached is None:
            strings = otlp_logs.strings(resource.attributes)
            cached = resources[id(resource)] = (strings, otlp_logs.native_shared(strings))
        shared, native_shared = cached
        if native_shared is not None:
            try:
                read = self._records.read_native(raw, start, end, native_shared)
            except Exception:  # a defect of the native path: the record is read as if it had none
                read = None
                self._limiter.warning(
                    "native_error", "an OTLP log record failed natively; reading it again", exc_info=True
                )
            if read is not None:
                self._stats.entries_received.inc("otlp", read[1])
                return read
        own, time_unix_nano = otlp_logs.read_record(raw, start, end)
        attributes = {**shared, **own} if shared else own  # Envoy's logger leaves the resource empty
        self._stats.entries_received.inc("otlp", otlp_logs.log_type_of(attributes))
        try:
            return self._records.read(attributes, time_unix_nano)
        except InvalidEntry:
            raise
        except Exception as exc:  # a value no rule foresaw: this record alone is refused
            self._limiter.warning(
                "unexpected_error", "an OTLP log record raised an unexpected error", exc_info=True
            )
            raise InvalidEntry("unexpected_error", f"{type(exc).__name__}") from None

    def _handler(self, api_version: str) -> Callable[..., Any]:
        async def stream_access_logs(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            return await self._serve_stream(api_version, requests, context)

        return stream_access_logs

    async def _serve_stream(
        self,
        api_version: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        stats = self._stats
        stats.streams_active.value += 1
        peer = context.peer()
        connection = self._connection_opened(peer)
        try:
            await self._read_stream(api_version, requests, context, connection)
        except asyncio.CancelledError:
            self._ended_by_client(connection, peer, "client_cancelled")
            raise
        except grpc.aio.AbortError:
            raise  # _reject ended the stream, and counted it
        except Exception:  # a stream must never take the server down; the client learns no details
            stats.streams_ended.inc("internal_error")
            self._limiter.warning(
                "internal_error", "ALS stream from %s failed unexpectedly", context.peer(), exc_info=True
            )
            await context.abort(grpc.StatusCode.INTERNAL, "internal_error: the stream could not be read")
        finally:
            stats.streams_active.value -= 1
            self._connection_closed(peer)
        return b""

    def _connection_opened(self, peer: str) -> _Connection:
        """The connection a new stream came on (``peer`` names one), aged from its first stream."""
        connection = self._connections.get(peer)
        if connection is None:
            ages = (1 + AGE_JITTER) * self._max_age if self._max_age else math.inf
            connection = self._connections[peer] = _Connection(time.monotonic() + ages)
        connection.streams += 1
        return connection

    def _connection_closed(self, peer: str) -> None:
        connection = self._connections[peer]
        connection.streams -= 1
        if not connection.streams:
            del self._connections[peer]

    async def _read_stream(
        self,
        api_version: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[Any, Any],
        connection: _Connection,
    ) -> None:
        stats = self._stats
        proxy: Proxy | None = None
        async for raw in requests:
            try:
                message = als_pb2.StreamAccessLogsMessage.FromString(raw)
            except DecodeError as exc:
                await self._reject(
                    context,
                    "malformed_message",
                    f"a message that does not parse ({exc})",
                    "message does not parse as StreamAccessLogsMessage",
                )
            if message.HasField("identifier"):
                try:
                    proxy = identify(message.identifier, self._name_labels)
                except Exception as exc:  # any value in the node's metadata
                    await self._reject(
                        context,
                        "malformed_identifier",
                        f"an identifier that cannot be read ({type(exc).__name__}: {exc})",
                        "the identifier's node cannot be read",
                    )
            elif proxy is None:
                await self._reject(
                    context,
                    "missing_identifier",
                    "entries before an identifier",
                    "the first message of a stream must carry an identifier",
                )
            which = message.WhichOneof("log_entries")
            entries: Sequence[bytes] = ()
            if which == "http_logs":
                entries, log_type = message.http_logs.log_entry, "http"
            elif which == "tcp_logs":
                entries, log_type = message.tcp_logs.log_entry, "tcp"
            if entries:
                assert proxy is not None
                stats.entries_received.inc(api_version, log_type, by=len(entries))
                connection.entries += len(entries)
                self._sink(EntryBatch(proxy, api_version, log_type, entries))
            if time.monotonic() >= connection.aged_at:
                # Envoy has just flushed: ending the stream now loses nothing in flight (unless the
                # bridge is behind and its next message already waits), and its next stream goes to
                # a new connection (this one's GOAWAY is out).
                stats.streams_ended.inc(connection.ending)
                log.debug("Ending the ALS stream from %s (%s)", context.peer(), connection.ending)
                return
        # The messages end alike for a half-close and a cancellation; a cancelled call's handler
        # is cancelled at its next await, which _serve_stream then counts as client_cancelled.
        await asyncio.sleep(0)
        self._ended_by_client(connection, context.peer(), "client_closed")

    def _ended_by_client(self, connection: _Connection, peer: str, reason: str) -> None:
        """Count a stream that ended without the bridge ending it: by its client (``reason``), or
        with its connection, closed at max_connection_age (or shed) while the stream sent nothing."""
        if time.monotonic() >= connection.aged_at:
            reason = connection.ending
            log.debug("ALS stream from %s closed with its connection (%s)", peer, reason)
        elif reason == "client_cancelled":
            self._limiter.warning(reason, "ALS stream from %s was cancelled mid-stream", peer)
        else:
            log.debug("ALS stream from %s closed by the client", peer)
        self._stats.streams_ended.inc(reason)
