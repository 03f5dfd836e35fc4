"""The servicegraph connector's pairing rules, applied to exported spans.

CLIENT spans keyed by (trace id, span id), SERVER spans by (trace id, parent
span id); an unpaired CLIENT goes to the virtual node named by its
``peer.service``; an unpaired root SERVER comes from ``user``. Node names are
the resource's ``service.name``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from support.otlp_receiver import attributes

CLIENT, SERVER = 3, 2


def edges(spans: list[tuple[dict[str, Any], Any]]) -> Counter[tuple[str, str]]:
    clients = {}
    servers = {}
    for resource, span in spans:
        if span.kind == CLIENT:
            clients[(span.trace_id, span.span_id)] = (resource["service.name"], span)
        elif span.kind == SERVER:
            servers.setdefault((span.trace_id, span.parent_span_id), []).append(
                (resource["service.name"], span)
            )
    out: Counter[tuple[str, str]] = Counter()
    for key, (client_name, span) in clients.items():
        paired = servers.pop(key, None)
        if paired:
            for server_name, _ in paired:
                out[(client_name, server_name)] += 1
        else:
            out[(client_name, attributes(span.attributes).get("peer.service", "unknown"))] += 1
    for (_, parent), group in servers.items():
        for server_name, _ in group:
            if not parent:
                out[("user", server_name)] += 1
    return out
