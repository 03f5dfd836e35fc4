"""deploy/: the kustomize base and overlays render with a real kubectl, every object passes the
Kubernetes schemas, and they stay consistent with what als2otel needs and accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from als2otel import config as cfg
from als2otel.analysis.k8s import watch

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBECTL = Path(sys.executable).with_name("kubectl")
TARGETS = ["", "overlays/hpa", "overlays/mtls-cert-manager", "overlays/persistent-queue"]
KUBERNETES = "1.30.0"
"""The oldest Kubernetes the manifests are checked against (policy/v1, autoscaling/v2, appProtocol)."""
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
}


def render(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/<target>``: what ``kubectl apply -k`` would send."""
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / target)], check=True, capture_output=True, text=True
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_passes_the_kubernetes_schemas(target: str) -> None:
    """Each rendered object validates strictly; custom resources are only the operators' own kinds."""
    objects = render(target)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]] and target, obj["kind"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_base_has_what_a_production_install_needs() -> None:
    """Namespace, least-privilege RBAC, config, a hardened Deployment, Service and PDB."""
    objects = render("")
    assert sorted(o["kind"] for o in objects) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ]
    )
    assert {
        o["metadata"].get("namespace", "als2otel")
        for o in objects
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")
    } == {"als2otel"}


def test_rbac_is_exactly_what_the_cache_watches() -> None:
    """get/list/watch on the resources the Kubernetes cache lists and watches, nothing more."""
    role = one(render(""), "ClusterRole")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == set(watch.WATCHED.values())
    assert all(sorted(rule["verbs"]) == ["get", "list", "watch"] for rule in role["rules"])
    assert set(watch._resources(watch.client.ApiClient())) == set(watch.WATCHED)


@pytest.mark.parametrize("target", ["", "overlays/mtls-cert-manager", "overlays/persistent-queue"])
def test_configmap_passes_check_config(target: str) -> None:
    """The configuration the ConfigMap carries is valid, with the pod's name as the instance id."""
    raw = yaml.safe_load(one(render(target), "ConfigMap")["data"]["als2otel.yaml"])
    config = cfg.parse(raw, {"POD_NAME": "als2otel-7d9c8b6f5-x2x7p"}) if not raw.get("receiver") else None
    if config is None:  # mutual TLS: the files are mounted in the pod; everything else must parse
        raw["receiver"].pop("tls")
        config = cfg.parse(raw, {"POD_NAME": "als2otel-7d9c8b6f5-x2x7p"})
    assert config.metrics.instance_id == "als2otel-7d9c8b6f5-x2x7p"


def test_deployment_is_hardened_and_matches_the_defaults() -> None:
    """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, probes on the bridge's paths,
    resources set, the pod name handed in, and a grace period longer than shutdown_timeout."""
    objects = render("")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = cfg.parse(yaml.safe_load(one(objects, "ConfigMap")["data"]["als2otel.yaml"]), {"POD_NAME": "x"})
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_timeout
    defaults = cfg.Config()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc-als": int(defaults.receiver.listen.rsplit(":", 1)[1]),
        "http": int(defaults.http.listen.rsplit(":", 1)[1]),
    }
    service = one(objects, "Service")
    assert {p["port"]: p["appProtocol"] for p in service["spec"]["ports"]} == {11800: "grpc", 9464: "http"}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9464"


def test_mtls_overlay_mounts_what_its_config_names() -> None:
    """The overlay's receiver.tls files are in the secret cert-manager keeps, mounted where it says."""
    objects = render("overlays/mtls-cert-manager")
    tls = yaml.safe_load(one(objects, "ConfigMap")["data"]["als2otel.yaml"])["receiver"]["tls"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    secret = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"]
    certificate = next(o for o in objects if o["kind"] == "Certificate" and o["spec"]["secretName"] == secret)
    assert certificate["spec"]["usages"] == ["server auth"]
    for key, file in (("cert_file", "tls.crt"), ("key_file", "tls.key"), ("client_ca_file", "ca.crt")):
        assert tls[key] == f"{mount['mountPath']}/{file}"


def test_queue_overlay_mounts_its_storage_and_keeps_the_root_read_only() -> None:
    """The overlay's sending_queue.storage lies on a writable volume mounted for it, the base keeps
    memory, and the root file system stays read-only."""
    objects = render("overlays/persistent-queue")
    raw = yaml.safe_load(one(objects, "ConfigMap")["data"]["als2otel.yaml"])
    storage = cfg.parse(raw, {"POD_NAME": "x"}).exporters.otlp.sending_queue.storage
    assert storage is not None
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "queue")
    assert storage.startswith(mount["mountPath"] + "/") and not mount.get("readOnly")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    base = yaml.safe_load(one(render(""), "ConfigMap")["data"]["als2otel.yaml"])
    assert cfg.parse(base, {"POD_NAME": "x"}).exporters.otlp.sending_queue.storage is None


ISTIO = DEPLOY / "istio"


def istio_documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def test_istio_providers_are_what_the_test_envoys_are_configured_from() -> None:
    """deploy/istio/telemetry.yaml's providers hold the same fields and values the demo's and the
    end-to-end tests' Envoys are configured from, pointed at the Service's ALS port."""
    from als2otel.demo import envoy

    operator, telemetry = istio_documents("telemetry.yaml")
    providers = {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    http, tcp = providers["als2otel-http"]["envoyHttpAls"], providers["als2otel-tcp"]["envoyTcpAls"]
    for provider in (http, tcp):
        assert (provider.pop("service"), provider.pop("port")) == (
            "als2otel.als2otel.svc.cluster.local",
            11800,
        )
    assert http == envoy.HTTP_ALS_PROVIDER
    assert tcp == envoy.TCP_ALS_PROVIDER
    assert telemetry["kind"] == "Telemetry" and telemetry["metadata"]["namespace"] == "istio-system"
    assert [p["name"] for p in telemetry["spec"]["accessLogging"][0]["providers"]] == list(providers)
    config = envoy.render_config(
        envoy.ProxySpec("sidecar", "127.0.0.1", "p", "default", {}, "w", outbound_port=1)
    )
    logger = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "access_log"
    ][0]
    common = logger["typed_config"]["common_config"]
    assert common["log_name"] == http["logName"]
    assert common["filter_state_objects_to_log"] == http["filterStateObjectsToLog"]
    assert (
        logger["typed_config"]["additional_request_headers_to_log"][
            : len(http["additionalRequestHeadersToLog"])
        ]
        == http["additionalRequestHeadersToLog"]
    )


def test_istio_meshconfig_points_at_the_service_with_mutual_tls() -> None:
    """The meshConfig route turns ALS on at the Service's port, with the MUTUAL tlsSettings the
    mTLS test's Envoys use (client certificate, key and the CA that signed the bridge)."""
    (operator,) = istio_documents("meshconfig.yaml")
    mesh = operator["spec"]["meshConfig"]
    assert mesh["enableEnvoyAccessLogService"] is True
    als = mesh["defaultConfig"]["envoyAccessLogService"]
    assert als["address"] == "als2otel.als2otel.svc.cluster.local:11800"
    assert als["tlsSettings"]["mode"] == "MUTUAL"
    assert {"clientCertificate", "privateKey", "caCertificates", "sni"} <= set(als["tlsSettings"])
    from als2otel.demo import envoy

    tls = envoy._client_tls("c", "k", "ca")["typed_config"]["common_tls_context"]
    assert tls["tls_certificates"] == [
        {"certificate_chain": {"filename": "c"}, "private_key": {"filename": "k"}}
    ]
    assert tls["validation_context"] == {"trusted_ca": {"filename": "ca"}}


def test_istio_envoyfilter_loggers_match_the_providers() -> None:
    """deploy/istio/als-buffers.yaml adds the loggers telemetry.yaml's providers make (same log
    names, filter state, headers), sending to Istio's cluster for the Service with 256 KiB
    buffers; the real-Envoy test runs them as they are."""
    from als2otel.demo import envoy

    (envoyfilter,) = istio_documents("als-buffers.yaml")
    assert envoyfilter["kind"] == "EnvoyFilter" and envoyfilter["metadata"]["namespace"] == "istio-system"
    loggers = {}
    for patch in envoyfilter["spec"]["configPatches"]:
        assert patch["applyTo"] == "NETWORK_FILTER" and patch["patch"]["operation"] == "MERGE"
        (logger,) = patch["patch"]["value"]["typed_config"]["access_log"]
        loggers[patch["match"]["listener"]["filterChain"]["filter"]["name"]] = logger["typed_config"]
    http = loggers["envoy.filters.network.http_connection_manager"]
    tcp = loggers["envoy.filters.network.tcp_proxy"]
    for config, provider in ((http, envoy.HTTP_ALS_PROVIDER), (tcp, envoy.TCP_ALS_PROVIDER)):
        common = config["common_config"]
        assert common["log_name"] == provider["logName"]
        assert common["filter_state_objects_to_log"] == provider["filterStateObjectsToLog"]
        assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == (
            "outbound|11800||als2otel.als2otel.svc.cluster.local"
        )
        assert (common["buffer_size_bytes"], common["buffer_flush_interval"]) == (262144, "1s")
    assert (
        http["additional_request_headers_to_log"] == envoy.HTTP_ALS_PROVIDER["additionalRequestHeadersToLog"]
    )
    assert (
        http["additional_response_headers_to_log"]
        == envoy.HTTP_ALS_PROVIDER["additionalResponseHeadersToLog"]
    )
    assert (
        http["additional_response_trailers_to_log"]
        == envoy.HTTP_ALS_PROVIDER["additionalResponseTrailersToLog"]
    )


def test_istio_otel_provider_asks_for_every_attribute_als2otel_reads() -> None:
    """deploy/istio/otel-als.yaml's envoyOtelAls labels are the attribute set the code reads, with
    the same Envoy command operators."""
    from als2otel.receiver.otlp_logs import ATTRIBUTES

    operator, telemetry = istio_documents("otel-als.yaml")
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    labels = provider["envoyOtelAls"]["logFormat"]["labels"]
    assert labels == {k: v for k, v in ATTRIBUTES.items() if k != "envoy.log_type"}
    assert provider["envoyOtelAls"]["port"] == 11800
    assert telemetry["spec"]["accessLogging"][0]["providers"] == [{"name": provider["name"]}]


def test_envoy_otel_access_log_snippet_matches_the_code() -> None:
    """deploy/envoy/otel-access-log.yaml carries the attribute set the code reads and the demo's
    Envoys run with (the real-Envoy test configures its logger the same way)."""
    from als2otel.demo import envoy
    from als2otel.receiver.otlp_logs import ATTRIBUTES

    (logger,) = yaml.safe_load((DEPLOY / "envoy" / "otel-access-log.yaml").read_text())["access_log"]
    config = logger["typed_config"]
    assert {v["key"]: v["value"]["string_value"] for v in config["attributes"]["values"]} == ATTRIBUTES
    demo = envoy._otel_access_log(envoy.ProxySpec("sidecar", "127.0.0.1", "p", "default", {}, "w"))[0]
    assert demo["typed_config"]["attributes"] == config["attributes"]
    assert demo["typed_config"]["@type"] == config["@type"]
    assert demo["typed_config"]["disable_builtin_labels"] is config["disable_builtin_labels"] is True
