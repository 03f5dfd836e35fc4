"""A resolved call into its spans, metric points and topology edge.

:class:`Translator` keeps no state but the batch and store it writes into, the call shapes
it has worked out (:mod:`.shapes`) and the count of repeated hops (:class:`ids.Repeats`):
the same calls in the same order give the same spans and points, which the golden tests pin.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1 import trace_pb2

from ..model import Call, Workload
from ..stats import Counter
from . import ids, semconv, wire
from .metric_sets import MetricRecorder
from .shapes import MAX_SHAPES, Shape, shape_key, span_name_and_attributes
from .spans import SpanBatch, unique_attributes
from .topology import Topology

_CLIENT_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_CLIENT)
_SERVER_KIND = wire.span_kind(trace_pb2.Span.SPAN_KIND_SERVER)


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
            self._add_span(
                call, owner, batch, start, end, error, name, attributes + unique_attributes(call, self._ports)
            )

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

    def _add_span(
        self,
        call: Call,
        owner: Workload,
        batch: SpanBatch,
        start: int,
        end: int,
        error: str,
        name: bytes,
        attributes: bytes,
    ) -> None:
        entry = call.entry
        client = call.side == "client"
        if client:
            connection = ids.connection_key(entry.upstream_local, entry.upstream_remote)
        else:
            caller = entry.downstream_direct_remote or entry.downstream_remote
            connection = ids.connection_key(caller, entry.downstream_local)
        trace_id, app_span = ids.trace_context(entry.request_headers, entry.request_id, connection)
        if self._ratio < 1.0 and not ids.sampled(trace_id, self._ratio):
            return
        hop = f"{connection}|{entry.method}|{entry.path}"  # one request on one connection
        node = call.proxy.node_id
        repeats = self._repeats
        if client:
            span_id = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, ids.CLIENT, hop))
            # Under the app's own span when it propagated one, else under this proxy's server side.
            if not app_span or call.proxy.is_gateway:
                app_span = ids.span_id(
                    trace_id, ids.SERVER, node, repeats.ended_before(trace_id, ids.SERVER, node, start)
                )
            parent = app_span
            kind = _CLIENT_KIND
        else:
            span_id = ids.span_id(trace_id, ids.SERVER, node, repeats.add(trace_id, ids.SERVER, node, end))
            if call.from_outside:
                parent = app_span
            else:
                parent = ids.span_id(trace_id, ids.CLIENT, hop, repeats.add(trace_id, ids.HOP, hop))
            kind = _SERVER_KIND
        batch.add(owner, wire.span(trace_id, span_id, parent, name, kind, start, end, attributes, error))
