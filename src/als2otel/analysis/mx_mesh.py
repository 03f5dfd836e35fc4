"""mx-mesh: calls resolved from the workload metadata Istio's proxies exchange.

Needs no Kubernetes API, so it names workloads on VMs as well as in pods. The
reporting proxy's own workload comes from its node metadata (read once per
stream); the peer comes from the entry's filter state:

* ``downstream_peer`` gives the server side: peer -> this proxy's workload;
* ``upstream_peer`` gives the client side: this proxy's workload -> peer;
* a gateway with no downstream peer was called from outside the mesh.

A sidecar calling a destination without a sidecar has no upstream peer: the
chain then keeps the client side named from the upstream cluster, and a later
analyzer (k8s-mesh) may still resolve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import FROM_OUTSIDE, Call, Direction, Entry, Proxy, Workload
from .chain import Resolution
from .peers import PeerDecoder, PeerError

PEER_HEADER = "x-envoy-peer-metadata"

# Newest first: when both generations are logged for one side, one is used.
DOWNSTREAM_KEYS = ("downstream_peer", "wasm.downstream_peer")
UPSTREAM_KEYS = ("upstream_peer", "wasm.upstream_peer")


class MxMeshAnalyzer:
    name = "mx-mesh"

    def __init__(self, decoder: PeerDecoder | None = None) -> None:
        self._decoder = decoder or PeerDecoder()

    def analyze(self, entry: Entry, proxy: Proxy, direction: Direction) -> Resolution:
        own = proxy.workload
        if own is None:
            return [], "unknown_proxy_workload"
        calls: list[Call] = []
        reason = ""
        if direction in ("inbound", "gateway"):
            try:
                peer = self._peer(entry.filter_state, DOWNSTREAM_KEYS, entry.request_headers)
            except PeerError as exc:
                peer, reason = None, exc.reason
            if peer is not None and _same_instance(peer, own):
                # A gateway logs the request as it forwarded it, with its own metadata added.
                peer = None
            if peer is not None:
                calls.append(Call("server", entry, proxy, peer, own))
            elif direction == "gateway" and not reason:
                calls.append(Call("server", entry, proxy, None, own, FROM_OUTSIDE))
            else:
                reason = reason or "no_peer_metadata"
        if direction in ("outbound", "gateway"):
            try:
                peer = self._peer(entry.filter_state, UPSTREAM_KEYS, entry.response_headers)
            except PeerError as exc:
                peer, reason = None, reason or exc.reason
            if peer is not None:
                calls.append(Call("client", entry, proxy, own, peer))
            else:
                reason = reason or "no_peer_metadata"
        return calls, reason

    def _peer(
        self, filter_state: Mapping[str, Any] | None, keys: tuple[str, ...], headers: Mapping[str, str] | None
    ) -> Workload | None:
        """The peer from the first key that decodes; PeerError when only corrupt ones are there."""
        error: PeerError | None = None
        if filter_state:
            for key in keys:
                value = filter_state.get(key)
                if value is None:
                    continue
                try:
                    return self._decoder.decode_any(value.type_url, value.value)
                except PeerError as exc:
                    error = error or exc
        header = headers.get(PEER_HEADER) if headers else None
        if header:
            try:
                return self._decoder.decode_header(header)
            except PeerError as exc:
                error = error or exc
        if error is not None:
            raise error
        return None


def _same_instance(a: Workload, b: Workload) -> bool:
    return bool(a.instance) and (a.instance, a.namespace) == (b.instance, b.namespace)
