"""How fast a backlog on disk drains once the backend is back.

Fills a ``sending_queue.storage`` directory with ``--spans`` spans (realistic sidecar spans,
cut into requests of ``max_request_size`` as the bridge cuts them), as a long outage would
leave it, then starts a bridge on that directory with an OTLP/gRPC receiver in another
process and times until the receiver has every span. Reported: spans and MiB on disk, and
spans/s and MiB/s drained (the default four requests in flight per signal, gzip).

Usage: python bench/backlog.py [--spans N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import SPAWN, build_messages, offline_bridge, otlp_receiver


def fill(directory: Path, spans: int) -> tuple[int, int]:
    """Writes ``spans`` spans' requests into ``directory``; (requests, bytes) written."""
    from als2otel.export.split import split
    from als2otel.export.storage import DiskQueue
    from als2otel.receiver import identify
    from als2otel.receiver._proto import als_pb2
    from als2otel.receiver.server import EntryBatch
    from als2otel.stats import Stats

    bridge = offline_bridge(peers=False)
    disk = DiskQueue(directory, Stats())
    disk.open()
    proxy = None
    written = 0
    for raw in build_messages(spans, 1, False)[0]:
        message = als_pb2.StreamAccessLogsMessage.FromString(raw)
        proxy = proxy or identify(message.identifier)
        bridge.pipeline.process(EntryBatch(proxy, "v3", "http", message.http_logs.log_entry))
        if bridge.pipeline.spans.count >= 8192 or written + bridge.pipeline.spans.count >= spans:
            for payload, count in split("traces", bridge.pipeline.spans.take()[0], 4 * 1024 * 1024):
                disk.write("traces", payload, count)
                written += count
    disk.close()
    return disk.requests, disk.bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=500_000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="als2otel-backlog-"))
    requests, size = fill(directory, args.spans)
    port_queue: Any = SPAWN.Queue()
    counts: Any = SPAWN.Value("q", 0)
    receiver = SPAWN.Process(target=otlp_receiver, args=(port_queue, counts, None, None), daemon=True)
    receiver.start()
    port = port_queue.get()

    async def drain() -> float:
        from als2otel import config as cfg
        from als2otel.app import Bridge

        queue = {"storage": str(directory)}
        config = cfg.parse(
            {
                "receiver": {"listen": "127.0.0.1:0"},
                "http": {"listen": "127.0.0.1:0"},
                "analyzers": [],
                "exporters": {"otlp": {"endpoint": f"127.0.0.1:{port}", "sending_queue": queue}},
            },
            {},
        )
        bridge = Bridge(config)
        start = time.perf_counter()
        await bridge.start()
        while counts.value < args.spans:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - start
        await bridge.stop()
        return seconds

    seconds = asyncio.run(drain())
    receiver.kill()
    mib = size / (1 << 20)
    print(
        f"{args.spans:,} spans in {requests} requests ({mib:.0f} MiB on disk) drained in {seconds:.1f} s:"
        f" {args.spans / seconds:,.0f} spans/s, {mib / seconds:.1f} MiB/s"
    )


if __name__ == "__main__":
    main()
