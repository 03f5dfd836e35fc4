"""The Prometheus text format on /metrics, served by a running bridge."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from typing import Any

from conftest import bridge_config
from support import als, mesh

from als2otel.export.prometheus import label_name, render
from als2otel.stats import Stats

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.read().decode()


class TestExposition:
    async def test_metrics_endpoint(self, make_bridge: Any) -> None:
        """/metrics serves valid exposition with the http histograms and own counters."""
        bridge = await make_bridge(bridge_config(None))
        entries = [mesh.outbound(i, status=200 if i % 4 else 500, duration_ms=20) for i in range(8)]
        await als.send(f"127.0.0.1:{bridge.receiver.port}", [als.http_message(entries, mesh.productpage())])
        await asyncio.sleep(0.1)
        status, content_type, text = await asyncio.to_thread(
            fetch, f"http://127.0.0.1:{bridge.http.port}/metrics"
        )
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        for line in text.splitlines():
            assert line.startswith("# ") or SAMPLE.match(line), line
        labels = 'service_name="productpage",service_namespace="default",http_request_method="GET"'
        assert f'http_client_request_duration_seconds_count{{{labels},http_response_status_code="200"' in text
        assert re.search(
            r'http_client_request_duration_seconds_count\{[^}]*http_response_status_code="500"'
            r'[^}]*error_type="500"\} 2',
            text,
        )
        assert re.search(
            r'http_client_request_duration_seconds_bucket\{[^}]*status_code="200"[^}]*le="0.025"\} 6', text
        )
        assert 'als2otel_entries_received_total{api_version="v3",log_type="http"} 8' in text

    async def test_health_and_readiness(self, make_bridge: Any) -> None:
        """/healthz and /readyz are 200 once the bridge is up (tests/analysis/test_k8s.py shows /readyz
        at 503 until the Kubernetes cache's first list)."""
        bridge = await make_bridge(bridge_config(None))
        base = f"http://127.0.0.1:{bridge.http.port}"
        assert (await asyncio.to_thread(fetch, f"{base}/healthz"))[0] == 200
        assert (await asyncio.to_thread(fetch, f"{base}/readyz"))[0] == 200


class TestRendering:
    def test_escaping_and_names(self) -> None:
        """Label values are escaped; attribute keys become valid label names."""
        stats = Stats()
        stats.entries_invalid.inc('weird"reason\\with\nnewline')
        text = render(None, stats)
        assert 'als2otel_entries_invalid_total{reason="weird\\"reason\\\\with\\nnewline"} 1' in text
        assert label_name("http.response.status_code") == "http_response_status_code"
        assert label_name("9lives") == "_9lives"
