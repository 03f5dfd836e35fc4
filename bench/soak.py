"""A long run with pod churn: what the bridge holds while its mesh keeps rolling out.

Runs ``als2otel serve`` (its defaults, ``metrics.expire_after`` 15m unless given) as
its own process, exporting OTLP to a receiver in this process that keeps gRPC's
default limits and only counts. Two services call each other at a steady rate
(both sides logged, as sidecars log them); every minute both roll out: new pods,
new names, new instance ids. Each minute prints the bridge's resident memory, the
metric series it holds, its topology edges, and what the receiver counted.

Usage: python bench/soak.py [--minutes 30] [--rate 200] [--expire-after 15m]
                            [--rollout-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def gauge(page: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=200, help="calls per second (two entries each)")
    parser.add_argument("--expire-after", default="15m")
    parser.add_argument("--rollout-seconds", type=float, default=60.0)
    args = parser.parse_args()

    from support import als, peers
    from support.mesh import sides, stream
    from support.net import free_port, wait_ready
    from support.otlp_receiver import GrpcOtlpReceiver

    receiver = GrpcOtlpReceiver().start()
    receiver.received.keep = False
    als_port, http_port = free_port(), free_port()
    config = {
        "receiver": {"listen": f"127.0.0.1:{als_port}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "analyzers": ["mx-mesh"],
        "exporters": {"otlp": {"endpoint": receiver.endpoint}},
        "metrics": {"expire_after": args.expire_after},
        "log_level": "warning",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(config, file)
    bridge = subprocess.Popen([sys.executable, "-m", "als2otel", "serve", "--config", file.name])
    try:
        assert wait_ready(http_port)
        started = time.monotonic()
        sent = generation = 0
        next_report = started + 60
        print("minute  generation  calls_sent  rss_mb  series  edges  spans_received  points_received")
        while time.monotonic() - started < args.minutes * 60:
            tick = time.monotonic()
            generation = int((tick - started) // args.rollout_seconds)
            caller = peers.pod("productpage", suffix=f"g{generation:04d}-aaaaa")
            callee = peers.pod("reviews", suffix=f"g{generation:04d}-bbbbb")
            client, server = sides(args.rate, caller, callee, first=sent)
            now_ms = als.real_now_ms()
            for entry in client + server:
                entry.common_properties.start_time.FromMilliseconds(als.START_S * 1000 + now_ms)
            target = f"127.0.0.1:{als_port}"
            asyncio.run(
                send_both(target, stream(caller, "10.1.0.4", client), stream(callee, "10.1.0.9", server))
            )
            sent += args.rate
            if time.monotonic() >= next_report:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as response:
                    page = response.read().decode()
                counted = receiver.received.counted
                print(
                    f"{(time.monotonic() - started) / 60:6.1f}  {generation:10d}  {sent:10d}  "
                    f"{rss_mb(bridge.pid):6.1f}  {gauge(page, 'als2otel_metric_series'):6.0f}  "
                    f"{gauge(page, 'als2otel_topology_edges'):5.0f}  {counted['traces']:14d}  "
                    f"{counted['metrics']:15d}",
                    flush=True,
                )
                next_report += 60
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    finally:
        bridge.terminate()
        bridge.wait(30)
        receiver.stop()
        Path(file.name).unlink()


async def send_both(target: str, *streams: list[object]) -> None:
    from support import als

    await asyncio.gather(*(als.send(target, messages) for messages in streams))


if __name__ == "__main__":
    main()
