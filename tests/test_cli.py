"""The als2otel command, run as a separate process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from support import als, mesh
from support.net import free_port, wait_ready
from support.otlp_receiver import GrpcOtlpReceiver

from als2otel import __version__

CLI = [sys.executable, "-m", "als2otel"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=60)


class TestCommands:
    def test_version(self) -> None:
        """--version prints the version."""
        result = run("--version")
        assert result.returncode == 0 and __version__ in result.stdout

    def test_check_config_ok(self) -> None:
        """The sample configuration is valid."""
        assert run("check-config", "config/als2otel.yaml").returncode == 0

    def test_check_config_reports_every_problem(self, tmp_path: Path) -> None:
        """Exit 2 with every problem on its own line, each naming its key path."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("receiver:\n  listen: nowhere\nexporters:\n  otlp:\n    endpoint: 12\nextra: true\n")
        result = run("check-config", str(bad))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 3
        assert {line.split(":")[0] for line in lines} == {
            "receiver.listen",
            "exporters.otlp.endpoint",
            "extra",
        }

    def test_serve_refuses_bad_config_before_opening_a_port(self, tmp_path: Path) -> None:
        """serve exits 2 on a bad file and never listens."""
        port = free_port()
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"receiver:\n  listen: 127.0.0.1:{port}\nanalyzers: [nope]\n")
        result = run("serve", "--config", str(bad))
        assert result.returncode == 2 and "analyzers[0]" in result.stderr
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free


class TestGracefulShutdown:
    def test_sigterm_flushes_and_exits_zero(self, tmp_path: Path) -> None:
        """On SIGTERM the bridge finishes received entries, flushes spans and metrics, and exits 0."""
        otlp = GrpcOtlpReceiver().start()
        als_port, http_port = free_port(), free_port()
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "receiver": {"listen": f"127.0.0.1:{als_port}"},
                    "http": {"listen": f"127.0.0.1:{http_port}"},
                    "analyzers": [],
                    "exporters": {"otlp": {"endpoint": otlp.endpoint}},
                    "metrics": {"export_interval": "1h"},
                }
            )
        )
        process = subprocess.Popen([*CLI, "serve", "--config", str(config)])
        try:
            assert wait_ready(http_port)
            entries = [mesh.outbound(i, start_ms=als.real_now_ms()) for i in range(300)]
            message = als.http_message(entries, mesh.productpage())
            assert asyncio.run(als.send(f"127.0.0.1:{als_port}", [message])) is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            assert len(otlp.received.spans()) == 300
            assert any(name == "http.client.request.duration" for name, _ in otlp.received.latest_metrics())
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            otlp.stop()
