"""Hostile values inside otherwise valid ALS traffic, sent by a real gRPC client: each is counted,
and a clean batch afterwards still becomes exactly its spans."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import grpc
import pytest
from conftest import bridge_config
from support import als, mesh
from support.otlp_receiver import GrpcOtlpReceiver
from support.waiting import eventually

from als2otel.app import Bridge
from als2otel.export import render
from als2otel.receiver._proto import accesslog_pb2

NODE = mesh.PRODUCTPAGE_NODE
META = mesh.PRODUCTPAGE_META


def target(bridge: Bridge) -> str:
    return f"127.0.0.1:{bridge.receiver.port}"


async def clean_batch_becomes_its_spans(bridge: Bridge, otlp: GrpcOtlpReceiver, first: int) -> None:
    """20 good entries after the poison: the pipeline still turns each into its client span."""
    entries = [mesh.outbound(first + i) for i in range(20)]
    ids = {e.request.request_id.decode() for e in entries}
    assert await als.send(target(bridge), [als.http_message(entries, mesh.productpage())]) is None
    await bridge.pipeline.drain()
    bridge.flush_spans()

    def clean_spans() -> int:
        return sum(
            1
            for _, span in otlp.received.spans()
            for attr in span.attributes
            if attr.key == "envoy.request_id" and attr.value.string_value in ids
        )

    assert await eventually(lambda: clean_spans() == 20)
    assert not bridge.failed.is_set()


class TestPoisonedValues:
    @pytest.mark.parametrize("status", ["²", "٣", "9" * 5000, "-1", "", "\uff11\uff14"])
    async def test_grpc_status_that_is_no_code(
        self, make_bridge: Any, otlp: GrpcOtlpReceiver, status: str
    ) -> None:
        """A grpc-status trailer that is not a short ASCII number reads as no status; nothing stops."""
        bridge = await make_bridge(bridge_config(otlp.endpoint))
        poison = mesh.outbound(0, headers={"content-type": "application/grpc"})
        poison.response.response_trailers["grpc-status"] = status.encode()
        assert await als.send(target(bridge), [als.http_message([poison], mesh.productpage())]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.calls.get("client") == 1
        assert bridge.stats.entries_invalid.get("unexpected_error") == 0
        await clean_batch_becomes_its_spans(bridge, otlp, 1)

    async def test_invalid_utf8_spoils_only_its_field(self, make_bridge: Any, otlp: GrpcOtlpReceiver) -> None:
        """A byte that is not UTF-8 in a header or the user agent among 99 good entries: all 100 count."""
        bridge = await make_bridge(bridge_config(otlp.endpoint))
        entries = [mesh.outbound(i) for i in range(100)]
        entries[50].request.user_agent = b"curl/\xff\xfe"
        entries[50].request.request_headers["traceparent"] = b"00-\xc3\x28-01"
        entries[50].request.path = b"/reviews/\x80"
        assert await als.send(target(bridge), [als.http_message(entries, mesh.productpage())]) is None
        await bridge.pipeline.drain()
        bridge.flush_spans()
        assert await eventually(lambda: len(otlp.received.spans()) == 100)
        urls = {
            attr.value.string_value
            for _, span in otlp.received.spans()
            for attr in span.attributes
            if attr.key == "url.full"
        }
        assert "http:///reviews/\N{REPLACEMENT CHARACTER}" in urls
        assert sum(bridge.stats.entries_invalid.values.values()) == 0

    async def test_entry_that_does_not_parse_spoils_only_itself(self, make_bridge: Any) -> None:
        """Bytes that are no entry, inside a message that parses: that entry alone is counted invalid."""
        bridge = await make_bridge(bridge_config(None))
        message = als.http_message([mesh.outbound(i) for i in range(10)], mesh.productpage())
        message.http_logs.log_entry.insert(5, b"\x0a\xff\xff\xff\xff\x0f")
        assert await als.send(target(bridge), [message]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("malformed_entry") == 1
        assert bridge.stats.calls.get("client") == 10

    @pytest.mark.parametrize("seconds", [253_402_300_799, 0, -62_135_596_800])
    async def test_time_far_from_the_clock(self, make_bridge: Any, seconds: int) -> None:
        """Year 9999, 1970 or year 1: invalid before metrics or topology; the edge's count and rate stay."""
        bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"]))
        inbound = als.identifier(
            "sidecar~10.1.0.9~reviews-v1-x.default~default.svc.cluster.local",
            als.sidecar_metadata("reviews-v1-x", "default", "reviews"),
        )
        from support import peers

        caller = peers.Peer("productpage-v1-x", "default", "productpage", {"app": "productpage"})

        def server_entry(i: int) -> accesslog_pb2.HTTPAccessLogEntry:
            return als.http_entry(
                downstream_remote=("10.1.0.4", 40000 + i),
                downstream_local=("10.1.0.9", 9080),
                cluster="inbound|9080||",
                filter_state=peers.filter_state("flatnode", "downstream", caller),
                start_ms=1000 + i,
            )

        good = [server_entry(i) for i in range(60)]
        assert await als.send(target(bridge), [als.http_message(good, inbound)]) is None
        await bridge.pipeline.drain()
        (edge,) = bridge.topology.snapshot(300, als.synthetic_clock() / 1e9)["edges"]
        poison = server_entry(61)
        poison.common_properties.start_time.seconds = seconds
        assert await als.send(target(bridge), [als.http_message([poison], inbound)]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("time_out_of_range") == 1
        (after,) = bridge.topology.snapshot(300, als.synthetic_clock() / 1e9)["edges"]
        assert after["requests"] == edge["requests"] == 60
        assert after["rps"] <= edge["rps"]
        assert 'http_server_request_duration_seconds_count{service_name="reviews"' in render(
            bridge.metrics, bridge.stats
        )
        assert (
            "} 60\n"
            in render(bridge.metrics, bridge.stats).split("http_server_request_duration_seconds_count")[1]
        )

    async def test_negative_duration(self, make_bridge: Any) -> None:
        """A negative duration is invalid with its own reason."""
        bridge = await make_bridge(bridge_config(None))
        entry = mesh.outbound(0)
        entry.common_properties.time_to_last_downstream_tx_byte.seconds = -5
        entry.common_properties.time_to_last_downstream_tx_byte.nanos = 0
        assert await als.send(target(bridge), [als.http_message([entry], mesh.productpage())]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("bad_duration") == 1
        assert bridge.stats.calls.get("client") == 0

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    async def test_nan_in_node_metadata(self, make_bridge: Any, otlp: GrpcOtlpReceiver, value: float) -> None:
        """NaN or infinity anywhere in the node's metadata: the stream is read as any other."""
        bridge = await make_bridge(bridge_config(otlp.endpoint))
        meta = {**META, "ISTIO_VERSION": value, "LABELS": {**META["LABELS"], "weight": value}}
        message = als.http_message([mesh.outbound(0)], als.identifier(NODE, meta))
        assert await als.send(target(bridge), [message]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.calls.get("client") == 1
        assert bridge.stats.streams_ended.get("client_closed") == 1
        await clean_batch_becomes_its_spans(bridge, otlp, 1)

    async def test_errors_sent_to_clients_are_fixed_texts(self, make_bridge: Any) -> None:
        """A stream ended for bad input learns the reason, never an exception's text."""
        bridge = await make_bridge(bridge_config(None))
        error = await als.send(target(bridge), [b"\x0a\x05\x0a\x03\xff\xfe\xfd"])
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == ("malformed_message: message does not parse as StreamAccessLogsMessage")


class TestProcessingStops:
    @staticmethod
    def break_the_pipeline(monkeypatch: Any) -> None:
        """Counting the calls of a batch, after every entry's own ``try``, raises: a bug in the
        pipeline itself. Planted in ``stats.Counter``, which stays Python, so the compiled
        pipeline (setup.py), which does not see a method replaced on its own class, meets it too."""
        from als2otel.stats import Counter

        count = Counter.inc

        def inc(self: Counter, *label_values: str, by: int = 1) -> None:
            if self.name == "als2otel_calls_total":
                raise RuntimeError("a bug in the pipeline itself")
            count(self, *label_values, by=by)

        monkeypatch.setattr(Counter, "inc", inc)

    async def test_healthz_turns_503(self, make_bridge: Any, monkeypatch: Any) -> None:
        """If the pipeline task ends anyway, the bridge says it failed and /healthz answers 503."""
        self.break_the_pipeline(monkeypatch)
        bridge = await make_bridge(bridge_config(None))
        assert (
            await als.send(target(bridge), [als.http_message([mesh.outbound(0)], mesh.productpage())]) is None
        )
        assert await eventually(bridge.failed.is_set)
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.http.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 503")
        writer.close()

    async def test_serve_flushes_and_exits_non_zero(self, monkeypatch: Any) -> None:
        """serve then stops by itself, flushing what it can, and returns 1 for the orchestrator."""
        from support.net import free_port

        from als2otel import app, cli
        from als2otel import config as cfg

        self.break_the_pipeline(monkeypatch)
        als_port, http_port = free_port(), free_port()
        config = cfg.parse(
            {
                "receiver": {"listen": f"127.0.0.1:{als_port}"},
                "http": {"listen": f"127.0.0.1:{http_port}"},
                "analyzers": [],
                "exporters": {"otlp": {"enabled": False}},
            },
            {},
        )
        served = asyncio.ensure_future(cli._serve(config))
        message = als.http_message([mesh.outbound(0, start_ms=als.real_now_ms())], mesh.productpage())
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", http_port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        assert await als.send(f"127.0.0.1:{als_port}", [message]) is None
        assert await asyncio.wait_for(served, 20) == app.EXIT_FAILED


class TestBigMessages:
    async def test_healthz_answers_while_a_64_mib_message_is_processed(self, make_bridge: Any) -> None:
        """One message of ~64 MiB (≈100,000 entries): processed a slice at a time; /healthz answers
        between slices and every entry counts."""
        bridge = await make_bridge(bridge_config(None))
        entry = mesh.outbound(0, path="/reviews/" + "x" * 450).SerializeToString()
        count = (64 * 1024 * 1024 - 4096) // (len(entry) + 3)
        message = als.http_message([], mesh.productpage())
        message.http_logs.log_entry.extend([entry] * count)
        assert message.ByteSize() > 60 * 1024 * 1024
        sent = asyncio.ensure_future(als.send(target(bridge), [message]))
        assert await eventually(lambda: bridge.stats.entries_received.get("v3", "http") == count, 60)
        answered_while_busy = 0
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.http.port)
        while bridge.stats.calls.get("client") < count:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"ok\n")
            assert head.startswith(b"HTTP/1.1 200")
            if bridge.stats.calls.get("client") < count:
                answered_while_busy += 1
            await asyncio.sleep(0.01)
        writer.close()
        assert await sent is None
        assert answered_while_busy >= 5
        assert bridge.stats.calls.get("client") == count
