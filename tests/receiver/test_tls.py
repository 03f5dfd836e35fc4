"""TLS and mutual TLS on the ALS port (and TLS on the HTTP port): real Envoys with client
certificates, a certificate from another CA refused, certificates rotated without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import bridge_config
from support import als, certs, mesh
from support.apps import StatusApp
from support.certs import mtls_receiver
from support.net import free_port
from support.otlp_receiver import GrpcOtlpReceiver
from support.waiting import eventually

from als2otel import config as cfg
from als2otel.demo.envoy import EnvoyProcess, ProxySpec, Route
from als2otel.receiver import front as tls_front


async def send_tls(
    port: int,
    client: certs.Issued | None,
    ca: certs.Issued,
    count: int,
    first: int = 0,
    raw: list[bytes] | None = None,
) -> Any:
    """One ALS stream over TLS with ``client``'s certificate (or none) carrying ``count`` entries (or
    the ``raw`` messages); the error if it failed."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    entries = [mesh.outbound(i) for i in range(first, first + count)]
    messages = raw or [als.http_message(entries, mesh.productpage()).SerializeToString()]
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        call = channel.stream_unary(
            als.V3_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            await asyncio.wait_for(call(iter(messages)), 10)
        except grpc.aio.AioRpcError as error:
            return error
    return None


class TestMutualTls:
    async def test_certificates_from_the_ca_only(self, make_bridge: Any, pki: Any, tmp_path: Path) -> None:
        """A client with the CA's certificate streams; one with another CA's, or none, is refused at the
        handshake while the first keeps going."""
        bridge = await make_bridge(bridge_config(None, receiver=mtls_receiver(pki, tmp_path)))
        port = bridge.receiver.port
        assert await send_tls(port, pki["client"], pki["ca"], 10) is None
        stranger = await send_tls(port, pki["stranger"], pki["ca"], 10)
        anonymous = await send_tls(port, None, pki["ca"], 10)
        assert stranger is not None and stranger.code() == grpc.StatusCode.UNAVAILABLE
        assert anonymous is not None and anonymous.code() == grpc.StatusCode.UNAVAILABLE
        assert await send_tls(port, pki["client"], pki["ca"], 10, first=10) is None
        await bridge.pipeline.drain()
        assert bridge.stats.entries_received.get("v3", "http") == 20
        assert bridge.stats.calls.get("client") == 20
        refused = bridge.stats.tls_handshakes_failed.values
        assert set(refused) == {("certificate",)} and refused[("certificate",)] >= 2

    async def test_every_refused_handshake_is_counted_by_reason_and_logged(
        self, make_bridge: Any, pki: Any, tmp_path: Path, caplog: Any, monkeypatch: Any
    ) -> None:
        """Another CA's certificate, none, plaintext, a TLS version below min_version, and a client
        that never finishes its handshake: each refused, counted with its reason and logged with its
        address; streams of valid clients still name theirs."""
        monkeypatch.setattr(tls_front, "HANDSHAKE_TIMEOUT", 0.5)
        receiver = mtls_receiver(pki, tmp_path)
        receiver["tls"]["min_version"] = "1.3"
        bridge = await make_bridge(bridge_config(None, receiver=receiver))
        port = bridge.receiver.port
        failed = bridge.stats.tls_handshakes_failed

        def handshake(client: certs.Issued | None, version: ssl.TLSVersion | None = None) -> None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(pki["ca"].cert)
            context.set_alpn_protocols(["h2"])
            if version is not None:
                context.maximum_version = version
            if client is not None:
                context.load_cert_chain(client.cert, client.key)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                contextlib.suppress(ssl.SSLError, OSError),
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"x")
                tls.recv(1)  # TLS 1.3: the server's verdict on the certificate arrives now

        def plaintext() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                raw.recv(100)

        def silent() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.recv(100)  # the bridge gives up on it first

        for attempt, reason in (
            (lambda: handshake(pki["stranger"]), "certificate"),
            (lambda: handshake(None), "certificate"),
            (lambda: handshake(pki["client"], ssl.TLSVersion.TLSv1_2), "version"),
            (plaintext, "not_tls"),
            (silent, "timeout"),
        ):
            before = dict(failed.values)
            await asyncio.to_thread(attempt)
            assert await eventually(lambda before=before: failed.values != before, 5), reason
            assert {k: v - before.get(k, 0) for k, v in failed.values.items() if v != before.get(k, 0)} == {
                (reason,): 1
            }
        assert sum(failed.values.values()) == 5
        refusals = [r.getMessage() for r in caplog.records if "TLS handshake from" in r.getMessage()]
        assert all("ipv4:127.0.0.1:" in text for text in refusals)  # rate-limited per reason:
        assert {text.split("(")[1].split(")")[0] for text in refusals} == {
            "certificate",
            "version",
            "not_tls",
            "timeout",
        }

        caplog.clear()
        bad = als.http_message([mesh.outbound(0)]).SerializeToString()  # no identifier
        error = await send_tls(port, pki["client"], pki["ca"], 0, raw=[bad])
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        (warning,) = [r.getMessage() for r in caplog.records if "ending the stream" in r.getMessage()]
        assert "ipv4:127.0.0.1:" in warning

    async def test_rotated_certificate_is_used_without_a_restart(
        self, make_bridge: Any, pki: Any, tmp_path: Path
    ) -> None:
        """Rewriting the certificate and key files: the next connection gets the new certificate."""
        receiver = mtls_receiver(pki, tmp_path)
        bridge = await make_bridge(bridge_config(None, receiver=receiver))
        port = bridge.receiver.port
        first = await asyncio.to_thread(server_certificate_mtls, port, pki)
        new_cert, new_key = tmp_path / "new.crt", tmp_path / "new.key"
        shutil.copy(pki["server2"].cert, new_cert)
        shutil.copy(pki["server2"].key, new_key)
        new_key.replace(receiver["tls"]["key_file"])
        new_cert.replace(receiver["tls"]["cert_file"])
        second = await asyncio.to_thread(server_certificate_mtls, port, pki)
        third = await asyncio.to_thread(server_certificate_mtls, port, pki)
        assert first != third and second in (first, third)  # the connection after the change at the latest
        assert ssl.DER_cert_to_PEM_cert(third).strip() == pki["server2"].cert.read_text().strip()
        assert await send_tls(port, pki["client"], pki["ca"], 5) is None


def server_certificate_mtls(port: int, pki: Any) -> bytes:
    """The certificate the port presents, to a client holding the CA's client certificate."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(pki["client"].cert, pki["client"].key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True) or b""


@pytest.fixture
def reviews_app() -> Any:
    app = StatusApp("127.0.0.12", free_port("127.0.0.12")).start()
    yield app
    app.stop()


def mtls_sidecar(
    ip: str, client: certs.Issued, pod: str, pki: Any, als_port: int, reviews_app: Any, workdir: Path
) -> tuple[EnvoyProcess, int]:
    """A productpage sidecar streaming ALS over mutual TLS with ``client``'s certificate, as Istio's
    MUTUAL tlsSettings configure it; its outbound port routes reviews:9080 to the app."""
    port = free_port(ip)
    app_port = reviews_app._server.server_address[1]
    spec = ProxySpec(
        role="sidecar",
        ip=ip,
        pod=pod,
        namespace="default",
        labels={"app": "productpage", "version": "v1"},
        workload="productpage-v1",
        outbound_port=port,
        routes=[
            Route("reviews.default.svc.cluster.local", 9080, [("127.0.0.12", app_port)], ["reviews:9080"])
        ],
        als_address=("127.0.0.1", als_port),
        als_tls=(str(client.cert), str(client.key), str(pki["ca"].cert)),
        buffer_flush_interval="0.1s",
    )
    return EnvoyProcess(spec, workdir / pod), port


def get_status(ip: str, port: int, path: str = "/status/200") -> int:
    connection = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": "reviews:9080"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


async def test_real_envoys_over_mutual_tls(
    make_bridge: Any, otlp: GrpcOtlpReceiver, pki: Any, reviews_app: Any, tmp_path: Path
) -> None:
    """Envoy with Istio's MUTUAL tlsSettings streams over mTLS and every request becomes its span; an
    Envoy whose certificate another CA signed is refused, and the first keeps flowing."""
    bridge = await make_bridge(
        bridge_config(otlp.endpoint, receiver=mtls_receiver(pki, tmp_path)), clock=time.time_ns
    )

    def envoy(ip: str, client: certs.Issued, pod: str) -> tuple[EnvoyProcess, int]:
        return mtls_sidecar(ip, client, pod, pki, bridge.receiver.port, reviews_app, tmp_path)

    trusted, trusted_port = envoy("127.0.0.21", pki["client"], "productpage-v1-aaaaa")
    stranger, stranger_port = envoy("127.0.0.22", pki["stranger"], "productpage-v1-bbbbb")
    await asyncio.to_thread(trusted.start)
    await asyncio.to_thread(stranger.start)
    try:
        for _ in range(10):
            assert await asyncio.to_thread(get_status, "127.0.0.21", trusted_port) == 200
            assert await asyncio.to_thread(get_status, "127.0.0.22", stranger_port) == 200
        assert await eventually(lambda: len(otlp.received.spans()) >= 10, 20)
        await asyncio.sleep(1.0)
        spans = otlp.received.spans()
        assert len(spans) == 10
        assert {resource["k8s.pod.name"] for resource, _ in spans} == {"productpage-v1-aaaaa"}
        assert bridge.stats.tls_handshakes_failed.get("certificate") >= 1  # the stranger's, counted
    finally:
        await asyncio.to_thread(trusted.stop)
        await asyncio.to_thread(stranger.stop)


async def test_envoy_reconnects_over_mutual_tls_at_max_connection_age(
    make_bridge: Any, otlp: GrpcOtlpReceiver, pki: Any, reviews_app: Any, tmp_path: Path
) -> None:
    """With a 1 s connection age, the bridge's GOAWAY reaches Envoy through the TLS front and Envoy
    reconnects over mutual TLS again and again while it logs: every request becomes its span."""
    receiver = mtls_receiver(pki, tmp_path) | {"max_connection_age": "1s", "max_connection_age_grace": "1s"}
    bridge = await make_bridge(bridge_config(otlp.endpoint, receiver=receiver), clock=time.time_ns)
    envoy, port = mtls_sidecar(
        "127.0.0.21", pki["client"], "productpage-v1-aaaaa", pki, bridge.receiver.port, reviews_app, tmp_path
    )
    await asyncio.to_thread(envoy.start)
    try:
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert await asyncio.to_thread(get_status, "127.0.0.21", port, f"/status/200?n={sent}") == 200
            sent += 1
            await asyncio.sleep(0.02)
        assert await eventually(lambda: len(otlp.received.spans()) >= sent, 20)
        await asyncio.sleep(1.0)
        assert len(otlp.received.spans()) == sent
        assert sum(bridge.stats.streams_ended.values.values()) >= 3  # reconnected along the way
        assert sum(bridge.stats.tls_handshakes_failed.values.values()) == 0
    finally:
        await asyncio.to_thread(envoy.stop)


class TestHttpsAndChecks:
    async def test_http_endpoints_over_tls(self, make_bridge: Any, pki: Any) -> None:
        """http.tls serves /healthz and /metrics over HTTPS."""
        tls = {"cert_file": str(pki["server"].cert), "key_file": str(pki["server"].key)}
        bridge = await make_bridge(bridge_config(None, http={"listen": "127.0.0.1:0", "tls": tls}))
        import urllib.request

        context = ssl.create_default_context(cafile=str(pki["ca"].cert))

        def get(path: str) -> int:
            with urllib.request.urlopen(f"https://localhost:{bridge.http.port}{path}", context=context) as r:
                return int(r.status)

        assert await asyncio.to_thread(get, "/healthz") == 200
        assert await asyncio.to_thread(get, "/metrics") == 200

    def test_check_config_reports_tls_problems(self, pki: Any, tmp_path: Path) -> None:
        """A missing file, a key of another certificate and an unknown TLS version: each reported."""
        with pytest.raises(cfg.ConfigError) as caught:
            cfg.parse(
                {
                    "receiver": {
                        "tls": {
                            "cert_file": str(pki["server"].cert),
                            "key_file": str(pki["client"].key),
                            "client_ca_file": str(tmp_path / "missing.crt"),
                            "min_version": "1.0",
                        }
                    },
                    "http": {"tls": {"cert_file": str(pki["server"].cert)}},
                },
                {},
            )
        problems = "\n".join(caught.value.problems)
        assert "receiver.tls.client_ca_file: cannot read" in problems
        assert "receiver.tls.min_version" in problems
        assert "http.tls.key_file: must be set" in problems
        with pytest.raises(cfg.ConfigError) as caught:
            cfg.parse(
                {
                    "receiver": {
                        "tls": {"cert_file": str(pki["server"].cert), "key_file": str(pki["client"].key)}
                    }
                },
                {},
            )
        assert any(p.startswith("receiver.tls.key_file: not the key of") for p in caught.value.problems)
