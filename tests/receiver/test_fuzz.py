"""Fuzzing the entry path: any value in any field, and random mutations of real messages.

Every entry must end as calls, or as invalid or intermediate with a known reason: the
pipeline counts an exception it did not expect under ``unexpected_error``, and these
tests fail on any. Bounded (a fixed number of examples, derandomized) so CI runs them
every time; ``FUZZ_EXAMPLES`` raises the count for a longer local run.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from conftest import bridge_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from support import als, mesh, peers

from als2otel import config as cfg
from als2otel.app import Core, build_core
from als2otel.export import render
from als2otel.receiver import identify, otlp_logs
from als2otel.receiver._proto import accesslog_pb2, core_pb2
from als2otel.receiver.server import AlsServer, EntryBatch
from als2otel.stats import Stats

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PEER = peers.pod("reviews")
SIDECAR = identify(mesh.productpage())
GATEWAY = identify(
    als.identifier(
        "router~10.1.0.2~istio-ingressgateway-x.istio-system~istio-system.svc.cluster.local",
        peers.Peer("istio-ingressgateway-x", "istio-system", "istio-ingressgateway").node_metadata(),
    )
)
HEADERS = ("traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "content-type", "x-envoy-peer-metadata")
FILTER_KEYS = ("upstream_peer", "downstream_peer", "wasm.upstream_peer", "wasm.downstream_peer")
TYPE_URLS = (
    "type.googleapis.com/google.protobuf.Struct",
    "type.googleapis.com/google.protobuf.BytesValue",
    "type.googleapis.com/google.protobuf.StringValue",
    "type.googleapis.com/nonsense",
    "",
)
NOW_S = als.START_S


def mostly(usual: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` about 19 times in 20, else ``wild``."""
    return st.integers(0, 19).flatmap(lambda n: wild if n == 0 else usual)


int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
near_now = st.integers(NOW_S - 100_000, NOW_S + 100_000)
# What Envoy copies from traffic: any bytes, or any text (digits of every script included).
traffic = st.one_of(
    st.binary(max_size=80), st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
# Values read as numbers: digits of any script, signs, and very long numbers.
numeric = st.one_of(
    traffic,
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6).map(str.encode),
    st.sampled_from(["\N{SUPERSCRIPT TWO}", "\N{SUPERSCRIPT ONE}\N{SUPERSCRIPT FOUR}", "\u0663"]).map(
        str.encode
    ),
    st.integers(-(10**30), 10**30).map(lambda i: str(i).encode()),
    st.builds(lambda digit, count: digit * count, st.sampled_from([b"1", b"9"]), st.integers(1, 6000)),
)
ip = mostly(st.sampled_from(["10.1.0.9", "10.1.0.4", "10.96.0.9", "::1"]), st.text(max_size=40))


@st.composite
def address(draw: Any) -> bytes:
    kind = draw(mostly(st.just("ip"), st.sampled_from(["bytes", "pipe", "internal", "none"])))
    if kind == "ip":
        return core_pb2.Address(
            socket_address=core_pb2.SocketAddress(
                address=draw(ip), port_value=draw(st.integers(0, 2**32 - 1))
            )
        ).SerializeToString()
    if kind == "pipe":
        return core_pb2.Address(pipe=core_pb2.Pipe(path=draw(st.text(max_size=20)))).SerializeToString()
    if kind == "internal":
        return core_pb2.Address(
            envoy_internal_address=core_pb2.EnvoyInternalAddress(endpoint_id=draw(st.text(max_size=30)))
        ).SerializeToString()
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    return b""


@st.composite
def filter_state_value(draw: Any) -> tuple[str, bytes]:
    choice = draw(st.sampled_from(["real", "random"]))
    if choice == "real":
        kind = draw(st.sampled_from(["flatnode", "struct", "wasm"]))
        value = next(iter(peers.filter_state(kind, "upstream", PEER).values()))
        data = bytearray(value.value)
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return value.type_url, bytes(data)
    return draw(st.sampled_from(TYPE_URLS)), draw(st.binary(max_size=200))


@st.composite
def http_entry(draw: Any) -> bytes:
    entry = accesslog_pb2.HTTPAccessLogEntry(protocol_version=draw(st.integers(0, 6)))
    c = entry.common_properties
    # Mostly values that pass the early checks, so that the later stages see the rest.
    c.start_time.seconds = draw(mostly(near_now, int64.filter(lambda s: -(2**62) < s < 2**62)))
    c.start_time.nanos = draw(mostly(st.integers(0, 999_999_999), int32))
    for field in (
        "downstream_remote_address",
        "downstream_local_address",
        "upstream_remote_address",
        "upstream_local_address",
        "downstream_direct_remote_address",
    ):
        setattr(c, field, draw(address()))
    for field in (
        "time_to_first_upstream_tx_byte",
        "time_to_last_upstream_rx_byte",
        "time_to_last_downstream_tx_byte",
        "duration",
    ):
        duration = getattr(c, field)
        duration.seconds = draw(mostly(st.integers(0, 5), st.integers(-(2**40), 2**40)))
        duration.nanos = draw(mostly(st.integers(0, 999_999_999), int32))
    c.upstream_cluster = draw(
        st.one_of(
            st.sampled_from(["outbound|9080||reviews.default.svc.cluster.local", "inbound|9080||", ""]),
            st.text(max_size=60),
        )
    )
    c.route_name = draw(st.text(max_size=20))
    c.access_log_type = draw(mostly(st.sampled_from([0, 6]), st.integers(0, 20)))
    c.intermediate_log_entry = draw(mostly(st.just(False), st.booleans()))
    for name in draw(st.lists(st.sampled_from([f.name for f in c.response_flags.DESCRIPTOR.fields]))):
        if name != "unauthorized_details":
            setattr(c.response_flags, name, True)
    for key in draw(st.lists(st.sampled_from(FILTER_KEYS), max_size=2)):
        type_url, value = draw(filter_state_value())
        c.filter_state_objects[key].type_url = type_url
        c.filter_state_objects[key].value = value
    if draw(st.booleans()):
        c.tls_properties.peer_certificate_properties.subject_alt_name.add().uri = draw(traffic)
    r = entry.request
    r.request_method = draw(st.integers(0, 12))
    for field in ("scheme", "authority", "path", "user_agent", "request_id"):
        setattr(r, field, draw(traffic))
    for name in draw(st.lists(st.sampled_from(HEADERS), max_size=4)):
        r.request_headers[name] = draw(traffic)
    if draw(st.booleans()):
        entry.response.response_code.value = draw(st.integers(0, 2**32 - 1))
    for name in draw(st.lists(st.sampled_from(HEADERS), max_size=2)):
        entry.response.response_headers[name] = draw(traffic)
    if draw(st.booleans()):
        entry.response.response_trailers["grpc-status"] = draw(numeric)
    return entry.SerializeToString()


def offline_core() -> Core:
    """The per-entry core, building spans as a bridge that exports them does."""
    config = cfg.parse({"analyzers": ["mx-mesh"], "metrics": {"sets": ["http", "servicegraph", "istio"]}}, {})
    return build_core(config, Stats(), traces=True, clock=als.synthetic_clock)


async def process(encoded: list[bytes], proxy: Any) -> Core:
    core = offline_core()
    core.pipeline.process(EntryBatch(proxy, "v3", "http", encoded))
    core.pipeline.spans.take()
    render(core.metrics, core.stats)
    core.topology.snapshot(300, als.synthetic_clock() / 1e9)
    return core


class TestFuzz:
    @FUZZ
    @given(st.lists(http_entry(), min_size=1, max_size=4), st.sampled_from([SIDECAR, GATEWAY]))
    def test_any_field_values(self, entries: list[bytes], proxy: Any) -> None:
        """Arbitrary values in every field the bridge reads: never an unexpected error."""
        core = asyncio.run(process(entries, proxy))
        assert core.stats.entries_invalid.get("unexpected_error") == 0

    def test_mutated_real_entries(self) -> None:
        """Real entries with bytes flipped, cut, repeated or inserted: never an unexpected error."""
        originals = [
            mesh.outbound(
                i,
                authority="reviews:9080",
                headers={"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"},
                filter_state=peers.filter_state("flatnode" if i % 2 else "struct", "upstream", PEER),
                start_ms=i,
            ).SerializeToString()
            for i in range(20)
        ]
        mutated = list(als.mutations(originals, EXAMPLES * 10, seed=12))
        core = asyncio.run(process(mutated, SIDECAR))
        assert core.stats.entries_invalid.get("unexpected_error") == 0
        counted = (
            sum(core.stats.entries_invalid.values.values())
            + sum(core.stats.entries_intermediate.values.values())
            + sum(core.stats.entries_unresolved.values.values())
            + core.stats.calls.get("client")
        )
        assert counted >= len(mutated)  # every entry ends somewhere counted


class TestFuzzStreams:
    async def test_mutated_messages_over_grpc(self, make_bridge: Any) -> None:
        """Whole messages mutated at random over real streams: each stream ends or goes on, the
        process and the pipeline go on, and a clean stream afterwards counts every call."""
        bridge = await make_bridge(bridge_config(None, analyzers=["mx-mesh"]))
        target = f"127.0.0.1:{bridge.receiver.port}"
        ident = mesh.productpage()
        entries = [
            mesh.outbound(i, filter_state=peers.filter_state("flatnode", "upstream", PEER)) for i in range(10)
        ]
        original = als.http_message(entries, ident).SerializeToString()
        rng = random.Random(7)
        for _ in range(40):
            data = bytearray(original)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            await als.send(target, [bytes(data), bytes(data)])
        await bridge.pipeline.drain()
        assert bridge.stats.entries_invalid.get("unexpected_error") == 0
        assert bridge.stats.streams_ended.get("internal_error") == 0
        calls = bridge.stats.calls.get("client")
        assert await als.send(target, [als.http_message(entries, ident)]) is None
        await bridge.pipeline.drain()
        assert bridge.stats.calls.get("client") == calls + 10


# Numbers at and past every width an attribute fills (uint32, int64, uint64, Duration, Timestamp).
WIDTHS = [2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**20 - 1, 10**20, 253_402_300_799]
number_text = st.one_of(
    st.sampled_from([str(n) for n in WIDTHS] + [str(n + 1) for n in WIDTHS] + ["-1", "0", "-"]),
    st.integers(-(10**25), 10**25).map(str),
    st.builds(
        lambda seconds, nanos: f"{seconds}.{nanos}",
        st.sampled_from([*WIDTHS, 999_999_999_999, 253_402_300_800]),
        mostly(st.integers(0, 999_999_999), st.integers(10**9, 10**10)),
    ),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=8),
)


def _nested(levels: int, kind: str) -> str:
    opener, closer = ('{"a":', "}") if kind == "object" else ("[", "]")
    return '{"x":' + opener * levels + "1" + closer * levels + "}"


json_text = st.one_of(
    st.builds(_nested, st.sampled_from([15, 16, 17, 900, 1100, 5000]), st.sampled_from(["object", "array"])),
    st.builds(lambda digits: '{"a": ' + "9" * digits + "}", st.sampled_from([20, 309, 400, 4300, 4400])),
    st.builds(lambda digits: '{"a": 1e' + str(digits) + "}", st.sampled_from([308, 309, 400])),
    st.sampled_from(['{"a": NaN}', '{"a": Infinity}', "[]", "null", '"text"', "{", '{"@type": 7}']),
    st.builds(
        lambda type_url, value: '{"@type": "%s", "value": %s}' % (type_url, value),  # noqa: UP031
        st.sampled_from(TYPE_URLS),
        st.sampled_from(['"AAAA"', '"!!"', '{"a": 1}', "{" * 3000 + "}" * 3000, "9" * 400]),
    ),
    st.text(max_size=60),
)


def _attribute_value(name: str) -> st.SearchStrategy[Any]:
    """Values for an attribute the bridge reads: mostly the hostile kind for it, else any text,
    bytes that are not UTF-8, or a value that is not a string at all."""
    if name.startswith("envoy.filter_state."):
        specific: st.SearchStrategy[Any] = json_text
    elif name in NUMERIC_NAMES:
        specific = number_text
    elif name.endswith("address"):
        specific = st.sampled_from(["10.1.0.9:9080", "[::1]:80", "10.1.0.9:99999", ":80", "x:", "-"])
    else:
        specific = st.text(max_size=40)
    typed = st.one_of(int64, st.floats(allow_nan=True), st.booleans())  # non-string AnyValues
    return mostly(specific, st.one_of(typed, traffic.map(lambda b: b.decode("utf-8", "replace"))))


NUMERIC_NAMES = {
    name for name in otlp_logs.ATTRIBUTES if name.endswith(("_ns", "status_code", "_bytes", "start_time"))
}
NUMERIC_NAMES |= {"envoy.bytes_received", "envoy.bytes_sent"}
WIDE_NAMES = sorted(
    NUMERIC_NAMES | {name for name in otlp_logs.ATTRIBUTES if name.startswith("envoy.filter_state.")}
)
"""The attributes whose values have a width or a nesting to overflow: most hostile values go there."""


def _base_record(i: int) -> dict[str, Any]:
    """A good record's attributes (a TCP one for every third), for hostile values to replace."""
    from support.otlp_logs import record_of

    attributes, time_unix_nano = record_of(mesh.outbound(i), mesh.productpage())
    attributes["envoy.start_time"] = f"{time_unix_nano // 10**9}.{time_unix_nano % 10**9:09d}"
    if i % 3 == 2:
        attributes = {
            **attributes,
            "envoy.log_type": "tcp",
            "envoy.bytes_received": "10",
            "envoy.bytes_sent": "20",
        }
    return attributes


HOSTILE_NAMES = sorted(otlp_logs.ATTRIBUTES)
otlp_record = st.builds(
    lambda i, hostile: {**_base_record(i), **dict(hostile)},
    st.integers(0, 5),
    st.lists(
        mostly(st.sampled_from(WIDE_NAMES), st.sampled_from(HOSTILE_NAMES)).flatmap(
            lambda name: st.tuples(st.just(name), _attribute_value(name))
        ),
        min_size=1,
        max_size=2,
    ),
)


def _otlp_request(records: list[dict[str, Any]], times: list[int]) -> bytes:
    request = logs_service_pb2.ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for attributes, time_unix_nano in zip(records, times, strict=True):
        record = scope.log_records.add(time_unix_nano=time_unix_nano)
        for key, value in attributes.items():
            target = record.attributes.add(key=key).value
            if isinstance(value, bool):
                target.bool_value = value
            elif isinstance(value, int):
                target.int_value = value
            elif isinstance(value, float):
                target.double_value = value
            else:
                target.string_value = value
    return request.SerializeToString()


async def _accept(raw: bytes) -> tuple[Core, Any]:
    core = offline_core()
    batches: list[EntryBatch] = []
    receiver = AlsServer("127.0.0.1:0", lambda batch: batches.append(batch) is None, core.stats)
    response = logs_service_pb2.ExportLogsServiceResponse.FromString(await receiver.accept_logs(raw, "fuzz"))
    for batch in batches:
        core.pipeline.process(batch)
    core.pipeline.spans.take()
    render(core.metrics, core.stats)
    return core, response


class TestFuzzOtlpRecords:
    @FUZZ
    @given(
        st.lists(otlp_record, min_size=1, max_size=3),
        # 0: the start is envoy.start_time's
        st.lists(st.sampled_from([0, 0, NOW_S * 10**9, 2**64 - 1]), min_size=3, max_size=3),
    )
    def test_any_attribute_values(self, records: list[dict[str, Any]], times: list[int]) -> None:
        """Every attribute the bridge reads, with numbers at and past every integer width, JSON
        nested past the recursion limit or holding numbers past a double, non-string values: each
        record is taken or refused with a known reason, never an unexpected error."""
        raw = _otlp_request(records, times[: len(records)])
        core, response = asyncio.run(_accept(raw))
        invalid = core.stats.entries_invalid
        assert invalid.get("unexpected_error") == 0
        assert response.partial_success.rejected_log_records <= len(records)
        taken = sum(core.stats.entries_received.values.values())
        refused_unread = invalid.get("malformed_entry")
        assert taken + refused_unread == len(records)
