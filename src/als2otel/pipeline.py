"""Entries from the receiver through normalisation and analysis into translation, off the receiver's path.

The receiver hands over each message's encoded entries with :meth:`Pipeline.submit`,
which never blocks: a bounded queue absorbs bursts and, when full, the batch is
dropped and counted. :meth:`Pipeline.run` works through the queue on the event
loop a slice of :data:`SLICE_ENTRIES` entries at a time, yielding between
slices, so however large a message is, other streams and the HTTP endpoints
wait at most a few milliseconds.

Nothing inside one entry can stop the pipeline: every exception on an entry's
path is caught there, counted under a reason in ``als2otel_entries_invalid_total``
and logged (rate-limited) with the proxy that sent it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from .analysis import AnalyzerChain
from .receiver import EntryBatch, InvalidEntry
from .receiver.normalize import AddressCache, IntermediateEntry, decode_entry
from .stats import LogLimiter, Stats
from .translation import SpanBatch, Translator

log = logging.getLogger("als2otel.pipeline")

MAX_QUEUED_ENTRIES = 500_000
"""Entries received but not yet analysed; beyond it, new batches are dropped and counted (a batch
larger than the bound is taken when the queue is empty)."""

SLICE_ENTRIES = 128
"""Entries processed between two yields to the event loop (about 3 ms at 25 us an entry)."""

SPAN_FLUSH_COUNT = 8192
"""Spans that trigger an export before the flush interval is up."""

SPAN_FLUSH_BYTES = 2 * 1024 * 1024
"""Bytes of spans that trigger an export: half the default ``max_request_size``, so that a flush
is one request, which the exporter need not cut (it would: export/split.py)."""


class Pipeline:
    def __init__(
        self,
        chain: AnalyzerChain,
        translator: Translator,
        stats: Stats,
        on_spans: Callable[[SpanBatch], None],
        max_queued_entries: int = MAX_QUEUED_ENTRIES,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._chain = chain
        self._translator = translator
        self._stats = stats
        self._on_spans = on_spans
        self._max_queued = max_queued_entries
        self._clock = clock
        self._queue: deque[EntryBatch] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._limiter = LogLimiter(log)
        self._addresses = AddressCache(stats.cache_rotations)
        self.spans = SpanBatch()

    def submit(self, batch: EntryBatch) -> bool:
        """Queues a batch; False (dropped and counted) when it would take the queue past its bound.
        A batch larger than the whole bound (one ALS message of more entries) is taken when the
        queue is empty: never dropped for its size alone."""
        count = len(batch.entries)
        if self._queued and self._queued + count > self._max_queued:
            self._stats.dropped.inc("entries", "queue_full", by=count)
            self._limiter.warning(
                "queue_full", "analysis is behind by %d entries; dropping %d", self._queued, count
            )
            return False
        self._queue.append(batch)
        self._queued += count
        self._idle.clear()
        self._wakeup.set()
        return True

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[0]
            count = len(batch.entries)
            for begin in range(0, count, SLICE_ENTRIES):
                self.process(batch, begin, begin + SLICE_ENTRIES)
                await asyncio.sleep(0)
            self._queue.popleft()
            self._queued -= count

    @property
    def queued(self) -> int:
        """Entries received and not yet analysed."""
        return self._queued

    async def drain(self) -> None:
        """Wait until everything submitted so far has been processed."""
        await self._idle.wait()

    def process(self, batch: EntryBatch, begin: int = 0, end: int | None = None) -> None:
        """Entries ``begin:end`` of a batch (all of them by default) into spans, metrics and topology."""
        stats = self._stats
        log_type = batch.log_type
        api_version = batch.api_version
        proxy = batch.proxy
        resolve = self._chain.resolve
        add = self._translator.add
        spans = self.spans
        now_ns = self._clock()
        addresses = self._addresses
        client = server = 0
        for encoded in batch.entries[begin:end]:
            try:
                entry = decode_entry(encoded, log_type, api_version, now_ns, addresses)
                for call in resolve(entry, proxy):
                    add(call, spans)
                    if call.side == "client":
                        client += 1
                    else:
                        server += 1
            except IntermediateEntry:
                stats.entries_intermediate.inc(log_type)
            except InvalidEntry as exc:
                stats.entries_invalid.inc(exc.reason)
                self._limiter.warning(exc.reason, "skipping an entry from %s: %s", proxy.node_id, exc)
            except Exception:  # one entry must never stop the pipeline
                stats.entries_invalid.inc("unexpected_error")
                self._limiter.warning(
                    "unexpected_error",
                    "skipping an entry from %s that raised an unexpected error",
                    proxy.node_id,
                    exc_info=True,
                )
        if client:
            stats.calls.inc("client", by=client)
        if server:
            stats.calls.inc("server", by=server)
        if spans.count >= SPAN_FLUSH_COUNT or spans.size >= SPAN_FLUSH_BYTES:
            self._on_spans(spans)
