"""A real Prometheus (Debian's) scraping a bridge's /metrics, and PromQL against it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.net import free_port

PROMETHEUS = shutil.which("prometheus")


@contextlib.contextmanager
def scraping(directory: Path, metrics_port: int) -> Iterator[str]:
    """Prometheus scraping 127.0.0.1:``metrics_port`` every second; yields its base URL."""
    assert PROMETHEUS is not None
    port = free_port()
    (directory / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: als2otel\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])
