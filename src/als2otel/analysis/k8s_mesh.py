"""k8s-mesh: calls resolved by mapping the entry's IP addresses to Kubernetes pods.

The roles, as SkyWalking's k8s-mesh defines them:

* sidecar inbound (``inbound|...``): source = the pod at the caller's address
  (``downstream_direct_remote_address``: the remote address may come from
  X-Forwarded-For), or outside the mesh when no pod holds it; destination = this pod;
* sidecar outbound (``outbound|...``, passthrough): source = this pod,
  destination = the pod at ``upstream_remote_address``; an address that maps to
  nothing is named from the cluster's host (``api.example.com``), never made up;
* gateway (``router~``, ``ingress~``, ``waypoint~``): a server side from the
  caller (outside the mesh when the address maps to nothing) and a client side
  to the upstream pod.

Lookups are in-memory dict reads on the index the watch cache keeps live.
"""

from __future__ import annotations

from .. import istio
from ..model import FROM_OUTSIDE, Call, Direction, Entry, Proxy, Workload
from .chain import Resolution
from .k8s import KubeIndex


class K8sMeshAnalyzer:
    name = "k8s-mesh"

    def __init__(self, index: KubeIndex) -> None:
        self._index = index

    def _at(self, address: tuple[str, int] | None) -> Workload | None:
        return self._index.workload_for_ip(address[0]) if address is not None else None

    def _own(self, entry: Entry, proxy: Proxy, direction: Direction) -> Workload | None:
        """This proxy's pod: by the node id's IP, else any of INSTANCE_IPS (a dual-stack pod or a
        waypoint lists them all), else the side of the entry that is its own address."""
        lookup = self._index.workload_for_ip
        own = lookup(proxy.ip) if proxy.ip else None
        if own is None:
            for ip in proxy.instance_ips:
                own = lookup(ip)
                if own is not None:
                    return own
            own = self._at(entry.downstream_remote if direction == "outbound" else entry.downstream_local)
        return own

    def analyze(self, entry: Entry, proxy: Proxy, direction: Direction) -> Resolution:
        own = self._own(entry, proxy, direction)
        if own is None:
            return [], "unknown_pod_ip"
        calls: list[Call] = []
        reason = ""
        if direction in ("inbound", "gateway"):
            caller = self._at(entry.caller_address)
            if caller is not None:
                calls.append(Call("server", entry, proxy, caller, own))
            else:
                # No pod holds the caller's address: it called from outside the cluster.
                calls.append(Call("server", entry, proxy, None, own, FROM_OUTSIDE))
        if direction in ("outbound", "gateway"):
            destination = self._at(entry.upstream_remote)
            if destination is not None:
                calls.append(Call("client", entry, proxy, own, destination))
            else:
                named = istio.destination_by_name(entry)
                if named is not None and named.external:
                    # Outside the mesh, as the cluster or authority names it: that is the answer.
                    calls.append(Call("client", entry, proxy, own, named))
                else:
                    reason = reason or "unknown_destination_ip"
        return calls, reason
