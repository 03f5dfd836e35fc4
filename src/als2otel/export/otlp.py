"""OTLP export: the OpenTelemetry exporters do the transport, we do the queueing.

The translation builds OTLP requests itself; the SDK exporters (gRPC or
HTTP/protobuf) only send them, with their TLS, headers and compression. On top
of their short per-call retries, :class:`OtlpExporter` keeps a bounded queue
per signal and retries a failed request with backoff for up to
``retry_on_failure.max_elapsed_time``. Whatever it gives up on is counted in
``als2otel_dropped_total``; nothing here ever blocks the receiver.

Metrics are cumulative, so only the newest unsent snapshot is kept: a newer
one carries everything an older one did.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from ..config import OtlpConfig
from ..stats import LogLimiter, Stats

log = logging.getLogger("als2otel.export")

EXPORT_TIMEOUT = 10.0
"""Seconds one export call (with the exporter's own quick retries) may take, at most."""


def _call_timeout(config: OtlpConfig) -> float:
    """One attempt never outlasts the whole retry budget."""
    return min(EXPORT_TIMEOUT, max(1.0, config.retry_on_failure.max_elapsed_time))


BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
"""Backoff between our retries of one request, doubling from the initial value."""

SIGNALS = ("traces", "metrics")


class Transport(Protocol):
    """Sends one serialized OTLP export request; blocking, run off the event loop. True when accepted."""

    def send(self, payload: bytes) -> bool: ...

    def close(self) -> None: ...


def _quiet_sdk_loggers() -> None:
    # The exporters log every failed attempt; we count them and log rate-limited instead.
    for name in (
        "opentelemetry.exporter.otlp.proto.grpc.exporter",
        "opentelemetry.exporter.otlp.proto.http",
        "opentelemetry.exporter.otlp.common.http",
    ):
        logging.getLogger(name).setLevel(logging.CRITICAL)


_GRPC_SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}


class _RawExportStub:
    """The OTLP service stub, handed requests already serialized: they are sent as they are."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        self.Export = channel.unary_unary(f"/{service}/Export")  # no (de)serializer: bytes in and out


class _GrpcTransport:
    def __init__(self, signal: str, config: OtlpConfig) -> None:
        base = GrpcSpanExporter if signal == "traces" else GrpcMetricExporter
        service = _GRPC_SERVICES[signal]

        class PassThrough(base):  # type: ignore[misc, valid-type]
            """The SDK exporter (channel, TLS, headers, compression, retries), sending our bytes."""

            def _translate_data(self, data: Any) -> Any:
                return data

            def _count_data(self, data: Any) -> int:
                return 1

        endpoint = config.endpoint
        secure = endpoint.startswith("https://") or (not config.insecure and "://" not in endpoint)
        if "://" not in endpoint:
            endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        exporter = PassThrough(
            endpoint=endpoint,
            insecure=not secure,
            headers=dict(config.headers),
            timeout=_call_timeout(config),
            compression=grpc.Compression.Gzip
            if config.compression == "gzip"
            else grpc.Compression.NoCompression,
        )
        # The exporter builds its client from ``_stub`` again when it reconnects.
        exporter._stub = lambda channel: _RawExportStub(channel, service)
        exporter._client = exporter._stub(exporter._channel)
        self._exporter = exporter

    def send(self, payload: bytes) -> bool:
        result = self._exporter._export(payload)
        return bool(result.name == "SUCCESS")

    def close(self) -> None:
        self._exporter.shutdown()


class _HttpTransport:
    def __init__(self, signal: str, config: OtlpConfig) -> None:

        base = config.endpoint.rstrip("/")
        if "://" not in base:
            base = f"{'http' if config.insecure else 'https'}://{base}"
        url = f"{base}/v1/{signal}"
        cls = HttpSpanExporter if signal == "traces" else HttpMetricExporter
        self._exporter = cls(
            endpoint=url,
            headers=dict(config.headers),
            timeout=_call_timeout(config),
            compression=(
                HttpCompression.Gzip if config.compression == "gzip" else HttpCompression.NoCompression
            ),
        )

    def send(self, payload: bytes) -> bool:
        return bool(self._exporter._client.export(payload).success)

    def close(self) -> None:
        self._exporter.shutdown()


def make_transport(signal: str, config: OtlpConfig) -> Transport:
    _quiet_sdk_loggers()
    if config.protocol == "grpc":
        return _GrpcTransport(signal, config)
    return _HttpTransport(signal, config)


@dataclass(slots=True)
class _Pending:
    payload: bytes
    items: int  # spans or metric points
    first_try: float


class _SignalQueue:
    """One signal's bounded queue and the task that drains it in order."""

    def __init__(self, signal: str, transport: Transport, config: OtlpConfig, stats: Stats) -> None:
        self.signal = signal
        self.transport = transport
        self._capacity = config.sending_queue.queue_size
        self._max_elapsed = config.retry_on_failure.max_elapsed_time
        self._stats = stats
        self._limiter = LogLimiter(log, 30.0)
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._sending = False

    def put(self, payload: bytes, items: int) -> None:
        if self.signal == "metrics":
            # Cumulative: a newer snapshot replaces any unsent one.
            self._queue.clear()
            self._queued_items = 0
        elif self._queued_items + items > self._capacity:
            self._stats.dropped.inc(self.signal, "queue_full", by=items)
            self._limiter.warning(
                "queue_full",
                "OTLP %s queue is full (%d items); dropping %d",
                self.signal,
                self._capacity,
                items,
            )
            return
        self._queue.append(_Pending(payload, items, time.monotonic()))
        self._queued_items += items
        self._wakeup.set()

    async def run(self) -> None:
        backoff = BACKOFF_INITIAL
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            pending = self._queue[0]
            self._sending = True
            try:
                ok = await asyncio.to_thread(self._send, pending.payload)
            finally:
                self._sending = False
            if ok:
                self._pop()
                backoff = BACKOFF_INITIAL
                continue
            self._stats.export_failures.inc(self.signal)
            if (
                self._queue
                and self._queue[0] is pending
                and (time.monotonic() - pending.first_try >= self._max_elapsed)
            ):
                self._pop()
                self._stats.dropped.inc(self.signal, "retry_exhausted", by=pending.items)
                self._limiter.warning(
                    "exhausted",
                    "OTLP %s export failed for %.0fs; dropped %d items",
                    self.signal,
                    self._max_elapsed,
                    pending.items,
                )
                continue
            self._limiter.warning(
                "failed",
                "OTLP %s export failed; retrying for up to %.0fs",
                self.signal,
                self._max_elapsed,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX) * random.uniform(0.8, 1.2)

    def _send(self, payload: bytes) -> bool:
        try:
            return self.transport.send(payload)
        except Exception as exc:  # a transport must never take the pipeline down
            self._limiter.warning("transport_error", "OTLP %s transport error: %s", self.signal, exc)
            return False

    def _pop(self) -> None:
        done = self._queue.popleft()
        self._queued_items -= done.items

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    def drop_all(self, reason: str) -> None:
        while self._queue:
            done = self._queue.popleft()
            self._stats.dropped.inc(self.signal, reason, by=done.items)
        self._queued_items = 0


class OtlpExporter:
    """Queues and sends OTLP requests per signal; start before the pipeline, stop after it."""

    def __init__(self, transports: dict[str, Transport], config: OtlpConfig, stats: Stats) -> None:
        self._queues = {s: _SignalQueue(s, t, config, stats) for s, t in transports.items()}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(q.run(), name=f"otlp-{q.signal}") for q in self._queues.values()]

    def export(self, signal: str, payload: bytes, items: int) -> None:
        """Queue a serialized export request of ``items`` spans or points; never blocks."""
        queue = self._queues.get(signal)
        if queue is not None and items:
            queue.put(payload, items)

    async def shutdown(self, timeout: float) -> None:
        """Send what is queued for up to ``timeout`` seconds, then count the rest as dropped."""
        for queue in self._queues.values():
            queue.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=max(timeout, 0.01))
            for queue in self._queues.values():
                queue.transport.close()  # also ends an export call still waiting on the network
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for queue in self._queues.values():
            queue.drop_all("shutdown")
