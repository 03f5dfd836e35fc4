"""The analyzer chain and the proxy-identity analyzer."""

from __future__ import annotations

from support import als, mesh

from als2otel.analysis import AnalyzerChain, ProxyAnalyzer, Resolution, direction_of
from als2otel.model import Call, Direction, Entry, Proxy, Workload
from als2otel.receiver import identify
from als2otel.receiver.normalize import normalize_http
from als2otel.stats import Stats

SIDECAR = identify(mesh.productpage())
GATEWAY = identify(
    als.identifier(
        "router~10.1.0.2~istio-ingressgateway-5d9c7b8f6-abcde.istio-system~istio-system.svc.cluster.local",
        {
            "NAME": "istio-ingressgateway-5d9c7b8f6-abcde",
            "NAMESPACE": "istio-system",
            "LABELS": {"app": "istio-ingressgateway", "istio": "ingressgateway"},
        },
    )
)


def entry(cluster: str, authority: str = "", upstream: tuple[str, int] | None = ("10.1.0.9", 9080)) -> Entry:
    return normalize_http(
        als.http_entry(
            downstream_remote=("10.1.0.4", 40000),
            downstream_local=("10.1.0.4", 15001),
            upstream_remote=upstream,
            upstream_local=("10.1.0.4", 50000),
            cluster=cluster,
            authority=authority,
        ),
        "v3",
    )


class TestIdentity:
    def test_sidecar_identity(self) -> None:
        """Role, IP and own workload come from the node id and Istio's node metadata."""
        assert SIDECAR.role == "sidecar"
        assert SIDECAR.ip == "10.1.0.4"
        assert SIDECAR.workload == Workload(
            service_name="productpage",
            namespace="default",
            version="v1",
            instance="productpage-v1-6b746f74dc-9stfq",
            workload_name="productpage-v1",
            pod_name="productpage-v1-6b746f74dc-9stfq",
            cluster="Kubernetes",
            canonical_service="productpage",
            canonical_revision="v1",
        )

    def test_node_id_only(self) -> None:
        """Without metadata, the workload comes from the pod name in the node id."""
        proxy = identify(
            als.identifier("sidecar~10.0.0.3~reviews-v2-7c4b8f9d5-x2x7p.bookinfo~bookinfo.svc.cluster.local")
        )
        assert proxy.workload is not None
        assert (proxy.workload.service_name, proxy.workload.namespace) == ("reviews-v2", "bookinfo")

    def test_plain_envoy(self) -> None:
        """A non-Istio Envoy is named by its --service-cluster and acts as a proxy with both sides."""
        ident = als.identifier("front-envoy-1")
        ident.node.cluster = "front-proxy"
        proxy = identify(ident)
        assert proxy.role == "unknown"
        assert proxy.workload == Workload(service_name="front-proxy")
        assert direction_of(entry("backend"), proxy) == "gateway"

    def test_roles(self) -> None:
        """router~, ingress~ and waypoint~ are gateways."""
        for prefix in ("router", "ingress", "waypoint"):
            assert identify(als.identifier(f"{prefix}~10.0.0.1~gw-1.ns~ns.svc.cluster.local")).is_gateway


class TestDirection:
    def test_directions(self) -> None:
        """inbound|/outbound| clusters give the direction; passthrough is outbound."""
        assert direction_of(entry("inbound|9080||"), SIDECAR) == "inbound"
        assert direction_of(entry("outbound|9080||reviews.default.svc.cluster.local"), SIDECAR) == "outbound"
        assert direction_of(entry("PassthroughCluster"), SIDECAR) == "outbound"
        assert direction_of(entry("InboundPassthroughCluster"), SIDECAR) == "inbound"
        assert direction_of(entry("my-own-cluster"), SIDECAR) == "unknown"
        assert direction_of(entry("anything"), GATEWAY) == "gateway"


class TestProxyAnalyzer:
    def resolve(self, e: Entry, proxy: Proxy = SIDECAR) -> tuple[list[Call], Stats]:
        stats = Stats()
        return AnalyzerChain([], ProxyAnalyzer(), stats).resolve(e, proxy), stats

    def test_outbound_is_a_client_call_to_the_cluster_service(self) -> None:
        """A sidecar's outbound entry becomes a client call named from the upstream cluster."""
        (call,), _ = self.resolve(entry("outbound|9080|v1|reviews.default.svc.cluster.local"))
        assert call.side == "client"
        assert call.source == SIDECAR.workload
        assert call.destination == Workload(service_name="reviews", namespace="default")

    def test_external_host(self) -> None:
        """A destination outside the mesh is named by its host, never left empty."""
        (call,), _ = self.resolve(entry("outbound|443||api.example.com"))
        assert call.destination == Workload(service_name="api.example.com", external=True)
        (call,), _ = self.resolve(entry("PassthroughCluster", authority="httpbin.org:80"))
        assert call.destination == Workload(service_name="httpbin.org", external=True)
        (call,), _ = self.resolve(entry("PassthroughCluster", upstream=("93.184.216.34", 443)))
        assert call.destination is not None and call.destination.service_name == "93.184.216.34"

    def test_gateway_gives_both_sides(self) -> None:
        """A gateway's entry is a server call from outside the mesh and a client call upstream."""
        server, client = self.resolve(entry("outbound|9080||productpage.default.svc.cluster.local"), GATEWAY)[
            0
        ]
        assert (server.side, server.from_outside, server.source) == ("server", True, None)
        assert server.destination is not None and server.destination.service_name == "istio-ingressgateway"
        assert client.side == "client" and client.destination is not None
        assert client.destination.service_name == "productpage"

    def test_unknown_direction_is_counted(self) -> None:
        """An entry whose direction cannot be told is unresolved, with its reason."""
        calls, stats = self.resolve(entry("my-own-cluster"))
        assert calls == []
        assert stats.entries_unresolved.get("unknown_direction") == 1


class TestChain:
    def test_first_resolved_answer_wins(self) -> None:
        """A later analyzer's resolved call replaces the fallback's provisional one, not the reverse."""
        better = Workload(service_name="reviews", namespace="default", instance="reviews-v1-x")

        class Resolving:
            name = "resolving"

            def analyze(self, e: Entry, proxy: Proxy, direction: Direction) -> Resolution:
                return [Call("client", e, proxy, proxy.workload, better)], ""

        class Silent:
            name = "silent"

            def analyze(self, e: Entry, proxy: Proxy, direction: Direction) -> Resolution:
                return [], "nothing_here"

        e = entry("outbound|9080||reviews.default.svc.cluster.local")
        chain = AnalyzerChain([Silent(), Resolving()], ProxyAnalyzer(), Stats())
        (call,) = chain.resolve(e, SIDECAR)
        assert call.destination == better and call.resolved

    def test_unresolved_reason_from_analyzers(self) -> None:
        """When nothing resolves, the first analyzer's reason is counted."""

        class Silent:
            name = "silent"

            def analyze(self, e: Entry, proxy: Proxy, direction: Direction) -> Resolution:
                return [], "no_peer_metadata"

        stats = Stats()
        proxy = Proxy(node_id="sidecar~1.2.3.4~x.y~y.svc.cluster.local", role="sidecar")
        assert AnalyzerChain([Silent()], ProxyAnalyzer(), stats).resolve(entry("inbound|80||"), proxy) == []
        assert stats.entries_unresolved.get("no_peer_metadata") == 1
