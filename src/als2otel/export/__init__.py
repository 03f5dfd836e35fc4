"""Out: OTLP transports with a bounded, retrying sending queue, and the Prometheus text format."""

from .otlp import OtlpExporter
from .prometheus import render, render_chunks
from .transport import Transport, make_transport

__all__ = ["OtlpExporter", "Transport", "make_transport", "render", "render_chunks"]
