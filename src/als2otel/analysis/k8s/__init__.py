"""Kubernetes for k8s-mesh: the name rule, the pure index, and the list/watch cache that feeds it."""

from .index import KubeIndex
from .naming import NameRule, RuleError

__all__ = ["KubeIndex", "NameRule", "RuleError"]
