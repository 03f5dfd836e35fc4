"""The analyzer chain: each analyzer resolves what it can, in the configured order.

An entry yields the sides its proxy's position gives it: a sidecar's inbound
entry the server side, its outbound entry the client side, a gateway's entry
both. For each side the chain keeps the first *resolved* call; a provisional
call (a destination known only by host name) stands until a later analyzer
resolves that side better. The built-in :class:`ProxyAnalyzer`, which needs
nothing but the reporting proxy's own identity, always runs last.
"""

from __future__ import annotations

from typing import Protocol

from .. import istio
from ..model import Call, Direction, Entry, Proxy, Side
from ..stats import Stats

SIDES = {
    "inbound": ("server",),
    "outbound": ("client",),
    "gateway": ("server", "client"),
}


Resolution = tuple[list[Call], str]
"""What one analyzer made of an entry: its calls, and why there are none (or fewer) when so ("" else)."""


class Analyzer(Protocol):
    name: str

    def analyze(self, entry: Entry, proxy: Proxy, direction: Direction) -> Resolution: ...


def direction_of(entry: Entry, proxy: Proxy) -> Direction:
    """Which way the entry's request passed its proxy."""
    if proxy.is_gateway:
        return "gateway"
    kind = istio.cluster_direction(entry.upstream_cluster)
    if kind == "inbound":
        return "inbound"
    if kind:
        return "outbound"
    if proxy.role == "unknown":
        # A plain Envoy (front proxy, not Istio's): a server to its clients, a client upstream.
        return "gateway"
    return "unknown"


class AnalyzerChain:
    def __init__(self, analyzers: list[Analyzer], fallback: Analyzer, stats: Stats) -> None:
        self._analyzers = [*analyzers, fallback]
        self._stats = stats

    @property
    def names(self) -> list[str]:
        return [a.name for a in self._analyzers]

    def resolve(self, entry: Entry, proxy: Proxy) -> list[Call]:
        direction = direction_of(entry, proxy)
        if direction == "unknown":
            self._stats.entries_unresolved.inc("unknown_direction")
            return []
        if direction == "gateway":
            return self._resolve_both(entry, proxy, direction)
        # A sidecar's entry has one side: the first resolved call for it wins.
        side = SIDES[direction][0]
        provisional = None
        reason = ""
        for analyzer in self._analyzers:
            calls, why = analyzer.analyze(entry, proxy, direction)
            for call in calls:
                if call.side is side:
                    if call.resolved:
                        return [call]
                    if provisional is None:
                        provisional = call
            reason = reason or why
        # Counted even when a provisional call still goes out: some end of it is unknown.
        self._stats.entries_unresolved.inc(reason or "no_analyzer_resolved")
        return [provisional] if provisional is not None else []

    def _resolve_both(self, entry: Entry, proxy: Proxy, direction: Direction) -> list[Call]:
        wanted = SIDES[direction]
        best: dict[Side, Call] = {}
        reason = ""
        for analyzer in self._analyzers:
            calls, why = analyzer.analyze(entry, proxy, direction)
            reason = reason or why
            for call in calls:
                current = best.get(call.side)
                if call.side in wanted and (current is None or (call.resolved and not current.resolved)):
                    best[call.side] = call
            if all(side in best and best[side].resolved for side in wanted):
                break
        if any(side not in best or not best[side].resolved for side in wanted):
            self._stats.entries_unresolved.inc(reason or "no_analyzer_resolved")
        return [best[side] for side in wanted if side in best]
