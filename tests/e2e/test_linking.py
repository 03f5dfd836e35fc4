"""Links across sides, processes and sampling: what Jaeger, Tempo and the servicegraph rely on."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from conftest import bridge_config
from support import als, servicegraph
from support.mesh import CALLEE, CALLER, sides, stream
from support.otlp_receiver import GrpcOtlpReceiver

from als2otel.export import render


async def wait_spans(otlp: GrpcOtlpReceiver, count: int, settle: float = 1.5) -> list[Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(otlp.received.spans()) < count:
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle)
    return otlp.received.spans()


async def test_two_replicas_each_given_one_side(make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
    """Client sides to one bridge, server sides to another: the same pairs as one bridge would make."""
    client, server = sides(200)
    first = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
    second = await make_bridge(bridge_config(otlp.endpoint, analyzers=["mx-mesh"]))
    await asyncio.gather(
        als.send(f"127.0.0.1:{first.receiver.port}", stream(CALLER, "10.1.0.4", client)),
        als.send(f"127.0.0.1:{second.receiver.port}", stream(CALLEE, "10.1.0.9", server)),
    )
    spans = await wait_spans(otlp, 400)
    assert len(spans) == 400
    assert servicegraph.edges(spans) == Counter({("productpage", "reviews"): 200})


async def test_sampling_keeps_whole_traces_and_every_metric(make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
    """At 0.1 over 10,000 calls: about 10% of traces, never half of one; metrics count all 10,000."""
    calls = 10_000
    client, server = sides(calls)
    bridge = await make_bridge(
        bridge_config(otlp.endpoint, analyzers=["mx-mesh"], traces={"sampling_ratio": 0.1})
    )
    target = f"127.0.0.1:{bridge.receiver.port}"
    await asyncio.gather(
        als.send(target, stream(CALLER, "10.1.0.4", client)),
        als.send(target, stream(CALLEE, "10.1.0.9", server)),
    )
    await bridge.pipeline.drain()
    spans = await wait_spans(otlp, 2 * 1000 * 8 // 10)
    per_trace = Counter(span.trace_id for _, span in spans)
    assert set(per_trace.values()) == {2}  # both sides or neither
    # Binomial(10000, 0.1): mean 1000, sd 30; 5 sd either side.
    assert 850 <= len(per_trace) <= 1150
    text = render(bridge.metrics, bridge.stats)
    assert 'http_client_request_duration_seconds_count{service_name="productpage"' in text
    counted = sum(
        s.histogram.count
        for s in bridge.metrics.series.values()
        if s.metric.name == "http.server.request.duration" and s.histogram is not None
    )
    assert counted == calls
