"""An OTLP receiver for tests, built on opentelemetry-proto: gRPC and HTTP/protobuf."""

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
class Received:
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

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


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class _Trace(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.traces.append(request)
            self.received.headers.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        with self.received.lock:
            self.received.metrics.append(request)
            self.received.headers.append(dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


class GrpcOtlpReceiver:
    """OTLP/gRPC on a port; ``stop`` and ``start`` again on the same port simulate an outage."""

    def __init__(self, port: int = 0, tls: tuple[bytes, bytes] | None = None) -> None:
        """``tls``: (PEM key, PEM certificate) to serve over TLS instead of plaintext."""
        self.received = Received()
        self.port = port
        self._tls = tls
        self._server: grpc.Server | None = None

    def start(self) -> GrpcOtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
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
    """OTLP/HTTP (protobuf) on ``/v1/traces`` and ``/v1/metrics``."""

    def __init__(self) -> None:
        self.received = Received()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with received.lock:
                    received.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if self.path == "/v1/traces":
                        received.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                        reply = trace_service_pb2.ExportTraceServiceResponse()
                    elif self.path == "/v1/metrics":
                        received.metrics.append(
                            metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                        )
                        reply = metrics_service_pb2.ExportMetricsServiceResponse()
                    else:
                        self.send_error(404)
                        return
                payload = reply.SerializeToString()
                self.send_response(200)
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
