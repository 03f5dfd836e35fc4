"""Translation's sections of the configuration: ``traces``, ``metrics`` and ``topology``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..settings import Duration

METRIC_SETS = ("http", "servicegraph", "istio")


@dataclass(frozen=True)
class TracesConfig:
    enabled: bool = True
    sampling_ratio: float = 1.0

    def problems(self, path: str) -> list[str]:
        if 0.0 <= self.sampling_ratio <= 1.0:
            return []
        return [f"{path}.sampling_ratio: must be between 0 and 1, got {self.sampling_ratio}"]


@dataclass(frozen=True)
class MetricsConfig:
    export_interval: Duration = Duration(10)
    sets: list[str] = field(default_factory=lambda: ["http", "servicegraph"])
    temporality: Literal["cumulative", "delta"] = "cumulative"
    expire_after: Duration = Duration(15 * 60)
    instance_id: str | None = None  # None: host:port (the pod's name in Kubernetes)

    def problems(self, path: str) -> list[str]:
        problems = [
            f"{path}.sets[{i}]: unknown metric set {name!r} (known: {', '.join(METRIC_SETS)})"
            for i, name in enumerate(self.sets)
            if name not in METRIC_SETS
        ]
        if self.export_interval <= 0:
            problems.append(f"{path}.export_interval: must be longer than 0s")
        return problems


@dataclass(frozen=True)
class TopologyConfig:
    """The /topology page's links and health colours (as Kiali's defaults)."""

    trace_url: str | None = None  # ${service}, ${peer}, ${start}, ${end} (Unix milliseconds)
    degraded_error_rate: float = 0.001  # an edge or node above it is drawn degraded
    failure_error_rate: float = 0.2  # above it, failing

    def problems(self, path: str) -> list[str]:
        problems = []
        if self.trace_url is not None:
            unknown = set(re.findall(r"\$\{[^}]*\}", self.trace_url)) - set(TRACE_URL_PLACEHOLDERS)
            if not self.trace_url.startswith(("http://", "https://")):
                problems.append(f"{path}.trace_url: must be an http:// or https:// URL template")
            elif unknown:
                problems.append(
                    f"{path}.trace_url: unknown placeholder {sorted(unknown)[0]}"
                    f" (known: {', '.join(TRACE_URL_PLACEHOLDERS)})"
                )
        if not 0 <= self.degraded_error_rate < self.failure_error_rate <= 1:
            problems.append(
                f"{path}.degraded_error_rate, {path}.failure_error_rate: need 0 <= degraded < failure <= 1"
            )
        return problems


TRACE_URL_PLACEHOLDERS = ("${service}", "${peer}", "${start}", "${end}")
