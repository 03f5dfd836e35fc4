"""Several worker processes behind one bridge: ``receiver.workers`` > 1.

Each worker is a whole bridge (receiver, pipeline, exporters, its own Kubernetes
cache) in its own process, bound to the same ALS port with SO_REUSEPORT, so the
kernel spreads Envoy's connections over them. Its HTTP side listens on a private
loopback port. The parent process here:

- starts the workers and restarts one that dies (``als2otel_worker_restarts_total``),
  counting what the dead worker held unexported at its last report as dropped
  (``reason="worker_died"``);
- serves ``http.listen`` for all of them: ``/metrics`` is the workers' pages merged
  (same series summed, the parent's own counters added), ``/api/topology`` their
  topologies merged, ``/readyz`` 200 only when every worker is ready;
- passes SIGTERM and SIGINT on, and exits 0 once every worker has flushed and
  exited 0 within ``shutdown_timeout``.

Each worker writes its metric series under its own identity
(``metrics.instance_id`` + ``-w<index>``), so no two processes write one series.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from google.protobuf.message import DecodeError

from . import config as cfg
from .app import Bridge, tune_garbage_collection
from .export.prometheus import merge_pages, render
from .stats import Stats
from .translation.topology import merge_snapshots
from .web import HttpServer

log = logging.getLogger("als2otel.workers")

RESTART_BACKOFF = 1.0
"""Seconds before a dead worker is started again (doubling while it keeps dying, up to 30 s)."""

REPORT_INTERVAL = 1.0
"""Seconds between a worker's reports of what it holds unexported."""

_SPAWN = multiprocessing.get_context("spawn")


def worker_config(config: cfg.Config, index: int, instance_id: str) -> cfg.Config:
    """A worker's configuration: the shared ALS port, a private HTTP port, its own identity."""
    receiver = dataclasses.replace(config.receiver, workers=cfg.Workers(1))
    http = dataclasses.replace(config.http, listen="127.0.0.1:0", tls=cfg.HttpTlsConfig())
    metrics = dataclasses.replace(config.metrics, instance_id=f"{instance_id}-w{index}")
    return dataclasses.replace(config, receiver=receiver, http=http, metrics=metrics)


def run_worker(config: cfg.Config, conn: Connection) -> None:
    """A worker process's main: one bridge until SIGTERM; exit 1 if its processing stopped."""
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise SystemExit(asyncio.run(_worker(config, conn)))


async def _worker(config: cfg.Config, conn: Connection) -> int:
    bridge = Bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await bridge.start()
    tune_garbage_collection()
    conn.send(("port", bridge.http.port))
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bridge.failed.wait())]
    while not any(w.done() for w in waits):
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("held", bridge.held_unexported()))
        await asyncio.wait(waits, timeout=REPORT_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    await bridge.stop()
    return 1 if bridge.failed.is_set() else 0


@dataclasses.dataclass
class _Worker:
    index: int
    process: Any = None
    conn: Connection | None = None
    http_port: int = 0
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: int = 0


class Supervisor:
    """The parent of ``receiver.workers`` worker processes; see the module's docstring."""

    def __init__(self, config: cfg.Config) -> None:
        self.config = config
        self.stats = Stats()
        self.instance_id = config.metrics.instance_id or socket.gethostname()
        self._workers = [_Worker(i) for i in range(config.receiver.workers)]
        self._reserved: socket.socket | None = None
        self.http = HttpServer(
            config.http.listen,
            metrics=self._metrics if config.exporters.prometheus.enabled else None,
            ready=self._ready,
            topology=self._topology,
            closed=self.stats.http_connections_closed,
            tls=config.http.tls,
            logs=self._forward_logs,
        )
        self._next_worker = 0

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process is not None]

    @property
    def als_port(self) -> int:
        return cfg.split_hostport(self.config.receiver.listen)[1]  # type: ignore[index]

    def _reserve_port(self) -> None:
        """With port 0, pick one port for every worker and hold it (SO_REUSEPORT, not listening)."""
        host, port = cfg.split_hostport(self.config.receiver.listen)  # type: ignore[misc]
        reserved = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
        self._reserved = reserved
        chosen = reserved.getsockname()[1]
        listen = f"[{host}]:{chosen}" if ":" in host else f"{host}:{chosen}"
        self.config = dataclasses.replace(
            self.config, receiver=dataclasses.replace(self.config.receiver, listen=listen)
        )

    async def start(self) -> None:
        self._reserve_port()
        await asyncio.gather(*(self._start(worker) for worker in self._workers))
        await self.http.start()
        log.info(
            "%d workers share ALS port %d; HTTP on %s",
            len(self._workers),
            self.als_port,
            self.config.http.listen,
        )

    async def _start(self, worker: _Worker) -> None:
        parent, child = _SPAWN.Pipe()
        config = worker_config(self.config, worker.index, self.instance_id)
        worker.process = _SPAWN.Process(
            target=run_worker, args=(config, child), name=f"als2otel-w{worker.index}"
        )
        worker.process.start()
        child.close()
        worker.conn, worker.http_port, worker.held = parent, 0, {}
        deadline = time.monotonic() + 60
        while worker.http_port == 0 and time.monotonic() < deadline and worker.process.is_alive():
            self._read_reports(worker)
            await asyncio.sleep(0.05)

    def _read_reports(self, worker: _Worker) -> None:
        conn = worker.conn
        with contextlib.suppress(EOFError, OSError):
            while conn is not None and conn.poll():
                kind, value = conn.recv()
                if kind == "port":
                    worker.http_port = value
                elif kind == "held":
                    worker.held = value

    async def run(self, stop: asyncio.Event) -> int:
        """Supervise until ``stop`` is set; then stop the workers and return the exit code."""
        while not stop.is_set():
            for worker in self._workers:
                self._read_reports(worker)
                if not worker.process.is_alive():
                    await self._replace(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        return await self.stop()

    async def _replace(self, worker: _Worker) -> None:
        code = worker.process.exitcode
        for signal_name, held in worker.held.items():
            if held:
                self.stats.dropped.inc(signal_name, "worker_died", by=held)
        self.stats.worker_restarts.inc()
        worker.failures += 1
        delay = min(RESTART_BACKOFF * 2 ** (worker.failures - 1), 30.0)
        log.error(
            "worker %d exited with %s; held unexported at its last report: %s; starting it again in %.0fs",
            worker.index,
            code,
            worker.held or "nothing",
            delay,
        )
        worker.http_port = 0  # not ready meanwhile
        await asyncio.sleep(delay)
        await self._start(worker)

    async def stop(self) -> int:
        """SIGTERM to every worker; 0 when each flushed and exited 0 within ``shutdown_timeout``."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.config.shutdown_timeout + 5
        for worker in self._workers:
            await asyncio.to_thread(worker.process.join, max(deadline - time.monotonic(), 0.01))
        code = 0
        for worker in self._workers:
            if worker.process.is_alive():
                log.error("worker %d did not stop within shutdown_timeout; killing it", worker.index)
                worker.process.kill()
                code = 1
            elif worker.process.exitcode != 0:
                code = 1
        await self.http.stop()
        if self._reserved is not None:
            self._reserved.close()
        return code

    async def _get(self, worker: _Worker, path: str) -> tuple[int, bytes]:
        if not worker.http_port:
            return 503, b""

        def fetch() -> tuple[int, bytes]:
            url = f"http://127.0.0.1:{worker.http_port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as error:
                return int(error.code), b""
            except OSError:
                return 503, b""

        return await asyncio.to_thread(fetch)

    async def _forward_logs(self, body: bytes, peer: str) -> bytes:
        """OTLP/HTTP logs handed to the workers in turn (over their private HTTP port)."""
        worker = self._workers[self._next_worker % len(self._workers)]
        self._next_worker += 1

        def post() -> bytes:
            request = urllib.request.Request(
                f"http://127.0.0.1:{worker.http_port}/v1/logs",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as error:
                if error.code == 400:
                    raise DecodeError("the worker could not parse the request") from error
                raise

        return await asyncio.to_thread(post)

    async def _ready(self) -> bool:
        answers = await asyncio.gather(*(self._get(w, "/readyz") for w in self._workers))
        return all(status == 200 for status, _ in answers)

    async def _metrics(self) -> Iterator[str]:
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self._workers))
        pages = [body.decode() for status, body in answers if status == 200]
        return merge_pages([*pages, render(None, self.stats)])

    async def _topology(self, window: float, histograms: bool) -> dict[str, Any]:
        """The workers' topologies merged (percentiles from their summed latency histograms)."""
        path = f"/api/topology?window={window:g}s&histograms=1"
        answers = await asyncio.gather(*(self._get(w, path) for w in self._workers))
        return merge_snapshots([json.loads(body) for status, body in answers if status == 200], window)


async def serve(config: cfg.Config, stop: asyncio.Event) -> int:
    """``als2otel serve`` with workers: supervise until ``stop``; the exit code."""
    supervisor = Supervisor(config)
    await supervisor.start()
    return await supervisor.run(stop)
