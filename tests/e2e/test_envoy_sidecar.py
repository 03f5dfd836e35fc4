"""A real Envoy configured as an Istio sidecar streams its access logs to the bridge."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import http.client
import socket
import socketserver
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import bridge_config
from support.apps import StatusApp
from support.net import HandingListener, free_port
from support.otlp_receiver import GrpcOtlpReceiver, attributes
from support.waiting import eventually

from als2otel.app import Bridge
from als2otel.demo.envoy import EnvoyProcess, ProxySpec, Route

CLIENT_IP, SERVER_IP = "127.0.0.11", "127.0.0.12"
ROOT = Path(__file__).resolve().parents[2]


def request(port: int, method: str, path: str, host: str) -> int:
    connection = http.client.HTTPConnection(CLIENT_IP, port, timeout=10)
    try:
        connection.request(method, path, body=b"x" if method == "POST" else None, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def productpage_sidecar(als_port: int, reviews_app: StatusApp) -> ProxySpec:
    """productpage's sidecar, its outbound listener routing reviews:9080 to the app, flushing every 0.1 s."""
    return ProxySpec(
        role="sidecar",
        ip=CLIENT_IP,
        pod="productpage-v1-6b746f74dc-9stfq",
        namespace="default",
        labels={"app": "productpage", "version": "v1", "service.istio.io/canonical-name": "productpage"},
        workload="productpage-v1",
        outbound_port=free_port(CLIENT_IP),
        routes=[
            Route(
                "reviews.default.svc.cluster.local",
                9080,
                [(SERVER_IP, reviews_app._server.server_address[1])],
                domains=["reviews", "reviews:9080"],
            )
        ],
        als_address=("127.0.0.1", als_port),
        buffer_flush_interval="0.1s",
    )


@pytest.fixture
def reviews_app() -> Any:
    app = StatusApp(SERVER_IP, free_port(SERVER_IP)).start()
    yield app
    app.stop()


async def test_sidecar_outbound_calls_become_client_spans(
    make_bridge: Any, otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """Every request sent through the sidecar is one CLIENT span on productpage, with metrics to match."""
    bridge = await make_bridge(bridge_config(otlp.endpoint), clock=time.time_ns)
    spec = productpage_sidecar(bridge.receiver.port, reviews_app)
    outbound_port = spec.outbound_port
    envoy = EnvoyProcess(spec, tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        plan = [("GET", "/status/200")] * 20 + [("POST", "/status/404")] * 5 + [("GET", "/status/503")] * 3
        plan += [("GET", "/delay/120")] * 2
        sent = Counter()
        for method, path in plan:
            status = await asyncio.to_thread(request, outbound_port, method, path, "reviews:9080")
            sent[(method, status)] += 1
        assert sent == Counter({("GET", 200): 22, ("POST", 404): 5, ("GET", 503): 3})

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(otlp.received.spans()) < len(plan):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything extra would show up now
        spans = otlp.received.spans()
        assert len(spans) == len(plan)
        seen = Counter()
        for resource, span in spans:
            attrs = attributes(span.attributes)
            assert span.kind == 3  # CLIENT
            assert resource["service.name"] == "productpage"
            assert resource["k8s.pod.name"] == spec.pod
            assert attrs["peer.service"] == "reviews"
            assert attrs["envoy.upstream_cluster"] == "outbound|9080||reviews.default.svc.cluster.local"
            assert attrs["network.peer.address"] == SERVER_IP
            assert span.end_time_unix_nano >= span.start_time_unix_nano
            assert abs(span.start_time_unix_nano / 1e9 - time.time()) < 120
            seen[(attrs["http.request.method"], attrs["http.response.status_code"])] += 1
            if attrs["url.full"].endswith("/delay/120"):
                assert span.end_time_unix_nano - span.start_time_unix_nano >= 120_000_000
            expect_error = attrs["http.response.status_code"] >= 400
            assert (span.status.code == 2) == expect_error
        assert seen == sent

        deadline = time.monotonic() + 10
        counts: dict[tuple[str, str], int] = {}
        while time.monotonic() < deadline:
            counts = {}
            for (name, _), points in otlp.received.latest_metrics().items():
                if name == "http.client.request.duration":
                    for point in points:
                        a = attributes(point.attributes)
                        key = (a["http.request.method"], a["http.response.status_code"])
                        counts[key] = counts.get(key, 0) + point.count
            if sum(counts.values()) == len(plan):
                break
            await asyncio.sleep(0.2)
        assert counts == {("GET", "200"): 22, ("POST", "404"): 5, ("GET", "503"): 3}
        assert bridge.stats.entries_received.get("v3", "http") == len(plan)
    finally:
        await asyncio.to_thread(envoy.stop)


async def test_streams_reconnect_at_max_connection_age_and_lose_nothing(
    make_bridge: Any, otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """With a 1 s connection age, Envoy's ALS stream is closed and reopened several times while it
    keeps logging: every request becomes its span, and each new stream names its proxy again."""
    config = bridge_config(
        otlp.endpoint,
        receiver={"listen": "127.0.0.1:0", "max_connection_age": "1s", "max_connection_age_grace": "1s"},
    )
    bridge = await make_bridge(config, clock=time.time_ns)
    spec = productpage_sidecar(bridge.receiver.port, reviews_app)
    outbound_port = spec.outbound_port
    envoy = EnvoyProcess(spec, tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        sent = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert (
                await asyncio.to_thread(
                    request, outbound_port, "GET", f"/status/200?n={sent}", "reviews:9080"
                )
                == 200
            )
            sent += 1
            await asyncio.sleep(0.02)
        assert await eventually(lambda: len(otlp.received.spans()) >= sent, 20)
        await asyncio.sleep(1.0)
        spans = otlp.received.spans()
        assert len(spans) == sent == len(reviews_app.requests)
        assert {resource["service.name"] for resource, _ in spans} == {"productpage"}
        ended = bridge.stats.streams_ended
        assert ended.get("max_connection_age") >= 3  # the stream was ended and reopened along the way
        assert sum(ended.values.values()) == ended.get("max_connection_age")  # never cut mid-flight
    finally:
        await asyncio.to_thread(envoy.stop)


async def test_a_shed_connection_loses_nothing(
    otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """A worker's bridge (connections handed to it, as the workers' parent does) sheds Envoy's ALS
    connection twice while Envoy keeps logging: Envoy gets a GOAWAY, its stream is ended right after
    a message, it reconnects (a new connection each time), and every request still becomes its span."""
    config = bridge_config(otlp.endpoint, receiver={"listen": "127.0.0.1:0"})
    bridge = Bridge(config, clock=time.time_ns, handed=True)
    await bridge.start()
    listener = HandingListener(bridge.receiver.take)
    envoy = EnvoyProcess(productpage_sidecar(listener.port, reviews_app), tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        sent, shed = 0, []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 7:
            port = envoy.spec.outbound_port
            assert (
                await asyncio.to_thread(request, port, "GET", f"/status/200?n={sent}", "reviews:9080") == 200
            )
            sent += 1
            bridge.receiver.sample(time.monotonic())  # as a worker's tick does
            if len(shed) < 2 and elapsed > 2.5 * (len(shed) + 1):
                shed.append(bridge.receiver.shed(gap=1e9))  # as the parent's ask makes a worker do
            await asyncio.sleep(0.02)
        assert shed == [1, 1]
        assert await eventually(lambda: len(otlp.received.spans()) >= sent, 20)
        await asyncio.sleep(1.0)
        assert len(otlp.received.spans()) == sent == len(reviews_app.requests)
        assert listener.accepted >= 3  # Envoy opened a new connection after each shed
        ended = bridge.stats.streams_ended
        assert ended.get("rebalance") >= 2
        assert sum(ended.values.values()) == ended.get("rebalance")  # never cut mid-flight
    finally:
        await asyncio.to_thread(envoy.stop)
        listener.close()
        await bridge.stop()


async def test_with_workers_aged_connections_are_dealt_again_and_lose_nothing(
    otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """Two workers, a 1 s connection age: each time Envoy reconnects, the parent hands the new
    connection to a worker by load, so it moves between them; every request still becomes its span."""
    from als2otel.workers import Supervisor

    raw = {
        "receiver": {
            "listen": "127.0.0.1:0",
            "workers": 2,
            "max_connection_age": "1s",
            "max_connection_age_grace": "1s",
        },
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "analyzers": [],
        "exporters": {"otlp": {"endpoint": otlp.endpoint}},
        "metrics": {"export_interval": "0.5s"},
        "shutdown_timeout": "3s",
    }
    from als2otel import config as cfg

    supervisor = Supervisor(cfg.parse(raw, {}))
    await supervisor.start()
    stop = asyncio.Event()
    running = asyncio.ensure_future(supervisor.run(stop))
    envoy = EnvoyProcess(productpage_sidecar(supervisor.als_port, reviews_app), tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        sent = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            port = envoy.spec.outbound_port
            assert (
                await asyncio.to_thread(request, port, "GET", f"/status/200?n={sent}", "reviews:9080") == 200
            )
            sent += 1
            await asyncio.sleep(0.02)
        assert await eventually(lambda: len(otlp.received.spans()) >= sent, 20)
        await asyncio.sleep(1.0)
        assert len(otlp.received.spans()) == sent == len(reviews_app.requests)
        handed = supervisor.stats.worker_connections
        assert handed.get("0") >= 1 and handed.get("1") >= 1 and handed.get("none") == 0
        assert handed.get("0") + handed.get("1") >= 3  # reconnected along the way, dealt each time
    finally:
        await asyncio.to_thread(envoy.stop)
        stop.set()
        await running


async def test_opentelemetry_access_logger_gives_the_same_spans(
    make_bridge: Any, otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """A real Envoy with the OpenTelemetry access logger, configured with the attribute set
    deploy/istio/otel-als.yaml ships, sends OTLP logs to the ALS port: every request becomes its
    CLIENT span on productpage, with the same attributes the ALS logger's entries give."""
    bridge = await make_bridge(bridge_config(otlp.endpoint), clock=time.time_ns)
    spec = dataclasses.replace(productpage_sidecar(bridge.receiver.port, reviews_app), otel_logger=True)
    envoy = EnvoyProcess(spec, tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        assert spec.outbound_port is not None
        plan = [("GET", "/status/200")] * 8 + [("POST", "/status/404")] * 3 + [("GET", "/status/503")] * 2
        for method, path in plan:
            await asyncio.to_thread(request, spec.outbound_port, method, path, "reviews:9080")
        assert await eventually(lambda: len(otlp.received.spans()) >= len(plan), 20)
        await asyncio.sleep(0.5)
        spans = otlp.received.spans()
        assert len(spans) == len(plan) == len(reviews_app.requests)
        seen = Counter()
        for resource, span in spans:
            attrs = attributes(span.attributes)
            assert span.kind == 3 and resource["service.name"] == "productpage"
            assert resource["k8s.pod.name"] == spec.pod
            assert attrs["peer.service"] == "reviews"
            assert attrs["envoy.upstream_cluster"] == "outbound|9080||reviews.default.svc.cluster.local"
            assert span.end_time_unix_nano > span.start_time_unix_nano
            seen[(attrs["http.request.method"], attrs["http.response.status_code"])] += 1
        assert seen == Counter({("GET", 200): 8, ("POST", 404): 3, ("GET", 503): 2})
        assert bridge.stats.entries_received.get("otlp", "http") == len(plan)
        assert sum(bridge.stats.entries_invalid.values.values()) == 0
    finally:
        await asyncio.to_thread(envoy.stop)


class EchoServer:
    """A TCP server that echoes what it reads until the client closes."""

    def __init__(self, ip: str) -> None:
        self._server = socketserver.ThreadingTCPServer((ip, 0), self._Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    class _Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def echo_through(port: int, payload: bytes) -> bytes:
    with socket.create_connection((CLIENT_IP, port), timeout=10) as connection:
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += connection.recv(65536)
        return received


def mongodb_route(echo: EchoServer) -> tuple[int, Route]:
    """A TCP listener of productpage's sidecar proxying to mongodb.default (the echo server)."""
    return free_port(CLIENT_IP), Route("mongodb.default.svc.cluster.local", 27017, [(SERVER_IP, echo.port)])


def envoyfilter_loggers() -> dict[str, list[dict[str, Any]]]:
    """deploy/istio/als-buffers.yaml's loggers by the filter they patch, sending to the test's
    ALS cluster instead of Istio's cluster for the Service."""
    (envoyfilter,) = yaml.safe_load_all((ROOT / "deploy" / "istio" / "als-buffers.yaml").read_text())
    loggers = {}
    for patch in envoyfilter["spec"]["configPatches"]:
        access_log = copy.deepcopy(patch["patch"]["value"]["typed_config"]["access_log"])
        for logger in access_log:
            service = logger["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]
            assert service["cluster_name"] == "outbound|11800||als2otel.als2otel.svc.cluster.local"
            service["cluster_name"] = "als2otel_als"
        loggers[patch["match"]["listener"]["filterChain"]["filter"]["name"]] = access_log
    return loggers


@pytest.mark.parametrize("logger", ["envoyfilter", "opentelemetry"])
async def test_http_and_tcp_through_the_shipped_loggers(
    logger: str, make_bridge: Any, otlp: GrpcOtlpReceiver, reviews_app: StatusApp, tmp_path: Any
) -> None:
    """A real Envoy logging HTTP requests and TCP connections with deploy/istio/als-buffers.yaml's
    loggers (256 KiB buffers), or with the OpenTelemetry logger and its TCP attribute set: every
    request and every connection becomes its CLIENT span, TCP ones with their byte counts."""
    echo = EchoServer(SERVER_IP)
    bridge = await make_bridge(bridge_config(otlp.endpoint), clock=time.time_ns)
    spec = dataclasses.replace(
        productpage_sidecar(bridge.receiver.port, reviews_app), tcp_routes=[mongodb_route(echo)]
    )
    if logger == "envoyfilter":
        loggers = envoyfilter_loggers()
        spec = dataclasses.replace(
            spec,
            access_log=loggers["envoy.filters.network.http_connection_manager"],
            tcp_access_log=loggers["envoy.filters.network.tcp_proxy"],
        )
    else:
        spec = dataclasses.replace(spec, otel_logger=True)
    envoy = EnvoyProcess(spec, tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        assert spec.outbound_port is not None
        for n in range(12):
            assert (
                await asyncio.to_thread(request, spec.outbound_port, "GET", f"/status/200?n={n}", "reviews")
                == 200
            )
        tcp_port = spec.tcp_routes[0][0]
        payloads = [b"x" * size for size in (10, 2_000, 70_000)]
        for payload in payloads:
            assert await asyncio.to_thread(echo_through, tcp_port, payload) == payload
        expected = 12 + len(payloads)
        assert await eventually(lambda: len(otlp.received.spans()) >= expected, 20)
        await asyncio.sleep(0.5)
        spans = otlp.received.spans()
        assert len(spans) == expected
        tcp = []
        for resource, span in spans:
            attrs = attributes(span.attributes)
            assert span.kind == 3 and resource["service.name"] == "productpage"
            if attrs.get("network.transport") == "tcp":
                assert attrs["peer.service"] == "mongodb"
                tcp.append((attrs["envoy.bytes_received"], attrs["envoy.bytes_sent"]))
            else:
                assert attrs["peer.service"] == "reviews"
        assert sorted(tcp) == [(len(p), len(p)) for p in payloads]
        version = "otlp" if logger == "opentelemetry" else "v3"
        assert bridge.stats.entries_received.get(version, "tcp") == len(payloads)
        assert sum(bridge.stats.entries_invalid.values.values()) == 0
    finally:
        await asyncio.to_thread(envoy.stop)
        echo.stop()
