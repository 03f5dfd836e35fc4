"""Out: OTLP transports with a bounded, retrying sending queue, and the Prometheus text format."""

from .otlp import OtlpExporter, Transport, make_transport
from .prometheus import render, render_chunks

__all__ = ["OtlpExporter", "Transport", "make_transport", "render", "render_chunks"]
