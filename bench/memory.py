"""Resident memory over a long run: does the bridge stay flat once its caches are full?

Processes ``--entries`` fresh entries (each its own request, trace and, every
``--requests-per-connection`` entries, connection) through the bridge's
processing in one process, ``--chunk`` at a time, building spans as for an
exporter and handing them off after each chunk (gRPC and the OTLP send are
bench/pipeline.py's part). Every bounded table (addresses, connections, call
shapes, repeat counters, metric series) fills within the first few hundred
thousand entries; after that the resident set should not grow.

Usage: python bench/memory.py [--entries N] [--chunk C] [--peers] [--requests-per-connection R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os

# bench/ is this script's folder; importing pipeline puts this checkout's src/ and tests/ on the path.
from pipeline import add_traffic_arguments, build_messages, offline_bridge


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


async def run(
    entries: int, chunk: int, peers: bool, per_connection: int, envoy: bool
) -> list[tuple[int, float]]:
    from als2otel.receiver import identify
    from als2otel.receiver._proto import als_pb2
    from als2otel.receiver.server import EntryBatch

    pipeline = offline_bridge(peers, envoy).pipeline
    samples = []
    proxy = None
    for offset in range(0, entries, chunk):
        for raw in build_messages(chunk, 1, peers, per_connection, offset=offset, envoy=envoy)[0]:
            message = als_pb2.StreamAccessLogsMessage.FromString(raw)
            if proxy is None:
                proxy = identify(message.identifier)
            pipeline.process(EntryBatch(proxy, "v3", "http", message.http_logs.log_entry))
        pipeline.spans.take()
        gc.collect()  # what is left is what the bridge holds, not garbage not yet collected
        samples.append((offset + chunk, rss_mb()))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    add_traffic_arguments(parser)
    args = parser.parse_args()
    before = rss_mb()
    per_connection = 1 if args.envoy else args.requests_per_connection
    samples = asyncio.run(run(args.entries, args.chunk, args.peers, per_connection, args.envoy))
    for done, mb in samples[:: max(len(samples) // 10, 1)] + samples[-1:]:
        print(f"{done:>10,} entries  RSS {mb:6.1f} MB")
    half = samples[len(samples) // 2][1]
    last = samples[-1][1]
    print(
        f"RSS before {before:.1f} MB; at half the run {half:.1f} MB, at the end {last:.1f} MB"
        f" ({last - half:+.1f} MB over the second half)"
    )


if __name__ == "__main__":
    main()
