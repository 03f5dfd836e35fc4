"""Host and port as they are written: an ``:authority``, a listen address, an address Envoy's
OpenTelemetry logger prints. One parser for all of them."""

from __future__ import annotations


def split_authority(authority: str) -> tuple[str, int | None]:
    """Host and port of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; the port None when none
    is given. A port is one to five ASCII digits: anything else (``host:x``, ``a:b:c``, digits of
    other scripts, which ``int`` refuses) leaves the text whole as the host."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return authority, None
        host, rest = authority[1:end], authority[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if _is_port(port) else None
    name, sep, port = authority.rpartition(":")
    if sep and ":" not in name and _is_port(port):
        return name, int(port)
    return authority, None


def split_hostport(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` into parts; None when it is not one (a port is required, at
    most 65535, and a host)."""
    host, port = split_authority(text)
    return (host, port) if host and port is not None and port <= 65535 else None


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()
