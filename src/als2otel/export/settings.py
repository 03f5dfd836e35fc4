"""The exporters' section of the configuration (``exporters``): OTLP, with its retries and sending
queue, and the Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..settings import Duration, Size

MIN_REQUEST_SIZE = 64 * 1024
"""The smallest ``max_request_size``: one span or histogram point, with its resource, fits many times over."""


@dataclass(frozen=True)
class RetryConfig:
    max_elapsed_time: Duration = Duration(300)


@dataclass(frozen=True)
class QueueConfig:
    queue_size: int = 200_000
    num_consumers: int = 4
    storage: str | None = None  # a directory: requests kept on disk until accepted, resumed after a restart
    max_storage_size: Size = Size(1024 * 1024 * 1024)
    fsync: bool = False  # true: each request is on disk before it counts as queued (survives a power loss)

    def problems(self, path: str) -> list[str]:
        problems = []
        if self.queue_size < 1:
            problems.append(f"{path}.queue_size: must be at least 1")
        if self.num_consumers < 1:
            problems.append(f"{path}.num_consumers: must be at least 1")
        if self.storage is not None and not self.storage.strip():
            problems.append(f"{path}.storage: must be a directory, or null for memory")
        return problems


@dataclass(frozen=True)
class OtlpConfig:
    enabled: bool = True
    endpoint: str = "localhost:4317"
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    insecure: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    max_request_size: Size = Size(4 * 1024 * 1024)
    timeout: Duration = Duration(10)
    retry_on_failure: RetryConfig = field(default_factory=RetryConfig)
    sending_queue: QueueConfig = field(default_factory=QueueConfig)

    def problems(self, path: str) -> list[str]:
        problems = []
        queue = self.sending_queue
        if self.enabled and not self.endpoint.strip():
            problems.append(f"{path}.endpoint: must not be empty")
        if queue.storage is not None and queue.max_storage_size < 2 * self.max_request_size:
            problems.append(
                f"{path}.sending_queue.max_storage_size: must hold at least two requests"
                f" of max_request_size ({2 * self.max_request_size} bytes)"
            )
        if self.max_request_size < MIN_REQUEST_SIZE:
            problems.append(f"{path}.max_request_size: must be at least {MIN_REQUEST_SIZE // 1024}KiB")
        if self.timeout <= 0:
            problems.append(f"{path}.timeout: must be longer than 0s")
        return problems


@dataclass(frozen=True)
class PrometheusConfig:
    enabled: bool = True


@dataclass(frozen=True)
class ExportersConfig:
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
