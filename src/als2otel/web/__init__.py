"""The HTTP side: /metrics, /healthz, /readyz."""

from .server import HttpServer

__all__ = ["HttpServer"]
