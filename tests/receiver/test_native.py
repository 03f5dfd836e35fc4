"""The native entry reader (``receiver/_entries.c``) against its Python twin, entry by entry.

For every encoded entry both paths must end the same way: the same :class:`Entry`, field for
field, or the same ``InvalidEntry`` reason, or both intermediate; the native reader may also
answer None (not ordinary: the Python path decides), but must not for the entries Envoy
usually sends. The address caches must end the same too (their rotations are counted in
/metrics). Then whole pipelines over the same batches, one per path, must give byte-identical
spans, /metrics pages and OTLP metrics requests.

Skipped where the extension is not built (the pure-Python install); ``make test`` runs it on
the compiled build, where tests/conftest.py refuses a build without it.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from receiver.test_fuzz import FUZZ, GATEWAY, PEER, SIDECAR, _otlp_request, http_entry, otlp_record
from support import als, mesh, peers

from als2otel.export import render
from als2otel.export.otlp_metrics import metrics_request
from als2otel.model import Entry
from als2otel.receiver import normalize, otlp_logs, otlp_wire
from als2otel.receiver._proto import accesslog_pb2
from als2otel.receiver.normalize import AddressCache, IntermediateEntry, InvalidEntry, decode_entry_python
from als2otel.receiver.server import EntryBatch
from als2otel.translation import ids, spans, wire

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

native = normalize.native
spans_native = ids.native
pytestmark = pytest.mark.skipif(native is None, reason="the native entry reader is not built (pure Python)")

FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
Outcome = tuple[str, Any]


def comparable(entry: Entry) -> dict[str, Any]:
    """An Entry's fields as plain values: filter state as (type_url, value) pairs (protobuf's Any
    on the Python path, AnyValue natively), header maps as dicts (protobuf's map order differs)."""
    out = {name: getattr(entry, name) for name in FIELDS}
    if entry.filter_state is not None:
        out["filter_state"] = {k: (v.type_url, bytes(v.value)) for k, v in entry.filter_state.items()}
    for name in ("request_headers", "response_headers"):
        if out[name] is not None:
            out[name] = dict(out[name])
    return out


def outcome(decode: Callable[[], Entry | None]) -> Outcome:
    try:
        entry = decode()
    except InvalidEntry as exc:
        return ("invalid", exc.reason)
    except IntermediateEntry:
        return ("intermediate", None)
    return ("none", None) if entry is None else ("entry", comparable(entry))


class Twins:
    """Both paths over the same entries, each with its own address cache, as the pipeline runs them."""

    def __init__(self, max_addresses: int = normalize.MAX_CACHED_ADDRESSES) -> None:
        self.python_cache = AddressCache(max_addresses=max_addresses)
        self.native_cache = AddressCache(max_addresses=max_addresses)
        self.taken = self.seen = 0

    def check(self, encoded: bytes, log_type: str = "http") -> Outcome:
        python = outcome(lambda: decode_entry_python(encoded, log_type, "v3", self.python_cache))
        answer = outcome(lambda: native.decode(encoded, log_type == "http", "v3", self.native_cache))
        self.seen += 1
        if answer[0] == "none":  # the Python path decides, on the native path's cache
            answer = outcome(lambda: decode_entry_python(encoded, log_type, "v3", self.native_cache))
        else:
            self.taken += answer[0] == "entry"
        assert answer == python, encoded.hex()
        assert self.native_cache.addresses == self.python_cache.addresses
        return python


def realistic(count: int) -> list[bytes]:
    """Entries as sidecars and gateways send them: both sides of mesh calls with peer metadata
    of every kind, gRPC calls with trailers, failures with flags (half), and entries as Envoy 1.40
    under Istio logs them, with TLS properties and logged headers (bench/pipeline.py's)."""
    from pipeline import build_messages

    from als2otel.receiver._proto import als_pb2

    out = mesh_entries(count // 2)
    streams = build_messages(count - len(out), 1, True, 1, envoy=True)
    for raw in streams[0]:
        out.extend(als_pb2.StreamAccessLogsMessage.FromString(raw).http_logs.log_entry)
    return out


def mesh_entries(count: int) -> list[bytes]:
    """Both sides of mesh calls, dated from the tests' synthetic start (als.START_S)."""
    out: list[bytes] = []
    kinds = ("flatnode", "struct", "wasm")
    for i in range(count // 2):
        kind = kinds[i % 3]
        out.append(
            mesh.outbound(
                i,
                authority="reviews:9080",
                headers={"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"},
                filter_state=peers.filter_state(kind, "upstream", PEER),
                start_ms=i,
                status=(200, 503, 404, None)[i % 4],
                flags=["upstream_remote_reset", "no_healthy_upstream"][: i % 3],
            ).SerializeToString()
        )
        grpc = mesh.inbound(i, filter_state=peers.filter_state(kind, "downstream", PEER), start_ms=i)
        grpc.request.request_headers["content-type"] = b"application/grpc+proto"
        grpc.response.response_trailers["grpc-status"] = str(i % 17).encode()
        grpc.common_properties.response_flags.unauthorized_details.reason = i % 2
        out.append(grpc.SerializeToString())
    return out


def tcp_entries(count: int) -> list[bytes]:
    return [
        als.tcp_entry(
            downstream_remote=("10.1.0.4", 40000 + i),
            downstream_local=("10.96.0.7", 27017),
            upstream_remote=("10.1.0.7", 27017),
            upstream_local=("10.1.0.4", 50000 + i),
            cluster="outbound|27017||mongodb.default.svc.cluster.local",
            received=i * 1000,
            sent=2**64 - 1 - i,
        ).SerializeToString()
        for i in range(count)
    ]


# -- wire-level hostility the generated messages cannot express ---------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes | int, wire_type: int | None = None) -> bytes:
    """A field: an int as a varint, bytes length-delimited, or bytes as they are under ``wire_type``."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    if wire_type is None:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def hostile() -> list[bytes]:
    """Entries built byte by byte: invalid UTF-8 where protobuf's strings are, fields repeated,
    groups, overlong varints, NaN sample rates, times and codes out of range, huge maps."""
    base = mesh.outbound(1, headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    encoded = base.SerializeToString()

    def common(extra: bytes, *cleared: str) -> bytes:
        """The entry with ``cleared`` fields of its common_properties replaced by ``extra``."""
        return _with(base, "common_properties", 1, extra, cleared)

    def request(extra: bytes, *cleared: str) -> bytes:
        return _with(base, "request", 3, extra, cleared)

    def response(extra: bytes, *cleared: str) -> bytes:
        return _with(base, "response", 4, extra, cleared)

    start = field(5, field(1, als.START_S))
    return [
        common(field(15, b"\xff\xfe cluster"), "upstream_cluster"),  # not UTF-8
        common(field(19, b"route \xc3")),  # route_name cut mid-character
        common(field(19, b"\xed\xa0\x80")),  # an encoded surrogate
        encoded + field(1, base.common_properties.SerializeToString()),  # common_properties twice: merged
        common(field(15, b"a") + field(15, b"b"), "upstream_cluster"),  # a string twice: the last one
        common(field(1, struct.pack("<d", float("nan")), 1)),  # a NaN sample_rate
        common(field(33, 2), "access_log_type"),  # a periodic entry
        common(field(33, 2**64 - 1), "access_log_type"),  # a log type past int32
        common(field(27, 1)),  # intermediate
        common(field(5, field(1, 2**63 - 1)), "start_time"),  # start far in the future
        common(field(5, field(1, 2**64 - 1)), "start_time"),  # start -1 s
        common(field(5, field(2, 2**40)), "start_time"),  # only nanos, past int32
        common(field(12, field(1, 2**40)), "time_to_last_downstream_tx_byte"),  # 35,000 years
        common(field(12, field(2, 2**64 - 1)), "time_to_last_downstream_tx_byte"),  # nanos -1
        common(field(23, b"\x08" + b"\x80" * 9 + b"\x01"), "duration", "time_to_last_downstream_tx_byte"),
        common(field(23, b"\x08" + b"\xff" * 9 + b"\x7f"), "duration", "time_to_last_downstream_tx_byte"),
        common(b"\x0b\x08\x01\x0c"),  # a group
        common(b"\x0f"),  # wire type 7
        common(field(15, 5), "upstream_cluster"),  # a string field as a varint
        common(field(2, b"\x0a\x0c\x12\x08bad\xffhost\x18\x50"), "downstream_remote_address"),
        common(field(2, b"\x0a\x06\x12\x02::\x18\x00"), "downstream_remote_address"),  # port 0
        common(field(2, b"\x0a\x07\x12\x02::\x18\xff\x7f"), "downstream_remote_address"),  # port > 65,535
        common(field(2, b"\x0a\x05\x12\x00\x18\x50"), "downstream_remote_address"),  # no ip
        common(field(2, b"\x0a\x0b\x12\x07::1\x18\x50\x18\x51"), "downstream_remote_address"),  # port twice
        common(field(2, b"\x12\x04\x0a\x02/x"), "downstream_remote_address"),  # a pipe
        common(field(2, b"\x1a\x0e\x12\x0c10.1.0.9:443"), "downstream_remote_address"),  # internal
        common(field(2, b"\x1a\x04\x12\x02no"), "downstream_remote_address"),  # internal, no ip:port
        common(field(2, b"\xff"), "downstream_remote_address"),  # not an Address
        common(field(21, field(1, b"\xff") + field(2, b""))),  # filter-state key not UTF-8
        common(field(21, field(1, b"upstream_peer") + field(2, field(1, b"\xc0\x80")))),  # type_url
        common(field(21, field(1, b"upstream_peer"))),  # no value: an empty Any
        common(field(21, field(2, field(2, b"v")))),  # no key
        common(field(21, field(1, b"k") + field(2, b"\x01")) + field(21, field(1, b"k"))),  # a key twice
        common(field(16, field(13, b"") + field(3, 1) + field(27, 5))),  # flags, one a message
        common(field(16, field(3, 1) + field(3, 0))),  # a flag set, then unset
        common(field(16, field(13, field(1, 2**64 - 1)) + field(28, 1))),
        common(field(4, field(5, field(1, field(2, b"dns") + field(1, b"spiffe://x"))))),
        common(field(4, field(5, field(1, field(1, b"spiffe://x") + field(2, b"d"))))),
        common(field(4, field(5, field(1, field(1, b"")) + field(1, field(1, b"spiffe://y"))))),
        common(field(4, field(5, field(1, field(1, b"\xff\xfe"))))),  # principal not UTF-8
        common(field(4, field(4, field(1, b"\x05")))),  # a broken local certificate
        request(field(13, field(1, b"\xff") + field(2, b"v"))),  # header name not UTF-8
        request(field(13, field(2, b"no name"))),  # a header without a name
        request(field(13, field(1, b"content-type") + field(2, b"application/grpc")), "request_headers"),
        request(field(13, field(1, b"content-type") + field(2, b"Application/grpc")), "request_headers"),
        request(field(13, field(1, b"te") + field(2, b"\xff\xfe"))),  # a value not UTF-8
        request(field(1, 2**64 - 1), "request_method"),  # a method of -1
        request(field(2, b"\xe2\x82"), "scheme"),
        request(b"".join(field(13, field(1, f"h{i}".encode()) + field(2, b"v")) for i in range(200))),
        response(field(5, field(1, b"grpc-status") + field(2, b""))),  # an empty trailer
        response(field(5, field(1, b"grpc-status") + field(2, b"")) + field(4, field(1, b"grpc-status"))),
        response(field(4, field(1, b"grpc-status") + field(2, "\u0663".encode()))),
        response(field(4, field(1, b"grpc-status") + field(2, b"\xb2"))),
        response(field(5, field(1, b"grpc-status") + field(2, b"9" * 5000))),
        response(field(5, field(1, b"grpc-status") + field(2, b"007"))),
        response(field(1, field(1, 2**40)), "response_code"),  # a code past uint32
        response(field(1, b"") + field(1, b""), "response_code"),  # response_code twice
        encoded + field(2, 2**63),  # protocol_version twice, the second past int32
        encoded + field(99, b"\x00" * 3, 5),  # a fixed32 cut short
        encoded + field(99, b"\x00" * 4, 5) + field(98, b"\x00" * 8, 1),
        encoded[:-1],
        b"",
        b"\x0a",
        field(1, b"") + encoded[len(field(1, base.common_properties.SerializeToString())) :],
        field(1, start),  # only a start time
        field(2, 1) + field(1, base.common_properties.SerializeToString()),  # fields out of order
    ]


def _with(base: Any, name: str, number: int, extra: bytes, cleared: tuple[str, ...]) -> bytes:
    """``base`` encoded with its sub-message ``name`` (field ``number``) last, ``cleared`` fields of
    it left out and ``extra`` (raw fields) appended to it: one occurrence of everything."""
    entry = type(base)()
    entry.CopyFrom(base)
    inner = getattr(entry, name)
    for cleared_name in cleared:
        inner.ClearField(cleared_name)
    payload = inner.SerializeToString() + extra
    entry.ClearField(name)
    return entry.SerializeToString() + field(number, payload)


# -- the tests ------------------------------------------------------------------------------------------


class TestEntryByEntry:
    def test_realistic_entries_are_read_natively(self) -> None:
        """10,000 entries as sidecars and gateways send them: the same Entry on both paths, and
        the native reader reads every one of them (none left to the Python path)."""
        twins = Twins()
        entries = realistic(10_000)
        outcomes = [twins.check(e) for e in entries]
        assert {kind for kind, _ in outcomes} == {"entry"}
        assert twins.taken == len(entries)

    def test_tcp_entries(self) -> None:
        twins = Twins()
        for encoded in tcp_entries(300):
            assert twins.check(encoded, "tcp")[0] == "entry"
        assert twins.taken == 300

    def test_hostile_entries(self) -> None:
        """Invalid UTF-8, repeated fields, groups, bad varints, NaN, out-of-range values: the same
        ending on both paths, every reason of the Python path among them."""
        twins = Twins()
        outcomes = [twins.check(e) for e in hostile()]
        reasons = {reason for kind, reason in outcomes if kind == "invalid"}
        assert {"malformed_entry", "malformed_address", "address_kind", "bad_duration"} <= reasons
        assert ("intermediate", None) in outcomes
        assert twins.taken >= 25  # the ordinary ones among them are still read natively

    def test_mutated_entries(self) -> None:
        """3,000 real entries with random damage: the same ending, entry by entry."""
        twins = Twins()
        originals = realistic(40)
        for encoded in als.mutations(originals, 3_000, seed=26):
            twins.check(encoded)
        for encoded in als.mutations(tcp_entries(5), 500, seed=27):
            twins.check(encoded, "tcp")
        assert twins.taken > 150  # damage that leaves an ordinary entry is still read natively

    @FUZZ
    @given(st.lists(http_entry(), min_size=1, max_size=4))
    def test_fuzzed_field_values(self, entries: list[bytes]) -> None:
        """The fuzz corpus's values in every field (tests/receiver/test_fuzz.py)."""
        twins = Twins()
        for encoded in entries:
            twins.check(encoded)

    def test_a_full_address_cache_rotates_the_same(self) -> None:
        """The cache bound is honoured natively too: it starts over (and is counted) at the same entries."""
        twins = Twins(max_addresses=7)
        for encoded in realistic(400):
            twins.check(encoded)
        assert 0 < len(twins.native_cache.addresses) <= 7


def _pipeline_outputs(entries: list[bytes], proxy: Any, use_native: bool) -> tuple[list[bytes], str, bytes]:
    from als2otel import config as cfg
    from als2otel.app import build_core
    from als2otel.model import Workload
    from als2otel.stats import Stats

    now_ns = (als.START_S + 600) * 1_000_000_000  # one fixed clock: both runs date everything alike
    config = cfg.parse({"analyzers": ["mx-mesh"], "metrics": {"sets": ["http", "servicegraph", "istio"]}}, {})
    normalize.native = native if use_native else None
    ids.native = wire.native = spans.native = spans_native if use_native else None
    try:
        core = build_core(config, Stats(), traces=True, clock=lambda: now_ns)
        requests: list[bytes] = []
        for begin in range(0, len(entries), 100):
            core.pipeline.process(EntryBatch(proxy, "v3", "http", entries[begin : begin + 100]))
            requests.append(core.pipeline.spans.take()[0])
        page = render(core.metrics, core.stats)
        request, _ = metrics_request(core.metrics, now_ns, Workload("als2otel"))
        return requests, page, request.SerializeToString(deterministic=True)
    finally:
        normalize.native = native
        ids.native = wire.native = spans.native = spans_native


@pytest.mark.parametrize("proxy", [SIDECAR, GATEWAY], ids=["sidecar", "gateway"])
def test_pipelines_give_identical_bytes(proxy: Any) -> None:
    """The whole core (analysis, spans, metrics) over the same batches, with the native reader and
    span writer and without: the same span bytes, /metrics page and OTLP metrics request."""
    entries = mesh_entries(2_000) + list(als.mutations(mesh_entries(40), 500, seed=3))
    with_native = _pipeline_outputs(entries, proxy, True)
    python = _pipeline_outputs(entries, proxy, False)
    assert with_native[0] and with_native[0] == python[0]
    assert "als2otel_calls_total" in with_native[1] and with_native[1] == python[1]
    assert with_native[2] == python[2]


# -- OTLP log records ------------------------------------------------------------------------------------


def record_outcome(read: Callable[[], tuple[dict[str, str], int] | None]) -> Outcome:
    try:
        found = read()
    except InvalidEntry as exc:
        return ("invalid", exc.reason)
    return ("none", None) if found is None else ("record", (found[0], list(found[0]), found[1]))


def entry_of_outcome(make: Callable[[], tuple[str, bytes] | None]) -> Outcome:
    """An ALS entry made of a record's attributes, as the message it encodes (in protobuf's
    deterministic serialization: the same message, whatever the order of its fields and map entries)."""
    try:
        found = make()
    except InvalidEntry as exc:
        return ("invalid", exc.reason)
    except Exception as exc:  # a value no rule foresaw: the server refuses the record (unexpected_error)
        return ("error", type(exc).__name__)
    if found is None:
        return ("none", None)
    log_type, encoded = found
    message = (accesslog_pb2.TCPAccessLogEntry if log_type == "tcp" else accesslog_pb2.HTTPAccessLogEntry)()
    message.ParseFromString(encoded)
    return ("entry", (log_type, message.SerializeToString(deterministic=True)))


class EntryOfTwins:
    """A record's attributes into its ALS entry both ways (``otlp_logs.entry_of_python`` and
    ``_entries.entry``): the same message, or the native path answers None."""

    def __init__(self) -> None:
        self.taken = self.seen = 0

    def check(self, attributes: dict[str, str], time_unix_nano: int) -> Outcome:
        python = entry_of_outcome(lambda: otlp_logs.entry_of_python(attributes, time_unix_nano))
        answer = entry_of_outcome(lambda: native.entry(attributes, time_unix_nano))
        self.seen += 1
        if answer[0] != "none":
            self.taken += 1
            assert answer == python, (attributes, time_unix_nano)
        return python


def read_outcome(make: Callable[[], tuple[Any, str, bytes] | None]) -> Outcome:
    """A record read into (proxy, log type, entry), the entry as :func:`entry_of_outcome` has it."""
    try:
        found = make()
    except InvalidEntry as exc:
        return ("invalid", exc.reason)
    if found is None:
        return ("none", None)
    proxy, *made = found
    return ("read", (proxy, entry_of_outcome(lambda: tuple(made))))  # type: ignore[arg-type]


RESOURCE_ATTRIBUTES = [
    {},
    # Envoy's own, and some this bridge reads: under the record's, which win
    {"log_name": "otel_als", "node_name": "n", "envoy.upstream.cluster": "from-resource", "url.scheme": "-"},
    {"envoy.log_type": "tcp", "envoy.bytes_sent": "7"},
]


class RecordTwins:
    """A record read both ways; then, read, its ALS entry made both ways (:class:`EntryOfTwins`);
    and the record straight into its proxy and entry natively (``RecordReader.read_native``)
    against reading it, its resource's attributes under its own, then :meth:`RecordReader.read`
    with the entry by ``entry_of_python``, for each of :data:`RESOURCE_ATTRIBUTES`."""

    def __init__(self) -> None:
        self.taken = self.seen = 0
        self.entries = EntryOfTwins()
        self.straight = 0  # records read straight into entries natively, and found equal

    def check(self, raw: bytes, start: int = 0, end: int | None = None) -> Outcome:
        """One record (``raw[start:end]``) both ways: the same attributes, in the same order, and time."""
        end = len(raw) if end is None else end
        python = record_outcome(lambda: otlp_logs.read_record_python(raw, start, end))
        answer = record_outcome(lambda: native.record(raw, start, end))
        self.seen += 1
        if answer[0] != "none":
            self.taken += 1
            assert answer == python, raw[start:end].hex()
        if python[0] == "record":
            attributes, _, time_unix_nano = python[1]
            self.entries.check(attributes, time_unix_nano)
        for shared in RESOURCE_ATTRIBUTES:
            self.check_straight(raw, start, end, shared, python)
        return python

    def check_straight(self, raw: bytes, start: int, end: int, shared: dict[str, str], read: Outcome) -> None:
        known = otlp_logs.native_shared(shared)
        assert known is not None
        answer = read_outcome(lambda: otlp_logs.RecordReader().read_native(raw, start, end, known))
        if answer[0] == "none":
            return
        assert read[0] == "record", raw[start:end].hex()  # never a record the reader refuses
        attributes, _, time_unix_nano = read[1]
        merged = {**shared, **attributes}
        reader = otlp_logs.RecordReader()
        python = read_outcome(
            lambda: (reader.proxy(merged), *otlp_logs.entry_of_python(merged, time_unix_nano))
        )
        assert answer == python, (raw[start:end].hex(), shared)
        self.straight += 1

    def check_request(self, raw: bytes) -> None:
        found = otlp_wire.Scan()
        for _ in otlp_wire.scan(raw, 100_000, found):
            pass
        for _, start, end in found.records:
            self.check(raw, start, end)


def otlp_requests(count: int, peers: bool = True) -> list[bytes]:
    from pipeline import as_otlp_logs, build_messages

    return as_otlp_logs(build_messages(count, 1, peers, 1, envoy=True))[0]


HOSTILE_ATTRIBUTE_VALUES = [
    *("", "-", "0", "1", "x", "é", "\ud800", "x" * 5_000, "٣", "\uff11"),
    # numbers at and past each width, and what is almost one
    *("4294967295", "4294967296", "9999999999999999999", "18446744073709551615", "18446744073709551616"),
    *("99999999999999999999", "007", "+1", "-1", "1 ", "1e3", "0x10"),
    # times as envoy.start_time writes them, and not
    *("1764000000.123456789", "1764000000", "1764000000.", ".5", "1.1234567891", "1.2.3", "0.0", "0."),
    *("253402300799.999999999", "253402300800", "1234567890123"),
    # addresses
    *("10.1.0.4:80", "10.1.0.4:0", "10.1.0.4:65535", "10.1.0.4:65536", "10.1.0.4:", ":80", "10.1.0.4"),
    *(
        "[::1]:80",
        "[::1]",
        "[::1]:",
        "[]:80",
        "[::1]80",
        "::1:80",
        "a:b:c",
        "é:80",
        "x:٣",
        "x:00080",
        "[a]]:1",
    ),
    # names of enums, methods, protocols, flags, log types
    *("GET", "get", "PATCH", "BREW", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3", "HTTP/", "HTTP/4", "1.1"),
    *("UH", "UH,UF", "UH,,UF,", ",", "UAEX", "UAEX,DC", " UH", "LH,UH,UT,LR,UR,UF,UC,UO,NR,DI,FI,RL,RLSE"),
    *("tcp", "http", "TCP", "DownstreamEnd", "NotSet", "UdpSessionEnd", "Bogus"),
    '{"name": "x"}',
]


def hostile_attributes() -> list[tuple[dict[str, str], int]]:
    """An ordinary HTTP and TCP record's attributes with one value replaced by each hostile one,
    at the record's own time and with none (the start then envoy.start_time's)."""
    from support.otlp_logs import record_of

    entry = als.http_entry(
        downstream_remote=("10.1.0.4", 40000),
        downstream_local=("10.96.0.9", 9080),
        upstream_remote=("10.1.0.9", 9080),
        upstream_local=("10.1.0.4", 10000),
        cluster="outbound|9080||reviews.default.svc.cluster.local",
        path="/reviews/1",
        authority="reviews:9080",
        request_id="a-request",
        status=503,
        headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    base, _ = record_of(entry, als.identifier("sidecar~10.1.0.4~p.default~default.svc.cluster.local"))
    base["envoy.start_time"] = "1764000000.5"
    base["envoy.response_flags"] = "UH,UF"
    base["envoy.downstream.peer_uri_san"] = "spiffe://cluster.local/ns/default/sa/p"
    base["http.response.trailer.grpc-status"] = "14"
    tcp = {**base, "envoy.log_type": "tcp", "envoy.bytes_received": "10", "envoy.bytes_sent": "20"}
    names = [*otlp_logs.ATTRIBUTES, "envoy.log_type"]
    out = []
    for attributes in (base, tcp):
        for name in names:
            for value in HOSTILE_ATTRIBUTE_VALUES:
                for time_unix_nano in (0, 1_764_000_000_000_000_001):
                    out.append(({**attributes, name: value}, time_unix_nano))
            out.append(({k: v for k, v in attributes.items() if k != name}, 0))
    return out


def hostile_records() -> list[bytes]:
    """Records built byte by byte: strings that are not UTF-8 in every place one is checked,
    members of AnyValue's oneof set twice, lists and maps, new fields, values of every kind."""
    key = field(1, b"envoy.node.id")
    text = field(2, field(1, b"sidecar~10.1.0.4~p.default~default.svc.cluster.local"))
    good = field(6, key + text) + field(1, (10**18).to_bytes(8, "little"), 1)
    values = [
        field(1, b"text"),
        field(1, b"\xff\xfe"),
        field(2, 1),
        field(2, 0),
        field(2, 7),
        field(3, 2**64 - 1),
        field(3, 42),
        field(4, struct.pack("<d", float("nan")), 1),
        field(4, struct.pack("<d", 1e300), 1),
        field(4, struct.pack("<d", -0.0), 1),
        field(7, b"\xff"),
        field(5, field(1, field(1, b"x"))),
        field(6, field(1, field(1, b"k"))),
        field(8, 3),
        field(1, b"a") + field(3, 1),
        field(3, 1) + field(3, 2),
        b"",
        field(9, b"later"),
    ]
    out = [good]
    for value in values:
        out.append(good + field(6, field(1, b"envoy.route_name") + field(2, value)))
        out.append(good + field(5, value))  # as the body
    out += [
        good + field(6, field(1, b"\xc3") + text),  # a key cut mid-character
        good + field(6, text),  # no key
        good + field(6, key),  # no value
        good + field(6, key + text + field(3, 1)),  # key_strindex
        good + field(6, key + key + text),  # the key twice
        good + field(6, key + field(2, field(1, b"second"))),  # an attribute twice: the last wins
        good + field(3, b"INFO") + field(12, b"event"),
        good + field(3, b"\xff"),
        good + field(12, b"\xed\xa0\x80"),
        good + field(2, 9) + field(7, 3) + field(8, b"\x01\x00\x00\x00", 5),
        good + field(9, b"\x01" * 16) + field(10, b"\x02" * 8) + field(11, b"\x00" * 8, 1),
        good + field(1, b"\x00" * 8, 1),  # time twice
        good + field(1, b"\x00" * 4, 5),  # time of the wrong width
        good + field(99, b"unknown"),
        good + b"\x0b\x0c",  # a group
        good[:-1],
        b"",
    ]
    return out


class TestRecords:
    def test_envoy_records_are_read_natively(self) -> None:
        """Envoy's OpenTelemetry logger's records (bench/pipeline.py's, peer metadata included):
        the same attributes in the same order and time, all read natively."""
        twins = RecordTwins()
        for raw in otlp_requests(2_000):
            twins.check_request(raw)
        assert twins.seen == 2_000 and twins.taken == twins.seen
        assert twins.straight == 0  # Istio's peer metadata (filter state, JSON): otlp_logs reads it

    def test_envoy_records_become_entries_natively(self) -> None:
        """Records with no filter state (which is JSON, read by otlp_logs) become the same ALS entry
        natively; those with it (Istio's peer metadata) through protobuf."""
        twins = RecordTwins()
        for raw in otlp_requests(1_000, peers=False):
            twins.check_request(raw)
        assert twins.entries.seen == 1_000 and twins.entries.taken == 1_000
        assert twins.straight == 1_000 * len(RESOURCE_ATTRIBUTES)
        with_peers = RecordTwins()
        for raw in otlp_requests(100):
            with_peers.check_request(raw)
        assert with_peers.entries.seen == 100 and with_peers.entries.taken == 0

    def test_hostile_attribute_values(self) -> None:
        """Every attribute read, with values at and past every rule of entry_of_python: the same
        entry, or the native path leaves the record to it (never another answer)."""
        twins = EntryOfTwins()
        outcomes = {twins.check(attributes, time)[0] for attributes, time in hostile_attributes()}
        assert outcomes >= {"entry", "invalid"}
        assert twins.taken > twins.seen // 2

    def test_hostile_records(self) -> None:
        twins = RecordTwins()
        outcomes = [twins.check(raw) for raw in hostile_records()]
        assert ("invalid", "malformed_entry") in outcomes
        assert twins.taken >= 25
        assert twins.straight >= 20

    def test_mutated_records(self) -> None:
        twins = RecordTwins()
        requests = otlp_requests(40) + otlp_requests(40, peers=False)
        records = []
        for raw in requests:
            found = otlp_wire.Scan()
            for _ in otlp_wire.scan(raw, 1000, found):
                pass
            records += [raw[start:end] for _, start, end in found.records]
        for damaged in als.mutations(records, 3_000, seed=28):
            twins.check(damaged)
        assert twins.taken > 100  # damage that leaves an ordinary record is still read natively
        assert twins.straight > 100

    @FUZZ
    @given(st.lists(otlp_record, min_size=1, max_size=3), st.lists(st.integers(0, 2**64 - 1), min_size=3))
    def test_fuzzed_records(self, records: list[dict[str, Any]], times: list[int]) -> None:
        """The fuzz corpus's records (tests/receiver/test_fuzz.py): hostile values of every kind."""
        RecordTwins().check_request(_otlp_request(records, times[: len(records)]))
