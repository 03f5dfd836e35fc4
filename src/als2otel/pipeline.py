"""Entries from the receiver through analysis into translation, off the receiver's path.

The receiver hands over each message's entries with :meth:`Pipeline.submit`,
which never blocks: a bounded queue absorbs bursts and, when full, the batch is
dropped and counted. :meth:`Pipeline.run` works through the queue on the event
loop, yielding between messages so reading goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from .analysis import AnalyzerChain
from .receiver import EntryBatch, InvalidEntry, normalize_http, normalize_tcp
from .receiver.normalize import IntermediateEntry
from .stats import LogLimiter, Stats
from .translation import SpanBatch, Translator

log = logging.getLogger("als2otel.pipeline")

MAX_QUEUED_ENTRIES = 500_000
"""Entries received but not yet analysed; beyond it, new batches are dropped and counted."""


class Pipeline:
    def __init__(
        self,
        chain: AnalyzerChain,
        translator: Translator,
        stats: Stats,
        on_spans: Callable[[SpanBatch], None],
        max_queued_entries: int = MAX_QUEUED_ENTRIES,
    ) -> None:
        self._chain = chain
        self._translator = translator
        self._stats = stats
        self._on_spans = on_spans
        self._max_queued = max_queued_entries
        self._queue: deque[EntryBatch] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._limiter = LogLimiter(log)
        self.spans = SpanBatch()

    def submit(self, batch: EntryBatch) -> None:
        count = len(batch.entries)
        if self._queued + count > self._max_queued:
            self._stats.dropped.inc("entries", "queue_full", by=count)
            self._limiter.warning(
                "queue_full", "analysis is behind by %d entries; dropping %d", self._queued, count
            )
            return
        self._queue.append(batch)
        self._queued += count
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue.popleft()
            self._queued -= len(batch.entries)
            self.process(batch)
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Wait until everything submitted so far has been processed."""
        await self._idle.wait()

    def process(self, batch: EntryBatch) -> None:
        stats = self._stats
        normalize = normalize_http if batch.log_type == "http" else normalize_tcp
        proxy = batch.proxy
        resolve = self._chain.resolve
        add = self._translator.add
        spans = self.spans
        client = server = 0
        for raw in batch.entries:
            try:
                entry = normalize(raw, batch.api_version)
            except IntermediateEntry:
                stats.entries_intermediate.inc(batch.log_type)
                continue
            except InvalidEntry as exc:
                stats.entries_invalid.inc(exc.reason)
                self._limiter.warning(exc.reason, "skipping an entry from %s: %s", proxy.node_id, exc)
                continue
            try:
                for call in resolve(entry, proxy):
                    add(call, spans)
                    if call.side == "client":
                        client += 1
                    else:
                        server += 1
            except Exception:  # one entry must never end the stream or the process
                stats.entries_unresolved.inc("analysis_error")
                self._limiter.warning("analysis_error", "analysis failed on an entry from %s", proxy.node_id)
                log.debug("analysis failed", exc_info=True)
        if client:
            stats.calls.inc("client", by=client)
        if server:
            stats.calls.inc("server", by=server)
        if spans.count >= SPAN_FLUSH_COUNT:
            self._on_spans(spans)


SPAN_FLUSH_COUNT = 8192
"""Spans that trigger an export before the flush interval is up."""
