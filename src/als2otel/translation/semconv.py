"""What the OpenTelemetry semantic conventions say about a call's outcome and names.

Pure functions of an :class:`Entry`, shared by spans and metrics so both agree.
"""

from __future__ import annotations

from .. import net
from ..model import Entry, Side

# Envoy response flags that mean the request failed without a real response.
FAILURE_FLAGS = frozenset(
    {
        "UH",
        "UF",
        "UO",
        "NR",
        "UC",
        "UR",
        "LR",
        "URX",
        "UT",
        "DPE",
        "UPE",
        "NC",
        "DF",
        "OM",
        "SI",
        "DT",
        "UMSDR",
        "IH",
        "RLSE",
        "UAEX",
        "NFCF",
        "DC",
    }
)

GRPC_STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# gRPC codes that are a server's own fault (client side: every non-OK code is an error).
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})


def failure_flag(entry: Entry) -> str:
    for flag in entry.response_flags:
        if flag in FAILURE_FLAGS:
            return flag
    return ""


def error_type(entry: Entry, side: Side) -> str:
    """``error.type`` for the side, or '' when the call succeeded from that side's view."""
    if entry.protocol == "grpc" and entry.grpc_status >= 0:
        status = entry.grpc_status
        if status != 0 and (side == "client" or status in GRPC_SERVER_ERRORS):
            return grpc_status_name(status)
    code = entry.response_code
    if entry.protocol != "tcp" and code >= (400 if side == "client" else 500):
        return str(code)
    flag = failure_flag(entry)
    if flag and (code == 0 or code >= 400 or entry.protocol == "tcp"):
        return flag
    return ""


def grpc_status_name(status: int) -> str:
    return GRPC_STATUS_NAMES[status] if 0 <= status < len(GRPC_STATUS_NAMES) else str(status)


def grpc_method(path: str) -> str:
    """``pkg.Service/Method`` from ``/pkg.Service/Method``; '' if the path is not one."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return f"{parts[0]}/{parts[1]}" if len(parts) == 2 and parts[0] and parts[1] else ""


def span_name(entry: Entry) -> str:
    """Never built from a raw path: the method (HTTP), ``pkg.Service/Method`` (gRPC), ``TCP``."""
    if entry.protocol == "grpc":
        return grpc_method(entry.path) or "gRPC"
    if entry.protocol == "tcp":
        return "TCP"
    return entry.method or "HTTP"


def split_authority(authority: str, scheme: str) -> tuple[str, int]:
    """Host and port of ``:authority`` (:func:`net.split_authority`); the port defaults from the scheme."""
    host, port = net.split_authority(authority)
    return host, port or (443 if scheme == "https" else 80)


def timing(entry: Entry, side: Side) -> tuple[int, int]:
    """Start and end (Unix ns) of the side's span, from the entry's own timestamps.

    The server side spans the whole downstream exchange; the client side the
    upstream exchange (first byte sent upstream to last byte received), which
    for a gateway lies inside its server side.
    """
    start = entry.start_ns
    if side == "client" and entry.first_upstream_tx_ns >= 0 and entry.last_upstream_rx_ns >= 0:
        return start + entry.first_upstream_tx_ns, start + entry.last_upstream_rx_ns
    for end in (entry.downstream_end_ns, entry.last_upstream_rx_ns):
        if end >= 0:
            return start, start + end
    return start, start
