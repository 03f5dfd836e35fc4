"""The Prometheus text exposition format (0.0.4) of the metric store and own counters.

Names and units follow the OTLP-to-Prometheus rules (``http.server.request.duration``
in seconds -> ``http_server_request_duration_seconds``; monotonic sums end in
``_total``) so one query works on ``/metrics`` and behind a Collector. A
resource's identity becomes the labels ``service_name`` and ``service_namespace``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from ..stats import Stats
from ..translation.metrics import Kind, MetricStore, Series

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str:
    name = _INVALID_LABEL_CHARS.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _series_labels(series: Series) -> list[tuple[str, str]]:
    pairs = []
    if series.resource is not None:
        pairs.append(("service_name", series.resource.service_name))
        if series.resource.namespace:
            pairs.append(("service_namespace", series.resource.namespace))
    pairs.extend((label_name(k), v) for k, v in series.attributes)
    return pairs


CHUNK_SERIES = 64
"""Series rendered per chunk of :func:`render_chunks`; the page is served chunk by chunk."""


def render(store: MetricStore | None, stats: Stats) -> str:
    """The whole page at once."""
    return "".join(render_chunks(store, stats))


def render_chunks(store: MetricStore | None, stats: Stats) -> Iterator[str]:
    """The page in chunks of at most :data:`CHUNK_SERIES` series, so a server can yield between them.

    Each metric's series are the ones it had when its turn came; a series keeps
    the values it had when its chunk was rendered.
    """
    if store is not None:
        for metric, all_series in list(store.by_metric.items()):
            members = list(all_series)
            if not members:
                continue
            name = metric.prom_name
            histogram = metric.kind is Kind.HISTOGRAM
            lines = [f"# HELP {name} {metric.description}", f"# TYPE {name} {metric.kind.value}"]
            for start in range(0, len(members), CHUNK_SERIES):
                for series in members[start : start + CHUNK_SERIES]:
                    if histogram:
                        _histogram_lines(lines, name, series)
                    else:
                        lines.append(f"{name}{_labels(_series_labels(series))} {_number(series.value)}")
                lines.append("")
                yield "\n".join(lines)
                lines = []
    lines = []
    for counter in stats.counters():
        lines.append(f"# HELP {counter.name} {counter.help}")
        lines.append(f"# TYPE {counter.name} counter")
        for values, count in sorted(counter.values.items()):
            lines.append(f"{counter.name}{_labels(list(zip(counter.labels, values, strict=True)))} {count}")
    for gauge in stats.gauges():
        lines.append(f"# HELP {gauge.name} {gauge.help}")
        lines.append(f"# TYPE {gauge.name} gauge")
        lines.append(f"{gauge.name} {_number(gauge.value)}")
    lines.append("")
    yield "\n".join(lines)


def _histogram_lines(lines: list[str], name: str, series: Series) -> None:
    histogram = series.histogram
    assert histogram is not None
    labels = _series_labels(series)
    cumulative = 0
    for bound, count in zip(series.metric.buckets, histogram.counts, strict=False):
        cumulative += count
        lines.append(f"{name}_bucket{_labels([*labels, ('le', _number(bound))])} {cumulative}")
    lines.append(f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {histogram.count}")
    lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.total)}")
    lines.append(f"{name}_count{_labels(labels)} {histogram.count}")


_SUFFIXES = ("_bucket", "_sum", "_count")


def merge_pages(pages: list[str]) -> Iterator[str]:
    """Several processes' pages as one: samples with the same name and labels summed (counters,
    histogram buckets, sums and counts, and gauges such as open streams), families in order of
    first appearance, in chunks of at most :data:`CHUNK_SERIES` samples a family."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    for page in pages:
        for line in page.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    header, _ = families.setdefault(parts[2], ([], {}))
                    if len(header) < 2 and line not in header:
                        header.append(line)
                continue
            key, _, text = line.rpartition(" ")
            name = key.partition("{")[0]
            family = name
            if family not in families:
                for suffix in _SUFFIXES:
                    if name.endswith(suffix) and name.removesuffix(suffix) in families:
                        family = name.removesuffix(suffix)
                        break
            _, samples = families.setdefault(family, ([], {}))
            try:
                samples[key] = samples.get(key, 0.0) + float(text)
            except ValueError:
                continue
    for header, samples in families.values():
        lines = list(header)
        for count, (key, value) in enumerate(samples.items(), 1):
            lines.append(f"{key} {_number(value)}")
            if count % (CHUNK_SERIES * 8) == 0:
                yield "\n".join(lines) + "\n"
                lines = []
        if lines:
            yield "\n".join(lines) + "\n"
