"""Tiny HTTP apps standing in for services behind the sidecars."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StatusApp:
    """Answers ``/status/<code>`` with that code and ``/delay/<ms>`` after sleeping; counts requests."""

    def __init__(self, ip: str, port: int) -> None:
        app = self
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", 0) or 0)
                if length:
                    self.rfile.read(length)
                with app._lock:
                    app.requests.append((self.command, self.path))
                parts = self.path.strip("/").split("/")
                code = 200
                if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
                    code = int(parts[1])
                elif len(parts) == 2 and parts[0] == "delay" and parts[1].isdigit():
                    time.sleep(int(parts[1]) / 1000)
                body = b"ok\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((ip, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> StatusApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
