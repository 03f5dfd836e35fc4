"""The call-shape cache changes nothing: the same calls translated with the cache, and with the cache
forgotten before every call, give the same spans and metric series, byte for byte.

The cache's key must cover everything the shape's values are computed from; an attribute added
to a shape but not to the key makes the two runs differ here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from support import als, peers

from als2otel.analysis import AnalyzerChain, MxMeshAnalyzer, ProxyAnalyzer
from als2otel.export.otlp_metrics import metrics_request
from als2otel.export.prometheus import render
from als2otel.model import Call
from als2otel.receiver.normalize import normalize_http, normalize_tcp
from als2otel.stats import Stats
from als2otel.translation import MetricRecorder, MetricStore, SpanBatch, Translator

from .test_translation import GATEWAY, PRODUCTPAGE, REVIEWS, calls

SETS = ("http", "servicegraph", "istio")


def generated_calls(count: int, seed: int) -> Iterator[Call]:
    """Calls whose every keyed field varies: sides, peers, method, status, gRPC, flags, cluster, ..."""
    rng = random.Random(seed)
    chain = AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), Stats())
    pods = [peers.pod(app) for app in ("reviews", "ratings", "details")]
    for i in range(count):
        proxy = rng.choice([PRODUCTPAGE, REVIEWS, GATEWAY])
        inbound = rng.random() < 0.4
        peer = rng.choice(pods)
        grpc = rng.random() < 0.3
        headers: dict[str, str] = {}
        if grpc:
            headers["content-type"] = "application/grpc"
        if rng.random() < 0.3:
            headers["traceparent"] = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        if rng.random() < 0.2:
            headers["b3"] = f"{rng.getrandbits(64):016x}-{rng.getrandbits(64):016x}-1"
        ip = f"10.1.0.{rng.randint(1, 30)}"
        common: dict[str, Any] = {
            "downstream_remote": (ip, 40000 + rng.randint(0, 99)),
            "downstream_local": ("10.1.0.9" if inbound else "10.96.0.9", rng.choice([9080, 8080, 443])),
            "cluster": "inbound|9080||"
            if inbound
            else rng.choice(
                [
                    "outbound|9080||reviews.default.svc.cluster.local",
                    "outbound|443||api.example.com",
                    "PassthroughCluster",
                    "",
                ]
            ),
            "method": rng.randint(0, 9),
            "path": rng.choice(["/", "/reviews/1?x=1", "/hipstershop.CartService/GetCart", "/a/b"]),
            "authority": rng.choice(["reviews:9080", "api.example.com", "", "reviews"]),
            "status": rng.choice([200, 201, 404, 429, 500, 503, None]),
            "request_id": rng.choice(["", f"{i:08x}-2222-4000-8000-{i:012d}", f"req-{i}"]),
            "start_ms": rng.randint(0, 10_000),
            "duration_ms": rng.randint(0, 3000),
            "headers": headers,
            "flags": rng.sample(
                ["upstream_connection_failure", "no_route_found", "upstream_request_timeout"],
                rng.randint(0, 2),
            ),
            "filter_state": peers.filter_state(
                rng.choice(["struct", "flatnode"]), "downstream" if inbound else "upstream", peer
            )
            if rng.random() < 0.7
            else None,
        }
        if not inbound:
            common["upstream_remote"] = (f"10.1.0.{rng.randint(1, 30)}", 9080)
            common["upstream_local"] = (ip, 50000 + rng.randint(0, 99))
        if rng.random() < 0.15:
            tcp = als.tcp_entry(
                downstream_remote=common["downstream_remote"],
                downstream_local=common["downstream_local"],
                upstream_remote=common.get("upstream_remote"),
                upstream_local=common.get("upstream_local"),
                cluster=common["cluster"],
                received=rng.randint(0, 10**6),
                sent=rng.randint(0, 10**6),
            )
            yield from chain.resolve(normalize_tcp(tcp, "v3"), proxy)
            continue
        raw = als.http_entry(**common)
        raw.common_properties.route_name = rng.choice(["", "default", "reviews-route"])
        raw.request.scheme = rng.choice([b"http", b"https", b""])
        raw.protocol_version = rng.randint(0, 4)
        raw.request.user_agent = rng.choice([b"", b"curl/8", b"Envoy/1.40"])
        if grpc and rng.random() < 0.5:
            raw.response.response_trailers["grpc-status"] = str(rng.randint(0, 16)).encode()
        yield from chain.resolve(normalize_http(raw, "v3"), proxy)
        # Its twin, different in one field: the two must not share a shape where that field counts.
        twin = type(raw).FromString(raw.SerializeToString())
        TWEAKS[i % len(TWEAKS)](twin, rng)
        yield from chain.resolve(normalize_http(twin, "v3"), proxy)


def _flip_scheme(raw: Any, rng: random.Random) -> None:
    raw.request.scheme = b"https" if raw.request.scheme != b"https" else b"http"


def _other_status(raw: Any, rng: random.Random) -> None:
    raw.response.response_code.value = 200 if raw.response.response_code.value != 200 else 503


def _other_authority(raw: Any, rng: random.Random) -> None:
    raw.request.authority = raw.request.authority + b".other"


def _other_route(raw: Any, rng: random.Random) -> None:
    raw.common_properties.route_name += "-other"


def _other_version(raw: Any, rng: random.Random) -> None:
    raw.protocol_version = (raw.protocol_version + 1) % 5


def _other_agent(raw: Any, rng: random.Random) -> None:
    raw.request.user_agent += b" other"


def _other_method(raw: Any, rng: random.Random) -> None:
    raw.request.request_method = (raw.request.request_method % 9) + 1


def _other_path(raw: Any, rng: random.Random) -> None:
    raw.request.path += b"/other"


def _other_flags(raw: Any, rng: random.Random) -> None:
    raw.common_properties.response_flags.fault_injected = (
        not raw.common_properties.response_flags.fault_injected
    )


def _other_cluster(raw: Any, rng: random.Random) -> None:
    raw.common_properties.upstream_cluster += "-other"


TWEAKS = [
    _flip_scheme,
    _other_status,
    _other_authority,
    _other_route,
    _other_version,
    _other_agent,
    _other_method,
    _other_path,
    _other_flags,
    _other_cluster,
]


def translate(call_list: list[Call], forget: bool) -> tuple[list[bytes], str, Any]:
    store = MetricStore(start_ns=1, stats=Stats())
    translator = Translator(MetricRecorder(store, SETS))
    batch = SpanBatch()
    for call in call_list:
        if forget:
            translator.forget_shapes()
        translator.add(call, batch)
    request, _ = metrics_request(store, 2, calls()[0].destination or calls()[0].proxy.workload)  # type: ignore[arg-type]
    return (
        [batch.take()[0]],
        render(store, Stats()),
        request.SerializeToString(),
    )


class TestShapeCache:
    def test_golden_calls(self) -> None:
        """The golden calls: the same spans and series with the cache as without it."""
        assert translate(calls(), forget=False) == translate(calls(), forget=True)

    def test_generated_calls(self) -> None:
        """3,000 generated calls, shapes repeating and varying in every keyed field: the same bytes."""
        call_list = list(generated_calls(3000, seed=17))
        assert len(call_list) > 3000
        cached, fresh = translate(call_list, forget=False), translate(call_list, forget=True)
        assert cached[0] == fresh[0]  # spans
        assert cached[1] == fresh[1]  # /metrics
        assert cached[2] == fresh[2]  # OTLP metrics
