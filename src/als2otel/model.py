"""The few types that cross als2otel's stages.

receiver (encoded entries, and :class:`Proxy`: who sent them) -> normalisation
(``receiver/normalize.py``: :class:`Entry`, one access-log entry, v2, v3 or OTLP,
HTTP or TCP) -> analysis -> :class:`Call` (one side of a call between two
:class:`Workload` s) -> translation -> OTLP spans and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

USER = "user"
"""The servicegraph's name for callers outside the mesh."""


# Plain strings, not Enums: CPython 3.11 routes every Enum class-attribute access
# and every hash of a member through Python-level code, and these are read and
# hashed several times per entry. mypy checks the literals.
Protocol = Literal["http", "grpc", "tcp"]

Role = Literal["sidecar", "router", "ingress", "waypoint", "unknown"]
"""What kind of proxy sent the entry, from the node id's first field."""

GATEWAY_ROLES: frozenset[Role] = frozenset({"router", "ingress", "waypoint"})

Direction = Literal["inbound", "outbound", "gateway", "unknown"]
"""Which way an entry's request went through its proxy: ``inbound`` (a sidecar
handing a request to its own workload), ``outbound`` (a sidecar's workload
calling out), ``gateway`` (a gateway or waypoint: both a server and a client)."""

Side = Literal["client", "server"]
"""Which end of a call the reporting proxy stands at."""


class SocketAddr(NamedTuple):
    ip: str
    port: int


class AnyValue(NamedTuple):
    """A ``google.protobuf.Any`` of an entry's filter state, as the native reader gives it (the
    Python path keeps protobuf's own message, which reads the same)."""

    type_url: str
    value: bytes


class Workload(NamedTuple):
    """A service identity: what becomes an OpenTelemetry resource.

    ``external`` marks a destination outside the mesh, known only by host name.
    A value: workloads key span batches and metric series by their fields.
    """

    service_name: str
    namespace: str = ""
    version: str = ""
    instance: str = ""  # pod or VM instance: service.instance.id
    workload_name: str = ""  # Deployment, StatefulSet, WorkloadEntry, ...
    pod_name: str = ""
    cluster: str = ""
    canonical_service: str = ""
    canonical_revision: str = ""
    deployment: str = ""  # k8s.deployment.name, when the owner chain says
    external: bool = False


@dataclass(frozen=True, slots=True)
class Proxy:
    """The Envoy that opened an ALS stream, from its identifier (first message)."""

    node_id: str
    role: Role
    log_name: str = ""
    ip: str = ""  # the node id's second field
    pod_name: str = ""
    namespace: str = ""
    workload: Workload | None = None  # its own workload, when the node says
    instance_ips: tuple[str, ...] = ()
    is_gateway: bool = field(init=False, default=False)  # router, ingress or waypoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_gateway", self.role in GATEWAY_ROLES)


@dataclass(slots=True)
class Entry:
    """One final access-log entry, the same whatever the API version and type.

    Times are Unix nanoseconds; offsets are nanoseconds from ``start_ns`` or -1
    when Envoy did not record them.
    """

    api_version: str
    protocol: Protocol
    start_ns: int
    downstream_end_ns: int = -1  # last byte sent downstream, else the entry's whole duration
    first_upstream_tx_ns: int = -1
    last_upstream_rx_ns: int = -1
    downstream_remote: SocketAddr | None = None
    downstream_direct_remote: SocketAddr | None = None
    downstream_local: SocketAddr | None = None
    upstream_remote: SocketAddr | None = None
    upstream_local: SocketAddr | None = None
    upstream_cluster: str = ""
    route_name: str = ""
    response_flags: tuple[str, ...] = ()
    mtls: bool = False
    peer_principal: str = ""
    filter_state: Mapping[str, Any] | None = None
    # HTTP only
    method: str = ""
    scheme: str = ""
    authority: str = ""
    path: str = ""
    user_agent: str = ""
    request_id: str = ""
    http_version: str = ""
    response_code: int = 0
    grpc_status: int = -1
    request_headers: Mapping[str, str] | None = None
    response_headers: Mapping[str, str] | None = None
    # TCP only: bytes received from and sent to the downstream
    received_bytes: int = 0
    sent_bytes: int = 0

    @property
    def caller_address(self) -> SocketAddr | None:
        """The physical peer that sent the request (not one taken from X-Forwarded-For)."""
        return self.downstream_direct_remote or self.downstream_remote


# Call's two flags, named where a call is made (positional arguments, which the per-entry
# path needs: keywords cost more): Call(side, entry, proxy, source, destination, FROM_OUTSIDE).
FROM_OUTSIDE = True
"""``Call.from_outside``: the caller is outside the mesh (the servicegraph's ``user``)."""
FROM_INSIDE = False
PROVISIONAL = False
"""``Call.resolved``: named only from the upstream cluster or authority; a later analyzer may do better."""


@dataclass(slots=True, init=False)
class Call:
    """One side of a call, as the reporting proxy saw it.

    ``source`` is None when the caller is unknown; ``from_outside`` says it is
    known to be outside the mesh (the servicegraph's ``user``).
    ``resolved`` is False for a provisional answer (a destination named only
    from the upstream cluster) that a later analyzer may improve on.
    """

    side: Side
    entry: Entry
    proxy: Proxy
    source: Workload | None
    destination: Workload | None
    from_outside: bool = False
    resolved: bool = True

    def __init__(
        self,
        side: Side,
        entry: Entry,
        proxy: Proxy,
        source: Workload | None,
        destination: Workload | None,
        from_outside: bool = False,
        resolved: bool = True,
    ) -> None:
        # Spelled out: compiled, a call of it is native (the generated one runs as Python, ~1 us).
        self.side = side
        self.entry = entry
        self.proxy = proxy
        self.source = source
        self.destination = destination
        self.from_outside = from_outside
        self.resolved = resolved
