"""Entries/s through the whole bridge, next to a bare receiver, in one run.

Each mode runs in its own process pinned to core 0; the ALS sender (a separate
process) and the OTLP receiver (another one) share core 1. The sender streams
pre-built StreamAccessLogsMessages (100 realistic sidecar entries each) over
gRPC as fast as the receiver reads them.

* bare: a grpc.aio server that parses each message and each of its entries, and counts them;
* pipeline: ``als2otel serve`` wiring (receiver, analysis, translation, OTLP
  export of spans and metrics to a local OTLP/gRPC receiver), timed until the
  last span has arrived at that receiver (the spans left after the last entry
  are exported at once rather than at the next 1 s flush tick);
* pipeline+mx-mesh: the same with the mx-mesh analyzer resolving both peers
  from Istio's peer metadata on every entry (when the analyzer exists);
* pipeline+mtls: the pipeline with ``receiver.tls`` (mutual TLS), the sender
  presenting a client certificate;
* pipeline+storage: the pipeline with the sending queue on disk (``sending_queue.storage``);
* bare+envoy, pipeline+envoy: traffic as Envoy 1.40 under Istio sends it (TLS properties, logged
  headers, a connection and a request id per request, destinations over 200 pods) with
  k8s-mesh resolving both ends through a list/watch cache of the mesh's pods, next to the
  bare receiver on the same messages;
* pipeline+otlp: the same entries as OTLP log records (Envoy's OpenTelemetry
  access logger with als2otel's attribute set), one Export call per message.

With ``--compiled``, each mode but bare runs twice: with the pure-Python modules of src/, and
with the modules setup.py compiles built in build/compiled (``make compiled``), which is what
``pip install .`` installs where a C compiler is at hand.

Each mode reports entries per second of wall clock and per CPU-second of its
process (all its threads; on a shared machine the wall clock also counts time
the core was lent to others).

Usage: python bench/pipeline.py [--entries N] [--streams S] [--modes bare,pipeline,...]
                                [--workers 1,2] [--workers-entries N] [--compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
SOURCE = ROOT / "src"
COMPILED = ROOT / "build" / "compiled" / "src"
"""The two builds a mode can import als2otel from: the sources, and ``make compiled``'s copy."""
sys.path.insert(0, str(SOURCE))

BATCH = 100
SPAWN = mp.get_context("spawn")  # gRPC does not survive fork(), in any of our processes


def use_build(source: str) -> None:
    """This process imports als2otel from ``source`` (src/, or the compiled copy)."""
    sys.path.insert(0, source)


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > core:  # type: ignore[operator]
        os.sched_setaffinity(0, {core})


ENVOY_PODS = 200
"""Destination pods of the Envoy-shaped traffic (``--envoy``), each a pod k8s-mesh finds by its IP."""


def envoy_pod_ip(n: int) -> str:
    return f"10.2.{n // 200}.{n % 200 + 1}"


def build_messages(
    total: int, streams: int, with_peers: bool, per_connection: int = 10, offset: int = 0, envoy: bool = False
) -> list[list[bytes]]:
    """Pre-serialized messages per stream; the first of each carries the identifier.

    Entry ``i`` (counted from ``offset``) has request and trace ids of its own; every
    ``per_connection`` entries share a connection (the client-side ports), as
    keep-alive connections and Envoy's connection pools carry many requests. ``envoy``: as
    a sidecar of Envoy 1.40 under Istio logs them, with its TLS properties (the peer's
    SPIFFE identity), the logged request headers, and destinations spread over
    :data:`ENVOY_PODS` pods.
    """
    from support import als

    sources = [
        als.sidecar_metadata(f"productpage-v1-6b746f74dc-{i:05d}", "default", "productpage")
        for i in range(streams)
    ]
    peer_state: dict[str, Any] = {}
    if with_peers:
        from google.protobuf import any_pb2

        peer = any_pb2.Any()
        peer.Pack(
            als.struct(
                {
                    "workload": "reviews-v1",
                    "name": "reviews-v1-545db77b95-mffvn",
                    "namespace": "default",
                    "service": "reviews",
                    "revision": "v1",
                    "app": "reviews",
                    "version": "v1",
                    "cluster": "Kubernetes",
                    "type": "deployment",
                }
            )
        )
        peer_state = {"upstream_peer": peer}
    per_stream = total // streams
    now_ms = als.real_now_ms()  # the bridge refuses entries dated far from its clock
    out = []
    for s in range(streams):
        ident = als.identifier(
            f"sidecar~10.1.{s // 250}.{s % 250 + 1}~productpage-v1-6b746f74dc-{s:05d}.default"
            "~default.svc.cluster.local",
            sources[s],
        )
        messages = []
        for start in range(0, per_stream, BATCH):
            entries = [
                als.http_entry(
                    downstream_remote=("10.1.0.4", 40000 + i // per_connection % 20000),
                    downstream_local=("10.96.0.9", 9080),
                    upstream_remote=("10.1.0.9", 9080),
                    upstream_local=("10.1.0.4", 10000 + i // per_connection % 50000),
                    cluster="outbound|9080||reviews.default.svc.cluster.local",
                    path=f"/reviews/{i % 7}",
                    authority="reviews:9080",
                    request_id=f"{s:08x}-0000-4000-8000-{i:012d}",
                    status=200 if i % 50 else 503,
                    duration_ms=3 + i % 40,
                    headers={"traceparent": f"00-{s:08x}{i:024x}-{i + 1:016x}-01"} if i % 3 == 0 else None,
                    filter_state=peer_state,
                    start_ms=now_ms + i,
                )
                for i in range(offset + start, offset + min(start + BATCH, per_stream))
            ]
            if envoy:
                for i, entry in enumerate(entries, offset + start):
                    _as_envoy_logs_it(entry, i)
            messages.append(als.http_message(entries, ident if start == 0 else None).SerializeToString())
        out.append(messages)
    return out


def _as_envoy_logs_it(entry: Any, i: int) -> None:
    """An entry as Istio's sidecar logs it: mutual TLS with the peer's SPIFFE identity, the
    logged headers, and the destination pod of its request."""
    from support import als

    common = entry.common_properties
    tls = common.tls_properties
    # Fields our .proto leaves undeclared still travel, as Envoy sends them: version TLSv1_3 (1),
    # the cipher suite 0x1301 (2), the SNI (3).
    sni = b"outbound_.9080_._.reviews.default.svc.cluster.local"
    tls.MergeFromString(b"\x08\x04" + b"\x12\x03\x08\x81\x26" + b"\x1a" + bytes([len(sni)]) + sni)
    peer, local = tls.peer_certificate_properties, tls.local_certificate_properties
    peer.subject_alt_name.add().uri = b"spiffe://cluster.local/ns/default/sa/reviews"
    local.subject_alt_name.add().uri = b"spiffe://cluster.local/ns/default/sa/productpage"
    pod = i % ENVOY_PODS
    common.upstream_remote_address = als.address(envoy_pod_ip(pod), 9080)
    common.upstream_cluster = f"outbound|9080||svc{pod % 20}.default.svc.cluster.local"
    headers = entry.request.request_headers
    headers["user-agent"] = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"
    headers["content-type"] = b"application/json"
    headers["x-b3-traceid"] = f"{i:032x}".encode()
    headers["x-b3-spanid"] = f"{i + 7:016x}".encode()
    entry.request.user_agent = headers["user-agent"]
    entry.response.response_headers["content-type"] = b"application/json"


def envoy_mesh_objects() -> list[dict[str, Any]]:
    """The Envoy-shaped traffic's mesh as Kubernetes objects: its destination pods behind 20
    Services, and the sources."""
    from support import kube_api

    objects = []
    for n in range(ENVOY_PODS):
        service = f"svc{n % 20}"
        objects.append(
            kube_api.pod("default", f"{service}-v1-5f7b9c6d8-{n:05d}", envoy_pod_ip(n), {"app": service})
        )
    objects += [kube_api.service("default", f"svc{k}", {"app": f"svc{k}"}) for k in range(20)]
    for s in range(64):
        ip = f"10.1.{s // 250}.{s % 250 + 1}"
        objects.append(
            kube_api.pod("default", f"productpage-v1-6b746f74dc-{s:05d}", ip, {"app": "productpage"})
        )
    objects.append(
        kube_api.pod("default", "productpage-v1-6b746f74dc-shared", "10.1.0.4", {"app": "productpage"})
    )
    objects.append(kube_api.service("default", "productpage", {"app": "productpage"}))
    return objects


def envoy_mesh(directory: Path) -> tuple[Any, Path]:
    """A list/watch API server holding :func:`envoy_mesh_objects`, and a kubeconfig for it."""
    from support import kube_api

    api = kube_api.FakeKubeApi().start()
    for obj in envoy_mesh_objects():
        api.put(obj)
    return api, api.kubeconfig(directory)


def offline_bridge(peers: bool, envoy: bool = False) -> Any:
    """The per-entry core for in-process runs (no gRPC, no exporter), building spans as a bridge
    that exports them does. ``envoy``: k8s-mesh over an index holding :func:`envoy_mesh_objects`
    (as the list/watch cache fills it; the cache's threads are not in it)."""
    from types import SimpleNamespace

    from als2otel import config as cfg
    from als2otel.analysis.k8s import KubeIndex, NameRule
    from als2otel.app import build_core, name_labels
    from als2otel.stats import Stats

    config = cfg.parse({"analyzers": ["k8s-mesh"] if envoy else ["mx-mesh"] if peers else []}, {})
    kube = None
    if envoy:
        index = KubeIndex(
            NameRule(config.k8s.service_name_rule), config.k8s.ignored_namespaces, name_labels(config)
        )
        for obj in envoy_mesh_objects():
            index.apply(obj["kind"], "ADDED", obj)
        kube = SimpleNamespace(index=index)
    return build_core(config, Stats(), traces=True, kube=kube)


def add_traffic_arguments(parser: argparse.ArgumentParser) -> None:
    """The traffic the in-process benchmarks feed: peer metadata or not, connection reuse."""
    parser.add_argument("--peers", action="store_true", help="entries carry Istio peer metadata; mx-mesh on")
    parser.add_argument(
        "--requests-per-connection", type=int, default=10, help="1: every request on a new connection"
    )
    parser.add_argument(
        "--envoy",
        action="store_true",
        help="entries as Envoy 1.40 under Istio logs them, k8s-mesh on (as the pipeline+envoy mode)",
    )


def as_otlp_logs(streams: list[list[bytes]]) -> list[list[bytes]]:
    """The same entries as Envoy's OpenTelemetry access logger would send them: one
    ExportLogsServiceRequest per ALS message, its records carrying the documented attributes."""
    from support.otlp_logs import export_request, record_of

    from als2otel.receiver._proto import accesslog_pb2, als_pb2

    out = []
    for messages in streams:
        ident = als_pb2.StreamAccessLogsMessage.FromString(messages[0]).identifier
        requests = []
        for raw in messages:
            entries = als_pb2.StreamAccessLogsMessage.FromString(raw).http_logs.log_entry
            records = [record_of(accesslog_pb2.HTTPAccessLogEntry.FromString(e), ident) for e in entries]
            requests.append(export_request(records).SerializeToString())
        out.append(requests)
    return out


def sender(
    target: str,
    spec: tuple[int, int, bool, int],
    ready: Any,
    go: Any,
    otlp: bool = False,
    mtls: tuple[str, str, str] | None = None,
    cpu: Any = None,
    core: int | None = 1,
) -> None:
    """``mtls``: the CA, client certificate and key files to stream with, over mutual TLS;
    ``cpu``: a shared double that gets the CPU seconds this process spent streaming;
    ``core``: the core it is pinned to (None: not pinned)."""
    if core is not None:
        pin(core)
    messages = build_messages(*spec)
    if otlp:
        messages = as_otlp_logs(messages)
    import grpc

    credentials = None
    if mtls is not None:
        ca, cert, key = (Path(name).read_bytes() for name in mtls)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)

    async def stream(channel: Any, batch: list[bytes]) -> None:
        if otlp:  # Envoy's OpenTelemetry logger: one Export call per flush, in turn
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for request in batch:
                await export(request)
            return
        call = channel.stream_unary(
            "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        await call(iter(batch))

    async def main() -> None:
        # A connection per stream, as each of Envoy's worker threads opens its own (and as
        # SO_REUSEPORT needs to spread streams over the bridge's worker processes).
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        if credentials is None:
            channels = [grpc.aio.insecure_channel(target, options=options) for _ in messages]
        else:
            options.append(("grpc.ssl_target_name_override", "localhost"))
            channels = [grpc.aio.secure_channel(target, credentials, options=options) for _ in messages]
        ready.set()
        go.wait()
        cpu_start = time.process_time()
        await asyncio.gather(*(stream(ch, batch) for ch, batch in zip(channels, messages, strict=True)))
        if cpu is not None:
            cpu.value = time.process_time() - cpu_start
        for ch in channels:
            await ch.close()

    asyncio.run(main())


def otlp_receiver(port_queue: Any, counts: Any, cpu: Any = None, core: int | None = 1) -> None:
    """Counts the spans received into ``counts`` and, if given, its CPU seconds into ``cpu``;
    pinned to ``core`` unless it is None."""
    if core is not None:
        pin(core)
    from support.otlp_receiver import GrpcOtlpReceiver

    receiver = GrpcOtlpReceiver()
    # Each request parsed and its spans counted once, as a backend would; none of them kept
    # (counting them all again at every tick cost this core, which the sender shares, more
    # the longer a run went).
    receiver.received.keep = False
    receiver.start()
    port_queue.put(receiver.port)
    while True:
        time.sleep(0.05)
        with receiver.received.lock:
            counts.value = receiver.received.counted["traces"]
        if cpu is not None:
            cpu.value = time.process_time()


def run_bare(total: int, spec: tuple[int, int, bool, int], *, result: Any) -> None:
    pin(0)
    import grpc

    from als2otel.receiver._proto import accesslog_pb2, als_pb2

    parse_entry = accesslog_pb2.HTTPAccessLogEntry.FromString

    async def main() -> dict[str, float]:
        received = 0
        first = last = cpu_first = cpu_last = 0.0
        done = asyncio.Event()

        async def handler(requests: Any, context: Any) -> bytes:
            nonlocal received, first, last, cpu_first, cpu_last
            async for raw in requests:
                message = als_pb2.StreamAccessLogsMessage.FromString(raw)
                if not first:
                    first, cpu_first = time.perf_counter(), time.process_time()
                entries = message.http_logs.log_entry
                for encoded in entries:  # every entry parsed, as a receiver that reads them must
                    parse_entry(encoded)
                received += len(entries)
                if received >= total:
                    last, cpu_last = time.perf_counter(), time.process_time()
                    done.set()
            return b""

        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.accesslog.v3.AccessLogService",
                    {"StreamAccessLogs": grpc.stream_unary_rpc_method_handler(handler)},
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready, go = SPAWN.Event(), SPAWN.Event()
        proc = SPAWN.Process(target=sender, args=(f"127.0.0.1:{port}", spec, ready, go))
        proc.start()
        ready.wait()
        go.set()
        await done.wait()
        await asyncio.to_thread(proc.join)  # the streams end when our handlers return
        await server.stop(0)
        return {"seconds": last - first, "cpu_seconds": cpu_last - cpu_first, "entries": received}

    out = asyncio.run(main())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.put(out)


def run_pipeline(
    total: int,
    spec: tuple[int, int, bool, int],
    analyzers: list[str],
    otlp: bool = False,
    mtls: bool = False,
    storage: bool = False,
    k8s: bool = False,
    *,
    result: Any,
    source: str = str(SOURCE),
) -> None:
    use_build(source)
    pin(0)
    from als2otel import config as cfg
    from als2otel.app import Bridge, tune_garbage_collection

    port_queue: Any = SPAWN.Queue()
    counts: Any = SPAWN.Value("q", 0)
    receiver = SPAWN.Process(target=otlp_receiver, args=(port_queue, counts), daemon=True)
    receiver.start()
    otlp_port = port_queue.get()

    receiver_config: dict[str, Any] = {"listen": "127.0.0.1:0"}
    client_files = None
    if mtls:  # the bridge's CA, its server certificate and a client's, as deploy/overlays/mtls-cert-manager
        import tempfile

        from support import certs

        directory = Path(tempfile.mkdtemp())
        ca = certs.ca(directory, "ca")
        server = certs.issue(directory, "server", ca, "DNS:localhost,IP:127.0.0.1")
        client = certs.issue(
            directory, "client", ca, "URI:spiffe://cluster.local/ns/default/sa/p", client=True
        )
        receiver_config["tls"] = {
            "cert_file": str(server.cert),
            "key_file": str(server.key),
            "client_ca_file": str(ca.cert),
        }
        client_files = (str(ca.cert), str(client.cert), str(client.key))

    k8s_config: dict[str, Any] = {}
    if k8s:  # k8s-mesh over a list/watch cache of the mesh's pods
        import tempfile

        _api, kubeconfig = envoy_mesh(Path(tempfile.mkdtemp()))
        k8s_config = {"kubeconfig": str(kubeconfig)}
    exporter: dict[str, Any] = {"endpoint": f"127.0.0.1:{otlp_port}", "compression": "none"}
    if storage:  # the sending queue on disk, in a fresh directory on this machine's disk
        import tempfile

        exporter["sending_queue"] = {"storage": tempfile.mkdtemp(prefix="als2otel-queue-")}

    async def main() -> dict[str, float]:
        config = cfg.parse(
            {
                "receiver": receiver_config,
                "http": {"listen": "127.0.0.1:0"},
                "analyzers": analyzers,
                "exporters": {"otlp": exporter},
                **({"k8s": k8s_config} if k8s_config else {}),
                "metrics": {"export_interval": "1s"},
            },
            {},
        )
        bridge = Bridge(config)
        await bridge.start()
        tune_garbage_collection()  # as `als2otel serve` does once started
        while not bridge.ready():  # k8s-mesh: the cache has listed the mesh
            await asyncio.sleep(0.05)
        ready, go = SPAWN.Event(), SPAWN.Event()
        proc = SPAWN.Process(
            target=sender, args=(f"127.0.0.1:{bridge.receiver.port}", spec, ready, go, otlp, client_files)
        )
        proc.start()
        ready.wait()
        rss_samples = []
        go.set()
        start, cpu_start = time.perf_counter(), time.process_time()
        flushed = False
        while counts.value < total:
            await asyncio.sleep(0.02)
            rss_samples.append(_rss_mb())
            if not flushed and bridge.stats.calls.get("client") >= total:
                # The last spans would wait for the next flush tick (1 s): latency, not throughput.
                bridge.flush_spans()
                flushed = True
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        await asyncio.to_thread(proc.join)
        calls = bridge.stats.calls.get("client")
        dropped = dict(bridge.stats.dropped.values)
        await bridge.stop()
        third = max(len(rss_samples) // 3, 1)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "entries": calls,
            "spans_exported": counts.value,
            "dropped": str(dropped),
            "rss_first_third_mb": max(rss_samples[:third], default=0),
            "rss_last_third_mb": max(rss_samples[-third:], default=0),
        }

    out = asyncio.run(main())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    receiver.kill()
    result.put(out)


def run_serve(
    total: int,
    spec: tuple[int, int, bool, int],
    workers: int,
    *,
    result: Any,
    source: str = str(SOURCE),
) -> None:
    """``als2otel serve`` with ``receiver.workers`` as its own process tree (not pinned), timed
    until the OTLP receiver has every span (including up to one 1 s flush tick at the end, which
    is why these modes stream more entries than the others: ``--workers-entries``). Also
    reports the CPU seconds the sender and the OTLP receiver spent meanwhile: on a machine
    with as many cores as workers, that is what the workers could not have."""
    import subprocess
    import tempfile

    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from support.net import free_port, wait_ready

    port_queue: Any = SPAWN.Queue()
    counts: Any = SPAWN.Value("q", 0)
    receiver_cpu: Any = SPAWN.Value("d", 0.0)
    sender_cpu: Any = SPAWN.Value("d", 0.0)
    # Nothing pinned: one of the workers would share the helpers' core and set the pace of both.
    receiver = SPAWN.Process(target=otlp_receiver, args=(port_queue, counts, receiver_cpu, None), daemon=True)
    receiver.start()
    otlp_port = port_queue.get()
    als_port, http_port = free_port(), free_port()
    config = {
        "receiver": {"listen": f"127.0.0.1:{als_port}", "workers": workers},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": [],
        "exporters": {"otlp": {"endpoint": f"127.0.0.1:{otlp_port}", "compression": "none"}},
        "metrics": {"export_interval": "1s"},
        "log_level": "warning",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(config, file)
    bridge = subprocess.Popen(
        [sys.executable, "-m", "als2otel", "serve", "--config", file.name],
        env={**os.environ, "PYTHONPATH": source},
    )
    assert wait_ready(http_port)
    ready, go = SPAWN.Event(), SPAWN.Event()
    proc = SPAWN.Process(
        target=sender, args=(f"127.0.0.1:{als_port}", spec, ready, go, False, None, sender_cpu, None)
    )
    proc.start()
    ready.wait()
    time.sleep(0.1)  # the receiver's CPU reading is at most 50 ms old
    receiver_cpu_start = receiver_cpu.value
    workers_start = _children_cpu(bridge.pid) if workers > 1 else {}
    go.set()
    start = time.perf_counter()
    while counts.value < total:
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    workers_end = _children_cpu(bridge.pid) if workers > 1 else {}
    split = sorted(round(workers_end[pid] - workers_start.get(pid, 0.0), 2) for pid in workers_end)
    helpers_cpu = receiver_cpu.value - receiver_cpu_start
    proc.join()
    helpers_cpu += sender_cpu.value
    bridge.terminate()
    bridge.wait(30)
    receiver.kill()
    Path(file.name).unlink()
    result.put(
        {
            "seconds": seconds,
            "cpu_seconds": float("nan"),
            "peak_rss_mb": float("nan"),
            "workers": workers,
            "entries": total,
            "sender_and_otlp_receiver_cpu_seconds": round(helpers_cpu, 2),
            "worker_cpu_seconds": split,
        }
    )


def _children_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user and system) of each worker process of ``pid``, read from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) != pid:  # the field after the state is the parent's pid
            continue
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            if b"spawn_main" not in f.read():
                continue  # multiprocessing's resource tracker, not a worker
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument(
        "--requests-per-connection", type=int, default=10, help="1: every request on a new connection"
    )
    parser.add_argument(
        "--envoy",
        action="store_true",
        help="entries as Envoy 1.40 under Istio logs them, k8s-mesh on (as the pipeline+envoy mode)",
    )
    parser.add_argument(
        "--modes",
        default="bare,pipeline,pipeline+mx-mesh",
        help="also workers=N: `als2otel serve` with N worker processes",
    )
    parser.add_argument("--workers", default="", help="shorthand: 1,2 adds modes workers=1,workers=2")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also run each mode but bare with the compiled modules of build/compiled (make compiled)",
    )
    parser.add_argument(
        "--workers-entries",
        type=int,
        default=800_000,
        help="entries for the workers=N modes, whose timing includes up to one 1 s span flush tick",
    )
    args = parser.parse_args()
    total = args.entries - args.entries % (args.streams * BATCH)
    plain = (total, args.streams, False, args.requests_per_connection)
    with_peers = (total, args.streams, True, args.requests_per_connection)
    # As Envoy sends them: a connection per request, a request id each, TLS properties and headers.
    envoy_shaped = (total, args.streams, False, 1, 0, True)
    results = {}
    modes = args.modes.split(",") + [f"workers={n}" for n in args.workers.split(",") if n]
    if args.compiled and not list(COMPILED.glob("als2otel/*.so")):
        raise SystemExit(f"no compiled build in {COMPILED}: run `make compiled` first")
    builds = {"": str(SOURCE)} | ({" [compiled]": str(COMPILED)} if args.compiled else {})
    for mode in modes:
        entries = total
        if mode == "bare":
            target: Any = run_bare
            proc_args: tuple[Any, ...] = (total, plain)
        elif mode == "pipeline":
            target, proc_args = run_pipeline, (total, plain, [])
        elif mode == "pipeline+otlp":  # the same entries through Envoy's OpenTelemetry logger's path
            target, proc_args = run_pipeline, (total, plain, [], True)
        elif mode == "pipeline+mtls":  # the same entries over mutual TLS (receiver.tls)
            target, proc_args = run_pipeline, (total, plain, [], False, True)
        elif mode == "pipeline+storage":  # the sending queue on disk (sending_queue.storage)
            target, proc_args = run_pipeline, (total, plain, [], False, False, True)
        elif mode == "pipeline+mx-mesh":
            target, proc_args = run_pipeline, (total, with_peers, ["mx-mesh"])
        elif mode == "bare+envoy":  # the bare receiver on the Envoy-shaped messages below
            target, proc_args = run_bare, (total, envoy_shaped)
        elif mode == "pipeline+envoy":  # Envoy-shaped traffic, k8s-mesh over a list/watch cache
            target, proc_args = run_pipeline, (total, envoy_shaped, ["k8s-mesh"], False, False, False, True)
        elif mode.startswith("workers="):
            entries = args.workers_entries - args.workers_entries % (args.streams * BATCH)
            spec = (entries, args.streams, False, args.requests_per_connection)
            target, proc_args = run_serve, (entries, spec, int(mode.split("=")[1]))
        else:
            raise SystemExit(f"unknown mode {mode}")
        runs = (
            builds.items() if not mode.startswith("bare") else [("", None)]
        )  # bare imports no als2otel module
        for build, source in runs:
            queue: Any = SPAWN.Queue()
            kwargs = {"result": queue} if source is None else {"result": queue, "source": source}
            proc = SPAWN.Process(target=target, args=proc_args, kwargs=kwargs)
            proc.start()
            out = queue.get()
            proc.join()
            out["entries_per_s"] = round(entries / out["seconds"])
            out["entries_per_cpu_s"] = (
                round(entries / out["cpu_seconds"]) if out["cpu_seconds"] == out["cpu_seconds"] else 0
            )
            results[mode + build] = out
            print(
                f"{mode + build:29s} {out['entries_per_s']:>9,} entries/s  {out['entries_per_cpu_s']:>9,} per"
                f" CPU-second  peak RSS {out['peak_rss_mb']:.0f} MB  {out}",
                flush=True,
            )
    for build in builds:
        if "bare" in results and "pipeline" + build in results:
            ratio = results["pipeline" + build]["entries_per_s"] / results["bare"]["entries_per_s"]
            print(f"pipeline{build} / bare = {ratio:.3f}")
        if "bare+envoy" in results and "pipeline+envoy" + build in results:
            ratio = (
                results["pipeline+envoy" + build]["entries_per_s"] / results["bare+envoy"]["entries_per_s"]
            )
            print(f"pipeline+envoy{build} / bare+envoy = {ratio:.3f}")
    print(
        json.dumps(
            {
                "entries": total,
                "streams": args.streams,
                "requests_per_connection": args.requests_per_connection,
                "python": sys.version.split()[0],
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
