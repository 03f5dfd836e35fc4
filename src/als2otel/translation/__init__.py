"""From calls to OTLP: span building, metric aggregation and the IDs that link them."""

from .metrics import MetricStore
from .spans import SpanBatch, Translator

__all__ = ["MetricStore", "SpanBatch", "Translator"]
