"""From calls to OTLP: span building, metric aggregation and the IDs that link them."""

from .metric_sets import MetricRecorder
from .metrics import MetricStore
from .spans import SpanBatch
from .topology import Topology
from .translator import Translator

__all__ = ["MetricRecorder", "MetricStore", "SpanBatch", "Topology", "Translator"]
