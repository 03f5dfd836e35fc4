"""From calls to OTLP: span building, metric aggregation and the IDs that link them."""

from .metric_sets import MetricRecorder
from .metrics import MetricStore
from .spans import SpanBatch, Translator

__all__ = ["MetricRecorder", "MetricStore", "SpanBatch", "Translator"]
