"""The Kubernetes index: apply a watch event, look up an IP. Pure, no I/O.

Keeps only what naming needs: a pod's name, namespace, labels, owner and IPs;
a Service's name, namespace and labels; which pods each EndpointSlice lists
(ready or not). Node IPs and hostNetwork pods never claim an IP for one
workload. An IP reused by a new pod resolves to the new pod as soon as its
event is applied; a deleted or finished pod's IPs stop resolving to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ... import istio
from ...model import Workload
from .naming import Meta, NameRule

Key = tuple[str, str]  # (namespace, name)


@dataclass(slots=True, frozen=True)
class _Pod:
    meta: Meta
    owner: str  # the controller's name (Deployment for a ReplicaSet's pods)
    ips: tuple[str, ...]
    deployment: str = ""


def _meta(obj: Mapping[str, Any]) -> Meta:
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return Meta(
        str(metadata.get("name", "")),
        str(metadata.get("namespace", "")),
        {str(k): str(v) for k, v in labels.items()},
    )


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def _pod(obj: Mapping[str, Any]) -> _Pod | None:
    """None for a pod that holds no IP of its own (hostNetwork, finished, not yet scheduled)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    ips = tuple(str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (str(status["podIP"]),)
    owner = deployment = ""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            owner = str(ref.get("name", ""))
            if ref.get("kind") == "ReplicaSet":
                owner = deployment = _deployment_of(owner)
            break
    return _Pod(_meta(obj), owner, ips, deployment) if ips else None


def _deployment_of(replicaset: str) -> str:
    """``reviews-v1-545db77b95`` -> ``reviews-v1``: a ReplicaSet is its Deployment's name and a hash."""
    name, _, suffix = replicaset.rpartition("-")
    return name if name and 5 <= len(suffix) <= 10 and suffix.isalnum() else replicaset


class KubeIndex:
    def __init__(
        self,
        rule: NameRule,
        ignored_namespaces: Iterable[str] = (),
        name_labels: tuple[str, ...] = istio.NAME_LABELS,
    ) -> None:
        self._rule = rule
        self._name_labels = name_labels
        self._ignored = frozenset(ignored_namespaces)
        self._pods: dict[Key, _Pod] = {}
        self._ip_to_pod: dict[str, Key] = {}
        self._node_ips: dict[str, tuple[str, ...]] = {}
        self._blocked_ips: set[str] = set()
        self._services: dict[Key, Meta] = {}
        self._slices: dict[Key, tuple[str, tuple[Key, ...]]] = {}  # slice -> (service name, pods)
        self._pod_services: dict[Key, set[str]] = {}
        self._workloads: dict[Key, Workload | None] = {}
        self._by_ip: dict[str, Workload] = {}
        """What :meth:`workload_for_ip` answered, for IPs that resolved (at most one per pod IP); every
        event empties it, since any may change an answer."""

    # -- events ---------------------------------------------------------------------------------

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        """One watch event (``ADDED``, ``MODIFIED``, ``DELETED``) of a Pod, Service, EndpointSlice or Node."""
        deleted = event == "DELETED"
        self._by_ip.clear()
        if kind == "Pod":
            self._apply_pod(_key(obj), None if deleted else _pod(obj))
        elif kind == "Service":
            key = _key(obj)
            if deleted:
                self._services.pop(key, None)
            else:
                self._services[key] = _meta(obj)
            self._workloads.clear()
        elif kind == "EndpointSlice":
            self._apply_slice(_key(obj), None if deleted else obj)
        elif kind == "Node":
            name = _key(obj)[1]
            addresses = (
                ()
                if deleted
                else tuple(
                    str(a["address"])
                    for a in (obj.get("status") or {}).get("addresses") or []
                    if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")
                )
            )
            self._node_ips[name] = addresses
            if deleted:
                del self._node_ips[name]
            self._blocked_ips = {ip for ips in self._node_ips.values() for ip in ips}

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """A fresh full list of one kind: what is not in it is gone."""
        objects = list(objects)
        current = {
            "Pod": set(self._pods),
            "Service": set(self._services),
            "EndpointSlice": set(self._slices),
            "Node": {("", n) for n in self._node_ips},
        }[kind]
        listed = {_key(o) for o in objects}
        for key in current - listed:
            self.apply(kind, "DELETED", {"metadata": {"namespace": key[0], "name": key[1]}})
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def _apply_pod(self, key: Key, pod: _Pod | None) -> None:
        old = self._pods.pop(key, None)
        if old is not None:
            for ip in old.ips:
                if self._ip_to_pod.get(ip) == key:
                    del self._ip_to_pod[ip]
        if pod is not None:
            self._pods[key] = pod
            for ip in pod.ips:
                self._ip_to_pod[ip] = key
        self._workloads.pop(key, None)

    def _apply_slice(self, key: Key, obj: Mapping[str, Any] | None) -> None:
        old = self._slices.pop(key, None)
        affected: set[Key] = set(old[1]) if old else set()
        if old:
            for pod in old[1]:
                self._pod_services.get(pod, set()).discard(old[0])
        if obj is not None:
            labels = (obj.get("metadata") or {}).get("labels") or {}
            service = str(labels.get("kubernetes.io/service-name", ""))
            pods = tuple(
                (str(ref.get("namespace") or key[0]), str(ref["name"]))
                for endpoint in obj.get("endpoints") or []
                if (ref := endpoint.get("targetRef") or {}).get("kind") == "Pod" and ref.get("name")
            )
            if service:
                self._slices[key] = (service, pods)
                for pod in pods:
                    self._pod_services.setdefault(pod, set()).add(service)
                affected.update(pods)
        for pod in affected:
            self._workloads.pop(pod, None)

    # -- lookups --------------------------------------------------------------------------------

    def workload_for_ip(self, ip: str) -> Workload | None:
        """The workload that owns ``ip`` now; None for node IPs, unknown IPs and ignored namespaces."""
        workload = self._by_ip.get(ip)
        if workload is not None:  # one lookup where it ran four (twice hashing a tuple key) per address
            return workload
        key = self._ip_to_pod.get(ip)
        if key is None or ip in self._blocked_ips:
            return None
        if key in self._workloads:
            workload = self._workloads[key]
        else:
            workload = self._workloads[key] = self._name(key)
        if workload is not None:
            self._by_ip[ip] = workload
        return workload

    def services_of(self, namespace: str, pod: str) -> list[str]:
        return sorted(self._pod_services.get((namespace, pod), ()))

    def _name(self, key: Key) -> Workload | None:
        pod = self._pods[key]
        if key[0] in self._ignored:
            return None
        services = [s for s in sorted(self._pod_services.get(key, ())) if (key[0], s) in self._services]
        service = self._services[(key[0], services[0])] if services else None
        labels = pod.meta.labels
        name = (
            self._rule.render(pod.meta, service) if service is not None or not self._rule.uses_service else ""
        )
        if not name:
            # A pod no Service selects is named as mx-mesh names a peer.
            name = istio.service_name_from_labels(
                labels, pod.owner or istio.workload_name_from_pod(pod.meta.name), self._name_labels
            )
        version = istio.version_from_labels(labels)
        return Workload(
            service_name=name,
            namespace=key[0],
            version=version,
            instance=pod.meta.name,
            workload_name=pod.owner or istio.workload_name_from_pod(pod.meta.name),
            pod_name=pod.meta.name,
            canonical_service=labels.get(istio.CANONICAL_NAME, "") or name,
            canonical_revision=labels.get(istio.CANONICAL_REVISION, "") or version,
            deployment=pod.deployment,
        )
