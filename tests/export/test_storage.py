"""The sending queue on disk (exporters.otlp.sending_queue.storage): what was queued survives a
SIGTERM or a SIGKILL of ``als2otel serve`` during a backend outage and arrives once the backend is
back; torn or corrupt files are set aside; the storage's size is bounded; one process a directory."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import bridge_config
from support import als, mesh
from support.net import free_port, wait_ready
from support.otlp_receiver import GrpcOtlpReceiver, Refusal
from support.waiting import eventually

from als2otel import config as cfg
from als2otel.app import Bridge
from als2otel.export.storage import HEADER, DiskQueue, StorageLocked
from als2otel.stats import Stats

CALLS = 20_000


def down_until(flag: dict[str, bool]) -> Any:
    """A receiver's reply: traces refused as UNAVAILABLE (retry) while ``flag["down"]``."""

    def reply(signal_name: str, request: Any) -> Refusal | None:
        if flag["down"] and signal_name == "traces":
            return Refusal("UNAVAILABLE", 503, "backend down")
        return None

    return reply


def page_value(http_port: int, line_start: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        page = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(line_start))


def serve(directory: Path, otlp: str, storage: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``als2otel serve`` with a sending queue in ``storage``; its ALS and HTTP ports once ready."""
    als_port, http_port = free_port(), free_port()
    config = {
        "receiver": {"listen": f"127.0.0.1:{als_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": [],
        "exporters": {"otlp": {"endpoint": otlp, "sending_queue": {"storage": str(storage)}}},
        "metrics": {"export_interval": "1s"},
        "shutdown_timeout": "3s",
    }
    path = directory / f"bridge-{als_port}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", str(path)])
    assert wait_ready(http_port, timeout=60), "the bridge did not become ready"
    return process, als_port, http_port


async def send_calls(als_port: int, count: int) -> None:
    now = als.real_now_ms()
    messages = [
        als.http_message([mesh.outbound(first + i, start_ms=now) for i in range(1000)], mesh.productpage())
        for first in range(0, count, 1000)
    ]
    assert await als.send(f"127.0.0.1:{als_port}", messages) is None


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_what_was_queued_survives_a_stop_during_an_outage(tmp_path: Path, stop: signal.Signals) -> None:
    """Backend down, 20,000 calls sent and their spans queued, the bridge stopped (SIGTERM, or
    SIGKILL once the requests were on disk), a new bridge on the same directory, backend up: every
    span arrives, duplicates only of what was in flight at the stop, and the resumed are counted."""
    state = {"down": True}
    otlp = GrpcOtlpReceiver().start()
    otlp.received.reply = down_until(state)
    storage = tmp_path / "queue"
    try:
        first, als_port, http_port = serve(tmp_path, otlp.endpoint, storage)
        try:
            asyncio.run(send_calls(als_port, CALLS))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                calls = page_value(http_port, 'als2otel_calls_total{side="client"}')
                if calls == CALLS and page_value(http_port, "als2otel_sending_queue_storage_requests") > 0:
                    break
                time.sleep(0.2)
            time.sleep(1.5)  # the last spans flushed into the queue
            assert page_value(http_port, 'als2otel_dropped_total{signal="traces"') == 0
            first.send_signal(stop)
            code = first.wait(30)
            assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
        assert list(storage.glob("*.traces")), "nothing was kept on disk"
        state["down"] = False
        second, _, http_port = serve(tmp_path, otlp.endpoint, storage)
        try:
            assert otlp.received.wait_for(
                lambda: len({span.span_id for _, span in otlp.received.spans()}) == CALLS, 60
            ), len({span.span_id for _, span in otlp.received.spans()})
            assert page_value(http_port, 'als2otel_sending_queue_resumed_total{signal="traces"}') >= 1
            assert otlp.received.wait_for(lambda: not list(storage.glob("*.traces")), 10)
        finally:
            second.terminate()
            second.wait(30)
    finally:
        otlp.stop()


class TestStorage:
    async def test_torn_and_corrupt_files_are_set_aside_and_the_rest_is_sent(
        self, make_bridge: Any, otlp: GrpcOtlpReceiver, tmp_path: Path
    ) -> None:
        """A file with a wrong checksum, one cut short, one of another name, and a write a crash cut
        short under tmp/: counted, logged, moved under corrupt/ (the temporary one removed); the
        good request beside them is sent; the bridge starts as always."""
        storage = tmp_path / "queue"
        disk = DiskQueue(storage, Stats())
        disk.open()
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        request = trace_service_pb2.ExportTraceServiceRequest()
        request.resource_spans.add().scope_spans.add().spans.add(
            trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="kept"
        )
        good = disk.write("traces", request.SerializeToString(), 1)
        torn = disk.write("traces", request.SerializeToString(), 1)
        flipped = disk.write("traces", request.SerializeToString(), 1)
        disk.close()
        torn.path.write_bytes(torn.path.read_bytes()[:-3])
        data = bytearray(flipped.path.read_bytes())
        data[HEADER.size + 2] ^= 0xFF
        flipped.path.write_bytes(bytes(data))
        (storage / "notes.txt").write_text("not a request")
        (storage / "tmp" / "0000000000000099.traces").write_bytes(b"half a wri")
        bridge: Bridge = await make_bridge(
            bridge_config(
                otlp.endpoint,
                exporters={"otlp": {"endpoint": otlp.endpoint, "sending_queue": {"storage": str(storage)}}},
            )
        )
        assert await eventually(lambda: len(otlp.received.spans()) == 1)
        assert otlp.received.spans()[0][1].name == "kept"
        assert bridge.stats.queue_corrupt_files.get("traces") == 2
        assert bridge.stats.queue_corrupt_files.get("unknown") == 1
        assert sorted(p.name for p in (storage / "corrupt").iterdir()) == sorted(
            [torn.path.name, flipped.path.name, "notes.txt"]
        )
        assert not list((storage / "tmp").iterdir())
        assert await eventually(lambda: not good.path.exists())

    async def test_a_full_storage_drops_the_oldest_and_counts_them(
        self, make_bridge: Any, tmp_path: Path
    ) -> None:
        """Backend down, more spans than max_storage_size holds: the oldest requests are dropped and
        counted (queue_full), the disk never holds more than the bound, the bridge goes on."""
        state = {"down": True}
        otlp = GrpcOtlpReceiver().start()
        otlp.received.reply = down_until(state)
        storage = tmp_path / "queue"
        try:
            queue = {"storage": str(storage), "max_storage_size": "256KiB"}
            exporters = {
                "otlp": {"endpoint": otlp.endpoint, "max_request_size": "64KiB", "sending_queue": queue}
            }
            bridge: Bridge = await make_bridge(bridge_config(otlp.endpoint, exporters=exporters))
            for first in range(0, 3000, 500):
                entries = [mesh.outbound(first + i) for i in range(500)]
                assert (
                    await als.send(
                        f"127.0.0.1:{bridge.receiver.port}", [als.http_message(entries, mesh.productpage())]
                    )
                    is None
                )
                await bridge.pipeline.drain()
                bridge.flush_spans()
                size = sum(p.stat().st_size for p in storage.glob("*.traces"))
                assert size <= 256 * 1024
            dropped = bridge.stats.dropped.get("traces", "queue_full")
            assert dropped > 0
            assert bridge.stats.queue_storage_bytes.value <= 256 * 1024
            state["down"] = False
            assert await eventually(lambda: len(otlp.received.spans()) == 3000 - dropped, 30)
            assert bridge.stats.queue_storage_requests.value == 0 or await eventually(
                lambda: bridge.stats.queue_storage_requests.value == 0, 10
            )
            await bridge.stop()  # before its receiver, which its last flush reaches
        finally:
            otlp.stop()

    def test_two_processes_on_one_directory_are_refused(self, tmp_path: Path) -> None:
        """A second bridge on a directory in use: a clear error before it takes any traffic; serve
        exits 1 with it."""
        storage = tmp_path / "queue"
        holder = DiskQueue(storage, Stats())
        holder.open()
        try:
            with pytest.raises(StorageLocked, match="in use by another als2otel process"):
                DiskQueue(storage, Stats()).open()
            config = tmp_path / "second.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "receiver": {"listen": f"127.0.0.1:{free_port()}"},
                        "http": {"listen": f"127.0.0.1:{free_port()}"},
                        "analyzers": [],
                        "exporters": {"otlp": {"sending_queue": {"storage": str(storage)}}},
                    }
                )
            )
            result = subprocess.run(
                [sys.executable, "-m", "als2otel", "serve", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 1
            assert "in use by another als2otel process" in result.stderr
        finally:
            holder.close()

    def test_workers_each_get_a_subdirectory(self) -> None:
        """With workers, each queues in its own subdirectory of the configured one."""
        from als2otel.workers import worker_config

        config = cfg.parse({"exporters": {"otlp": {"sending_queue": {"storage": "/var/lib/als2otel"}}}}, {})
        assert [
            worker_config(config, index, "host:9464").exporters.otlp.sending_queue.storage for index in (0, 1)
        ] == ["/var/lib/als2otel/w0", "/var/lib/als2otel/w1"]
