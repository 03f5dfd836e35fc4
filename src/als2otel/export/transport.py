"""OTLP transports: one serialized export request, over gRPC or HTTP/protobuf, through public APIs.

:mod:`.otlp` decides what to send and what an answer means; a transport only carries a request
and reports what the backend said, as an :class:`Outcome`. gRPC goes over a grpcio channel,
HTTP over a ``requests`` session; both as the OpenTelemetry exporters set them up: TLS trusting
the system's CAs, or the CA file in ``OTEL_EXPORTER_OTLP_CERTIFICATE``, a client certificate
from ``OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`` and ``_CLIENT_KEY`` (each also per signal:
``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE``, ...), the configured headers and gzip.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import grpc
import requests
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .. import __version__
from .settings import OtlpConfig

log = logging.getLogger("als2otel.export")

USER_AGENT = f"als2otel/{__version__}"

Kind = Literal["ok", "too_large", "refused", "retry"]


class Outcome(NamedTuple):
    """What a backend made of one request."""

    kind: Kind
    detail: str = ""  # the gRPC status or HTTP code and the backend's message
    rejected: int = 0  # items a partial_success says were rejected


class Transport(Protocol):
    """Sends one serialized OTLP export request; blocking, run off the event loop."""

    def send(self, payload: bytes, timeout: float) -> Outcome: ...

    def close(self) -> None: ...


_GRPC_SERVICES = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
_RESPONSES: dict[str, tuple[Any, str]] = {
    "traces": (trace_service_pb2.ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (metrics_service_pb2.ExportMetricsServiceResponse, "rejected_data_points"),
}
# OTLP/gRPC: the codes worth retrying (RESOURCE_EXHAUSTED is the size refusal, handled by splitting).
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# OTLP/HTTP: the codes worth retrying.
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
MAX_DETAIL = 300
"""Characters of a backend's message (or an error's text) kept in a log line."""


def _partial_success(signal: str, body: bytes) -> Outcome:
    response_type, field = _RESPONSES[signal]
    try:
        response = response_type.FromString(body)
    except Exception:  # an answer we cannot read still means accepted
        return Outcome("ok")
    partial = response.partial_success
    rejected = getattr(partial, field)
    if rejected or partial.error_message:
        return Outcome("ok", f"partial success: {partial.error_message[:MAX_DETAIL]}", rejected)
    return Outcome("ok")


def tls_files(
    signal: str, environ: Mapping[str, str] = os.environ
) -> tuple[str | None, str | None, str | None]:
    """The CA file, client certificate and client key the OpenTelemetry variables name for ``signal``
    (the per-signal variable first)."""

    def variable(name: str) -> str | None:
        return environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}") or environ.get(
            f"OTEL_EXPORTER_OTLP_{name}"
        )

    return variable("CERTIFICATE"), variable("CLIENT_CERTIFICATE"), variable("CLIENT_KEY")


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read()


class GrpcTransport:
    def __init__(self, signal: str, config: OtlpConfig) -> None:
        endpoint = config.endpoint
        secure = endpoint.startswith("https://") or (not config.insecure and "://" not in endpoint)
        target = endpoint.split("://", 1)[-1].rstrip("/")
        compression = (
            grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression
        )
        options = [("grpc.primary_user_agent", USER_AGENT)]
        if secure:
            ca, cert, key = tls_files(signal)
            credentials = grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))
            self._channel = grpc.secure_channel(target, credentials, options, compression)
        else:
            self._channel = grpc.insecure_channel(target, options, compression)
        self._signal = signal
        self._export = self._channel.unary_unary(f"/{_GRPC_SERVICES[signal]}/Export")
        self._metadata = tuple((name.lower(), value) for name, value in config.headers.items())

    def send(self, payload: bytes, timeout: float) -> Outcome:
        try:
            body = self._export(payload, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code()
            detail = f"gRPC {code.name}: {(error.details() or '')[:MAX_DETAIL]}"
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return Outcome("too_large", detail)
            if code in _RETRYABLE_CODES:
                return Outcome("retry", detail)  # DEADLINE_EXCEEDED too: it may have arrived, and goes again
            return Outcome("refused", detail)
        return _partial_success(self._signal, body)

    def close(self) -> None:
        self._channel.close()


class HttpTransport:
    def __init__(self, signal: str, config: OtlpConfig) -> None:
        base = config.endpoint.rstrip("/")
        if "://" not in base:
            base = f"{'http' if config.insecure else 'https'}://{base}"
        self._url = f"{base}/v1/{signal}"
        self._gzip = config.compression == "gzip"
        self._session = requests.Session()
        self._session.headers.update(
            {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **config.headers}
        )
        if self._gzip:
            self._session.headers["Content-Encoding"] = "gzip"
        ca, cert, key = tls_files(signal)
        self._session.verify = ca or True
        if cert and key:
            self._session.cert = (cert, key)
        self._signal = signal

    def send(self, payload: bytes, timeout: float) -> Outcome:
        body = gzip.compress(payload, compresslevel=6) if self._gzip else payload
        try:
            response = self._session.post(self._url, data=body, timeout=timeout)
        except requests.RequestException as error:  # no connection, no answer in time, TLS
            return Outcome("retry", f"HTTP request failed: {error}"[:MAX_DETAIL])
        status = response.status_code
        if 200 <= status < 300:
            return _partial_success(self._signal, response.content)
        detail = f"HTTP {status}: {_status_message(response.content)}"
        if status == 413:
            return Outcome("too_large", detail)
        if status in _RETRYABLE_HTTP:
            return Outcome("retry", detail)
        return Outcome("refused", detail)

    def close(self) -> None:
        self._session.close()


def _status_message(body: bytes) -> str:
    """The message of an OTLP/HTTP error body (a google.rpc.Status), else its text."""
    try:
        message = status_pb2.Status.FromString(body).message
    except Exception:
        message = ""
    return (message or body[:MAX_DETAIL].decode("utf-8", "replace")).strip()[:MAX_DETAIL]


def make_transport(signal: str, config: OtlpConfig) -> Transport:
    if config.protocol == "grpc":
        return GrpcTransport(signal, config)
    return HttpTransport(signal, config)
