"""Server certificates read from files, and read again when the files change.

cert-manager and Istio rotate certificates by rewriting the files (often through a
symlink swap); the servers pick up the new ones for new connections, without a
restart. A rewrite caught half-way (a key that does not match, a file not yet
there) keeps the old certificate in use and is logged, rate-limited, until the
files are whole again.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from typing import TypeVar

from .settings import HttpTlsConfig, TlsConfig
from .stats import LogLimiter

log = logging.getLogger("als2otel.tls")

T = TypeVar("T")

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
"""``min_version`` values, as the OpenTelemetry Collector's ``configtls`` names them."""


class CertificateFiles:
    """The certificate, key and (for mutual TLS) client CA of one server."""

    def __init__(self, config: TlsConfig | HttpTlsConfig) -> None:
        self.cert_file = config.cert_file or ""
        self.key_file = config.key_file or ""
        self.client_ca_file = getattr(config, "client_ca_file", None) or ""
        self._limiter = LogLimiter(log, 60.0)
        self._stamp = self._stamps()

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for name in (self.cert_file, self.key_file, self.client_ca_file):
            if name:
                try:
                    status = os.stat(name)
                    out.append((status.st_mtime_ns, status.st_ino))
                except OSError:
                    out.append((0, 0))
        return tuple(out)

    def changed(self) -> bool:
        """True once after the files changed on disk (and then stay as they are)."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def mutual_context(self, min_version: str) -> ssl.SSLContext:
        """A server context for the ALS port: HTTP/2 by ALPN, TLS ``min_version`` ("1.2" or "1.3")
        at least, and with a client CA, a certificate it signed required of every client."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MIN_VERSIONS[min_version]
        context.set_alpn_protocols(["h2"])
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.client_ca_file)
        return context

    def ssl_context(self) -> ssl.SSLContext:
        """An HTTPS server context; :meth:`reload` can load changed files into it."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def reload(self, load: Callable[[], T], port: str) -> T | None:
        """``load()`` (which reads the files) if they changed since the last look, and what it
        gave; None if they did not change, or are not whole yet (logged, and looked at again)."""
        if not self.changed():
            return None
        try:
            loaded = load()
        except (OSError, ssl.SSLError) as exc:
            self._limiter.warning(
                "reload", "TLS files changed but cannot be used yet (%s); keeping the old", exc
            )
            self._stamp = ()  # look again next time
            return None
        log.info("TLS certificate for the %s port read again from %s", port, self.cert_file)
        return loaded
