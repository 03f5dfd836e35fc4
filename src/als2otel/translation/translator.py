"""A resolved call into its spans, metric points and topology edge.

:class:`Translator` keeps no state but the batch and store it writes into, the call shapes
it has worked out (:mod:`.shapes`) and the count of repeated hops (:class:`ids.Repeats`):
the same calls in the same order give the same spans and points, which the golden tests pin.
"""

from __future__ import annotations

from ..model import Call, Workload
from ..stats import Counter
from . import ids, semconv
from .metric_sets import MetricRecorder
from .shapes import MAX_SHAPES, Shape, shape_key, span_name_and_attributes
from .spans import SpanBatch, call_span
from .topology import Topology


class Translator:
    """Writes each call's span into a :class:`SpanBatch` and its points through a :class:`MetricRecorder`."""

    def __init__(
        self,
        metrics: MetricRecorder | None,
        *,
        traces: bool = True,
        sampling_ratio: float = 1.0,
        topology: Topology | None = None,
        rotations: Counter | None = None,
    ) -> None:
        """``rotations`` counts the bounded cache here starting over (call shapes)."""
        self._metrics = metrics
        self._topology = topology
        self._traces = traces
        self._ratio = sampling_ratio
        self._rotations = rotations
        self._shapes: dict[tuple[object, ...], Shape] = {}
        self._repeats = ids.repeats()
        self._ports: dict[int, bytes] = {}

    def add(self, call: Call, batch: SpanBatch) -> None:
        entry = call.entry
        side = call.side
        client = side == "client"
        owner = call.source if client else call.destination
        if owner is None:
            return
        key = shape_key(call)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key, call, owner)
        error, name, attributes, plan = shape
        start, end = semconv.timing(entry, side)
        seconds = (end - start) / 1e9
        metrics = self._metrics
        if metrics is not None:
            metrics.record(plan, seconds)
            if metrics.istio:
                metrics.record_istio(call, seconds)
        if self._topology is not None:
            self._topology.record(call, seconds)
        if self._traces:
            repeats = self._repeats
            span = call_span(call, start, end, error, name, attributes, repeats, self._ratio, self._ports)
            if span:
                batch.add(owner, span)

    def forget_shapes(self) -> None:
        """Work every call shape out again: the metric store removed series that plans held."""
        self._shapes.clear()

    def _shape(self, key: tuple[object, ...], call: Call, owner: Workload) -> Shape:
        """What calls of one shape share, worked out once: error, name, attributes, metric series."""
        error = semconv.error_type(call.entry, call.side)
        name, attributes = span_name_and_attributes(call, error)
        plan = None
        if self._metrics is not None:
            plan = self._metrics.plan(call, owner, error)
            if plan is None:
                # The store is full: not kept, so each such call asks (and is counted) again.
                return Shape(error, name, attributes, None)
        if len(self._shapes) >= MAX_SHAPES:
            self._shapes.clear()
            if self._rotations is not None:
                self._rotations.inc("call_shapes")
        shape = self._shapes[key] = Shape(error, name, attributes, plan)
        return shape
