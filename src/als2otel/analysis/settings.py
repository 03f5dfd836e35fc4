"""The analyzers' sections of the configuration: ``k8s`` (k8s-mesh) and ``mx_mesh``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class K8sConfig:
    kubeconfig: str | None = None
    service_name_rule: str = "${service.metadata.name}"
    ignored_namespaces: list[str] = field(default_factory=list)

    def problems(self, path: str) -> list[str]:
        from .k8s.naming import NameRule, RuleError  # noqa: PLC0415 - the rule's own parser

        try:
            NameRule(self.service_name_rule)
        except RuleError as exc:
            return [f"{path}.service_name_rule: {exc}"]
        return []


@dataclass(frozen=True)
class MxMeshConfig:
    service_name_labels: list[str] | None = None
    """Deprecated: the top-level ``service_name_labels`` (which it fills when that is left out)."""

    def problems(self, path: str) -> list[str]:
        return label_problems(f"{path}.service_name_labels", self.service_name_labels or [])


def label_problems(path: str, labels: list[str]) -> list[str]:
    """Labels naming a workload's service: none empty."""
    return [f"{path}[{i}]: must not be empty" for i, label in enumerate(labels) if not label.strip()]
