"""/topology in headless Chromium: the drawn graph shows the services, versions, namespaces and
calls the bridge was fed, a click's detail, and stays readable at 60 services."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from conftest import bridge_config
from support import als, peers

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=6000",
]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by `make test`")

REVIEWS = {
    version: peers.pod("reviews", version, suffix=f"7d9c8b6f5-{version}aaa") for version in ("v1", "v2", "v3")
}
PRODUCTPAGE, RATINGS, DETAILS = peers.pod("productpage"), peers.pod("ratings"), peers.pod("details")
MONGODB = peers.pod("mongodb", namespace="data")
GATEWAY = peers.Peer(
    "istio-ingressgateway-x", "istio-system", "istio-ingressgateway", {"app": "istio-ingressgateway"}
)


def server_side(caller: peers.Peer, callee: peers.Peer, ip: str, count: int, errors: int = 0) -> list[Any]:
    """``count`` calls from ``caller`` as ``callee``'s sidecar logs them (the first ``errors`` 503s)."""
    now_ms = als.real_now_ms()
    ident = als.identifier(
        f"sidecar~{ip}~{callee.name}.{callee.namespace}~{callee.namespace}.svc.cluster.local",
        callee.node_metadata(),
    )
    entries = [
        als.http_entry(
            downstream_remote=("10.2.0.99", 40000 + i),
            downstream_local=(ip, 9080),
            cluster="inbound|9080||",
            start_ms=now_ms,
            duration_ms=5 + i % 40,
            status=503 if i < errors else 200,
            flags=["upstream_connection_failure"] if i < errors else [],
            filter_state=peers.filter_state("struct", "downstream", caller),
        )
        for i in range(count)
    ]
    return [als.http_message(entries, ident)]


def tcp_side(caller: peers.Peer, callee: peers.Peer, ip: str, count: int) -> list[Any]:
    now_ms = als.real_now_ms()
    ident = als.identifier(
        f"sidecar~{ip}~{callee.name}.{callee.namespace}~{callee.namespace}.svc.cluster.local",
        callee.node_metadata(),
    )
    entries = []
    for i in range(count):
        entry = als.tcp_entry(
            downstream_remote=("10.2.0.98", 41000 + i),
            downstream_local=(ip, 27017),
            upstream_remote=(ip, 27017),
            upstream_local=("127.0.0.6", 42000 + i),
            cluster="inbound|27017||",
            received=2048,
            sent=16384,
            start_ms=now_ms,
        )
        for key, value in peers.filter_state("struct", "downstream", caller).items():
            entry.common_properties.filter_state_objects[key].CopyFrom(value)
        entries.append(entry)
    return [als.tcp_message(entries, ident)]


def bookinfo() -> list[list[Any]]:
    """productpage -> details, reviews v1/v2/v3; reviews v2 and v3 -> ratings (some 503s);
    ratings -> mongodb in another namespace over TCP; the gateway -> productpage."""
    return [
        server_side(GATEWAY, PRODUCTPAGE, "10.2.0.2", 30),
        server_side(PRODUCTPAGE, DETAILS, "10.2.0.3", 30),
        *(server_side(PRODUCTPAGE, REVIEWS[v], f"10.2.0.{4 + i}", 10) for i, v in enumerate(REVIEWS)),
        server_side(REVIEWS["v2"], RATINGS, "10.2.0.8", 10, errors=1),
        server_side(REVIEWS["v3"], RATINGS, "10.2.0.8", 10, errors=1),
        tcp_side(RATINGS, MONGODB, "10.2.0.9", 4),
    ]


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    return result.stdout


async def fed_bridge(make_bridge: Any, streams: list[list[Any]], **config: Any) -> Any:
    bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"], **config), clock=time.time_ns)
    for stream in streams:
        assert await als.send(f"127.0.0.1:{bridge.receiver.port}", stream) is None
    await bridge.pipeline.drain()
    return bridge


def node_block(dom: str, node_id: str) -> str:
    """The markup of the node ``node_id``'s group (up to the next node)."""
    start = dom.index(f'data-id="{node_id}"')
    following = dom.find('<g class="node', start)
    return dom[start : following if following > 0 else len(dom)]


@needs_chromium
async def test_the_page_shows_versions_namespaces_protocols_and_a_detail(make_bridge: Any) -> None:
    """Versions inside reviews, namespace bands, the TCP edge with its bytes, and the detail of the
    reviews -> ratings edge with its response codes and flags (selected through the URL, as a
    click leaves it); screenshots of the page and of a node's detail kept."""
    trace_url = "http://tempo.example/explore?service=${service}&peer=${peer}&from=${start}&to=${end}"
    bridge = await fed_bridge(make_bridge, bookinfo(), topology={"trace_url": trace_url})
    url = f"http://127.0.0.1:{bridge.http.port}/topology"
    dom = await asyncio.to_thread(chromium, "--dump-dom", url)
    names = set(re.findall(r'<text[^>]*class="name"[^>]*>([^<]+)</text>', dom))
    assert names == {"istio-ingressgateway", "productpage", "details", "reviews", "ratings", "mongodb"}
    reviews = node_block(dom, "default/reviews")
    assert re.findall(r'data-workload="([^"]+)"', reviews) == ["reviews-v1", "reviews-v2", "reviews-v3"]
    assert {"default", "data", "istio-system"} <= set(re.findall(r'data-namespace="([^"]+)"', dom))
    (tcp,) = re.findall(
        r'<g class="edge tcp[^"]*" data-edge="default/ratings\|data/mongodb\|tcp"[^>]*>(.*?)</g>', dom
    )
    assert re.search(r"conn/s · [\d.]+ (KiB|B)/s ↑ [\d.]+ (KiB|B)/s ↓", tcp)
    selected = f"{url}#select=edge:default/reviews|default/ratings|http"
    detail = await asyncio.to_thread(chromium, "--dump-dom", selected)
    codes = re.search(r'<table class="response">(.*?)</table>', detail)
    assert codes and '<td>503</td><td class="num">2</td>' in codes.group(1)
    assert (
        "<td>UF</td>" in detail and 'id="traces"' in detail and "service=reviews&amp;peer=ratings" in detail
    )
    workloads = await asyncio.to_thread(chromium, "--dump-dom", f"{url}#level=workload")
    edges = set(re.findall(r'data-edge="([^"]+)"', workloads))
    assert {e for e in edges if e.startswith("default/reviews") and "ratings" in e} == {
        "default/reviews-v2|default/ratings-v1|http",
        "default/reviews-v3|default/ratings-v1|http",
    }
    shots = ARTIFACTS  # the README's screenshots under docs/ are these, taken once
    shots.mkdir(exist_ok=True)
    for name, target in (
        ("topology.png", url),
        ("topology-detail.png", f"{url}#select=node:default/reviews"),
    ):
        await asyncio.to_thread(chromium, f"--screenshot={shots / name}", "--window-size=1500,760", target)
        assert (shots / name).stat().st_size > 10_000


def generated(services: int, per_service_calls: int = 3) -> list[list[Any]]:
    """``services`` services in four namespaces, each calling up to three others: ~150 edges."""
    pods = [peers.pod(f"svc{i:02d}", namespace=f"team{i % 4}") for i in range(services)]
    streams = []
    for i, callee in enumerate(pods):
        callers = {(i * 7 + k * 13 + 1) % services for k in range(per_service_calls)} - {i}
        for caller in sorted(callers):
            streams.append(server_side(pods[caller], callee, f"10.3.{i // 200}.{i % 200 + 1}", 2))
    return streams


@needs_chromium
async def test_sixty_services_render_fast_and_no_box_overlaps_another(make_bridge: Any) -> None:
    """60 services and ~150 edges: the page draws within 2 s, and no node's box overlaps another's."""
    bridge = await fed_bridge(make_bridge, generated(60))
    dom = await asyncio.to_thread(chromium, "--dump-dom", f"http://127.0.0.1:{bridge.http.port}/topology")
    boxes = [tuple(map(float, box.split(","))) for box in re.findall(r'data-box="([^"]+)"', dom)]
    assert len(boxes) == 60
    assert len(re.findall(r'<g class="edge', dom)) >= 140
    render_ms = float(re.search(r'data-render-ms="([\d.]+)"', dom).group(1))  # type: ignore[union-attr]
    assert render_ms < 2000
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in combinations(boxes, 2):
        assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1
