"""OTLP export through the OpenTelemetry exporters to a receiver built on opentelemetry-proto."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, mesh
from support.net import free_port
from support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, Received, attributes
from support.waiting import eventually


async def send_calls(bridge: Any, first: int, count: int) -> None:
    ident = mesh.productpage()
    messages = [
        als.http_message(
            [mesh.outbound(i) for i in range(start, min(start + 100, first + count))],
            ident if start == first else None,
        )
        for start in range(first, first + count, 100)
    ]
    assert await als.send(f"127.0.0.1:{bridge.receiver.port}", messages) is None


def client_paths(received: Received) -> set[str]:
    return {attributes(span.attributes)["url.full"].rsplit("/", 1)[1] for _, span in received.spans()}


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for localhost, made with openssl."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


class TestTransports:
    async def test_grpc(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """OTLP/gRPC carries spans and metrics, with the configured headers."""
        config = bridge_config(otlp.endpoint)
        config.exporters.otlp.headers["x-tenant"] = "mesh-team"
        bridge = await make_bridge(config)
        await send_calls(bridge, 0, 10)
        assert await eventually(lambda: len(otlp.received.spans()) == 10)
        assert await eventually(
            lambda: any(name == "http.client.request.duration" for name, _ in otlp.received.latest_metrics())
        )
        assert any(h.get("x-tenant") == "mesh-team" for h in otlp.received.headers)
        resource, span = otlp.received.spans()[0]
        assert resource["service.name"] == "productpage"
        assert attributes(span.attributes)["peer.service"] == "reviews"

    async def test_grpc_over_tls(
        self, make_bridge: Any, tls_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``insecure: false`` speaks TLS, trusting the CA in OTEL_EXPORTER_OTLP_CERTIFICATE."""
        key, cert = tls_cert
        receiver = GrpcOtlpReceiver(tls=(key.read_bytes(), cert.read_bytes())).start()
        try:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(cert))
            config = bridge_config(f"localhost:{receiver.port}")
            otlp = dataclasses.replace(config.exporters.otlp, insecure=False)
            config = dataclasses.replace(config, exporters=dataclasses.replace(config.exporters, otlp=otlp))
            bridge = await make_bridge(config)
            await send_calls(bridge, 0, 10)
            assert await eventually(lambda: len(receiver.received.spans()) == 10)
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            receiver.stop()

    async def test_http_protobuf(self, make_bridge: Any) -> None:
        """OTLP/HTTP posts protobuf to /v1/traces and /v1/metrics, gzip-compressed, with headers."""
        receiver = HttpOtlpReceiver().start()
        try:
            config = bridge_config(
                None,
                exporters={
                    "otlp": {
                        "endpoint": receiver.endpoint,
                        "protocol": "http/protobuf",
                        "headers": {"authorization": "Bearer t0ken"},
                    }
                },
            )
            bridge = await make_bridge(config)
            await send_calls(bridge, 0, 5)
            assert await eventually(lambda: len(receiver.received.spans()) == 5)
            assert await eventually(lambda: bool(receiver.received.metrics))
            assert any(
                h.get("authorization") == "Bearer t0ken" and h.get("content-encoding") == "gzip"
                for h in receiver.received.headers
            )
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            receiver.stop()


class TestOutage:
    async def test_nothing_is_lost_within_the_retry_budget(self, make_bridge: Any) -> None:
        """Spans made while the backend is down arrive once it is back; nothing is counted dropped."""
        port = free_port()
        receiver = GrpcOtlpReceiver(port).start()
        bridge = await make_bridge(bridge_config(receiver.endpoint))
        await send_calls(bridge, 0, 200)
        assert await eventually(lambda: len(receiver.received.spans()) == 200)
        receiver.stop()
        await send_calls(bridge, 200, 300)
        assert await eventually(
            lambda: bridge.stats.export_failures.get("traces") > 0 or bridge.stats.calls.get("client") == 500
        )
        await asyncio.sleep(2.0)
        back = GrpcOtlpReceiver(port).start()
        try:
            assert await eventually(lambda: len(back.received.spans()) == 300, timeout=40)
            assert client_paths(back.received) == {str(i) for i in range(200, 500)}
            assert bridge.stats.dropped.values == {}
        finally:
            await bridge.stop()
            back.stop()

    async def test_beyond_the_budget_drops_are_counted(self, make_bridge: Any) -> None:
        """Past retry_on_failure.max_elapsed_time a batch is dropped, and the count says how much."""
        dead = f"127.0.0.1:{free_port()}"
        config = bridge_config(
            dead, exporters={"otlp": {"endpoint": dead, "retry_on_failure": {"max_elapsed_time": "1s"}}}
        )
        bridge = await make_bridge(config)
        await send_calls(bridge, 0, 50)
        assert await eventually(
            lambda: bridge.stats.dropped.get("traces", "retry_exhausted") == 50, timeout=30
        )

    async def test_queue_bound(self, make_bridge: Any) -> None:
        """Spans beyond sending_queue.queue_size while the backend is away are dropped and counted."""
        dead = f"127.0.0.1:{free_port()}"
        config = bridge_config(
            dead,
            exporters={"otlp": {"endpoint": dead, "sending_queue": {"queue_size": 150}}},
            shutdown_timeout="0.5s",  # nothing can be delivered: a stop need not wait for it
        )
        bridge = await make_bridge(config)
        for start in range(0, 600, 100):
            await send_calls(bridge, start, 100)
            await asyncio.sleep(1.1)  # one span batch per flush interval
        assert await eventually(lambda: bridge.stats.dropped.get("traces", "queue_full") >= 300, timeout=10)


class TestTooLarge:
    @pytest.mark.parametrize("defect", [False, True], ids=["unreadable", "defect"])
    async def test_a_request_that_cannot_be_cut_is_dropped_and_the_next_one_goes(
        self, defect: bool, monkeypatch: Any
    ) -> None:
        """A refusal as too large of a request the splitter cannot read (none the bridge makes), or
        a defect while handling one, drops that request, counted; the consumer lives on and sends
        the next one."""
        from als2otel import config as cfg
        from als2otel.export import OtlpExporter, otlp
        from als2otel.export.transport import Outcome
        from als2otel.stats import Stats

        sent: list[bytes] = []

        class Refusing:
            def send(self, payload: bytes, timeout: float) -> Outcome:
                sent.append(payload)
                return Outcome("too_large", "RESOURCE_EXHAUSTED") if payload == b"\x0f" else Outcome("ok")

            def close(self) -> None:
                pass

        def broken(signal: str, payload: bytes) -> list[tuple[bytes, int]]:
            raise RuntimeError("a defect")

        if defect:
            monkeypatch.setattr(otlp, "halve", broken)
        stats = Stats()
        exporter = OtlpExporter({"traces": Refusing()}, cfg.OtlpConfig(), stats)
        exporter.start()
        exporter.export("traces", [(b"\x0f", 3)])
        exporter.export("traces", [(b"\x0a\x00", 1)])
        assert await eventually(lambda: len(sent) == 2, timeout=10)
        assert stats.dropped.get("traces", "unexpected_error" if defect else "too_large") == 3
        await exporter.shutdown(1.0)
