"""A workload's OpenTelemetry resource attributes, and writing key/values into OTLP."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from ..model import Workload


@lru_cache(maxsize=65_536)
def resource_attributes(workload: Workload) -> tuple[tuple[str, str], ...]:
    attrs = [("service.name", workload.service_name)]
    if workload.namespace:
        attrs.append(("service.namespace", workload.namespace))
    if workload.version:
        attrs.append(("service.version", workload.version))
    if workload.instance:
        attrs.append(("service.instance.id", workload.instance))
    if workload.pod_name:
        attrs.append(("k8s.pod.name", workload.pod_name))
        if workload.namespace:
            attrs.append(("k8s.namespace.name", workload.namespace))
    if workload.deployment:
        attrs.append(("k8s.deployment.name", workload.deployment))
    if workload.cluster:
        attrs.append(("k8s.cluster.name", workload.cluster))
    return tuple(attrs)


def set_attributes(target: Any, attributes: Iterable[tuple[str, str | int]]) -> None:
    """Append key/values to a repeated ``KeyValue`` field, in place."""
    for key, value in attributes:
        kv = target.add()
        kv.key = key
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value
