"""Peer metadata built the way Istio's proxies emit it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2


@dataclass
class Peer:
    name: str  # pod or VM instance
    namespace: str
    workload: str
    labels: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    cluster: str = "Kubernetes"
    ips: list[str] = field(default_factory=list)
    kind: str = "deployment"  # the 1.24+ Struct's `type`

    def node_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "NAME": self.name,
            "NAMESPACE": self.namespace,
            "LABELS": self.labels,
            "WORKLOAD_NAME": self.workload,
            "CLUSTER_ID": self.cluster,
            "INSTANCE_IPS": ",".join(self.ips),
        }
        if self.owner:
            meta["OWNER"] = self.owner
        return meta


def pod(app: str, version: str = "v1", namespace: str = "default", suffix: str = "7d9c8b6f5-x2x7p") -> Peer:
    labels = {
        "app": app,
        "version": version,
        "service.istio.io/canonical-name": app,
        "service.istio.io/canonical-revision": version,
    }
    return Peer(
        f"{app}-{version}-{suffix}",
        namespace,
        f"{app}-{version}",
        labels,
        owner=f"kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{app}-{version}",
    )


def vm(app: str, instance: str, namespace: str = "default") -> Peer:
    """A VM registered with a WorkloadEntry, as in the mx-mesh seed article."""
    return Peer(
        instance,
        namespace,
        app,
        {"app": app, "service.istio.io/canonical-name": app},
        owner=f"kubernetes://apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{instance}",
        kind="workloadentry",
    )


def flatnode(peer: Peer) -> bytes:
    """Wasm.Common.FlatNode (istio/proxy extensions/common/node_info.fbs), as Istio <= 1.23 built it."""
    b = flatbuffers.Builder(256)
    name, namespace = b.CreateString(peer.name), b.CreateString(peer.namespace)
    owner, workload = b.CreateString(peer.owner), b.CreateString(peer.workload)
    cluster = b.CreateString(peer.cluster)
    pairs = []
    for key, value in sorted(peer.labels.items()):  # KeyVal.key is a (key): sorted
        k, v = b.CreateString(key), b.CreateString(value)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, k, 0)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        pairs.append(b.EndObject())
    b.StartVector(4, len(pairs), 4)
    for offset in reversed(pairs):
        b.PrependUOffsetTRelative(offset)
    labels = b.EndVector()
    ips = [b.CreateString(ip) for ip in peer.ips]
    b.StartVector(4, len(ips), 4)
    for offset in reversed(ips):
        b.PrependUOffsetTRelative(offset)
    instance_ips = b.EndVector()
    b.StartObject(12)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, namespace, 0)
    b.PrependUOffsetTRelativeSlot(2, labels, 0)
    b.PrependUOffsetTRelativeSlot(3, owner, 0)
    b.PrependUOffsetTRelativeSlot(4, workload, 0)
    b.PrependUOffsetTRelativeSlot(9, cluster, 0)
    b.PrependUOffsetTRelativeSlot(10, instance_ips, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def wasm_any(peer: Peer) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(wrappers_pb2.BytesValue(value=flatnode(peer)))
    return value


def lower_struct(peer: Peer) -> struct_pb2.Struct:
    """The Struct Istio 1.24+ logs as downstream_peer / upstream_peer."""
    s = struct_pb2.Struct()
    values = {
        "type": peer.kind,
        "workload": peer.workload,
        "name": peer.name,
        "namespace": peer.namespace,
        "cluster": peer.cluster,
        "service": peer.labels.get("service.istio.io/canonical-name", ""),
        "revision": peer.labels.get("service.istio.io/canonical-revision", ""),
        "app": peer.labels.get("app", ""),
        "version": peer.labels.get("version", ""),
    }
    s.update({k: v for k, v in values.items() if v})
    return s


def struct_any(peer: Peer) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(lower_struct(peer))
    return value


def upper_struct(peer: Peer) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(peer.node_metadata())
    return s


def header(peer: Peer) -> str:
    """x-envoy-peer-metadata: base64 of the node-key Struct."""
    return base64.b64encode(upper_struct(peer).SerializeToString()).decode()


def filter_state(kind: str, side: str, peer: Peer) -> dict[str, any_pb2.Any]:
    """``{downstream|upstream}_peer`` in the format of ``kind``: "flatnode" or "struct"."""
    if kind == "flatnode":
        return {f"wasm.{side}_peer": wasm_any(peer)}
    return {f"{side}_peer": struct_any(peer)}
