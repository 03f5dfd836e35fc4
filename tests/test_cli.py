"""The als2otel command, run as a separate process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import als, mesh
from support.net import free_port, wait_ready
from support.otlp_receiver import GrpcOtlpReceiver

from als2otel import __version__

CLI = [sys.executable, "-m", "als2otel"]
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=60)


BILLION_LAUGHS = b"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + b"".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n".encode()
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)
"""Nine levels of aliases, each nine of the one before: 9^9 values once expanded."""


def run_measured(*args: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """The command's result, its wall time, and its peak resident memory in KiB."""
    wrapper = (
        "import resource, subprocess, sys, time; start = time.monotonic(); "
        "result = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60); "
        "sys.stderr.write(result.stderr); "
        "print(time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(result.returncode)"
    )
    outer = subprocess.run(
        [sys.executable, "-c", wrapper, *CLI, *args], check=False, capture_output=True, text=True, timeout=90
    )
    seconds, peak = outer.stdout.split()
    return outer, float(seconds), int(peak)


class TestCommands:
    def test_version(self) -> None:
        """--version prints the version."""
        result = run("--version")
        assert result.returncode == 0 and __version__ in result.stdout

    def test_check_config_ok(self) -> None:
        """The sample configuration is valid."""
        assert run("check-config", str(ROOT / "config" / "als2otel.yaml")).returncode == 0

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

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (BILLION_LAUGHS, "more than 10000 values once its aliases are expanded"),
            (b"[" * 10_000 + b"]" * 10_000, "nested more than 32 levels deep"),
            (b"a: &a [*a]\n", "a YAML alias refers to the node that holds it"),
            ("receiver: {}\n".encode("utf-16"), "not UTF-8 text"),
            (b"log_level: \xff\xfe\n", "not UTF-8 text"),
            (b"# padding\n" * 200_000, "larger than 1048576 bytes"),
        ],
        ids=["billion-laughs", "deep", "cyclic", "utf-16", "latin-1", "huge"],
    )
    def test_hostile_files_are_refused_at_once(self, tmp_path: Path, content: bytes, says: str) -> None:
        """Aliases that expand to billions, 10,000-deep nesting, a cycle, text that is not UTF-8 and a
        file of 2 MB: check-config and serve exit 2 with one line saying why, quickly and in little
        memory (a billion laughs once took 90 s and 1.9 GB)."""
        bad = tmp_path / "bad.yaml"
        bad.write_bytes(content)
        for command in (["check-config", str(bad)], ["serve", "--config", str(bad)]):
            result, seconds, peak_kib = run_measured(*command)
            assert result.returncode == 2, result.stderr
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith(f"{bad}: ") and says in line
            assert seconds < 10 and peak_kib < 200_000, (seconds, peak_kib)

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


def test_a_second_bridge_on_the_als_port_is_refused(tmp_path: Path) -> None:
    """Two `serve` on one ALS port: the second exits 1 saying it cannot listen, instead of silently
    sharing the port's connections with the first."""
    als_port = free_port()
    configs = []
    for name in ("first", "second"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "receiver": {"listen": f"127.0.0.1:{als_port}"},
                    "http": {"listen": f"127.0.0.1:{free_port()}"},
                    "analyzers": [],
                    "exporters": {"otlp": {"enabled": False}},
                }
            )
        )
        configs.append(config)
    first = subprocess.Popen([*CLI, "serve", "--config", str(configs[0])], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", als_port)) == 0:
                    break
            time.sleep(0.1)
        second = run("serve", "--config", str(configs[1]))
        assert second.returncode == 1 and "cannot listen for ALS" in second.stderr
    finally:
        first.terminate()
        first.wait(30)
