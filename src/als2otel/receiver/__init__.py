"""Envoy ALS in: the gRPC server, the stream's identity, and the encoded entries it hands on
(``normalize.py`` makes an ``Entry`` of each, on the pipeline's side)."""

from .identity import identify
from .normalize import InvalidEntry
from .server import AlsServer, EntryBatch

__all__ = ["AlsServer", "EntryBatch", "InvalidEntry", "identify"]
