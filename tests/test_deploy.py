"""deploy/kubernetes.yaml stays consistent with what als2otel needs and accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from als2otel import config as cfg

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes.yaml"


def documents() -> list[dict]:  # type: ignore[type-arg]
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_rbac_is_get_list_watch_on_four_resources() -> None:
    """The ClusterRole grants get/list/watch on pods, services, nodes and endpointslices only."""
    (role,) = [d for d in documents() if d["kind"] == "ClusterRole"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "pods"), ("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")}
    assert all(sorted(rule["verbs"]) == ["get", "list", "watch"] for rule in role["rules"])


def test_configmap_config_is_valid() -> None:
    """The configuration shipped in the ConfigMap passes check-config."""
    (configmap,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    raw = yaml.safe_load(configmap["data"]["als2otel.yaml"])
    config = cfg.parse(raw, {})
    assert config.exporters.otlp.endpoint == "otel-collector.observability:4317"


def test_probes_and_ports_match_the_defaults() -> None:
    """Ports and probes are the bridge's own defaults."""
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = cfg.Config()
    assert ports == {
        "grpc-als": int(defaults.receiver.listen.rsplit(":", 1)[1]),
        "http": int(defaults.http.listen.rsplit(":", 1)[1]),
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
