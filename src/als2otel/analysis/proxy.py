"""The analyzer that needs only the reporting proxy's own identity.

A sidecar's outbound entry becomes a client-side call from the proxy's own
workload to the destination named by the upstream cluster (or ``:authority``);
an inbound entry a server-side call to the proxy's workload from an unknown
caller; a gateway's entry both, its caller outside the mesh. Its answers are
provisional: mx-mesh and k8s-mesh, where they resolve, take precedence.
"""

from __future__ import annotations

from .. import istio
from ..model import FROM_INSIDE, FROM_OUTSIDE, PROVISIONAL, Call, Direction, Entry, Proxy
from .chain import Resolution


class ProxyAnalyzer:
    name = "proxy"

    def analyze(self, entry: Entry, proxy: Proxy, direction: Direction) -> Resolution:
        own = proxy.workload
        if own is None:
            return [], "unknown_proxy_workload"
        calls = []
        if direction in ("inbound", "gateway"):
            outside = FROM_OUTSIDE if direction == "gateway" else FROM_INSIDE
            calls.append(Call("server", entry, proxy, None, own, outside, PROVISIONAL))
        if direction in ("outbound", "gateway"):
            destination = istio.destination_by_name(entry)
            if destination is None:
                return calls, "unknown_destination"
            calls.append(Call("client", entry, proxy, own, destination, FROM_INSIDE, PROVISIONAL))
        return calls, ""
