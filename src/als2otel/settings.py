"""What every component's configuration section is made of, as the Collector's ``config*``
packages hold for its components: the value types of the file (durations, sizes, worker
counts) with their parsers, ``host:port``, and the TLS sections (``configtls``) both ports use.

Each component declares its own section in its package's ``settings.py`` (the receiver,
analysis, translation, export, web), a frozen dataclass with its defaults and, where it has
rules of its own, ``problems(path)``: one line per problem, each naming its key under
``path``. ``config.py`` composes the sections into :class:`~als2otel.config.Config`, reads
the file, and asks every section for its problems.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from .net import split_hostport


class ConfigError(Exception):
    """A configuration that cannot run; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Duration(float):
    """Seconds, written in the file as Go-style durations: ``10s``, ``1m30s``, ``250ms``."""


class Workers(int):
    """Worker processes: a whole number from 1, or ``"auto"`` for the CPUs this process may use."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which container CPU sets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


class Size(int):
    """Bytes, written in the file as ``4MiB``, ``512KiB``, ``1MB`` or a whole number."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the ALS port; names as in the OpenTelemetry Collector's ``configtls``."""

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None  # set: clients must present a certificate it signed (mTLS)
    min_version: str = "1.2"

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file)

    def problems(self, path: str) -> list[str]:
        problems = check_tls(path, self)
        if self.min_version not in TLS_VERSIONS:
            problems.append(f'{path}.min_version: must be "1.2" or "1.3", got {self.min_version!r}')
        return problems


@dataclass(frozen=True)
class HttpTlsConfig:
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.key_file)

    def problems(self, path: str) -> list[str]:
        return check_tls(path, self)


TLS_VERSIONS = ("1.2", "1.3")
"""``receiver.tls.min_version`` values (the OpenTelemetry Collector's ``configtls`` names)."""


def check_tls(path: str, tls: TlsConfig | HttpTlsConfig) -> list[str]:
    """Both files or neither, each readable, the key the certificate's, a CA file that parses."""
    import ssl  # noqa: PLC0415 - only configurations with TLS need it

    if not tls.enabled:
        if isinstance(tls, TlsConfig) and tls.client_ca_file:
            return [f"{path}.client_ca_file: needs cert_file and key_file (mutual TLS is TLS first)"]
        return []
    problems = []
    for key in ("cert_file", "key_file") + (("client_ca_file",) if isinstance(tls, TlsConfig) else ()):
        name = getattr(tls, key)
        if key != "client_ca_file" and not name:
            problems.append(f"{path}.{key}: must be set with the other of cert_file and key_file")
        elif name and not os.access(name, os.R_OK):
            problems.append(f"{path}.{key}: cannot read {name}")
    if problems:
        return problems
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert_file or "", tls.key_file or "")
    except (ssl.SSLError, OSError) as exc:
        problems.append(
            f"{path}.key_file: not the key of {tls.cert_file}, or not a PEM key and certificate ({exc})"
        )
    if isinstance(tls, TlsConfig) and tls.client_ca_file:
        try:
            ssl.create_default_context(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{path}.client_ca_file: not PEM certificates ({exc})")
    return problems


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


MAX_DURATION_TEXT = 64
"""Characters of a duration's text read at most; a longer one is invalid."""


def parse_duration(value: Any) -> float | None:
    """Seconds from ``"1m30s"``-style text (or a bare number of seconds); None if invalid.

    Linear in the text's length: each part is matched where the last one ended.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 <= value < math.inf else None
    if not isinstance(value, str) or len(value) > MAX_DURATION_TEXT or not value.strip():
        return None
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}


def parse_size(value: Any) -> int | None:
    """Bytes from ``"4MiB"``-style text or a whole number; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str) or len(value) > MAX_DURATION_TEXT:
        return None
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def listen_problems(path: str, listen: str) -> list[str]:
    """A listen address (``receiver.listen``, ``http.listen``): ``host:port``."""
    return [] if split_hostport(listen) else [f"{path}: must be host:port, got {listen!r}"]
