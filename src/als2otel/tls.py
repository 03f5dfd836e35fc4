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
from typing import Any

import grpc

from .config import HttpTlsConfig, TlsConfig
from .stats import LogLimiter

log = logging.getLogger("als2otel.tls")


class CertificateFiles:
    """The certificate, key and (for mutual TLS) client CA of one server."""

    def __init__(self, config: TlsConfig | HttpTlsConfig) -> None:
        self.cert_file = config.cert_file or ""
        self.key_file = config.key_file or ""
        self.client_ca_file = getattr(config, "client_ca_file", None) or ""
        self._limiter = LogLimiter(log, 60.0)
        self._stamp = self._stamps()
        self.reloads = 0

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

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The PEM certificate chain, key and client CA (None without mutual TLS)."""
        with open(self.cert_file, "rb") as cert, open(self.key_file, "rb") as key:
            chain, private = cert.read(), key.read()
        ca = None
        if self.client_ca_file:
            with open(self.client_ca_file, "rb") as file:
                ca = file.read()
        return chain, private, ca

    def changed(self) -> bool:
        """True once after the files changed on disk (and then stay as they are)."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for the ALS port that take up changed files at the next connection."""
        chain, key, ca = self.read()
        initial = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

        def fetch() -> Any:
            # Called by gRPC before each new connection's handshake: a stat per file.
            if not self.changed():
                return None
            try:
                chain, key, ca = self.read()
                _check_pair(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                self._limiter.warning(
                    "reload", "TLS files changed but cannot be used yet (%s); keeping the old", exc
                )
                self._stamp = ()  # look again at the next connection
                return None
            self.reloads += 1
            log.info("TLS certificate for the ALS port read again from %s", self.cert_file)
            return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=bool(ca))

    def ssl_context(self) -> ssl.SSLContext:
        """An HTTPS server context; :meth:`refresh` loads changed files into it."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def refresh(self, context: ssl.SSLContext) -> None:
        """Load the files into ``context`` again if they changed (new connections use them)."""
        if not self.changed():
            return
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            self._limiter.warning(
                "reload", "TLS files changed but cannot be used yet (%s); keeping the old", exc
            )
            self._stamp = ()
            return
        self.reloads += 1
        log.info("TLS certificate for the HTTP port read again from %s", self.cert_file)


def _check_pair(cert_file: str, key_file: str) -> None:
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
