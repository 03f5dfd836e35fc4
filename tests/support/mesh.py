"""A small mesh's traffic for tests: productpage's sidecar and its outbound entries, both sides of
many productpage -> reviews calls as Istio's sidecars log them (peer metadata in filter state),
and the streams that carry them."""

from __future__ import annotations

from typing import Any

from support import als, peers

PRODUCTPAGE_NODE = "sidecar~10.1.0.4~productpage-v1-6b746f74dc-9stfq.default~default.svc.cluster.local"
PRODUCTPAGE_META = als.sidecar_metadata("productpage-v1-6b746f74dc-9stfq", "default", "productpage")


def productpage() -> Any:
    """The identifier productpage's sidecar opens its ALS streams with."""
    return als.identifier(PRODUCTPAGE_NODE, PRODUCTPAGE_META)


def outbound(i: int = 0, **overrides: Any) -> Any:
    """productpage's sidecar calling reviews: request ``i`` (its own ports, path and request id)."""
    args: dict[str, Any] = {
        "downstream_remote": ("10.1.0.4", 40000 + i % 20000),
        "downstream_local": ("10.96.0.9", 9080),
        "upstream_remote": ("10.1.0.9", 9080),
        "upstream_local": ("10.1.0.4", 10000 + i % 50000),
        "cluster": "outbound|9080||reviews.default.svc.cluster.local",
        "path": f"/reviews/{i}",
        "request_id": f"00000000-0000-4000-8000-{i:012d}",
    }
    args.update(overrides)
    return als.http_entry(**args)


CALLER, CALLEE = peers.pod("productpage"), peers.pod("reviews", suffix="5f7b9c6d8-qwert")


def inbound(i: int = 0, **overrides: Any) -> Any:
    """reviews' sidecar handing request ``i`` to its app (from productpage, unless overridden)."""
    args: dict[str, Any] = {
        "downstream_remote": ("10.1.0.4", 50000 + i),
        "downstream_local": ("10.1.0.9", 9080),
        "upstream_remote": ("10.1.0.9", 9080),
        "upstream_local": ("127.0.0.6", 41000 + i),
        "cluster": "inbound|9080||",
    }
    args.update(overrides)
    return als.http_entry(**args)


def sides(
    count: int, caller: peers.Peer = CALLER, callee: peers.Peer = CALLEE, first: int = 0
) -> tuple[list[Any], list[Any]]:
    """The client side (the caller's outbound) and server side (the callee's inbound) of ``count``
    calls, numbered from ``first`` (request ids and connections differ per number)."""
    client, server = [], []
    for i in range(first, first + count):
        rid = f"{i:08x}-2222-4000-8000-{i:012d}"
        port = 10000 + i % 50000
        client.append(
            als.http_entry(
                downstream_remote=("10.1.0.4", 1),
                downstream_local=("10.1.0.4", 15001),
                upstream_remote=("10.1.0.9", 9080),
                upstream_local=("10.1.0.4", port),
                cluster="outbound|9080||reviews.default.svc.cluster.local",
                request_id=rid,
                filter_state=peers.filter_state("struct", "upstream", callee),
            )
        )
        server.append(
            als.http_entry(
                downstream_remote=("10.1.0.4", port),
                downstream_local=("10.1.0.9", 9080),
                upstream_remote=("10.1.0.9", 9080),
                upstream_local=("127.0.0.6", 1),
                cluster="inbound|9080||",
                request_id=rid,
                filter_state=peers.filter_state("struct", "downstream", caller),
            )
        )
    return client, server


def stream(peer: peers.Peer, ip: str, entries: list[Any]) -> list[Any]:
    ident = als.identifier(
        f"sidecar~{ip}~{peer.name}.default~default.svc.cluster.local", peer.node_metadata()
    )
    return [
        als.http_message(entries[k : k + 500], ident if k == 0 else None) for k in range(0, len(entries), 500)
    ]
