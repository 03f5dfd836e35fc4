from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable


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


class HandingListener:
    """A loopback port whose connections are handed to ``take`` (an ``AlsServer.take``), as the
    workers' parent hands them to a worker; ``accepted`` counts them."""

    def __init__(self, take: Callable[[socket.socket], None]) -> None:
        self._take = take
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.setblocking(False)
        self.port = int(self._socket.getsockname()[1])
        self.accepted = 0
        asyncio.get_running_loop().add_reader(self._socket.fileno(), self._hand)

    def _hand(self) -> None:
        sock, _ = self._socket.accept()
        self._take(sock)
        self.accepted += 1

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._socket.fileno())
        self._socket.close()
