"""An OTLP receiver for tests, built on opentelemetry-proto: gRPC and HTTP/protobuf.

Both keep the limits users' backends run with: gRPC's default 4 MiB per message (the
Collector's ``max_recv_msg_size_mib``), unless a test asks for a smaller one to see a
refusal. ``Received.reply`` lets a test answer a request as a backend may: refuse it
(a gRPC status or an HTTP code, with a message) or accept it partially.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Refusal:
    """A request refused: a gRPC status code name (``INVALID_ARGUMENT``) or an HTTP code, and a message."""

    grpc_code: str
    http_status: int
    message: str


@dataclass
class Partial:
    """A request accepted with some items rejected (OTLP ``partial_success``)."""

    rejected: int
    message: str


Reply = Callable[[str, Any], "Refusal | Partial | None"]


@dataclass
class Received:
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reply: Reply | None = None
    """Called with the signal and each request before it is kept: None accepts it."""
    delay: float = 0.0
    """Seconds each request takes to answer."""
    keep: bool = True
    """False: count the items of accepted requests in ``counted`` instead of keeping the requests."""
    counted: dict[str, int] = field(default_factory=lambda: {"traces": 0, "metrics": 0})
    in_flight: dict[str, int] = field(default_factory=lambda: {"traces": 0, "metrics": 0})
    most_in_flight: dict[str, int] = field(default_factory=lambda: {"traces": 0, "metrics": 0})
    """Requests being answered at once, now and at the most, per signal."""

    def answer(self, signal: str, request: Any) -> Refusal | Partial | None:
        """What to answer, after keeping an accepted request (a partial one included)."""
        with self.lock:
            self.in_flight[signal] += 1
            self.most_in_flight[signal] = max(self.most_in_flight[signal], self.in_flight[signal])
        try:
            if self.delay:
                time.sleep(self.delay)
            verdict = self.reply(signal, request) if self.reply is not None else None
            if not isinstance(verdict, Refusal):
                with self.lock:
                    if self.keep:
                        (self.traces if signal == "traces" else self.metrics).append(request)
                    else:
                        self.counted[signal] += _items(signal, request)
            return verdict
        finally:
            with self.lock:
                self.in_flight[signal] -= 1

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource attributes as a dict."""
        with self.lock:
            out = []
            for request in self.traces:
                for rs in request.resource_spans:
                    resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        out.extend((resource, span) for span in ss.spans)
            return out

    def latest_metrics(self) -> dict[tuple[str, tuple[tuple[str, Any], ...]], list[Any]]:
        """metric name and resource -> data points of the newest snapshot that has it."""
        with self.lock:
            found: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Any]] = {}
            for request in self.metrics:
                snapshot: dict[tuple[str, tuple[tuple[str, Any], ...]], list[Any]] = {}
                for rm in request.resource_metrics:
                    resource = tuple(sorted((kv.key, _value(kv.value)) for kv in rm.resource.attributes))
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            data = metric.WhichOneof("data")
                            snapshot.setdefault((metric.name, resource), []).extend(
                                getattr(metric, data).data_points
                            )
                found.update(snapshot)
            return found

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def _items(signal: str, request: Any) -> int:
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    return sum(
        len(getattr(m, m.WhichOneof("data")).data_points)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


def _status(message: str) -> bytes:
    """An OTLP/HTTP error body: a google.rpc.Status."""
    from google.rpc import status_pb2

    return bytes(status_pb2.Status(message=message).SerializeToString())


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _response(signal: str, verdict: Partial | None) -> Any:
    if signal == "traces":
        response = trace_service_pb2.ExportTraceServiceResponse()
        if verdict is not None:
            response.partial_success.rejected_spans = verdict.rejected
    else:
        response = metrics_service_pb2.ExportMetricsServiceResponse()
        if verdict is not None:
            response.partial_success.rejected_data_points = verdict.rejected
    if verdict is not None:
        response.partial_success.error_message = verdict.message
    return response


def _grpc_export(signal: str, received: Received, request: Any, context: Any) -> Any:
    with received.lock:
        received.headers.append(dict(context.invocation_metadata()))
    verdict = received.answer(signal, request)
    if isinstance(verdict, Refusal):
        context.abort(getattr(grpc.StatusCode, verdict.grpc_code), verdict.message)
    return _response(signal, verdict)


class _Trace(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        return _grpc_export("traces", self.received, request, context)


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        return _grpc_export("metrics", self.received, request, context)


class GrpcOtlpReceiver:
    """OTLP/gRPC on a port; ``stop`` and ``start`` again on the same port simulate an outage."""

    def __init__(
        self, port: int = 0, tls: tuple[bytes, bytes] | None = None, max_message: int | None = None
    ) -> None:
        """``tls``: (PEM key, PEM certificate) to serve over TLS instead of plaintext;
        ``max_message``: refuse larger requests (RESOURCE_EXHAUSTED) below gRPC's default 4 MiB."""
        self.received = Received()
        self.port = port
        self._tls = tls
        self._options = [("grpc.max_receive_message_length", max_message)] if max_message else []
        self._server: grpc.Server | None = None

    def start(self) -> GrpcOtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=self._options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Trace(self.received), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.received), server)
        if self._tls is not None:
            credentials = grpc.ssl_server_credentials([self._tls])
            self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        else:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None


class HttpOtlpReceiver:
    """OTLP/HTTP (protobuf) on ``/v1/traces`` and ``/v1/metrics``; ``max_body``: 413 above it."""

    def __init__(self, max_body: int | None = None) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with received.lock:
                    received.headers.append({k.lower(): v for k, v in self.headers.items()})
                signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(self.path)
                if signal is None:
                    self._reply(404, b"")
                    return
                if max_body is not None and len(body) > max_body:
                    self._reply(413, _status(f"request of {len(body)} bytes is larger than {max_body}"))
                    return
                request_type = (
                    trace_service_pb2.ExportTraceServiceRequest
                    if signal == "traces"
                    else metrics_service_pb2.ExportMetricsServiceRequest
                )
                verdict = received.answer(signal, request_type.FromString(body))
                if isinstance(verdict, Refusal):
                    self._reply(verdict.http_status, _status(verdict.message))
                    return
                self._reply(200, _response(signal, verdict).SerializeToString())

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HttpOtlpReceiver:
        self._thread.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
