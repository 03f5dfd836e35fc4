"""A workload's OpenTelemetry resource attributes, and writing key/values into OTLP."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from ..model import Workload


@lru_cache(maxsize=65_536)
def resource_attributes(workload: Workload) -> tuple[tuple[str, str], ...]:
    in_pod = bool(workload.pod_name)
    named = (
        ("service.name", workload.service_name),
        ("service.namespace", workload.namespace),
        ("service.version", workload.version),
        ("service.instance.id", workload.instance),
        ("k8s.pod.name", workload.pod_name),
        ("k8s.namespace.name", workload.namespace if in_pod else ""),
        ("k8s.deployment.name", workload.deployment),
        ("k8s.cluster.name", workload.cluster),
    )
    return tuple((key, value) for key, value in named if value or key == "service.name")


def set_attributes(target: Any, attributes: Iterable[tuple[str, str | int]]) -> None:
    """Append key/values to a repeated ``KeyValue`` field, in place."""
    for key, value in attributes:
        kv = target.add()
        kv.key = key
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value
