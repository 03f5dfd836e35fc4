"""`als2otel demo`: Istio's bookinfo on this machine, with real Envoys and no cluster.

Each pod gets its own 127.0.10.x address with an Envoy configured as Istio
configures a sidecar (inbound listener on :9080 in front of the app, outbound
listener on :15001 routing by Host, clusters named ``inbound|9080||`` and
``outbound|9080||<svc>.default.svc.cluster.local``, upstream connections bound
to the pod's address, Istio's header-based metadata exchange). An ingress
gateway (``router~``) on 127.0.10.1:8080 fronts productpage. Small apps call
each other through their sidecars and forward ``x-request-id``, as bookinfo
does; a load loop plays the users; ratings also queries a database outside the
mesh over TCP. Every Envoy streams its access logs to the bridge, which serves the
live topology.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import random
import socket
import socketserver
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .envoy import EnvoyProcess, ProxySpec, Route

log = logging.getLogger("als2otel.demo")

NAMESPACE = "default"
INBOUND_PORT = 9080
APP_PORT = 19080
OUTBOUND_PORT = 15001
GATEWAY_PORT = 8080
FORWARDED = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")


@dataclass(frozen=True)
class Pod:
    app: str
    version: str
    ip: str
    calls: tuple[str, ...] = ()  # services this app calls for each request
    error_rate: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.app}-{self.version}-5d8f9c7b6-{self.ip.rsplit('.', 1)[1]:0>5}"


GATEWAY_IP = "127.0.10.1"
GATEWAY_POD = "istio-ingressgateway-7f8c9d6b5-gw001"
PODS = (
    Pod("productpage", "v1", "127.0.10.2", ("details", "reviews")),
    Pod("details", "v1", "127.0.10.3"),
    Pod("reviews", "v1", "127.0.10.4"),
    Pod("reviews", "v2", "127.0.10.5", ("ratings",)),
    Pod("reviews", "v3", "127.0.10.6", ("ratings",)),
    Pod("ratings", "v1", "127.0.10.7", error_rate=0.03),
)
DATABASE_HOST = "mongodb.databases.example"
"""The ratings' database, outside the mesh (no sidecar): a TCP edge from ratings' sidecar."""
DATABASE_IP, DATABASE_PORT = "127.0.10.20", 27017
DATABASE_OUTBOUND_PORT = 15027
"""ratings' sidecar listens here for the app's connections to the database (Istio's outbound TCP)."""
DATABASE_CALLER = "ratings"
SERVICES = sorted({p.app for p in PODS})
EDGES = (
    ("user", "istio-ingressgateway"),
    ("istio-ingressgateway", "productpage"),
    ("productpage", "details"),
    ("productpage", "reviews"),
    ("reviews", "ratings"),
)


def _host(service: str) -> str:
    return f"{service}.{NAMESPACE}.svc.cluster.local"


def _route(service: str) -> Route:
    endpoints = [(p.ip, INBOUND_PORT) for p in PODS if p.app == service]
    return Route(
        _host(service),
        INBOUND_PORT,
        endpoints,
        domains=[service, f"{service}:{INBOUND_PORT}", _host(service), f"{_host(service)}:{INBOUND_PORT}"],
    )


def proxy_specs(
    als: tuple[str, int], exchange_metadata: bool = True, loggers: str = "als", database: bool = False
) -> list[ProxySpec]:
    """The gateway and one sidecar per pod; without ``exchange_metadata`` only IPs tell who called.

    ``loggers``: "als" (Envoy's gRPC access loggers), "otel" (its OpenTelemetry access logger), or
    "mixed" (every other proxy on each). ``database``: ratings' sidecar proxies TCP to the database.
    """
    labels = {
        "app": "istio-ingressgateway",
        "istio": "ingressgateway",
        "service.istio.io/canonical-name": "istio-ingressgateway",
    }
    gateway = ProxySpec(
        role="router",
        ip=GATEWAY_IP,
        pod=GATEWAY_POD,
        namespace="istio-system",
        labels=labels,
        workload="istio-ingressgateway",
        outbound_port=GATEWAY_PORT,
        routes=[
            Route(
                _host("productpage"),
                INBOUND_PORT,
                [(p.ip, INBOUND_PORT) for p in PODS if p.app == "productpage"],
                domains=["*"],
            )
        ],
        als_address=als,
        exchange_metadata=exchange_metadata,
    )
    specs = [gateway]
    for pod in PODS:  # the sidecars
        specs.append(
            ProxySpec(
                role="sidecar",
                ip=pod.ip,
                pod=pod.name,
                namespace=NAMESPACE,
                labels={
                    "app": pod.app,
                    "version": pod.version,
                    "service.istio.io/canonical-name": pod.app,
                    "service.istio.io/canonical-revision": pod.version,
                },
                workload=f"{pod.app}-{pod.version}",
                inbound_port=INBOUND_PORT,
                app_port=APP_PORT,
                outbound_port=OUTBOUND_PORT if pod.calls else None,
                routes=[_route(s) for s in pod.calls],
                tcp_routes=[(DATABASE_OUTBOUND_PORT, _DATABASE_ROUTE)]
                if database and pod.app == DATABASE_CALLER
                else [],
                als_address=als,
                exchange_metadata=exchange_metadata,
            )
        )
    if loggers != "als":
        specs = [
            dataclasses.replace(spec, otel_logger=True) if loggers == "otel" or i % 2 else spec
            for i, spec in enumerate(specs)
        ]
    return specs


_DATABASE_ROUTE = Route(DATABASE_HOST, DATABASE_PORT, [(DATABASE_IP, DATABASE_PORT)])


def _query_database(pod: Pod) -> None:
    """One connection to the database through the pod's sidecar: a query out, a reply back."""
    try:
        with socket.create_connection((pod.ip, DATABASE_OUTBOUND_PORT), timeout=5) as connection:
            connection.sendall(b"find ratings " + b"x" * 500 + b"\n")
            while connection.recv(65536):
                pass
    except OSError:
        pass


class _Database(socketserver.ThreadingTCPServer):
    """A database outside the mesh: answers each query with 8 KiB, then closes."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline()
                self.wfile.write(b"r" * 8192)

        super().__init__((DATABASE_IP, DATABASE_PORT), Handler)
        self.thread = threading.Thread(target=self.serve_forever, name="database", daemon=True)


def _call_through_sidecar(pod: Pod, service: str, path: str, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection(pod.ip, OUTBOUND_PORT, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": f"{service}:{INBOUND_PORT}", **headers})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 503
    finally:
        connection.close()


class _App:
    """One pod's application: answers its path and calls its dependencies, forwarding trace headers."""

    def __init__(self, pod: Pod, rng: random.Random, database: bool = False) -> None:
        self.pod = pod
        self.received = 0  # requests this app answered
        self.made: Counter[str] = Counter()  # calls it made, per service
        lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                forwarded = {k: v for k in FORWARDED if (v := self.headers.get(k))}
                for service in pod.calls:
                    _call_through_sidecar(pod, service, f"/{service}/0", forwarded)
                    with lock:
                        app.made[service] += 1
                if database:
                    _query_database(pod)
                with lock:
                    app.received += 1
                time.sleep(rng.uniform(0.002, 0.02))
                status = 503 if rng.random() < pod.error_rate else 200
                body = f"{pod.app} {pod.version}\n".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((pod.ip, APP_PORT), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"app-{pod.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Bookinfo:
    """The apps, their Envoys and a load loop; ``stop`` ends every process it started."""

    def __init__(
        self,
        als: tuple[str, int],
        workdir: Path,
        rate: float = 8.0,
        seed: int = 1,
        exchange_metadata: bool = True,
        loggers: str = "als",
        database: bool = False,
    ) -> None:
        """``database``: ratings also queries a database outside the mesh over TCP (the demo's TCP edge)."""
        self._rng = random.Random(seed)
        self.apps = [_App(pod, self._rng, database and pod.app == DATABASE_CALLER) for pod in PODS]
        self.database = _Database() if database else None
        specs = proxy_specs(als, exchange_metadata, loggers, database)
        self.envoys = [EnvoyProcess(spec, workdir) for spec in specs]
        self._rate = rate
        self._stop = threading.Event()
        self._load = threading.Thread(target=self._load_loop, name="load", daemon=True)
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        if self.database is not None:
            self.database.thread.start()
        for app in self.apps:
            app.start()
        started: list[EnvoyProcess] = []
        try:
            threads = [threading.Thread(target=e.start) for e in self.envoys]
            for envoy, thread in zip(self.envoys, threads, strict=True):
                thread.start()
                started.append(envoy)
            for thread in threads:
                thread.join()
            missing = [e.spec.pod for e in self.envoys if not e.admin_url]
            if missing:
                raise RuntimeError(f"Envoy did not start for {', '.join(missing)}")
        except BaseException:
            self.stop()
            raise
        self._load.start()

    def _load_loop(self) -> None:
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            connection = http.client.HTTPConnection(GATEWAY_IP, GATEWAY_PORT, timeout=5)
            try:
                connection.request("GET", "/productpage", headers={"Host": "bookinfo.example.com"})
                response = connection.getresponse()
                response.read()
                self.sent += 1
                if response.status >= 500:
                    self.failed += 1
            except OSError:
                self.failed += 1
            finally:
                connection.close()
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop_load(self) -> None:
        """No new user requests; returns once the last one has been answered."""
        self._stop.set()
        if self._load.is_alive():
            self._load.join(timeout=10)

    def stop(self) -> None:
        self.stop_load()
        for envoy in self.envoys:
            envoy.stop()
        for app in self.apps:
            app.stop()
        if self.database is not None:
            self.database.shutdown()
            self.database.server_close()
