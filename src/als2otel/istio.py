"""Facts of Istio's formats: node ids, node metadata and cluster names.

Shared by the receiver (the reporting proxy's own identity, parsed once per
stream) and the analyzers (the peers Istio's proxies exchange).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, get_args

from .model import Entry, Role, Workload
from .net import split_authority

CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"
APP_NAME = "app.kubernetes.io/name"
APP_VERSION = "app.kubernetes.io/version"

_ROLES: dict[str, Role] = {role: role for role in get_args(Role) if role != "unknown"}


def parse_node_id(node_id: str) -> tuple[Role, str, str, str]:
    """Role, IP, pod (or VM) name and namespace from ``sidecar~IP~pod.ns~ns.svc.cluster.local``."""
    parts = node_id.split("~")
    role = _ROLES.get(parts[0], "unknown")
    if len(parts) < 3:
        return role, "", "", ""
    pod, _, namespace = parts[2].rpartition(".")
    if not pod:
        pod, namespace = namespace, ""
    return role, parts[1], pod, namespace


# reviews-v1-6d8f7c9b4-x2x7p -> reviews-v1 (Deployment); web-0 -> web (StatefulSet)
_DEPLOYMENT_POD = re.compile(r"^(.+)-[a-z0-9]{5,10}-[a-z0-9]{5}$")
_STATEFUL_POD = re.compile(r"^(.+)-\d+$")


def workload_name_from_pod(pod: str) -> str:
    """The controller's name as Istio derives it when nothing better is known."""
    for pattern in (_DEPLOYMENT_POD, _STATEFUL_POD):
        match = pattern.match(pod)
        if match:
            return match.group(1)
    return pod


NAME_LABELS: tuple[str, ...] = (CANONICAL_NAME, APP_NAME, "app")
"""The labels that name a workload's service, first found wins: ``service_name_labels``'s default."""


def service_name_from_labels(
    labels: Mapping[str, str], workload_name: str, name_labels: tuple[str, ...] = NAME_LABELS
) -> str:
    """The first of ``name_labels`` the workload has, else the workload's name."""
    for key in name_labels:
        value = labels.get(key)
        if value:
            return value
    return workload_name


def version_from_labels(labels: Mapping[str, str]) -> str:
    return labels.get("version") or labels.get(APP_VERSION) or labels.get(CANONICAL_REVISION) or ""


def _owner_workload(owner: str) -> tuple[str, str]:
    """(kind, name) from ``kubernetes://apis/apps/v1/namespaces/ns/deployments/name``."""
    parts = owner.rstrip("/").split("/")
    if len(parts) >= 2 and owner.startswith("kubernetes://"):
        return parts[-2], parts[-1]
    return "", ""


def workload_from_node_metadata(
    meta: Mapping[str, Any],
    *,
    pod_name: str = "",
    namespace: str = "",
    name_labels: tuple[str, ...] = NAME_LABELS,
) -> Workload | None:
    """A workload from Istio node metadata (upper-case keys: NAME, NAMESPACE, LABELS, ...).

    ``pod_name`` and ``namespace`` (from the node id) fill what the metadata lacks.
    Returns None when neither names anything.
    """
    labels_raw = meta.get("LABELS")
    labels: dict[str, str] = (
        {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, Mapping) else {}
    )
    name = string_or_empty(meta.get("NAME")) or pod_name
    namespace = string_or_empty(meta.get("NAMESPACE")) or namespace
    owner_kind, owner_name = _owner_workload(string_or_empty(meta.get("OWNER")))
    workload_name = string_or_empty(meta.get("WORKLOAD_NAME")) or owner_name or workload_name_from_pod(name)
    service = service_name_from_labels(labels, workload_name, name_labels)
    if not service:
        return None
    on_vm = owner_kind in ("workloadentries", "workloadgroups")
    return Workload(
        service_name=service,
        namespace=namespace,
        version=version_from_labels(labels),
        instance=name,
        workload_name=workload_name,
        pod_name="" if on_vm else name,
        cluster=string_or_empty(meta.get("CLUSTER_ID")),
        canonical_service=labels.get(CANONICAL_NAME, "") or service,
        canonical_revision=labels.get(CANONICAL_REVISION, "") or version_from_labels(labels),
        deployment=owner_name if owner_kind == "deployments" else "",
    )


def string_or_empty(value: Any) -> str:
    """A node metadata value that should be a string: itself, or "" for anything else."""
    return value if isinstance(value, str) else ""


# outbound|9080|v1|reviews.default.svc.cluster.local ; inbound|9080|| ; outbound_.9080_._.host
_SVC_HOST = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\..+)?$")


@lru_cache(maxsize=8192)
def cluster_direction(cluster: str) -> str:
    """``inbound``, ``outbound``, ``passthrough``, ``blackhole`` or ``""`` from an Istio cluster name."""
    if cluster.startswith(("inbound|", "InboundPassthroughCluster")):
        return "inbound"
    if cluster.startswith(("outbound|", "outbound_.")):
        return "outbound"
    if cluster == "PassthroughCluster":
        return "passthrough"
    if cluster == "BlackHoleCluster":
        return "blackhole"
    return ""


@lru_cache(maxsize=8192)
def cluster_host(cluster: str) -> str:
    """The destination host of ``outbound|9080||reviews.default.svc.cluster.local``; '' if none."""
    if cluster.startswith("outbound|"):
        return cluster.split("|", 3)[-1] if cluster.count("|") >= 3 else ""
    if cluster.startswith("outbound_."):  # outbound_.9080_._.reviews.default.svc.cluster.local
        parts = cluster.split("_.", 3)
        return parts[3] if len(parts) == 4 else ""
    return ""


@lru_cache(maxsize=8192)
def host_workload(host: str) -> Workload | None:
    """What a destination host names: a Kubernetes Service, or a host outside the mesh.

    ``reviews.default.svc.cluster.local`` -> service ``reviews`` in ``default``;
    ``api.example.com:443`` -> external ``api.example.com``; '' -> None.
    """
    host = _strip_port(host.strip().lower())
    if not host:
        return None
    match = _SVC_HOST.match(host)
    if match:
        return Workload(service_name=match.group(1), namespace=match.group(3))
    return Workload(service_name=host, external=True)


def _strip_port(host: str) -> str:
    return split_authority(host)[0]


def destination_by_name(entry: Entry) -> Workload | None:
    """The destination as the entry names it: cluster host, else authority, else the upstream address."""
    named = host_workload(cluster_host(entry.upstream_cluster)) or host_workload(entry.authority)
    if named is None and entry.upstream_remote is not None:
        # Passthrough to an address nothing names: the address itself, never a made-up service.
        named = Workload(service_name=entry.upstream_remote.ip, external=True)
    return named
