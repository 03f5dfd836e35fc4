"""From calls to OTLP: span building, metric aggregation and the IDs that link them."""

from .metric_sets import MetricRecorder
from .metrics import MetricStore
from .spans import SpanBatch, Translator
from .topology import Topology

__all__ = ["MetricRecorder", "MetricStore", "SpanBatch", "Topology", "Translator"]
