"""The one place the pipeline is wired: receiver -> analysis -> translation -> export.

Start downstream first (exporters, pipeline, HTTP) and the receiver last; stop
the receiver first, drain the pipeline, flush, then stop the exporters, so
nothing received is lost at either end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import config as cfg
from .analysis import Analyzer, AnalyzerChain, MxMeshAnalyzer, ProxyAnalyzer
from .analysis.k8s import KubeIndex, NameRule
from .analysis.k8s.watch import KubeCache, NoKubernetesConfig, api_client
from .analysis.k8s_mesh import K8sMeshAnalyzer
from .analysis.peers import PeerDecoder
from .export import OtlpExporter, Transport, make_transport, render_chunks
from .export.otlp_metrics import metrics_request
from .export.split import split
from .model import Workload
from .pipeline import Pipeline
from .receiver import AlsServer
from .stats import Stats
from .translation import MetricRecorder, MetricStore, SpanBatch, Topology, Translator
from .web import HttpServer

log = logging.getLogger("als2otel")

TRACE_FLUSH_INTERVAL = 1.0
"""Seconds between span exports (sooner when a batch fills)."""

SELF_SERVICE = "als2otel"
"""The service name of the resource the bridge's own counters, and resource-less series, are sent on."""

INSTANCE_ATTRIBUTE = "als2otel.instance"
"""The data-point attribute naming the bridge process that wrote a series (``metrics.instance_id``)."""

TransportFactory = Callable[[str, cfg.OtlpConfig], Transport]

GC_THRESHOLDS = (10_000, 20, 20)
"""CPython's collection thresholds in a bridge process (its default is 700, 10, 10)."""


def tune_garbage_collection() -> None:
    """Set CPython's cycle collector for a process that runs one started bridge (serve, a worker).

    Almost nothing made per entry forms a reference cycle: entries, calls and encoded spans
    are freed by reference counting once done with. At CPython's defaults the collector ran
    every 700 allocations (a few entries) and walked the long-lived heap again and again,
    finding nothing: 11-12% of the processing (timed with gc callbacks, README "Performance").
    What exists once the bridge has started (modules, configuration, servers) is frozen out
    of every pass; the young generation is collected every 10,000 allocations, so the cycles
    there are (tracebacks of skipped entries, aiohttp's and gRPC's objects) are still freed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def default_instance_id(http_port: int, environ: Mapping[str, str] = os.environ) -> str:
    """``metrics.instance_id`` when the configuration leaves it out: the host name and the HTTP
    port, as Prometheus names a target (``host:port``), unique among the bridges running on one
    host (no two can listen on one port) and the same across restarts of one of them; in
    Kubernetes the host name alone, which is the pod's name."""
    host = socket.gethostname()
    return host if "KUBERNETES_SERVICE_HOST" in environ else f"{host}:{http_port}"


EXIT_FAILED = 1
"""A bridge's exit code when its processing stopped, so that an orchestrator restarts it."""


async def run_bridge(
    bridge: Bridge,
    stop: asyncio.Event,
    *,
    started: Callable[[], None] | None = None,
    tick: Callable[[], None] | None = None,
    interval: float = 1.0,
) -> int:
    """One bridge's life, as ``serve`` and each worker live it: start it (``started`` once it
    takes traffic), run until ``stop`` is set or its processing stops (``tick`` every
    ``interval`` seconds meanwhile), then stop it gracefully; 0, or :data:`EXIT_FAILED`."""
    await bridge.start()
    tune_garbage_collection()
    if started is not None:
        started()
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bridge.failed.wait())]
    while not any(w.done() for w in waits):
        if tick is not None:
            tick()
        await asyncio.wait(waits, timeout=interval if tick else None, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    log.info("stopping: draining and flushing (up to %.0fs)", bridge.config.shutdown_timeout)
    await bridge.stop()
    return EXIT_FAILED if bridge.failed.is_set() else 0


def page_settings(config: cfg.Config) -> dict[str, Any]:
    """What /api/topology tells the page besides the graph: its trace link and health thresholds."""
    topology = config.topology
    return {
        "trace_url": topology.trace_url,
        "health": {"degraded": topology.degraded_error_rate, "failure": topology.failure_error_rate},
    }


def name_labels(config: cfg.Config) -> tuple[str, ...]:
    """The labels naming a workload's service, for every place that names one from labels."""
    return tuple(config.service_name_labels)


def build_analyzers(config: cfg.Config, kube: KubeCache | None, stats: Stats) -> list[Analyzer]:
    """The configured analyzers, in order (k8s-mesh only with a Kubernetes cache)."""
    analyzers: list[Analyzer] = []
    for name in config.analyzers:
        if name == "mx-mesh":
            decoder = PeerDecoder(name_labels=name_labels(config), rotations=stats.cache_rotations)
            analyzers.append(MxMeshAnalyzer(decoder))
        elif name == "k8s-mesh" and kube is not None:
            analyzers.append(K8sMeshAnalyzer(kube.index))
    return analyzers


def build_kube_cache(config: cfg.Config, stats: Stats) -> KubeCache | None:
    """The Kubernetes cache when k8s-mesh is listed and a configuration is found; else one warning."""
    if "k8s-mesh" not in config.analyzers:
        return None
    try:
        api = api_client(config.k8s.kubeconfig)
    except NoKubernetesConfig as exc:
        log.warning(
            "k8s-mesh is configured but no Kubernetes configuration was found (%s); "
            "running with the other analyzers",
            exc,
        )
        return None
    index = KubeIndex(
        NameRule(config.k8s.service_name_rule), config.k8s.ignored_namespaces, name_labels(config)
    )
    return KubeCache(api, index, stats)


@dataclass
class Core:
    """What every entry passes through, with nothing around it (no ports, no exporter): the
    pipeline (normalise, analyse), the translator and the stores it fills. Built alone by
    benches, fuzzing and tools (:func:`build_core`); a :class:`Bridge` wraps one."""

    stats: Stats
    metrics: MetricStore
    topology: Topology
    translator: Translator
    chain: AnalyzerChain
    pipeline: Pipeline

    def expire(self) -> None:
        """Forget series and edges gone idle (``metrics.expire_after``; edges: the largest window),
        and the call shapes whose metric plans held a series that went."""
        if self.metrics.expire():
            self.translator.forget_shapes()
        self.topology.expire()
        self.stats.metric_series.value = len(self.metrics.series)
        self.stats.topology_edges.value = self.topology.edge_count


def build_core(
    config: cfg.Config,
    stats: Stats,
    *,
    traces: bool,
    on_spans: Callable[[SpanBatch], None] = lambda batch: None,
    clock: Callable[[], int] = time.time_ns,
    kube: KubeCache | None = None,
) -> Core:
    """A :class:`Core` for ``config``: ``traces`` whether spans are built (a bridge builds them
    when it exports them), ``on_spans`` given each full batch, ``kube`` the cache k8s-mesh uses."""
    metrics = MetricStore(start_ns=clock(), stats=stats, expire_after=config.metrics.expire_after)
    seconds = time.time if clock is time.time_ns else lambda: clock() / 1e9
    topology = Topology(stats.dropped, clock=seconds, expired=stats.expired)
    translator = Translator(
        MetricRecorder(metrics, config.metrics.sets),
        traces=traces,
        sampling_ratio=config.traces.sampling_ratio,
        topology=topology,
        rotations=stats.cache_rotations,
    )
    chain = AnalyzerChain(build_analyzers(config, kube, stats), ProxyAnalyzer(), stats)
    pipeline = Pipeline(chain, translator, stats, on_spans=on_spans, clock=clock)
    return Core(stats, metrics, topology, translator, chain, pipeline)


class Bridge:
    def __init__(
        self,
        config: cfg.Config,
        *,
        transport_factory: TransportFactory = make_transport,
        clock: Callable[[], int] = time.time_ns,
        handed: bool = False,
    ) -> None:
        """``handed``: a worker's bridge, serving the ALS connections its parent hands over."""
        self.config = config
        self.stats = Stats()
        self._clock = clock
        self.instance_id = config.metrics.instance_id or ""  # else the default once the HTTP port is known
        self._self_resource = Workload(service_name=SELF_SERVICE, instance=self.instance_id)
        self._delta = config.metrics.temporality == "delta"
        seconds = time.time if clock is time.time_ns else lambda: clock() / 1e9
        otlp = config.exporters.otlp
        self.exporter: OtlpExporter | None = None
        if otlp.enabled:
            signals = ["metrics"] + (["traces"] if config.traces.enabled else [])
            self.exporter = OtlpExporter(
                {s: transport_factory(s, otlp) for s in signals},
                otlp,
                self.stats,
                cumulative_metrics=not self._delta,
            )
        self.kube = build_kube_cache(config, self.stats)
        core = build_core(
            config,
            self.stats,
            traces=config.traces.enabled and self.exporter is not None,
            on_spans=self._export_spans,
            clock=clock,
            kube=self.kube,
        )
        self.core = core
        self.metrics, self.topology, self.translator = core.metrics, core.topology, core.translator
        self.chain, self.pipeline = core.chain, core.pipeline
        self.receiver = AlsServer(
            config.receiver.listen,
            self.pipeline.submit,
            self.stats,
            name_labels(config),
            max_connection_age=config.receiver.max_connection_age,
            max_connection_age_grace=config.receiver.max_connection_age_grace,
            tls=config.receiver.tls,
            handed=handed,
        )
        self.http = HttpServer(
            config.http.listen,
            metrics=(lambda: render_chunks(self.metrics, self.stats))
            if config.exporters.prometheus.enabled
            else None,
            ready=self.ready,
            healthy=lambda: not self.failed.is_set(),
            topology=lambda view: self.topology.snapshot(view, seconds()),
            closed=self.stats.http_connections_closed,
            tls=config.http.tls,
            logs=self.receiver.accept_logs,
            page=page_settings(config),
        )
        self._ready = False
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        self.failed = asyncio.Event()
        """Set when a task the bridge cannot run without has ended: /healthz turns 503 and serve exits 1."""

    def ready(self) -> bool:
        """Taking traffic, with the Kubernetes caches (if any) listed once."""
        return self._ready and (self.kube is None or self.kube.synced.is_set())

    async def start(self) -> None:
        if self.exporter is not None:
            self.exporter.start()
        self._tasks = [
            asyncio.create_task(self.pipeline.run(), name="pipeline"),
            asyncio.create_task(self._flush_loop(), name="flush"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        if self.kube is not None:
            self.kube.start()
        await self.http.start()
        if not self.instance_id:
            self.instance_id = default_instance_id(self.http.port)
            self._self_resource = Workload(service_name=SELF_SERVICE, instance=self.instance_id)
        await self.receiver.start()
        self._ready = True

    async def stop(self) -> None:
        """Graceful stop within ``shutdown_timeout``: no new streams, drain, flush, exit."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        self._ready = False
        await self.receiver.stop(grace=min(1.0, self.config.shutdown_timeout / 4))
        if not self.failed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pipeline.drain(), timeout=max(deadline - time.monotonic(), 0.01))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush_spans()
        self._export_metrics()
        if self.exporter is not None:
            await self.exporter.shutdown(max(deadline - time.monotonic(), 0.01))
        await self.http.stop()
        if self.kube is not None:
            await asyncio.to_thread(self.kube.stop)

    def held_unexported(self) -> dict[str, int]:
        """What would be lost if this process died now: entries not yet analysed, spans not yet sent."""
        traces = self.pipeline.spans.count + (self.exporter.held("traces") if self.exporter else 0)
        return {"entries": self.pipeline.queued, "traces": traces}

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A pipeline or flush task ended outside :meth:`stop`: the bridge can no longer do its job."""
        if self._stopped:
            return
        error = None if task.cancelled() else task.exception()
        log.error(
            "the %s task ended unexpectedly; /healthz now answers 503 and the bridge stops",
            task.get_name(),
            exc_info=error,
        )
        self.failed.set()

    def flush_spans(self) -> None:
        """Export the spans gathered so far now, not at the next flush tick."""
        self._export_spans(self.pipeline.spans)

    def _export_spans(self, batch: SpanBatch) -> None:
        if batch.count and self.exporter is not None:
            request, count = batch.take()
            self.exporter.export(
                "traces", split("traces", request, self.config.exporters.otlp.max_request_size, count)
            )

    def _export_metrics(self) -> None:
        if self.exporter is not None:
            request, points = metrics_request(
                self.metrics,
                self._clock(),
                self._self_resource,
                writer=((INSTANCE_ATTRIBUTE, self.instance_id),),
                delta=self._delta,
            )
            self.exporter.export(
                "metrics",
                split(
                    "metrics",
                    request.SerializeToString(),
                    self.config.exporters.otlp.max_request_size,
                    points,
                ),
            )

    async def _flush_loop(self) -> None:
        interval = self.config.metrics.export_interval
        next_metrics = time.monotonic() + interval
        while True:
            await asyncio.sleep(TRACE_FLUSH_INTERVAL)
            self.flush_spans()
            if time.monotonic() >= next_metrics:
                self.expire()
                self._export_metrics()
                next_metrics += interval

    def expire(self) -> None:
        """Forget what went idle (:meth:`Core.expire`)."""
        self.core.expire()
