"""Instructions per entry through the pipeline, counted by valgrind: steady where timings are not.

Wall-clock throughput on a shared virtual machine varies by +-30% from run to
run; the number of instructions executed does not. This runs the bridge's
processing (parse, normalise, resolve, spans, metrics) in one process over
freshly parsed ALS messages, under ``valgrind --tool=callgrind``, twice: both
runs prepare ``1 + passes`` sets of entries (each set its own requests, traces
and connections) and process one of them, or all; the difference divided by
the extra entries is the cost of one entry, without start-up. gRPC and the OTLP
send are not in it (bench/pipeline.py measures those).

``--compiled`` counts the modules setup.py compiles as built in build/compiled (``make compiled``).

Usage: python bench/instructions.py [--entries N] [--passes K] [--peers | --envoy] [--python EXE]
                                    [--requests-per-connection R] [--compiled]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_passes(
    entries: int, passes: int, measured: int, peers: bool, per_connection: int, compiled: bool, envoy: bool
) -> None:
    """``1 + measured`` of ``1 + passes`` prepared passes over ``entries`` entries (the first warms caches).

    Both runs prepare the same messages, so their difference is only the processing.
    """
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
    from pipeline import COMPILED, SOURCE, build_messages, offline_bridge  # SOURCE now first on the path

    sys.path.insert(0, str(COMPILED if compiled else SOURCE))  # this checkout's code, as built

    from als2otel.app import tune_garbage_collection
    from als2otel.receiver import identify
    from als2otel.receiver._proto import als_pb2
    from als2otel.receiver.server import EntryBatch

    # Every pass reads entries of its own (ports, request ids, trace ids differ), so
    # caches keyed by per-request values never see a repeat they would not see live.
    passes_messages = [
        build_messages(entries, 1, peers, per_connection, offset=entries * k, envoy=envoy)[0]
        for k in range(1 + passes)
    ]
    messages = passes_messages[0]

    async def main() -> None:
        pipeline = offline_bridge(peers, envoy).pipeline
        tune_garbage_collection()  # as `als2otel serve` does once started
        proxy = identify(als_pb2.StreamAccessLogsMessage.FromString(messages[0]).identifier)
        for messages_ in passes_messages[: 1 + measured]:
            for raw in messages_:
                entries_ = als_pb2.StreamAccessLogsMessage.FromString(raw).http_logs.log_entry
                pipeline.process(EntryBatch(proxy, "v3", "http", entries_))
            pipeline.spans.take()

    asyncio.run(main())


def count(
    python: str,
    entries: int,
    passes: int,
    measured: int,
    peers: bool,
    per_connection: int,
    compiled: bool,
    envoy: bool,
) -> int:
    command = (
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            python,
            __file__,
            "--run",
            "--entries",
            str(entries),
            "--passes",
            str(passes),
            "--measured",
            str(measured),
            "--requests-per-connection",
            str(per_connection),
        ]
        + (["--peers"] if peers else [])
        + (["--compiled"] if compiled else [])
        + (["--envoy"] if envoy else [])
    )
    # A fixed hash seed: with a random one, dict and set layouts (and so the count) vary by ~1%.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no instruction count from valgrind:\n{out[-2000:]}")
    return int(match.group(1))


def main() -> None:
    from pipeline import add_traffic_arguments  # bench/, this script's folder

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    add_traffic_arguments(parser)
    parser.add_argument("--compiled", action="store_true", help="the compiled build (make compiled)")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measured", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_passes(
            args.entries,
            args.passes,
            args.measured,
            args.peers,
            args.requests_per_connection,
            args.compiled,
            args.envoy,
        )
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    per_connection = 1 if args.envoy else args.requests_per_connection  # Envoy's: a connection per request
    traffic = (args.peers, per_connection, args.compiled, args.envoy)
    base = count(args.python, args.entries, args.passes, 0, *traffic)
    total = count(args.python, args.entries, args.passes, args.passes, *traffic)
    per_entry = (total - base) / (args.entries * args.passes)
    analysis = "Envoy-shaped, k8s-mesh" if args.envoy else "mx-mesh" if args.peers else "no analyzer"
    mode = analysis + (", compiled" if args.compiled else "")
    print(
        f"{mode}, {per_connection} requests per connection: {per_entry:,.0f} instructions per entry"
        f" ({args.python})"
    )


if __name__ == "__main__":
    main()
