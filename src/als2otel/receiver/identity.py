"""The reporting proxy's identity, from a stream's identifier (read once per stream)."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from .. import istio
from ..model import Proxy, Workload
from ._proto import als_pb2


def identify(
    identifier: als_pb2.StreamAccessLogsMessage.Identifier, name_labels: tuple[str, ...] = istio.NAME_LABELS
) -> Proxy:
    """Role, IP, pod and own workload of the Envoy that opened the stream."""
    node = identifier.node
    role, ip, pod, namespace = istio.parse_node_id(node.id)
    meta = plain_struct(node.metadata) if node.HasField("metadata") else {}
    workload = istio.workload_from_node_metadata(
        meta, pod_name=pod, namespace=namespace, name_labels=name_labels
    )
    if workload is None and (node.cluster or node.id):
        # A plain Envoy without Istio's metadata still speaks for a service: its --service-cluster.
        workload = Workload(service_name=node.cluster or node.id)
    instance_ips = tuple(ip.strip() for ip in str(meta.get("INSTANCE_IPS", "")).split(",") if ip.strip())
    return Proxy(
        node_id=node.id,
        role=role,
        log_name=identifier.log_name,
        ip=ip or (instance_ips[0] if instance_ips else ""),
        pod_name=istio.string_or_empty(meta.get("NAME")) or pod,
        namespace=istio.string_or_empty(meta.get("NAMESPACE")) or namespace,
        workload=workload,
        instance_ips=instance_ips or ((ip,) if ip else ()),
    )


def plain_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values, as JSON would give them but never refusing one.

    Whole numbers read as ints; NaN and infinities (which JSON has no words for) stay floats.
    """
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return plain_struct(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)
