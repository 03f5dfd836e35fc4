"""Envoy ALS in: the gRPC server, the stream's identity and entry normalisation."""

from .identity import identify
from .normalize import InvalidEntry, normalize_http, normalize_tcp
from .server import AlsServer, EntryBatch

__all__ = ["AlsServer", "EntryBatch", "InvalidEntry", "identify", "normalize_http", "normalize_tcp"]
