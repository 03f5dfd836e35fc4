"""The receiver's section of the configuration (``receiver``): the ALS port, its workers and TLS."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import Duration, TlsConfig, Workers, listen_problems


@dataclass(frozen=True)
class ReceiverConfig:
    listen: str = "0.0.0.0:11800"
    workers: Workers = Workers(1)
    max_connection_age: Duration = Duration(30 * 60)
    max_connection_age_grace: Duration = Duration(30)
    tls: TlsConfig = field(default_factory=TlsConfig)

    def problems(self, path: str) -> list[str]:
        return listen_problems(f"{path}.listen", self.listen)
