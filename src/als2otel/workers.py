"""Several worker processes behind one bridge: ``receiver.workers`` > 1.

Each worker is a whole bridge (receiver, pipeline, exporters, its own Kubernetes
cache) in its own process. The parent accepts every connection on the ALS port and
hands it (the socket itself, over the worker's pipe) to the ready worker with the
fewest open connections, the least loaded among equals, so that a few busy
connections are shared evenly rather than dealt by a hash; the worker relays it to
its gRPC server (:mod:`.receiver.front`, which also ends TLS). Connections are dealt
again as they end (``receiver.max_connection_age``). Load that moves after the deal
(a connection that grows busy) is evened out: a worker whose entries per second stay
over :data:`SHARE_LIMIT` times its share for :data:`REBALANCE_AFTER` sheds connections
carrying about half the difference to the least loaded worker (a GOAWAY, its streams
ended after their next message, as at ``max_connection_age``), and the connections
that come back go to the least loaded worker. A worker's HTTP side listens
on a private loopback port. Every :data:`TICK` it writes its state into memory it shares with
the parent (:class:`WorkerState`): a heartbeat, whether it is ready, and what it
holds unexported. The parent process here:

- starts the workers, and replaces one that dies or whose heartbeat stops for
  :data:`WORKER_TIMEOUT` (killed first), counting each in
  ``als2otel_worker_restarts_total{reason}`` and what the worker held at its last
  tick as dropped (``reason="worker_died"``). Restarts back off (1 s doubling to
  30 s, reset after :data:`HEALTHY_RESET` of health) without ever pausing the
  supervision of the others or a stop;
- serves ``http.listen`` for all of them: ``/healthz`` and ``/readyz`` from the shared
  state alone, so they answer at once whatever a worker does; ``/metrics`` is the
  workers' pages merged (same series summed, the parent's own counters added, a worker
  that does not answer within :data:`ASK_TIMEOUT` by its last page, and what dead
  workers had counted kept, so merged counters never go backwards); ``/api/topology``
  their topologies merged; OTLP/HTTP logs handed to a ready worker;
- passes SIGTERM and SIGINT on (with SIGCONT, so a stopped worker can flush too), and
  exits 0 once every worker has flushed and exited 0 within ``shutdown_timeout`` (plus
  a second for the process to end); what has not stopped then is killed, exit 1.

Each worker writes its metric series under its own identity
(``metrics.instance_id`` + ``-w<index>``), so no two processes write one series.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import aiohttp
from google.rpc import status_pb2  # type: ignore[import-untyped]

from . import config as cfg
from .app import Bridge, default_instance_id, page_settings, run_bridge
from .export.prometheus import merge_pages, render
from .export.storage import lock_directory
from .stats import Stats
from .translation.topology import View, merge_snapshots
from .web import HttpServer
from .web.server import Refused

log = logging.getLogger("als2otel.workers")

TICK = 0.05
"""Seconds between a worker's writes of its state (heartbeat, readiness, what it holds)."""

WORKER_TIMEOUT = 10.0
"""Seconds without a heartbeat after which a worker is taken for hung: /healthz answers 503,
and the worker is killed and replaced."""

START_TIMEOUT = 60.0
"""Seconds a starting worker has to open its ports and send its first heartbeat."""

RESTART_BACKOFF = 1.0
"""Seconds before a dead worker is started again, doubling while it keeps dying, up to
:data:`MAX_RESTART_BACKOFF`."""
MAX_RESTART_BACKOFF = 30.0

HEALTHY_RESET = 60.0
"""Seconds of health after which a worker's earlier failures no longer lengthen its backoff."""

ASK_TIMEOUT = 2.0
"""Seconds the parent waits for a worker's /metrics or /api/topology."""

FORWARD_TIMEOUT = 25.0
"""Seconds the parent waits for a worker to take an OTLP/HTTP logs request (the parent's own
handler has 30 s)."""

RATE_WINDOW = 5.0
"""Seconds over which a worker's entries per second are measured, to deal connections by load."""

SHARE_LIMIT = 1.1
"""A worker whose entries per second stay over this many times its share (the mean of the ready
workers) sheds connections: 55% of the load of two workers."""

REBALANCE_AFTER = 5.0
"""Seconds a worker must stay over its share before it sheds, and after a shed before the next (the
rates then measure the connections where they went)."""

MIN_REBALANCE_RATE = 100.0
"""Entries per second of all workers below which their split is left as it is."""

KILL_WAIT = 1.0
"""Seconds granted after ``shutdown_timeout`` for a worker's process to end, and again after
a kill."""

LISTEN_BACKLOG = 1024

_SPAWN = multiprocessing.get_context("spawn")


class WorkerState:
    """A worker's state in memory shared with its parent: written by the worker every
    :data:`TICK`, read by the parent at any time, and after the worker died."""

    HEARTBEAT, READY, HELD_ENTRIES, HELD_TRACES, CONNECTIONS, TAKEN, ENTRIES, SHED = range(8)
    SHED_ASKED, SHED_GAP = 8, 9  # written by the parent: how many times it asked, and the gap

    def __init__(self) -> None:
        self.values: Any = _SPAWN.RawArray("d", 10)

    def write(
        self,
        ready: bool,
        held: dict[str, int],
        connections: int = 0,
        taken: int = 0,
        entries: int = 0,
        shed: int = 0,
    ) -> None:
        """``connections``: open now; ``taken``: handed over by the parent so far (those counted);
        ``shed``: connections shed so far when the parent asked."""
        values = self.values
        values[self.READY] = 1.0 if ready else 0.0
        values[self.HELD_ENTRIES] = held.get("entries", 0)
        values[self.HELD_TRACES] = held.get("traces", 0)
        values[self.CONNECTIONS] = connections
        values[self.TAKEN] = taken
        values[self.ENTRIES] = entries
        values[self.SHED] = shed
        values[self.HEARTBEAT] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process

    def ask_shed(self, gap: float) -> None:
        """The parent asks the worker to shed connections carrying about half of ``gap`` entries/s."""
        self.values[self.SHED_GAP] = gap
        self.values[self.SHED_ASKED] += 1  # after the gap: the worker reads the count first

    @property
    def shed_asked(self) -> tuple[int, float]:
        return int(self.values[self.SHED_ASKED]), float(self.values[self.SHED_GAP])

    @property
    def shed(self) -> int:
        return int(self.values[self.SHED])

    @property
    def connections(self) -> int:
        return int(self.values[self.CONNECTIONS])

    @property
    def taken(self) -> int:
        return int(self.values[self.TAKEN])

    @property
    def entries(self) -> int:
        return int(self.values[self.ENTRIES])

    @property
    def heartbeat(self) -> float:
        return float(self.values[self.HEARTBEAT])

    @property
    def ready(self) -> bool:
        return bool(self.values[self.READY])

    def held(self) -> dict[str, int]:
        return {
            "entries": int(self.values[self.HELD_ENTRIES]),
            "traces": int(self.values[self.HELD_TRACES]),
        }

    def clear(self) -> None:
        for index in range(len(self.values)):
            self.values[index] = 0.0


def worker_config(config: cfg.Config, index: int, instance_id: str) -> cfg.Config:
    """A worker's configuration: no ALS port of its own (the parent hands it connections), a private
    HTTP port, its own identity and, with a sending queue on disk, its own subdirectory."""
    receiver = dataclasses.replace(config.receiver, workers=cfg.Workers(1))
    http = dataclasses.replace(config.http, listen="127.0.0.1:0", tls=cfg.HttpTlsConfig())
    metrics = dataclasses.replace(config.metrics, instance_id=f"{instance_id}-w{index}")
    otlp = config.exporters.otlp
    if otlp.sending_queue.storage:
        queue = dataclasses.replace(
            otlp.sending_queue, storage=str(Path(otlp.sending_queue.storage) / f"w{index}")
        )
        otlp = dataclasses.replace(otlp, sending_queue=queue)
    exporters = dataclasses.replace(config.exporters, otlp=otlp)
    return dataclasses.replace(config, receiver=receiver, http=http, metrics=metrics, exporters=exporters)


def run_worker(config: cfg.Config, conn: Connection, state: WorkerState) -> None:
    """A worker process's main: one bridge until SIGTERM; exit 1 if its processing stopped."""
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise SystemExit(asyncio.run(_worker(config, conn, state)))


async def _worker(config: cfg.Config, conn: Connection, state: WorkerState) -> int:
    bridge = Bridge(config, handed=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    taken = shed = answered = 0

    def take() -> None:  # the parent handed over a connection
        nonlocal taken
        try:
            handle = reduction.recv_handle(conn)
        except (OSError, EOFError, IndexError, RuntimeError):
            loop.remove_reader(conn.fileno())  # the parent is gone; SIGTERM or the pipe's end follows
            return
        bridge.receiver.take(socket.socket(fileno=handle))
        taken += 1

    def started() -> None:
        loop.add_reader(conn.fileno(), take)
        conn.send(("port", bridge.http.port))

    def tick() -> None:
        nonlocal shed, answered
        bridge.receiver.sample(time.monotonic())
        asked, gap = state.shed_asked
        if asked != answered:
            answered = asked
            shed += bridge.receiver.shed(gap)
        received = sum(bridge.stats.entries_received.values.values())
        ready = bridge.ready() and not stop.is_set()
        connections = bridge.receiver.open_connections
        state.write(ready, bridge.held_unexported(), connections, taken, received, shed)

    code = await run_bridge(bridge, stop, started=started, tick=tick, interval=TICK)
    loop.remove_reader(conn.fileno())
    state.write(ready=False, held=bridge.held_unexported())
    return code


@dataclasses.dataclass
class _Worker:
    index: int
    state: WorkerState = dataclasses.field(default_factory=WorkerState)
    process: Any = None
    conn: Connection | None = None
    http_port: int = 0
    started_at: float = 0.0  # monotonic
    restart_at: float | None = None  # monotonic: when a dead worker is started again
    failures: int = 0
    page: str = ""  # its last /metrics page
    handed: int = 0  # connections handed to it since it started
    rates: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (when, entries received)
    shed: int = 0  # connections it has shed since it started, as counted

    def rate(self) -> float:
        """Its entries per second over the last :data:`RATE_WINDOW` seconds."""
        if len(self.rates) < 2:
            return 0.0
        (t0, e0), (t1, e1) = self.rates[0], self.rates[-1]
        return (e1 - e0) / max(t1 - t0, 1e-3)

    def load(self) -> tuple[int, float]:
        """What choosing it for a new connection weighs: its open connections (with those handed to
        it that its last tick had not taken yet), then its entries per second."""
        return self.state.connections + max(self.handed - self.state.taken, 0), self.rate()

    def sample(self, now: float) -> None:
        """Keep the entries count of the last :data:`RATE_WINDOW` seconds."""
        self.rates.append((now, self.state.entries))
        while len(self.rates) > 2 and now - self.rates[0][0] > RATE_WINDOW:
            self.rates.pop(0)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def silent_for(self, now: float) -> float:
        """Seconds since its last heartbeat (since its start, before the first)."""
        return now - max(self.state.heartbeat, self.started_at)

    def ready(self, now: float) -> bool:
        return (
            self.alive()
            and bool(self.http_port)
            and self.state.ready
            and self.silent_for(now) < WORKER_TIMEOUT
        )


class RetiredCounters:
    """What dead workers had counted (counters and histograms of their last pages), added to the
    merged page so that its counters never go backwards when a worker is replaced. A sample that
    no live worker has shown for ``expire_after`` (as series expire in the workers) is forgotten."""

    COUNTING = ("counter", "histogram", "summary")

    def __init__(self, expire_after: float) -> None:
        self._expire_after = expire_after
        self._headers: dict[str, list[str]] = {}  # family -> its HELP and TYPE lines
        self._samples: dict[str, tuple[str, float, float]] = {}  # key -> (family, value, last seen)

    def retire(self, page: str, now: float) -> None:
        family, counting = "", False
        for line in page.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if parts[1] == "TYPE":
                        counting = len(parts) == 4 and parts[3] in self.COUNTING
                    header = self._headers.setdefault(family, [])
                    if len(header) < 2 and line not in header:
                        header.append(line)
                continue
            if not line or not counting:
                continue
            key, _, text = line.rpartition(" ")
            try:
                value = float(text)
            except ValueError:
                continue
            _, earlier, _ = self._samples.get(key, (family, 0.0, now))
            self._samples[key] = (family, earlier + value, now)

    def page(self, live_pages: list[str], now: float) -> str:
        """The retired samples as one page; those seen in ``live_pages`` are kept fresh."""
        if not self._samples:
            return ""
        for page in live_pages:
            for line in page.splitlines():
                key = line.rpartition(" ")[0]
                retired = self._samples.get(key)
                if retired is not None:
                    self._samples[key] = (retired[0], retired[1], now)
        if self._expire_after:
            self._samples = {
                key: sample for key, sample in self._samples.items() if now - sample[2] < self._expire_after
            }
        by_family: dict[str, list[str]] = {}
        for key, (family, value, _) in self._samples.items():
            by_family.setdefault(family, []).append(f"{key} {value!r}")
        lines = [line for family, samples in by_family.items() for line in [*self._headers[family], *samples]]
        return "\n".join(lines) + "\n"


class Supervisor:
    """The parent of ``receiver.workers`` worker processes; see the module's docstring."""

    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self.stats = Stats()
        self.instance_id = config.metrics.instance_id or ""  # else the default once the HTTP port is known
        self._workers = [_Worker(i) for i in range(config.receiver.workers)]
        self._retired = RetiredCounters(config.metrics.expire_after)
        self._listener: socket.socket | None = None
        self._storage_lock: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.http = HttpServer(
            config.http.listen,
            metrics=self._metrics if config.exporters.prometheus.enabled else None,
            ready=self._ready,
            healthy=self._healthy,
            topology=self._topology,
            closed=self.stats.http_connections_closed,
            tls=config.http.tls,
            logs=self._forward_logs,
            page=page_settings(config),
        )
        self._next_worker = 0
        self._over: tuple[_Worker, float] | None = None  # the worker over its share, and since when
        self._rebalanced_at = -math.inf  # monotonic: the last time a worker was asked to shed

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    @property
    def als_port(self) -> int:
        return cfg.split_hostport(self.config.receiver.listen)[1]  # type: ignore[index]

    def _listen(self) -> None:
        """Open the ALS port (with port 0, a free one, written back into the configuration)."""
        host, port = cfg.split_hostport(self.config.receiver.listen)  # type: ignore[misc]
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        chosen = listener.getsockname()[1]
        listen = f"[{host}]:{chosen}" if ":" in host else f"{host}:{chosen}"
        self.config = dataclasses.replace(
            self.config, receiver=dataclasses.replace(self.config.receiver, listen=listen)
        )

    def _accept(self) -> None:
        """Hand every connection waiting on the ALS port to a worker (see :meth:`_hand`)."""
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors, say: the client retries
                log.warning("cannot accept an ALS connection: %s", error)
                return
            with sock:
                self._hand(sock)

    def _hand(self, sock: socket.socket) -> None:
        """Give a connection to the ready worker with the fewest open connections (the least loaded
        among equals; the least loaded for :data:`RATE_WINDOW` after a worker was asked to shed, as
        the connections it sheds come back), counted in ``als2otel_worker_connections_total{worker}``;
        with no worker ready it is closed, and Envoy connects again."""
        now = time.monotonic()
        ready = [w for w in self._workers if w.ready(now) and w.conn is not None]
        if not ready:
            self.stats.worker_connections.inc("none")
            return
        if now - self._rebalanced_at < RATE_WINDOW:
            worker = min(ready, key=lambda w: w.load()[::-1])  # a shed connection, likely: by rate first
        else:
            worker = min(ready, key=_Worker.load)
        assert worker.conn is not None
        try:
            reduction.send_handle(worker.conn, sock.fileno(), worker.process.pid)
        except OSError:
            self.stats.worker_connections.inc("none")
            return
        worker.handed += 1
        self.stats.worker_connections.inc(str(worker.index))

    async def start(self) -> None:
        """Start every worker and the HTTP port; returns once the workers are up (or
        :data:`START_TIMEOUT` passed: supervision then goes on as for a worker that died)."""
        storage = self.config.exporters.otlp.sending_queue.storage
        if storage:
            self._storage_lock = lock_directory(storage)  # the workers take their subdirectories
        self._listen()
        self._session = aiohttp.ClientSession()
        await self.http.start()  # answers 503 on /readyz until the workers are ready
        self.instance_id = self.instance_id or default_instance_id(self.http.port)
        for worker in self._workers:
            self._start(worker)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not all(w.http_port or not w.alive() for w in self._workers):
            for worker in self._workers:
                self._read_reports(worker)
            await asyncio.sleep(0.05)
        assert self._listener is not None
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)
        log.info(
            "%d workers take the connections of ALS port %d; HTTP on %s",
            len(self._workers),
            self.als_port,
            self.config.http.listen,
        )

    def _start(self, worker: _Worker) -> None:
        """Spawn the worker's process; its port and heartbeats arrive later (:meth:`_read_reports`)."""
        parent, child = _SPAWN.Pipe()
        config = worker_config(self.config, worker.index, self.instance_id)
        worker.state.clear()
        worker.process = _SPAWN.Process(
            target=run_worker, args=(config, child, worker.state), name=f"als2otel-w{worker.index}"
        )
        worker.process.start()
        child.close()
        worker.conn, worker.http_port, worker.page = parent, 0, ""
        worker.handed, worker.rates, worker.shed = 0, [], 0
        worker.started_at, worker.restart_at = time.monotonic(), None

    def _read_reports(self, worker: _Worker) -> None:
        conn = worker.conn
        with contextlib.suppress(EOFError, OSError):
            while conn is not None and conn.poll():
                kind, value = conn.recv()
                if kind == "port":
                    worker.http_port = value

    async def run(self, stop: asyncio.Event) -> int:
        """Supervise until ``stop`` is set; then stop the workers and return the exit code."""
        while not stop.is_set():
            self.supervise(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        return await self.stop()

    def supervise(self, now: float) -> None:
        """One look at every worker: replace what died or hung, start what is due, even the load out.
        Never waits."""
        self._rebalance(now)
        for worker in self._workers:
            self._read_reports(worker)
            worker.sample(now)
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._start(worker)
                continue
            if worker.alive():
                limit = WORKER_TIMEOUT if worker.http_port else START_TIMEOUT
                if worker.silent_for(now) < limit:
                    if worker.failures and now - worker.started_at >= HEALTHY_RESET:
                        worker.failures = 0
                    continue
                log.error(
                    "worker %d has not answered for %.0f s; killing it", worker.index, worker.silent_for(now)
                )
                worker.process.kill()
                worker.process.join(KILL_WAIT)  # a killed process ends at once: reaped, not waited on
                self._replace(worker, "unresponsive", now)
            else:
                self._replace(worker, "exited", now)

    def _rebalance(self, now: float) -> None:
        """Ask a worker over its share of the load for :data:`REBALANCE_AFTER` to shed connections
        carrying about half its difference to the least loaded; count what the workers shed."""
        for worker in self._workers:
            if worker.state.shed > worker.shed:
                self.stats.worker_connections_shed.inc(str(worker.index), by=worker.state.shed - worker.shed)
                worker.shed = worker.state.shed
        ready = [w for w in self._workers if w.ready(now)]
        rates = {w.index: w.rate() for w in ready}
        total = sum(rates.values())
        if len(ready) < 2 or total < MIN_REBALANCE_RATE or now - self._rebalanced_at < RATE_WINDOW:
            self._over = None
            return
        busiest = max(ready, key=lambda w: rates[w.index])
        idlest = min(ready, key=lambda w: rates[w.index])
        if rates[busiest.index] <= SHARE_LIMIT * total / len(ready):
            self._over = None
        elif self._over is None or self._over[0] is not busiest:
            self._over = (busiest, now)
        elif now - self._over[1] >= REBALANCE_AFTER:
            busiest.state.ask_shed(rates[busiest.index] - rates[idlest.index])
            self._over, self._rebalanced_at = None, now
            log.debug(  # the worker logs what it sheds; often nothing (one connection carries it all)
                "worker %d carries %.0f%% of %.0f entries/s: asking it to shed connections",
                busiest.index,
                100 * rates[busiest.index] / total,
                total,
            )

    def _replace(self, worker: _Worker, reason: str, now: float) -> None:
        """Count what the dead worker held and had counted; schedule its restart."""
        held = worker.state.held()
        for signal_name, count in held.items():
            if count:
                self.stats.dropped.inc(signal_name, "worker_died", by=count)
        self._retired.retire(worker.page, now)
        worker.page, worker.http_port = "", 0
        self.stats.worker_restarts.inc(reason)
        worker.failures += 1
        delay = min(RESTART_BACKOFF * 2 ** (worker.failures - 1), MAX_RESTART_BACKOFF)
        worker.restart_at = now + delay
        log.error(
            "worker %d %s (exit code %s); held unexported at its last tick: %s; starting it again in %.0fs",
            worker.index,
            "hung" if reason == "unresponsive" else "exited",
            worker.process.exitcode,
            held,
            delay,
        )

    async def stop(self) -> int:
        """No new connections; SIGTERM (and SIGCONT) to every worker; 0 when each flushed and exited
        0 within ``shutdown_timeout`` and a second; what has not stopped by then is killed."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        running = [w for w in self._workers if w.alive()]
        for worker in running:
            worker.process.terminate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signal.SIGCONT)  # a stopped worker flushes too
        code = 0 if all(w.restart_at is None for w in self._workers) else 1
        await _ended([w.process for w in running], self.config.shutdown_timeout + KILL_WAIT)
        for worker in running:
            if worker.alive():
                log.error("worker %d did not stop within shutdown_timeout; killing it", worker.index)
                worker.process.kill()
                code = 1
        await _ended([w.process for w in running], KILL_WAIT)
        for worker in running:
            if worker.process.exitcode != 0:
                code = 1
        await self.http.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._storage_lock is not None:
            self._storage_lock.close()
        return code

    def _healthy(self) -> bool:
        """False while a worker that should be running has not answered for :data:`WORKER_TIMEOUT`."""
        now = time.monotonic()
        return not any(
            w.alive() and w.http_port and w.silent_for(now) >= WORKER_TIMEOUT for w in self._workers
        )

    def _ready(self) -> bool:
        now = time.monotonic()
        return all(w.ready(now) for w in self._workers)

    async def _ask(self, worker: _Worker, path: str) -> tuple[int, bytes]:
        """GET a worker's private port within :data:`ASK_TIMEOUT`: (status, body), 503 for no answer."""
        if not worker.http_port or self._session is None:
            return 503, b""
        url = f"http://127.0.0.1:{worker.http_port}{path}"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT)) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 503, b""

    async def _forward_logs(self, body: bytes, peer: str) -> bytes:
        """OTLP/HTTP logs handed to a ready worker (in turn); its answer passed on as it is. No
        worker to take them: 503, which OTLP clients retry."""
        now = time.monotonic()
        ready = [w for w in self._workers if w.ready(now)]
        if not ready or self._session is None:
            raise Refused(503, _status(14, "no worker can take the request now; retry"))
        worker = ready[self._next_worker % len(ready)]
        self._next_worker += 1
        url = f"http://127.0.0.1:{worker.http_port}/v1/logs"
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
            ) as response:
                answer = await response.read()
                if response.status != 200:
                    raise Refused(response.status, answer)
                return answer
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise Refused(503, _status(14, "the worker did not take the request; retry")) from None

    async def _metrics(self) -> Iterator[str]:
        answers = await asyncio.gather(*(self._ask(w, "/metrics") for w in self._workers))
        for worker, (status, body) in zip(self._workers, answers, strict=True):
            if status == 200:
                worker.page = body.decode()
        live = [w.page for w in self._workers if w.page]
        retired = self._retired.page(live, time.monotonic())
        return merge_pages([retired, *live, render(None, self.stats)])

    async def _topology(self, view: View) -> dict[str, Any]:
        """The workers' topologies merged (percentiles from their summed latency histograms)."""
        path = f"/api/topology?window={view.window:g}s&level={view.level}&histograms=1"
        if view.step:
            path += f"&step={view.step}s"
        answers = await asyncio.gather(*(self._ask(w, path) for w in self._workers))
        return merge_snapshots([json.loads(body) for status, body in answers if status == 200], view)


async def _ended(processes: list[Any], seconds: float) -> None:
    """Returns once every process has ended, or ``seconds`` passed (a process's sentinel turns
    readable when it ends)."""
    loop = asyncio.get_running_loop()
    waits: dict[int, asyncio.Future[None]] = {}
    for process in processes:
        if process.is_alive():
            done = waits[process.sentinel] = loop.create_future()
            loop.add_reader(process.sentinel, _resolve, done)
    try:
        if waits:
            await asyncio.wait(list(waits.values()), timeout=seconds)
    finally:
        for sentinel in waits:
            loop.remove_reader(sentinel)
    for process in processes:
        if process.sentinel in waits and waits[process.sentinel].done():
            # Its sentinel closes as it exits, a moment before it can be reaped: wait that moment.
            process.join(KILL_WAIT)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _status(code: int, message: str) -> bytes:
    """A google.rpc.Status, the body of an OTLP/HTTP error."""
    return bytes(status_pb2.Status(code=code, message=message).SerializeToString())


async def serve(config: cfg.Config, stop: asyncio.Event) -> int:
    """``als2otel serve`` with workers: supervise until ``stop``; the exit code."""
    supervisor = Supervisor(config)
    await supervisor.start()
    return await supervisor.run(stop)
