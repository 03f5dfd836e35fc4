"""The front's relay puts a GOAWAY of its own between two of the frames gRPC writes to a client,
which sheds the connection: its client opens its next calls on a new one."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from support import mesh
from support.net import HandingListener
from support.otlp_logs import LOGS_METHOD, export_request, record_of

from als2otel.receiver.front import GOAWAY, _Relay
from als2otel.receiver.server import AlsServer, EntryBatch
from als2otel.stats import Stats

from .test_fuzz import FUZZ


class Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def frame(kind: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, 0)) + (1).to_bytes(4, "big") + payload


def frames_of(data: bytes) -> list[bytes]:
    """Whole frames, in order; fails on bytes that do not end at a frame's end."""
    frames, position = [], 0
    while position < len(data):
        end = position + 9 + int.from_bytes(data[position : position + 3], "big")
        assert end <= len(data), "a frame cut short"
        frames.append(data[position:end])
        position = end
    return frames


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    asked_after=st.integers(min_value=0, max_value=12),
)
def test_a_goaway_goes_in_at_a_frame_boundary_whatever_the_chunks(
    payloads: list[bytes], cuts: list[int], asked_after: int
) -> None:
    """Frames written in chunks cut anywhere (inside a header, inside a payload, at a boundary),
    the GOAWAY asked for after any chunk: the client gets every frame whole and in order, with the
    GOAWAY once, between two of them (at the end if no boundary follows the ask)."""
    frames = [frame(i % 10, payload) for i, payload in enumerate(payloads)]
    data = b"".join(frames)
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    sink: Any = Sink()
    relay = _Relay(sink)
    for i, chunk in enumerate(chunks):
        if i == asked_after:
            relay.goaway()
        relay.write(chunk)
    if asked_after >= len(chunks):
        relay.goaway()
    written = frames_of(sink.data)
    assert written.count(GOAWAY) == 1
    assert [f for f in written if f != GOAWAY] == frames
    before = len(b"".join(chunks[:asked_after]))
    assert len(b"".join(written[: written.index(GOAWAY)])) >= before  # never before what was written


def test_a_goaway_waits_for_the_end_of_a_frame_cut_short() -> None:
    data = frame(0, b"x" * 100)
    sink: Any = Sink()
    relay = _Relay(sink)
    relay.write(data[:50])
    relay.goaway()
    assert sink.data == data[:50]  # not inside the frame
    relay.write(data[50:] + frame(1, b""))
    assert sink.data == data + GOAWAY + frame(1, b"")


async def test_a_shed_opentelemetry_logger_connection_moves_and_loses_no_record() -> None:
    """An OpenTelemetry logger's OTLP/gRPC connection, relayed as the workers' parent hands it over,
    is measured and shed like an ALS one: its client gets the GOAWAY and sends its next Export calls
    on a new connection; every call is answered in full and every record arrives."""
    received: list[int] = []

    def sink(batch: EntryBatch) -> bool:
        received.append(len(batch.entries))
        return True

    server = AlsServer("127.0.0.1:0", sink, Stats(), handed=True)
    await server.start()
    listener = HandingListener(server.take)
    target = f"127.0.0.1:{listener.port}"
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    export = channel.unary_unary(
        LOGS_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        sent, shed = 0, -1
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < 3.5:
            records = [record_of(mesh.outbound(sent + i), mesh.productpage()) for i in range(10)]
            answer = logs_service_pb2.ExportLogsServiceResponse.FromString(
                await export(export_request(records).SerializeToString())
            )
            assert not answer.HasField("partial_success")
            sent += len(records)
            server.sample(time.monotonic())  # as a worker's tick does
            if shed < 0 and elapsed > 2.2:
                shed = server.shed(gap=1e9)  # as the parent's ask makes a worker do
            await asyncio.sleep(0.02)
        assert shed == 1
        assert listener.accepted == 2  # the next calls came on a new connection
        assert sum(received) == sent
    finally:
        await channel.close()
        listener.close()
        await server.stop(1)
