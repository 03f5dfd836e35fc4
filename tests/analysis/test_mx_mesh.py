"""mx-mesh: every peer-metadata format Istio has shipped, in and out (golden)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from support import als, mesh, peers
from support.golden import assert_golden

from als2otel.analysis import AnalyzerChain, MxMeshAnalyzer, PeerDecoder, PeerError, ProxyAnalyzer
from als2otel.analysis.peers import BYTES_VALUE, STRUCT
from als2otel.model import Call
from als2otel.receiver import identify
from als2otel.receiver.normalize import normalize_http
from als2otel.stats import Stats

CANONICAL = "service.istio.io/canonical-name"
PRODUCTPAGE = peers.pod("productpage")
REVIEWS = peers.pod("reviews", "v2", suffix="5f7b9c6d8-qwert")
CHECKOUT_VM = peers.vm("checkoutservice", "checkoutservice-vm-1")
GATEWAY = peers.Peer(
    "istio-ingressgateway-5d9c7b8f6-abcde",
    "istio-system",
    "istio-ingressgateway",
    {"app": "istio-ingressgateway", "istio": "ingressgateway"},
)


def proxy_of(peer: peers.Peer, role: str = "sidecar", ip: str = "10.1.0.4") -> Any:
    return identify(
        als.identifier(
            f"{role}~{ip}~{peer.name}.{peer.namespace}~{peer.namespace}.svc.cluster.local",
            peer.node_metadata(),
        )
    )


def outbound(filter_state: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return normalize_http(mesh.outbound(filter_state=filter_state, **kwargs), "v3")


def inbound(filter_state: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return normalize_http(mesh.inbound(filter_state=filter_state, **kwargs), "v3")


def summary(calls: list[Call], stats: Stats) -> dict[str, Any]:
    def workload(w: Any) -> Any:
        return {k: v for k, v in w._asdict().items() if v} if w else None

    return {
        "calls": [
            {
                "side": c.side,
                "source": workload(c.source),
                "destination": workload(c.destination),
                "from_outside": c.from_outside,
                "resolved": c.resolved,
            }
            for c in calls
        ],
        "unresolved": {"/".join(k): v for k, v in stats.entries_unresolved.values.items()},
    }


def resolve(entry: Any, proxy: Any) -> dict[str, Any]:
    stats = Stats()
    calls = AnalyzerChain([MxMeshAnalyzer()], ProxyAnalyzer(), stats).resolve(entry, proxy)
    return summary(calls, stats)


CASES = {
    "client_struct": lambda: (
        outbound(peers.filter_state("struct", "upstream", REVIEWS)),
        proxy_of(PRODUCTPAGE),
    ),
    "client_flatnode": lambda: (
        outbound(peers.filter_state("flatnode", "upstream", REVIEWS)),
        proxy_of(PRODUCTPAGE),
    ),
    "server_struct": lambda: (
        inbound(peers.filter_state("struct", "downstream", PRODUCTPAGE)),
        proxy_of(REVIEWS),
    ),
    "server_flatnode": lambda: (
        inbound(peers.filter_state("flatnode", "downstream", PRODUCTPAGE)),
        proxy_of(REVIEWS),
    ),
    "server_from_vm": lambda: (
        inbound(peers.filter_state("flatnode", "downstream", CHECKOUT_VM)),
        proxy_of(REVIEWS),
    ),
    "gateway_from_outside": lambda: (
        outbound(
            peers.filter_state("struct", "upstream", PRODUCTPAGE),
            cluster="outbound|9080||productpage.default.svc.cluster.local",
        ),
        proxy_of(GATEWAY, role="router", ip="10.1.0.2"),
    ),
    "sidecar_to_outside_the_mesh": lambda: (
        outbound(cluster="outbound|443||api.example.com"),
        proxy_of(PRODUCTPAGE),
    ),
    "both_generations": lambda: (
        outbound(
            {
                **peers.filter_state("struct", "upstream", REVIEWS),
                **peers.filter_state("flatnode", "upstream", REVIEWS),
            }
        ),
        proxy_of(PRODUCTPAGE),
    ),
    "header_only": lambda: (
        inbound(headers={"x-envoy-peer-metadata": peers.header(PRODUCTPAGE)}),
        proxy_of(REVIEWS),
    ),
    "corrupt_flatnode": lambda: (
        outbound({"wasm.upstream_peer": _bytes_any(peers.flatnode(REVIEWS)[:20])}),
        proxy_of(PRODUCTPAGE),
    ),
    "struct_without_names": lambda: (
        outbound({"upstream_peer": _struct_any({"type": "pod", "cluster": "Kubernetes"})}),
        proxy_of(PRODUCTPAGE),
    ),
    "inbound_without_peer": lambda: (inbound(), proxy_of(REVIEWS)),
}


def _bytes_any(data: bytes) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(wrappers_pb2.BytesValue(value=data))
    return value


def _struct_any(fields: dict[str, Any]) -> any_pb2.Any:
    s = struct_pb2.Struct()
    s.update(fields)
    value = any_pb2.Any()
    value.Pack(s)
    return value


class TestGolden:
    @pytest.mark.parametrize("case", sorted(CASES))
    def test_case(self, case: str) -> None:
        """Each format and situation resolves to exactly the golden calls and unresolved counts."""
        entry, proxy = CASES[case]()
        assert_golden(f"mx_mesh/{case}", resolve(entry, proxy))


class TestFormats:
    def test_generations_agree(self) -> None:
        """FlatNode, lower-case Struct, node-key Struct and the header name one workload alike."""
        decoder = PeerDecoder()
        from_flatnode = decoder.decode_any(
            "type.googleapis.com/google.protobuf.BytesValue",
            wrappers_pb2.BytesValue(value=peers.flatnode(REVIEWS)).SerializeToString(),
        )
        from_struct = decoder.decode_any(
            "type.googleapis.com/google.protobuf.Struct", peers.lower_struct(REVIEWS).SerializeToString()
        )
        from_upper = decoder.decode_any(
            "type.googleapis.com/google.protobuf.Struct", peers.upper_struct(REVIEWS).SerializeToString()
        )
        from_header = decoder.decode_header(peers.header(REVIEWS))
        assert from_flatnode == from_upper == from_header
        assert (
            from_struct.service_name,
            from_struct.version,
            from_struct.instance,
            from_struct.namespace,
        ) == ("reviews", "v2", REVIEWS.name, "default")

    def test_string_value(self) -> None:
        """A StringValue of Istio's ``k=v`` text or JSON is read too."""
        decoder = PeerDecoder()
        text = (
            "type=pod,workload=reviews-v2,name=reviews-v2-x,cluster=Kubernetes,"
            "namespace=default,service=reviews,revision=v2"
        )
        w = decoder.decode_any(
            "type.googleapis.com/google.protobuf.StringValue",
            wrappers_pb2.StringValue(value=text).SerializeToString(),
        )
        assert (w.service_name, w.version, w.instance) == ("reviews", "v2", "reviews-v2-x")
        js = '{"workload": "ratings-v1", "namespace": "default", "app": "ratings"}'
        w = decoder.decode_any(
            "type.googleapis.com/google.protobuf.StringValue",
            wrappers_pb2.StringValue(value=js).SerializeToString(),
        )
        assert w.service_name == "ratings"

    @pytest.mark.parametrize(
        ("labels", "expected"),
        [
            ({"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a"}, "c"),
            ({"app.kubernetes.io/name": "k", "app": "a"}, "k"),
            ({"app": "a"}, "a"),
            ({}, "wl"),
        ],
    )
    def test_naming_fallbacks(self, labels: dict[str, str], expected: str) -> None:
        """canonical-name, else app.kubernetes.io/name, else app, else the workload name."""
        peer = peers.Peer("p-1", "ns", "wl", labels)
        # The formats that carry every label: FlatNode and the node-key Struct (1.24+ carries a few).
        flat = PeerDecoder().decode_any(BYTES_VALUE, peers.wasm_any(peer).value)
        node_keys = PeerDecoder().decode_any(STRUCT, peers.upper_struct(peer).SerializeToString())
        assert flat.service_name == node_keys.service_name == expected

    def test_naming_labels_configured(self) -> None:
        """``service_name_labels`` names peers and the reporting proxy alike."""
        labels = ("team.example.com/service", "app")
        caller = dataclasses.replace(PRODUCTPAGE, labels={**PRODUCTPAGE.labels, labels[0]: "storefront"})
        proxy = identify(
            als.identifier("sidecar~10.1.0.4~x.default~default.svc.cluster.local", caller.node_metadata()),
            labels,
        )
        callee = dataclasses.replace(REVIEWS, labels={**REVIEWS.labels, CANONICAL: "reviews-canonical"})
        entry = outbound(peers.filter_state("struct", "upstream", callee))
        chain = AnalyzerChain([MxMeshAnalyzer(PeerDecoder(name_labels=labels))], ProxyAnalyzer(), Stats())
        (call,) = chain.resolve(entry, proxy)
        assert call.source is not None and call.destination is not None
        # The caller has the configured label; the peer falls back to `app`, not canonical-name.
        assert (call.source.service_name, call.destination.service_name) == ("storefront", "reviews")
        assert call.source.canonical_service == "productpage"

    @pytest.mark.parametrize("cut", [1, 4, 7, 12, 30, 60, 90])
    def test_truncated_flatnode_never_raises_anything_else(self, cut: int) -> None:
        """Truncated FlatBuffers are a PeerError with a reason, never another exception."""
        data = peers.flatnode(REVIEWS)[:cut]
        with pytest.raises(PeerError):
            PeerDecoder().decode_any(
                "type.googleapis.com/google.protobuf.BytesValue",
                wrappers_pb2.BytesValue(value=data).SerializeToString(),
            )

    def test_random_bytes_never_raise_anything_else(self) -> None:
        """Garbage in any wrapper decodes or fails with a PeerError; nothing else escapes."""
        import random

        rng = random.Random(7)
        decoder = PeerDecoder()
        for _ in range(3000):
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
            for type_url in (
                "type.googleapis.com/google.protobuf.BytesValue",
                "type.googleapis.com/google.protobuf.Struct",
                "type.googleapis.com/google.protobuf.StringValue",
                "type.googleapis.com/x",
            ):
                for payload in (data, wrappers_pb2.BytesValue(value=data).SerializeToString()):
                    with contextlib.suppress(PeerError):
                        decoder.decode_any(type_url, payload)

    def test_cache_decodes_each_peer_once(self) -> None:
        """The same raw bytes are decoded once; the cache is bounded, and each time it starts over
        is counted (als2otel_cache_rotations_total{cache="peers"})."""
        rotations = Stats().cache_rotations
        decoder = PeerDecoder(max_entries=2, rotations=rotations)
        raw = peers.lower_struct(REVIEWS).SerializeToString()
        first = decoder.decode_any("type.googleapis.com/google.protobuf.Struct", raw)
        assert decoder.decode_any("type.googleapis.com/google.protobuf.Struct", raw) is first
        for i in range(5):
            other = peers.lower_struct(peers.pod(f"svc{i}")).SerializeToString()
            decoder.decode_any("type.googleapis.com/google.protobuf.Struct", other)
        assert len(decoder._cache) <= 2
        assert rotations.get("peers") == 2  # six distinct peers through a table of two
