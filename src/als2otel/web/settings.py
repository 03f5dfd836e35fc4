"""The HTTP port's section of the configuration (``http``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import HttpTlsConfig, listen_problems


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "0.0.0.0:9464"
    tls: HttpTlsConfig = field(default_factory=HttpTlsConfig)

    def problems(self, path: str) -> list[str]:
        return listen_problems(f"{path}.listen", self.listen)
