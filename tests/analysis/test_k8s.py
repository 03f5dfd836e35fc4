"""k8s-mesh: the name rule, the pure index, and the watch cache against a real list/watch API server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support import als, kube_api
from support.kube_api import FakeKubeApi
from support.waiting import eventually

from als2otel.analysis import AnalyzerChain, ProxyAnalyzer
from als2otel.analysis.k8s import KubeIndex, NameRule, RuleError
from als2otel.analysis.k8s.naming import Meta
from als2otel.analysis.k8s.watch import KubeCache, NoKubernetesConfig, api_client
from als2otel.analysis.k8s_mesh import K8sMeshAnalyzer
from als2otel.model import Call
from als2otel.receiver import identify
from als2otel.receiver.normalize import normalize_http
from als2otel.stats import Stats

FILLERS = 1200  # more than two pages of 500
DEFAULT_RULE = NameRule("${service.metadata.name}")


def reviews_pod(version: str, ip: str, name: str = "") -> dict[str, Any]:
    return kube_api.pod(
        "default",
        name or f"reviews-{version}-545db77b95-x{version}",
        ip,
        {"app": "reviews", "version": version},
        replicaset=f"reviews-{version}-545db77b95",
    )


class TestNameRule:
    def test_templates(self) -> None:
        """Service and pod fields, fallbacks with commas, dotted label keys in parentheses."""
        pod = Meta("reviews-v2-x", "default", {"version": "v2", "app.kubernetes.io/name": "rev"})
        service = Meta("reviews", "default", {})
        assert (
            NameRule("${service.metadata.name}-${pod.metadata.labels.version}").render(pod, service)
            == "reviews-v2"
        )
        assert NameRule("${pod.metadata.labels.(app.kubernetes.io/name)}").render(pod, None) == "rev"
        assert (
            NameRule("${pod.metadata.labels.missing,pod.metadata.labels.version}").render(pod, None) == "v2"
        )
        assert (
            NameRule("${service.metadata.name}.${service.metadata.namespace}").render(pod, service)
            == "reviews.default"
        )
        assert NameRule("${service.metadata.name}").render(pod, None) == ""

    @pytest.mark.parametrize("text", ["plain", "${pod.spec.nodeName}", "${nothing}"])
    def test_bad_rules(self, text: str) -> None:
        """A rule without placeholders or with unknown paths is refused."""
        with pytest.raises(RuleError):
            NameRule(text)


class TestIndex:
    def index(self, rule: NameRule = DEFAULT_RULE, ignored: tuple[str, ...] = ()) -> KubeIndex:
        index = KubeIndex(rule, ignored)
        index.apply("Service", "ADDED", kube_api.service("default", "reviews", {"app": "reviews"}))
        index.apply("Pod", "ADDED", reviews_pod("v1", "10.1.0.11"))
        index.apply(
            "EndpointSlice",
            "ADDED",
            kube_api.endpoint_slice("default", "reviews", [("reviews-v1-545db77b95-xv1", "10.1.0.11", True)]),
        )
        return index

    def test_pod_behind_a_service(self) -> None:
        """An IP resolves to its pod, named by the Service selecting it, with the pod's identity."""
        w = self.index().workload_for_ip("10.1.0.11")
        assert w is not None
        assert (w.service_name, w.namespace, w.version, w.pod_name, w.workload_name) == (
            "reviews",
            "default",
            "v1",
            "reviews-v1-545db77b95-xv1",
            "reviews-v1",
        )

    def test_pod_without_a_service_is_named_like_a_peer(self) -> None:
        """No Service: canonical-name, app.kubernetes.io/name, app, then the workload."""
        index = self.index()
        index.apply(
            "Pod", "ADDED", kube_api.pod("default", "batch-7d9f-abcde", "10.1.0.50", {"app": "batch"})
        )
        index.apply(
            "Pod",
            "ADDED",
            kube_api.pod(
                "default", "lonely-5c7d8f9b6d-qwert", "10.1.0.51", {}, replicaset="lonely-5c7d8f9b6d"
            ),
        )
        assert index.workload_for_ip("10.1.0.50").service_name == "batch"  # type: ignore[union-attr]
        assert index.workload_for_ip("10.1.0.51").service_name == "lonely"  # type: ignore[union-attr]

    def test_unknown_node_and_host_network_ips(self) -> None:
        """Unknown IPs, node IPs and hostNetwork pods resolve to nothing."""
        index = self.index()
        index.apply("Node", "ADDED", kube_api.node("node-1", "10.0.0.5"))
        index.apply(
            "Pod",
            "ADDED",
            kube_api.pod("kube-system", "kube-proxy-x", "10.0.0.5", {"app": "kp"}, host_network=True),
        )
        assert index.workload_for_ip("10.9.9.9") is None
        assert index.workload_for_ip("10.0.0.5") is None

    def test_deleted_pod_and_reused_ip(self) -> None:
        """A deleted pod's IP stops resolving; a new pod with that IP resolves at once, in any order."""
        index = self.index()
        index.apply(
            "Pod", "ADDED", kube_api.pod("default", "ratings-v1-abc12-zzzzz", "10.1.0.11", {"app": "ratings"})
        )
        assert index.workload_for_ip("10.1.0.11").service_name == "ratings"  # type: ignore[union-attr]
        index.apply("Pod", "DELETED", reviews_pod("v1", "10.1.0.11"))  # the old pod's late delete
        assert index.workload_for_ip("10.1.0.11").service_name == "ratings"  # type: ignore[union-attr]
        index.apply("Pod", "DELETED", kube_api.pod("default", "ratings-v1-abc12-zzzzz", "10.1.0.11", {}))
        assert index.workload_for_ip("10.1.0.11") is None

    def test_an_answer_given_changes_with_every_kind_of_event(self) -> None:
        """Answers once given (which the index remembers per IP) follow each event: a Node claiming
        the IP, the Node gone, the pod relabelled, the Service renamed, the pod's IP taken by a new
        pod, the pod finished."""
        index = self.index()

        def name() -> tuple[str, str] | None:
            workload = index.workload_for_ip("10.1.0.11")
            return (workload.service_name, workload.version) if workload is not None else None

        assert name() == name() == ("reviews", "v1")
        index.apply("Node", "ADDED", kube_api.node("node-1", "10.1.0.11"))
        assert name() is None
        index.apply("Node", "DELETED", kube_api.node("node-1", "10.1.0.11"))
        assert name() == ("reviews", "v1")
        relabelled = reviews_pod("v1", "10.1.0.11")
        relabelled["metadata"]["labels"]["version"] = "v1b"
        index.apply("Pod", "MODIFIED", relabelled)
        assert name() == ("reviews", "v1b")
        index.apply("Service", "ADDED", kube_api.service("default", "aaa-reviews", {"app": "reviews"}))
        assert name() == ("reviews", "v1b")  # no slice lists the pod under it yet
        index.apply(
            "EndpointSlice",
            "ADDED",
            kube_api.endpoint_slice(
                "default", "aaa-reviews", [("reviews-v1-545db77b95-xv1", "10.1.0.11", True)]
            ),
        )
        assert name() == ("aaa-reviews", "v1b")  # several Services: the first by name
        index.apply(
            "Pod", "ADDED", kube_api.pod("default", "ratings-v1-abc12-zzzzz", "10.1.0.11", {"app": "ratings"})
        )
        assert name() == ("ratings", "")
        index.apply(
            "Pod",
            "MODIFIED",
            kube_api.pod(
                "default", "ratings-v1-abc12-zzzzz", "10.1.0.11", {"app": "ratings"}, phase="Failed"
            ),
        )
        assert name() is None

    def test_finished_pod_frees_its_ip(self) -> None:
        """A Succeeded or Failed pod no longer holds its IP."""
        index = self.index()
        index.apply(
            "Pod",
            "MODIFIED",
            kube_api.pod("default", "reviews-v1-545db77b95-xv1", "10.1.0.11", {}, phase="Succeeded"),
        )
        assert index.workload_for_ip("10.1.0.11") is None

    def test_not_ready_endpoints_and_several_services(self) -> None:
        """Not-ready endpoints still name the pod; with several Services the first by name wins."""
        index = self.index()
        index.apply("Service", "ADDED", kube_api.service("default", "alpha", {"app": "reviews"}))
        index.apply(
            "EndpointSlice",
            "ADDED",
            kube_api.endpoint_slice("default", "alpha", [("reviews-v1-545db77b95-xv1", "10.1.0.11", False)]),
        )
        assert index.services_of("default", "reviews-v1-545db77b95-xv1") == ["alpha", "reviews"]
        assert index.workload_for_ip("10.1.0.11").service_name == "alpha"  # type: ignore[union-attr]

    def test_ipv6_and_rule(self) -> None:
        """Every IP of status.podIPs resolves (IPv4 and IPv6), named by the configured rule."""
        index = self.index(NameRule("${service.metadata.name}-${pod.metadata.labels.version}"))
        index.apply(
            "Pod",
            "MODIFIED",
            kube_api.pod(
                "default",
                "reviews-v1-545db77b95-xv1",
                "",
                {"app": "reviews", "version": "v1"},
                replicaset="reviews-v1-545db77b95",
                ips=["10.1.0.11", "fd00::11"],
            ),
        )
        assert index.workload_for_ip("fd00::11").service_name == "reviews-v1"  # type: ignore[union-attr]

    def test_ignored_namespaces(self) -> None:
        """Pods in k8s.ignored_namespaces resolve to nothing."""
        assert self.index(ignored=("default",)).workload_for_ip("10.1.0.11") is None


class TestAnalyzer:
    """Roles as SkyWalking's k8s-mesh defines them, on an index of known pods."""

    PRODUCTPAGE = "10.1.0.10"
    REVIEWS = "10.1.0.11"

    @pytest.fixture
    def chain(self) -> AnalyzerChain:
        index = KubeIndex(DEFAULT_RULE)
        index.apply("Node", "ADDED", kube_api.node("node-1", "10.0.0.5"))
        index.apply("Service", "ADDED", kube_api.service("default", "reviews", {"app": "reviews"}))
        index.apply("Pod", "ADDED", reviews_pod("v1", self.REVIEWS))
        index.apply(
            "Pod",
            "ADDED",
            kube_api.pod(
                "default", "productpage-v1-6b746f74dc-aaaaa", self.PRODUCTPAGE, {"app": "productpage"}
            ),
        )
        index.apply(
            "Pod",
            "ADDED",
            kube_api.pod(
                "default",
                "waypoint-5b8c7d9f6-wp001",
                "fd00::20",
                {"gateway.networking.k8s.io/gateway-name": "waypoint"},
                ips=["fd00::20"],
            ),
        )
        return AnalyzerChain([K8sMeshAnalyzer(index)], ProxyAnalyzer(), Stats())

    @staticmethod
    def proxy(role: str, ip: str, pod: str, metadata: dict[str, Any] | None = None) -> Any:
        return identify(als.identifier(f"{role}~{ip}~{pod}.default~default.svc.cluster.local", metadata))

    @staticmethod
    def sides(calls: list[Call]) -> list[tuple[str, str, str, bool]]:
        def name(w: Any) -> str:
            return w.service_name if w is not None else "-"

        return [(c.side, name(c.source), name(c.destination), c.resolved) for c in calls]

    def test_inbound_caller_from_the_direct_address(self, chain: AnalyzerChain) -> None:
        """X-Forwarded-For rewrote the remote address; the direct one names the caller."""
        entry = als.http_entry(
            downstream_remote=("198.51.100.7", 0),
            downstream_direct_remote=(self.PRODUCTPAGE, 40000),
            downstream_local=(self.REVIEWS, 9080),
            upstream_remote=(self.REVIEWS, 9080),
            cluster="inbound|9080||",
        )
        calls = chain.resolve(
            normalize_http(entry, "v3"), self.proxy("sidecar", self.REVIEWS, "reviews-v1-x")
        )
        assert self.sides(calls) == [("server", "productpage", "reviews", True)]

    @pytest.mark.parametrize(
        ("cluster", "upstream", "expected"),
        [
            ("outbound|9080||reviews.default.svc.cluster.local", "10.1.0.11", "reviews"),
            ("outbound|443||api.example.com", "93.184.216.34", "api.example.com"),
            ("PassthroughCluster", "93.184.216.34", "93.184.216.34"),
        ],
    )
    def test_outbound_destinations(
        self, chain: AnalyzerChain, cluster: str, upstream: str, expected: str
    ) -> None:
        """A pod by its IP; an address no pod holds named from the cluster's host, else the address."""
        entry = als.http_entry(
            downstream_remote=(self.PRODUCTPAGE, 41000),
            downstream_local=("10.96.0.9", 9080),
            upstream_remote=(upstream, 9080),
            upstream_local=(self.PRODUCTPAGE, 50000),
            cluster=cluster,
        )
        proxy = self.proxy("sidecar", self.PRODUCTPAGE, "productpage-v1-6b746f74dc-aaaaa")
        calls = chain.resolve(normalize_http(entry, "v3"), proxy)
        assert self.sides(calls) == [("client", "productpage", expected, True)]

    def test_waypoint_finds_its_pod_among_instance_ips(self, chain: AnalyzerChain) -> None:
        """A waypoint whose node id IP is not the one the API server lists: INSTANCE_IPS has it."""
        proxy = self.proxy(
            "waypoint", "10.1.0.20", "waypoint-5b8c7d9f6-wp001", {"INSTANCE_IPS": "10.1.0.20,fd00::20"}
        )
        entry = als.http_entry(
            downstream_remote=(self.PRODUCTPAGE, 42000),
            downstream_local=("10.1.0.20", 15008),
            upstream_remote=(self.REVIEWS, 9080),
            upstream_local=("10.1.0.20", 51000),
            cluster="inbound-vip|9080|http|reviews.default.svc.cluster.local",
        )
        calls = chain.resolve(normalize_http(entry, "v3"), proxy)
        assert self.sides(calls) == [
            ("server", "productpage", "waypoint", True),
            ("client", "waypoint", "reviews", True),
        ]

    def test_unknown_caller_is_outside_and_unknown_proxy_unresolved(self, chain: AnalyzerChain) -> None:
        entry = als.http_entry(
            downstream_remote=("203.0.113.9", 42000),
            downstream_local=(self.REVIEWS, 9080),
            upstream_remote=(self.REVIEWS, 9080),
            cluster="inbound|9080||",
        )
        calls = chain.resolve(
            normalize_http(entry, "v3"), self.proxy("sidecar", self.REVIEWS, "reviews-v1-x")
        )
        assert [(c.source, c.from_outside) for c in calls] == [(None, True)]
        stats = Stats()
        stranger = self.proxy("sidecar", "10.1.0.99", "gone-1")
        calls = AnalyzerChain([K8sMeshAnalyzer(KubeIndex(DEFAULT_RULE))], ProxyAnalyzer(), stats).resolve(
            normalize_http(entry, "v3"), stranger
        )
        assert [c.resolved for c in calls] == [False]
        assert stats.entries_unresolved.values == {("unknown_pod_ip",): 1}


class TestConfig:
    def test_no_configuration(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a service account or kubeconfig there is a clear error, not a crash."""
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
        with pytest.raises(NoKubernetesConfig):
            api_client(None)


@pytest.fixture
def kube() -> Any:
    api = FakeKubeApi().start()
    yield api
    api.stop()


class TestWatchCache:
    async def start_cache(self, kube: FakeKubeApi, tmp_path: Path, token: str | None = None) -> KubeCache:
        cache = KubeCache(api_client(str(kube.kubeconfig(tmp_path, token))), KubeIndex(DEFAULT_RULE), Stats())
        cache.start()
        return cache

    async def test_list_watch_and_live_changes(self, kube: FakeKubeApi, tmp_path: Path) -> None:
        """Paginated first list, then pod creation, IP reuse, selector change and not-ready endpoints live."""
        kube.put(kube_api.node("node-1", "10.0.0.5"))
        kube.put(kube_api.service("default", "reviews", {"app": "reviews"}))
        for i in range(FILLERS):
            kube.put(
                kube_api.pod("load", f"filler-{i}", f"10.200.{i // 250}.{i % 250 + 1}", {"app": "filler"})
            )
        kube.put(reviews_pod("v1", "10.1.0.11"))
        kube.put(
            kube_api.endpoint_slice("default", "reviews", [("reviews-v1-545db77b95-xv1", "10.1.0.11", True)])
        )
        cache = await self.start_cache(kube, tmp_path)
        try:
            assert await eventually(cache.synced.is_set)
            assert kube.requests[("Pod", "list")] == 3
            index = cache.index
            assert index.workload_for_ip("10.1.0.11").service_name == "reviews"  # type: ignore[union-attr]

            kube.put(kube_api.pod("default", "details-v1-1a2b3c4d5-aaaaa", "10.1.0.20", {"app": "details"}))
            assert await eventually(lambda: index.workload_for_ip("10.1.0.20") is not None)

            kube.delete("Pod", "default", "details-v1-1a2b3c4d5-aaaaa")
            kube.put(kube_api.pod("default", "ratings-v1-9z8y7x6w5-bbbbb", "10.1.0.20", {"app": "ratings"}))
            assert await eventually(
                lambda: getattr(index.workload_for_ip("10.1.0.20"), "service_name", "") == "ratings"
            )

            kube.put(kube_api.service("default", "reviews-v1", {"app": "reviews", "version": "v1"}))
            kube.put(
                kube_api.endpoint_slice(
                    "default",
                    "reviews-v1",
                    [("reviews-v1-545db77b95-xv1", "10.1.0.11", False)],
                    suffix="zzzzz",
                )
            )
            kube.delete("EndpointSlice", "default", "reviews-abcde")
            assert await eventually(lambda: index.workload_for_ip("10.1.0.11").service_name == "reviews-v1")  # type: ignore[union-attr]
            assert cache.events_applied >= 6
        finally:
            cache.stop()

    async def test_dropped_watch_resumes_and_410_relists(self, kube: FakeKubeApi, tmp_path: Path) -> None:
        """A dropped connection resumes from the last version; 410 Gone lists again; no event is lost."""
        kube.put(reviews_pod("v1", "10.1.0.11"))
        cache = await self.start_cache(kube, tmp_path)
        try:
            assert await eventually(cache.synced.is_set)
            lists = kube.requests[("Pod", "list")]
            kube.drop_watches()
            await asyncio.sleep(0.3)
            kube.put(reviews_pod("v2", "10.1.0.12"))
            assert await eventually(lambda: cache.index.workload_for_ip("10.1.0.12") is not None, timeout=40)
            assert kube.requests[("Pod", "list")] == lists  # resumed, not relisted

            kube.compact()
            kube.drop_watches()
            await asyncio.sleep(0.3)
            kube.put(reviews_pod("v3", "10.1.0.13"))
            assert await eventually(lambda: cache.index.workload_for_ip("10.1.0.13") is not None, timeout=40)
            assert kube.requests[("Pod", "list")] > lists  # 410: relisted
        finally:
            cache.stop()

    async def test_wrong_token_is_retried_not_fatal(self, kube: FakeKubeApi, tmp_path: Path) -> None:
        """401 from the API server is counted and retried with backoff; the cache never syncs on it."""
        cache = await self.start_cache(kube, tmp_path, token="wrong")
        try:
            assert await eventually(lambda: sum(cache._stats.k8s_errors.values.values()) >= 4)
            assert not cache.synced.is_set()
        finally:
            cache.stop()


class TestBridge:
    async def test_no_kubernetes_configuration_warns_once_and_runs(
        self,
        make_bridge: Any,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """k8s-mesh listed without any Kubernetes configuration: one clear warning, the rest runs."""
        from conftest import bridge_config

        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
        bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh", "k8s-mesh"]))
        assert bridge.kube is None
        assert bridge.chain.names == ["mx-mesh", "proxy"]
        warnings = [r for r in caplog.records if "no Kubernetes configuration" in r.getMessage()]
        assert len(warnings) == 1

    async def test_readiness_waits_for_the_first_list(
        self, make_bridge: Any, kube: FakeKubeApi, tmp_path: Path
    ) -> None:
        """/readyz is 503 until the Kubernetes caches have listed everything, then 200."""
        import urllib.error
        import urllib.request

        from conftest import bridge_config

        def status(port: int) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        bad = bridge_config(
            None, analyzers=["k8s-mesh"], k8s={"kubeconfig": str(kube.kubeconfig(tmp_path, "nope"))}
        )
        bridge = await make_bridge(bad)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(status, bridge.http.port) == 503
        await bridge.stop()
        good_dir = tmp_path / "good"
        good_dir.mkdir()
        good = bridge_config(None, analyzers=["k8s-mesh"], k8s={"kubeconfig": str(kube.kubeconfig(good_dir))})
        bridge = await make_bridge(good)
        assert await eventually(bridge.kube.synced.is_set)
        assert await asyncio.to_thread(status, bridge.http.port) == 200
