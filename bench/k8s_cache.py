"""The Kubernetes cache at scale: 20,000 pods and 5,000 Services (with their EndpointSlices).

Against the in-test API server (tests/support/kube_api.py, real list/watch over
HTTP on loopback), through the real kubernetes client. Reports: time from start
to the first full list (what /readyz waits for), the cache's memory (tracemalloc
of the index after the list), lookups/s (IP -> named workload, warm), and
watch events/s applied (pods re-labelled while the cache runs).

Usage: python bench/k8s_cache.py [--pods N] [--services N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from support import kube_api  # noqa: E402
from support.kube_api import FakeKubeApi  # noqa: E402

from als2otel.analysis.k8s import KubeIndex, NameRule  # noqa: E402
from als2otel.analysis.k8s.watch import KubeCache, api_client  # noqa: E402
from als2otel.stats import Stats  # noqa: E402


def ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"


def populate(api: FakeKubeApi, pods: int, services: int) -> None:
    per_service = pods // services
    for s in range(services):
        members = []
        for k in range(per_service):
            i = s * per_service + k
            name = f"svc{s}-v1-5d8f9c7b6-{k:05d}"
            labels = {"app": f"svc{s}", "version": "v1", "pod-template-hash": "5d8f9c7b6"}
            api.objects["Pod"][(f"ns{s % 50}", name)] = kube_api.pod(
                f"ns{s % 50}", name, ip(i), labels, replicaset=f"svc{s}-v1-5d8f9c7b6"
            )
            members.append((name, ip(i), True))
        ns = f"ns{s % 50}"
        api.objects["Service"][(ns, f"svc{s}")] = kube_api.service(ns, f"svc{s}", {"app": f"svc{s}"})
        api.objects["EndpointSlice"][(ns, f"svc{s}-abcde")] = kube_api.endpoint_slice(ns, f"svc{s}", members)
    for n in range(50):
        api.objects["Node"][("", f"node-{n}")] = kube_api.node(f"node-{n}", f"10.0.0.{n + 1}")


async def main(pods: int, services: int) -> None:
    api = FakeKubeApi().start()
    populate(api, pods, services)
    directory = Path(tempfile.mkdtemp())
    # Memory: the index alone, filled from the same objects, under tracemalloc (which slows it down).
    gc.collect()
    tracemalloc.start()
    index = KubeIndex(NameRule("${service.metadata.name}"))
    for kind in ("Node", "Service", "EndpointSlice", "Pod"):
        index.replace(kind, list(api.objects[kind].values()))
    index_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del index
    gc.collect()

    cache = KubeCache(
        api_client(str(api.kubeconfig(directory))), KubeIndex(NameRule("${service.metadata.name}")), Stats()
    )
    start = time.perf_counter()
    cache.start()
    await cache.synced.wait()
    ready = time.perf_counter() - start

    lookup = cache.index.workload_for_ip
    ips = [ip(i) for i in range(pods)]
    for address in ips:
        lookup(address)  # warm the per-pod workload cache
    t = time.perf_counter()
    for _ in range(5):
        for address in ips:
            lookup(address)
    lookups = 5 * len(ips) / (time.perf_counter() - t)

    changes = min(5000, pods)
    applied_before = cache.events_applied
    t = time.perf_counter()
    await asyncio.to_thread(_relabel, api, changes, pods // services)
    while cache.events_applied - applied_before < changes:
        await asyncio.sleep(0.01)
    events = changes / (time.perf_counter() - t)
    named = sum(1 for address in ips if lookup(address) is not None)
    cache.stop()
    _relabel_back(api, changes, pods // services)
    serve_rss(api, directory)
    api.stop()
    print(
        f"pods {pods:,}, services {services:,}: ready (first full list) in {ready:.2f} s; "
        f"index memory {index_bytes / 2**20:.1f} MiB ({index_bytes / pods:.0f} B/pod); "
        f"{lookups:,.0f} lookups/s; {events:,.0f} watch events/s applied (incl. the API server's own time); "
        f"{named:,} of {pods:,} IPs named"
    )


def serve_rss(api: FakeKubeApi, directory: Path) -> None:
    """Resident memory of `als2otel serve` processes, idle, with and without this cluster cached."""
    import subprocess

    import yaml
    from support.net import free_port, wait_ready

    for analyzers in (["mx-mesh"], ["mx-mesh", "k8s-mesh"]):
        http_port = free_port()
        config = directory / "serve.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "receiver": {"listen": f"127.0.0.1:{free_port()}"},
                    "http": {"listen": f"127.0.0.1:{http_port}"},
                    "analyzers": analyzers,
                    "k8s": {"kubeconfig": str(api.kubeconfig(directory))},
                    "exporters": {"otlp": {"enabled": False}},
                    "log_level": "warning",
                }
            )
        )
        process = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", str(config)])
        try:
            assert wait_ready(http_port, 120)
            time.sleep(2)
            with open(f"/proc/{process.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
            print(f"als2otel serve, analyzers {analyzers}, ready and idle: RSS {rss:.0f} MiB")
        finally:
            process.terminate()
            process.wait(30)


def _relabel(api: FakeKubeApi, count: int, per_service: int) -> None:
    for i in range(count):
        s, k = divmod(i, per_service)
        name = f"svc{s}-v1-5d8f9c7b6-{k:05d}"
        obj = kube_api.pod(
            f"ns{s % 50}", name, ip(i), {"app": f"svc{s}", "version": "v2"}, replicaset=f"svc{s}-v1-5d8f9c7b6"
        )
        api.put(obj)


def _relabel_back(api: FakeKubeApi, count: int, per_service: int) -> None:
    for i in range(count):
        s, k = divmod(i, per_service)
        name = f"svc{s}-v1-5d8f9c7b6-{k:05d}"
        labels = {"app": f"svc{s}", "version": "v1", "pod-template-hash": "5d8f9c7b6"}
        api.put(kube_api.pod(f"ns{s % 50}", name, ip(i), labels, replicaset=f"svc{s}-v1-5d8f9c7b6"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20_000)
    parser.add_argument("--services", type=int, default=5_000)
    args = parser.parse_args()
    asyncio.run(main(args.pods, args.services))
