from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_ready(http_port: int, timeout: float = 60.0, interval: float = 0.1) -> bool:
    """Poll a bridge's ``/readyz`` on loopback every ``interval`` seconds until it answers 200
    (a process just started); False if it did not within ``timeout``."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(interval)
    return False
