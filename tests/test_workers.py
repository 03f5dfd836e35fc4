"""receiver.workers > 1: worker processes sharing the ALS port behind one supervising parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from support import als, mesh
from support.net import free_port
from support.otlp_receiver import GrpcOtlpReceiver, attributes

from als2otel import config as cfg
from als2otel.workers import Supervisor

STREAMS = 16


async def send_streams(port: int, per_stream: int) -> None:
    """``STREAMS`` streams on their own connections (the kernel spreads them over the workers)."""
    messages = [
        [
            als.http_message(
                [mesh.outbound(s * per_stream + i, start_ms=als.real_now_ms()) for i in range(per_stream)],
                mesh.productpage(),
            )
        ]
        for s in range(STREAMS)
    ]
    results = await asyncio.gather(*(als.send(f"127.0.0.1:{port}", m) for m in messages))
    assert results == [None] * STREAMS


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""  # not listening (yet)


def sample(page: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(line_start))


def worker_config(http_port: int, otlp: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "receiver": {"listen": "127.0.0.1:0", "workers": 2},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": [],
        "exporters": {"otlp": {"endpoint": otlp or "127.0.0.1:1", "enabled": otlp is not None}},
        "metrics": {"export_interval": "0.5s"},
        **extra,
    }


class TestSupervisor:
    async def test_workers_share_the_port_and_metrics_merge_exactly(self) -> None:
        """16 streams over two workers: both get some, and the parent's /metrics sums them exactly."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        try:
            await send_streams(supervisor.als_port, 25)
            total = STREAMS * 25

            async def merged() -> str:
                return (await asyncio.to_thread(get, port, "/metrics"))[1]

            for _ in range(100):
                page = await merged()
                if sample(page, 'als2otel_calls_total{side="client"}') == total:
                    break
                await asyncio.sleep(0.1)
            assert sample(page, 'als2otel_entries_received_total{api_version="v3",log_type="http"}') == total
            assert sample(page, "http_client_request_duration_seconds_count{") == total
            buckets = [line for line in page.splitlines() if 'le="+Inf"' in line and "http_client" in line]
            assert sum(float(line.rsplit(" ", 1)[1]) for line in buckets) == total
            per_worker = [
                sample((await asyncio.to_thread(get, w.http_port, "/metrics"))[1], "als2otel_calls_total")
                for w in supervisor._workers
            ]
            assert sum(per_worker) == total and min(per_worker) > 0
            assert await asyncio.to_thread(get, port, "/readyz") == (200, "ready\n")
            # OTLP/HTTP logs on the parent's port are handed to a worker.
            from support.otlp_logs import export_request, post_logs, record_of

            records = [
                record_of(mesh.outbound(10_000 + i, start_ms=als.real_now_ms()), mesh.productpage())
                for i in range(5)
            ]
            status, _ = await asyncio.to_thread(post_logs, port, export_request(records).SerializeToString())
            assert status == 200
            for _ in range(100):
                page = await merged()
                if sample(page, 'als2otel_calls_total{side="client"}') == total + 5:
                    break
                await asyncio.sleep(0.1)
            assert sample(page, 'als2otel_entries_received_total{api_version="otlp",log_type="http"}') == 5
        finally:
            assert await supervisor.stop() == 0

    async def test_a_killed_worker_is_restarted(self) -> None:
        """SIGKILL to a worker: /readyz is 503 until it is back, the restart is counted."""
        port = free_port()
        supervisor = Supervisor(cfg.parse(worker_config(port), {}))
        await supervisor.start()
        stop = asyncio.Event()
        running = asyncio.ensure_future(supervisor.run(stop))
        try:
            os.kill(supervisor.worker_pids[0], signal.SIGKILL)
            statuses = []
            for _ in range(100):
                statuses.append((await asyncio.to_thread(get, port, "/readyz"))[0])
                if statuses[-1] == 200 and 503 in statuses:
                    break
                await asyncio.sleep(0.1)
            assert 503 in statuses and statuses[-1] == 200
            page = (await asyncio.to_thread(get, port, "/metrics"))[1]
            assert sample(page, "als2otel_worker_restarts_total") == 1
            await send_streams(supervisor.als_port, 5)
        finally:
            stop.set()
            assert await running == 0


def test_sigterm_with_workers_delivers_every_span(tmp_path: Path) -> None:
    """`als2otel serve` with two workers: after SIGTERM every span received has arrived, the
    processes exit 0, and each worker wrote its metric series under its own identity."""
    otlp = GrpcOtlpReceiver().start()
    http_port = free_port()
    config = tmp_path / "c.yaml"
    als_port = free_port()
    raw = worker_config(http_port, otlp.endpoint, shutdown_timeout="5s")
    raw["receiver"]["listen"] = f"127.0.0.1:{als_port}"
    raw["metrics"]["instance_id"] = "bridge"
    config.write_text(yaml.safe_dump(raw))
    process = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", str(config)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get(http_port, "/readyz")[0] != 200:
            time.sleep(0.1)
        asyncio.run(send_streams(als_port, 20))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert len(otlp.received.spans()) == STREAMS * 20
        writers = {
            attributes(point.attributes).get("als2otel.instance")
            for request in otlp.received.metrics
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "http.client.request.duration"
            for point in metric.histogram.data_points
        }
        assert writers == {"bridge-w0", "bridge-w1"}
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        otlp.stop()
