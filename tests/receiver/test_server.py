"""The ALS gRPC server, driven by a real gRPC client on a free local port."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from conftest import bridge_config
from support import als, mesh

from als2otel.app import Bridge
from als2otel.export import render
from als2otel.receiver._proto import als_pb2, core_pb2


async def settle(bridge: Bridge) -> None:
    """Everything the finished streams sent has been processed (the receiver hands it over before
    a stream's answer)."""
    await bridge.pipeline.drain()


def target(bridge: Bridge) -> str:
    return f"127.0.0.1:{bridge.receiver.port}"


class TestStreams:
    async def test_v3_and_v2_paths(self, make_bridge: Any) -> None:
        """Both API versions' StreamAccessLogs are served and counted by version and type."""
        bridge = await make_bridge(bridge_config(None))
        ident = mesh.productpage()
        assert (
            await als.send(target(bridge), [als.http_message([mesh.outbound(1), mesh.outbound(2)], ident)])
            is None
        )
        tcp = als.tcp_message(
            [
                als.tcp_entry(
                    downstream_remote=("10.1.0.4", 1),
                    downstream_local=("10.1.0.9", 27017),
                    upstream_remote=("10.1.0.9", 27017),
                    upstream_local=("10.1.0.4", 3),
                    cluster="outbound|27017||mongodb.default.svc.cluster.local",
                )
            ],
            ident,
        )
        assert await als.send(target(bridge), [tcp], method=als.V2_METHOD) is None
        await settle(bridge)
        assert bridge.stats.entries_received.get("v3", "http") == 2
        assert bridge.stats.entries_received.get("v2", "tcp") == 1
        assert bridge.stats.calls.get("client") == 3

    async def test_identifier_holds_for_the_whole_stream(self, make_bridge: Any) -> None:
        """Messages after the first carry no identifier and are attributed to the first's proxy."""
        bridge = await make_bridge(bridge_config(None))
        messages = [als.http_message([mesh.outbound(0)], mesh.productpage())]
        messages += [als.http_message([mesh.outbound(i)]) for i in range(1, 5)]
        assert await als.send(target(bridge), messages) is None
        await settle(bridge)
        assert bridge.stats.calls.get("client") == 5
        text = render(bridge.metrics, bridge.stats)
        assert 'http_client_request_duration_seconds_count{service_name="productpage"' in text

    async def test_large_first_message(self, make_bridge: Any) -> None:
        """Envoy's ~70 KB node description (hundreds of extensions) is accepted and skipped cheaply."""
        bridge = await make_bridge(bridge_config(None))
        ident = mesh.productpage()
        message = als.http_message([mesh.outbound(0)], ident)
        raw = bytearray(message.SerializeToString())
        # node.extensions (field 9 of Node) as unknown bytes inside identifier.node
        extension = b"".join(
            b"\x4a" + bytes([len(body)]) + body
            for body in (b"\x0a\x20" + f"envoy.filters.http.ext_{i:020d}".encode()[:32] for i in range(600))
        )
        node = ident.node.SerializeToString() + extension
        ident_bytes = (
            b"\x0a"
            + _varint(len(node))
            + node
            + b"\x12"
            + _varint(len(ident.log_name))
            + ident.log_name.encode()
        )
        entries = als_pb2.StreamAccessLogsMessage(http_logs=message.http_logs).SerializeToString()
        raw = b"\x0a" + _varint(len(ident_bytes)) + ident_bytes + entries
        assert len(raw) > 20_000
        assert await als.send(target(bridge), [bytes(raw)]) is None
        await settle(bridge)
        assert bridge.stats.calls.get("client") == 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class TestQueueBound:
    async def test_a_message_larger_than_the_queue_is_taken_when_the_queue_is_empty(
        self, make_bridge: Any, monkeypatch: Any
    ) -> None:
        """One message of more entries than the analysis queue holds: taken whole when nothing else
        waits (never dropped for its size alone); while the queue holds entries, another is dropped
        and counted as queue_full."""
        bridge = await make_bridge(bridge_config(None))
        monkeypatch.setattr(bridge.pipeline, "_max_queued", 50)
        entries = [mesh.outbound(i) for i in range(80)]
        assert await als.send(target(bridge), [als.http_message(entries, mesh.productpage())]) is None
        await settle(bridge)
        assert bridge.stats.calls.get("client") == 80
        assert bridge.stats.dropped.get("entries", "queue_full") == 0
        batch = bridge.pipeline._queue  # two at once: the second finds the first still queued
        from als2otel.receiver import identify
        from als2otel.receiver.server import EntryBatch

        proxy = identify(mesh.productpage())
        encoded = [entry.SerializeToString() for entry in entries]
        assert bridge.pipeline.submit(EntryBatch(proxy, "v3", "http", encoded))
        assert not bridge.pipeline.submit(EntryBatch(proxy, "v3", "http", encoded))
        assert len(batch) == 1 and bridge.stats.dropped.get("entries", "queue_full") == 80


class TestBadInput:
    async def test_malformed_message_ends_only_its_stream(self, make_bridge: Any) -> None:
        """Bytes that do not parse end that stream with INVALID_ARGUMENT; other streams go on."""
        bridge = await make_bridge(bridge_config(None))
        good = als.send(
            target(bridge),
            [als.http_message([mesh.outbound(i)], mesh.productpage() if i == 0 else None) for i in range(20)],
        )
        bad = als.send(target(bridge), [b"\xff\xff\xff\xff garbage"])
        good_error, bad_error = await asyncio.gather(good, bad)
        assert good_error is None
        assert bad_error is not None and bad_error.code() == grpc.StatusCode.INVALID_ARGUMENT
        await settle(bridge)
        assert bridge.stats.entries_invalid.get("malformed_message") == 1
        assert bridge.stats.calls.get("client") == 20

    async def test_stream_without_identifier(self, make_bridge: Any) -> None:
        """Entries before any identifier end the stream with a clear status."""
        bridge = await make_bridge(bridge_config(None))
        error = await als.send(target(bridge), [als.http_message([mesh.outbound(0)])])
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "identifier" in (error.details() or "")
        assert bridge.stats.entries_invalid.get("missing_identifier") == 1

    async def test_bad_entry_is_skipped_and_the_stream_goes_on(self, make_bridge: Any) -> None:
        """A pipe address and a missing start time are counted; the entries around them still count."""
        bridge = await make_bridge(bridge_config(None))
        pipe = mesh.outbound(1)
        pipe.common_properties.upstream_remote_address = core_pb2.Address(
            pipe=core_pb2.Pipe(path="/tmp/x.sock")
        ).SerializeToString()
        no_start = mesh.outbound(2)
        no_start.common_properties.ClearField("start_time")
        messages = [
            als.http_message([mesh.outbound(0), pipe, no_start, mesh.outbound(3)], mesh.productpage()),
            als.http_message([mesh.outbound(4)]),
        ]
        assert await als.send(target(bridge), messages) is None
        await settle(bridge)
        assert bridge.stats.entries_invalid.get("address_kind") == 1
        assert bridge.stats.entries_invalid.get("missing_start_time") == 1
        assert bridge.stats.calls.get("client") == 3

    async def test_garbage_filter_state_never_ends_the_stream(self, make_bridge: Any) -> None:
        """Filter state of any shape passes through the receiver untouched."""
        bridge = await make_bridge(bridge_config(None))
        entry = mesh.outbound(0)
        entry.common_properties.filter_state_objects[
            "upstream_peer"
        ].type_url = "type.googleapis.com/nonsense"
        entry.common_properties.filter_state_objects["upstream_peer"].value = b"\x00\x01\x02"
        assert await als.send(target(bridge), [als.http_message([entry], mesh.productpage())]) is None
        await settle(bridge)
        assert bridge.stats.calls.get("client") == 1

    async def test_streams_end_after_a_message_once_their_connection_is_aged(self, make_bridge: Any) -> None:
        """At max_connection_age every stream of a connection, the one opened later too, is ended with
        OK right after a message (nothing in flight is lost); a silent one is closed with its
        connection the grace later. All three count as max_connection_age, none as cancelled."""
        receiver = {"listen": "127.0.0.1:0", "max_connection_age": "1s", "max_connection_age_grace": "0.5s"}
        bridge = await make_bridge(bridge_config(None, receiver=receiver))
        channel = grpc.aio.insecure_channel(target(bridge))
        stream = channel.stream_unary(
            als.V3_METHOD, request_serializer=_serialize, response_deserializer=bytes
        )
        sent: list[int] = []

        async def busy() -> Any:
            yield als.http_message([mesh.outbound(0)], mesh.productpage())
            sent.append(1)
            while True:
                await asyncio.sleep(0.05)
                yield als.http_message([mesh.outbound(0)])
                sent.append(1)

        async def silent() -> Any:
            yield als.http_message([mesh.outbound(0)], mesh.productpage())
            sent.append(1)
            await asyncio.Event().wait()

        async def later() -> Any:
            await asyncio.sleep(0.6)
            return await stream(busy())

        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            quiet = asyncio.ensure_future(stream(silent()))
            first, second = await asyncio.wait_for(asyncio.gather(stream(busy()), later()), 5)
            assert first == second == b""  # OK, not cancelled
            assert 1.1 <= loop.time() - start < 2.0
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(quiet, 5)
        finally:
            await channel.close()
        await settle(bridge)
        assert bridge.stats.entries_received.get("v3", "http") == len(sent)
        assert bridge.stats.calls.get("client") == len(sent)
        counts = bridge.stats.streams_ended
        assert (counts.get("max_connection_age"), counts.get("client_cancelled")) == (3, 0)

    async def test_client_disconnecting_mid_stream(self, make_bridge: Any) -> None:
        """A client that goes away mid-stream is counted as client_cancelled; what it sent before counts."""
        bridge = await make_bridge(bridge_config(None))
        channel = grpc.aio.insecure_channel(target(bridge))
        call = channel.stream_unary(
            als.V3_METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> Any:
            while True:
                yield await queue.get()

        task = asyncio.ensure_future(call(requests()))
        await queue.put(als.http_message([mesh.outbound(0)], mesh.productpage()))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if bridge.stats.entries_received.get("v3", "http"):
                break
        await channel.close()
        task.cancel()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if bridge.stats.streams_active.value == 0:
                break
        await settle(bridge)
        assert bridge.stats.streams_active.value == 0
        ended = bridge.stats.streams_ended
        assert (ended.get("client_cancelled"), ended.get("client_closed")) == (1, 0)
        assert bridge.stats.calls.get("client") == 1


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
