"""OTLP export: the sending queue, and what each answer of the backend means.

The translation builds OTLP requests itself, none larger than
``max_request_size``; a :mod:`transport <.transport>` (gRPC or HTTP/protobuf)
carries each one, and every answer is handled by its kind:

- accepted: done; a ``partial_success`` that rejected items is counted in
  ``als2otel_dropped_total{reason="partial_success"}`` and logged;
- refused as too large (gRPC ``RESOURCE_EXHAUSTED``, HTTP 413): split in two
  and both halves sent, never the same request again;
- refused for good (gRPC ``INVALID_ARGUMENT`` and the other codes OTLP calls
  not retryable, HTTP 400 and other 4xx): dropped at once, counted
  (``reason="refused"``) and logged with the backend's message;
- failed for now (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, HTTP 429/502/503/504,
  no connection, no answer within ``timeout``): retried with backoff for up to
  ``retry_on_failure.max_elapsed_time``, then dropped (``retry_exhausted``). A
  request whose answer came too late is sent again: delivery is at least once,
  and ``als2otel_export_retries_total`` counts every resend.

``sending_queue.num_consumers`` requests per signal are in flight at once, so
one request waiting out its backoff never holds up the queue behind it. Every
failure is logged (rate-limited) with its gRPC status or HTTP code and the
backend's message. Nothing here ever blocks the receiver.

Cumulative metrics keep only the newest unsent snapshot (a newer one carries
everything an older one did); delta metrics are queued like spans.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

from ..stats import LogLimiter, Stats
from .settings import OtlpConfig
from .split import halve
from .storage import HEADER, DiskQueue, Stored
from .transport import MAX_DETAIL, Outcome, Transport

log = logging.getLogger("als2otel.export")

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
"""Backoff between our retries of one request, doubling from the initial value."""


@dataclass(slots=True)
class _Pending:
    payload: bytes | None  # None: read from ``stored`` when sent
    items: int  # spans or metric points
    first_try: float
    stored: Stored | None = None  # its file, with sending_queue.storage
    resumed: bool = False  # left by an earlier run: no newer snapshot replaces it


class _SignalQueue:
    """One signal's bounded queue and the consumers that send from it."""

    def __init__(
        self,
        signal: str,
        transport: Transport,
        config: OtlpConfig,
        stats: Stats,
        replace: bool,
        disk: DiskQueue | None = None,
    ) -> None:
        self.signal = signal
        self.transport = transport
        self.disk = disk
        self._capacity = config.sending_queue.queue_size
        self._consumers = config.sending_queue.num_consumers
        self._max_elapsed = config.retry_on_failure.max_elapsed_time
        self._timeout = config.timeout
        self._replace = replace
        self._stats = stats
        self._limiter = LogLimiter(log, 30.0)
        self._queue: deque[_Pending] = deque()
        self._held_items = 0  # queued and in flight: what queue_size bounds
        self._wakeup = asyncio.Event()
        self._closing = False

    def put(self, payloads: list[tuple[bytes, int]]) -> None:
        """Queue one export's requests in memory (a cumulative snapshot replaces the unsent part of
        an older one); beyond ``queue_size`` the new requests are dropped and counted."""
        self._replace_unsent()
        items = sum(count for _, count in payloads)
        if not self._replace and self._held_items + items > self._capacity:
            self._stats.dropped.inc(self.signal, "queue_full", by=items)
            self._limiter.warning(
                "queue_full",
                "OTLP %s queue is full (%d items); dropping %d",
                self.signal,
                self._capacity,
                items,
            )
            return
        now = time.monotonic()
        for payload, count in payloads:
            if count:
                self._queue.append(_Pending(payload, count, now))
                self._held_items += count
        self._notify()

    def put_stored(self, pending: _Pending) -> None:
        """Queue a request kept on disk (written by the exporter, or resumed from an earlier run)."""
        if not pending.resumed:
            self._replace_unsent()
        self._queue.append(pending)
        self._held_items += pending.items
        self._notify()

    def _replace_unsent(self) -> None:
        """A cumulative snapshot carries everything an older one did: the unsent ones go (not
        those an earlier run left, whose series this run does not carry on)."""
        if not self._replace:
            return
        kept = deque(p for p in self._queue if p.resumed)
        for pending in self._queue:
            if not pending.resumed:
                self._held_items -= pending.items
                if pending.stored is not None and self.disk is not None:
                    self.disk.remove(pending.stored)
        self._queue = kept

    def oldest_queued(self) -> _Pending | None:
        """The request waiting longest (not one in flight)."""
        return self._queue[0] if self._queue else None

    def evict_oldest(self) -> _Pending:
        """Take the request waiting longest out of the queue, to be dropped."""
        pending = self._queue.popleft()
        self._held_items -= pending.items
        return pending

    def _notify(self) -> None:
        self._wakeup.set()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self._consume(), name=f"otlp-{self.signal}-{i}")
            for i in range(self._consumers)
        ]

    async def _next(self) -> _Pending | None:
        """The oldest request, once there is one; None once closing with nothing left."""
        while not self._queue:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def _consume(self) -> None:
        while True:
            pending = await self._next()
            if pending is None:
                return
            try:
                await self._deliver(pending)
            except asyncio.CancelledError:  # shutdown's deadline passed with this request unsent
                if pending.stored is None:  # (on disk, it waits for the next run)
                    self._stats.dropped.inc(self.signal, "shutdown", by=pending.items)
                raise
            except Exception:  # a defect loses this request, never the signal's delivery
                self._stats.dropped.inc(self.signal, "unexpected_error", by=pending.items)
                self._limiter.warning(
                    "unexpected_error", "OTLP %s: dropped %d items", self.signal, pending.items, exc_info=True
                )
            else:
                if pending.stored is not None and self.disk is not None:
                    self.disk.remove(pending.stored)
            finally:
                self._held_items -= pending.items

    async def _deliver(self, pending: _Pending) -> None:
        """Send one request until it is accepted, split, refused or out of time."""
        payload = pending.payload
        if payload is None:
            assert pending.stored is not None and self.disk is not None
            try:
                payload = await asyncio.to_thread(self.disk.read, pending.stored)
            except OSError as error:
                self._drop(pending.items, "storage_error", f"cannot read {pending.stored.path}: {error}")
                return
        backoff = BACKOFF_INITIAL
        while True:
            outcome = await asyncio.to_thread(self._send, payload)
            if outcome.kind == "ok":
                if outcome.rejected:
                    self._drop(outcome.rejected, "partial_success", outcome.detail)
                elif outcome.detail:
                    self._limiter.warning("partial_success", "OTLP %s: %s", self.signal, outcome.detail)
                return
            self._stats.export_failures.inc(self.signal)
            if outcome.kind == "too_large":
                try:
                    halves = halve(self.signal, payload)
                except ValueError:  # not a request it can read (none of ours): dropped as too large
                    halves = []
                if len(halves) > 1:
                    self._limiter.warning(
                        "too_large",
                        "OTLP %s request of %d bytes refused as too large (%s); sending it in two",
                        self.signal,
                        len(payload),
                        outcome.detail,
                    )
                    for half, count in reversed(halves):
                        try:
                            stored = (
                                self.disk.write(self.signal, half, count) if self.disk is not None else None
                            )
                        except OSError:  # a full or failing disk: this half waits in memory
                            stored = None
                        self._queue.appendleft(
                            _Pending(None if stored else half, count, pending.first_try, stored)
                        )
                        self._held_items += count
                    self._notify()
                    return
                self._drop(pending.items, "too_large", outcome.detail)
                return
            if outcome.kind == "refused":
                self._drop(pending.items, "refused", outcome.detail)
                return
            if time.monotonic() - pending.first_try + backoff > self._max_elapsed:
                self._drop(pending.items, "retry_exhausted", outcome.detail)
                return
            self._limiter.warning(
                "retry",
                "OTLP %s export failed (%s); retrying for up to %.0fs",
                self.signal,
                outcome.detail,
                self._max_elapsed,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2 * random.uniform(0.8, 1.2), BACKOFF_MAX)
            self._stats.export_retries.inc(self.signal)

    def _send(self, payload: bytes) -> Outcome:
        try:
            return self.transport.send(payload, self._timeout)
        except Exception as exc:  # a transport must never take the pipeline down
            return Outcome("retry", f"transport error: {exc}"[:MAX_DETAIL])

    def _drop(self, items: int, reason: str, detail: str) -> None:
        self._stats.dropped.inc(self.signal, reason, by=items)
        self._limiter.warning(
            reason, "OTLP %s: dropped %d items (%s): %s", self.signal, items, reason.replace("_", " "), detail
        )

    @property
    def held_items(self) -> int:
        """Items queued or in flight that a crash of this process would lose (none on disk)."""
        return 0 if self.disk is not None else self._held_items

    def close(self) -> None:
        self._closing = True
        self._notify()

    def drop_all(self, reason: str) -> None:
        """At the end of a shutdown: what is still queued is dropped and counted, unless it is on
        disk, where it waits for the next run."""
        kept = 0
        while self._queue:
            done = self._queue.popleft()
            self._held_items -= done.items
            if done.stored is None:
                self._stats.dropped.inc(self.signal, reason, by=done.items)
            else:
                kept += 1
        if kept:
            log.info("%d OTLP %s requests stay in sending_queue.storage for the next run", kept, self.signal)


class OtlpExporter:
    """Queues and sends OTLP requests per signal; start before the pipeline, stop after it.

    ``cumulative_metrics``: a metrics export replaces the unsent part of the one before.
    """

    def __init__(
        self,
        transports: dict[str, Transport],
        config: OtlpConfig,
        stats: Stats,
        cumulative_metrics: bool = True,
    ) -> None:
        storage = config.sending_queue.storage
        self._disk = DiskQueue(storage, stats, config.sending_queue.fsync) if storage else None
        self._max_storage = config.sending_queue.max_storage_size
        self._stats = stats
        self._limiter = LogLimiter(log, 30.0)
        self._queues = {
            s: _SignalQueue(s, t, config, stats, cumulative_metrics and s == "metrics", self._disk)
            for s, t in transports.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start sending; with storage, lock its directory (raises :class:`StorageLocked` if another
        process holds it) and queue what an earlier run left there first, oldest first."""
        if self._disk is not None:
            for stored in self._disk.open():
                queue = self._queues.get(stored.signal)
                if queue is None:
                    continue  # a signal this run does not export: left on disk
                queue.put_stored(_Pending(None, stored.items, time.monotonic(), stored, resumed=True))
                self._stats.queue_resumed.inc(stored.signal, by=stored.items)
        self._tasks = [task for queue in self._queues.values() for task in queue.tasks()]

    def export(self, signal: str, requests: list[tuple[bytes, int]]) -> None:
        """Queue one export's serialized requests, each with its spans or points; never blocks."""
        queue = self._queues.get(signal)
        if queue is None or not any(count for _, count in requests):
            return
        if self._disk is None:
            queue.put(requests)
            return
        now = time.monotonic()
        for payload, count in requests:
            if count and self._make_room(signal, len(payload), count):
                try:
                    stored = self._disk.write(signal, payload, count)
                except OSError as error:  # a full or failing disk: this request cannot be kept
                    self._stats.dropped.inc(signal, "storage_error", by=count)
                    self._limiter.warning("storage_error", "OTLP %s request not queued: %s", signal, error)
                    continue
                queue.put_stored(_Pending(None, count, now, stored))

    def _make_room(self, signal: str, size: int, items: int) -> bool:
        """Drops the oldest waiting requests (any signal) until ``size`` more bytes fit in
        ``max_storage_size``; False, the new request dropped, if the requests in flight fill it."""
        disk = self._disk
        assert disk is not None
        while disk.bytes + size + HEADER.size > self._max_storage:
            waiting = [q for q in self._queues.values() if q.oldest_queued() is not None]
            if not waiting:
                self._stats.dropped.inc(signal, "queue_full", by=items)
                return False
            queue = min(waiting, key=lambda q: q.oldest_queued().stored.sequence)  # type: ignore[union-attr]
            oldest = queue.evict_oldest()
            assert oldest.stored is not None
            disk.remove(oldest.stored)
            self._stats.dropped.inc(queue.signal, "queue_full", by=oldest.items)
            self._limiter.warning(
                "storage_full",
                "sending_queue.storage is full (%d bytes); dropping the oldest requests",
                self._max_storage,
            )
        return True

    def held(self, signal: str) -> int:
        """Spans or points of ``signal`` queued or in flight, not yet accepted by the backend."""
        queue = self._queues.get(signal)
        return queue.held_items if queue is not None else 0

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
        if self._disk is not None:
            self._disk.close()
