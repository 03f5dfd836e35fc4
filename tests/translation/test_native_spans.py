"""The native span writer (``translation/_spans.c``) against its Python twins, call by call.

BLAKE2b against hashlib on every length around its block size; ``Repeats`` answer for
answer; ``span_id``, ``span`` and
``string_attribute`` byte for byte on generated and hostile arguments; ``call_span`` (a call's whole
span) against ``spans.call_span_python`` over generated and hostile calls; ``trace_context`` on
every header form the bridge reads, hostile values included, where the native path may answer
None (the Python twin then decides) but never another answer, and must not answer None for the
values Envoy usually logs. Whole pipelines with and without it: tests/receiver/test_native.py.

Skipped where the extension is not built (the pure-Python install); ``make test`` runs it on
the compiled build.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from receiver.test_fuzz import FUZZ

from als2otel.model import Call, Entry, SocketAddr
from als2otel.translation import ids, semconv, spans, wire
from als2otel.translation.shapes import span_name_and_attributes

from .test_shape_cache import generated_calls
from .test_translation import GATEWAY, PRODUCTPAGE

native = ids.native
pytestmark = pytest.mark.skipif(native is None, reason="the native span writer is not built (pure Python)")

Outcome = tuple[str, Any]


def outcome(function: Callable[..., Any], *arguments: Any) -> Outcome:
    try:
        return ("value", function(*arguments))
    except Exception as exc:
        return ("error", type(exc).__name__)


def test_blake2b_is_hashlibs() -> None:
    rng = random.Random(2026_12_03)
    for size in [*range(0, 300), 1000, 4096, 65_537]:
        data = rng.randbytes(size)
        for digest_size in (8, 16, 32, 64):
            assert (
                native.blake2b(data, digest_size) == hashlib.blake2b(data, digest_size=digest_size).digest()
            )


KEYS = ["10.1.0.4:40000>10.1.0.9:9080|GET|/reviews/1", "sidecar~10.1.0.4~p.default~default.svc.cluster.local"]
HOSTILE_TEXT = ["", "é", "\ud800", "x" * 200, "\x00\x1f", "٣", "-", "a-b-c"]


@pytest.mark.parametrize("kind", [ids.CLIENT, ids.SERVER, ids.HOP])
def test_span_ids(kind: bytes) -> None:
    rng = random.Random(7)
    for key in KEYS + HOSTILE_TEXT:
        for repeat in (0, 1, 2, 9, 10, 12345, 2**40):
            trace_id = rng.randbytes(16)
            python = outcome(ids.span_id_python, trace_id, kind, key, repeat)
            assert outcome(native.span_id, trace_id, kind, key, repeat) == python, (key, repeat)


def test_an_all_zero_span_id_is_replaced_alike() -> None:
    """A digest of zeros is invalid in OTLP: both twins give ``01`` * 8 (shown on the digest step)."""
    assert ids._checked(bytes(8)) == b"\x01" * 8
    assert native.span_id(b"\x00" * 16, ids.CLIENT, "k", 0) == ids.span_id_python(
        b"\x00" * 16, ids.CLIENT, "k", 0
    )


HEX32 = "4bf92f3577b34da6a3ce929d0e0e4736"
HEX16 = "00f067aa0ba902b7"
RID = "8a4c3c2e-5b1f-4c39-9e3b-6f0d2a1b7c11"

TRACEPARENTS = [
    f"00-{HEX32}-{HEX16}-01",
    f"00-{HEX32}-{HEX16}-01-extra",
    f"00-{HEX32.upper()}-{HEX16}-00",
    f"00-{'0' * 32}-{HEX16}-01",
    f"00-{HEX32}-{'0' * 16}-01",
    f"00-{HEX32[:-1]}-{HEX16}-01",
    f"00-{HEX32}x-{HEX16}-01",
    f"00- {HEX32[1:]}-{HEX16}-01",
    f"00-{HEX32} -{HEX16}-01",
    f"00-{HEX32[:16]} {HEX32[16:]}-{HEX16}-01",
    f"00-{HEX32}-{HEX16}",
    f"00--{HEX16}-01",
    "---",
    "-",
    f"00-{HEX32[:-1]}٣-{HEX16}-01",
    f"00-{HEX32}-{HEX16[:-2]}\u00e9-01",
    "\ud800",
]
B3_TRACES = [
    HEX32,
    HEX16,
    "1",
    "0" * 32,
    "0" * 16,
    HEX32 + "0",
    " " + HEX16,
    HEX16 + "\t",
    "xyz",
    "٣" * 16,
    "",
]
B3_SPANS = [HEX16, HEX16[:-1], "0" * 16, " " + HEX16[1:], "", "g" * 16, "\ud800"]
B3_SINGLE = [
    f"{HEX32}-{HEX16}-1",
    f"{HEX16}-{HEX16}",
    f"{HEX32}-{HEX16}-1-{HEX16}",
    f"{HEX32}-",
    f"-{HEX16}",
    f"{'0' * 32}-{HEX16}-1",
    f"{HEX32} -{HEX16}",
    f"{HEX32}-{HEX16} ",
    "0",
    "d",
]
REQUEST_IDS = [
    RID,
    RID.replace("-", ""),
    RID.upper(),
    "0" * 32,
    "00000000-0000-0000-0000-000000000000",
    RID[:-1],
    RID + "0",
    "a-request",
    "x" * 32,
    "g" * 32,
    " " + RID,
    RID + "\n",
    "é" * 32,
    "٣" * 32,
    "\ud800",
    "",
    "-" * 40,
    "b3\x1f",
]


def trace_cases() -> list[tuple[dict[str, str] | None, str, str]]:
    cases: list[tuple[dict[str, str] | None, str, str]] = []
    for request_id in REQUEST_IDS:
        cases.append((None, request_id, "10.1.0.4:40000>10.1.0.9:9080"))
        cases.append(({}, request_id, ""))
        for traceparent in TRACEPARENTS:
            cases.append(({"traceparent": traceparent, "x-b3-traceid": HEX16}, request_id, "c"))
            cases.append(({"traceparent": traceparent}, request_id, "c"))
        for trace in B3_TRACES:
            for span in B3_SPANS:
                cases.append(({"x-b3-traceid": trace, "x-b3-spanid": span}, request_id, "c"))
            cases.append(({"x-b3-traceid": trace, "b3": B3_SINGLE[0]}, request_id, "c"))
        for b3 in B3_SINGLE:
            cases.append(({"b3": b3, "content-type": "application/json"}, request_id, "c"))
    cases.append((None, "", "\ud800"))
    return cases


def test_trace_context() -> None:
    taken = 0
    cases = trace_cases()
    for headers, request_id, connection in cases:
        python = outcome(ids.trace_context_python, headers, request_id, connection)
        answer = outcome(native.trace_context, headers, request_id, connection)
        if answer != ("value", None):
            taken += 1
            assert answer == python, (headers, request_id, connection)
    assert taken > len(cases) / 3  # most cases are hostile on purpose; the usual ones: below


def test_usual_trace_contexts_are_native() -> None:
    """What Envoy logs: W3C, B3 (both forms), a UUID request id, an opaque one, none at all."""
    for headers, request_id in [
        ({"traceparent": f"00-{HEX32}-{HEX16}-01"}, RID),
        ({"x-b3-traceid": HEX32, "x-b3-spanid": HEX16, "x-b3-sampled": "1"}, RID),
        ({"b3": f"{HEX32}-{HEX16}-1"}, RID),
        ({"user-agent": "curl/8.5"}, RID),
        (None, "opaque-request-id"),
        (None, ""),
    ]:
        assert native.trace_context(headers, request_id, "c") == ids.trace_context_python(
            headers, request_id, "c"
        )


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["traceparent", "x-b3-traceid", "x-b3-spanid", "b3", "other"]),
        st.one_of(st.text(alphabet="0123456789abcdefABCDEF-", max_size=70), st.text(max_size=40)),
    ),
    st.one_of(st.text(alphabet="0123456789abcdef-", max_size=40), st.text(max_size=40)),
)
def test_fuzzed_trace_contexts(headers: dict[str, str], request_id: str) -> None:
    python = outcome(ids.trace_context_python, headers, request_id, "c")
    answer = outcome(native.trace_context, headers, request_id, "c")
    assert answer in (python, ("value", None))


SPAN_ARGUMENTS = [
    (bytes(range(16)), bytes(range(8)), b"", wire.span_name("GET /"), b"0\x02", 1, 2, b"", ""),
    (
        b"\x01" * 16,
        b"\x02" * 8,
        b"\x03" * 8,
        wire.span_name("x" * 300),
        b"0\x03",
        2**64 - 1,
        0,
        b"J" * 200,
        "500",
    ),
    (b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, b"", b"", 0, 0, b"", "é" * 100),
    (b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, b"", b"", 0, 0, b"", "\ud800"),
    (b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, b"", b"", -1, 0, b"", ""),
    (b"\x01" * 16, b"\x02" * 8, b"\x03" * 8, b"", b"", 0, 2**64, b"", ""),
    (b"\x01" * 15, b"\x02" * 8, b"", b"", b"", 0, 0, b"", ""),
    (b"\x01" * 16, b"\x02" * 9, b"", b"", b"", 0, 0, b"", ""),
    (b"\x01" * 16, b"\x02" * 8, b"\x03" * 4, b"", b"", 0, 0, b"", ""),
]


@pytest.mark.parametrize("arguments", SPAN_ARGUMENTS)
def test_span(arguments: tuple[Any, ...]) -> None:
    python = outcome(wire.span_python, *arguments)
    answer = outcome(native.span, *arguments)
    assert answer in (python, ("value", None))
    assert outcome(wire.span, *arguments) == python


@FUZZ
@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=8, max_size=8),
    st.sampled_from([b"", b"\x07" * 8]),
    st.binary(max_size=300),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
    st.text(max_size=200),
)
def test_fuzzed_spans(
    trace: bytes, span: bytes, parent: bytes, name: bytes, start: int, end: int, attributes: bytes, error: str
) -> None:
    arguments = (trace, span, parent, name, b"0\x02", start, end, attributes, error)
    assert outcome(native.span, *arguments) == outcome(wire.span_python, *arguments)


@pytest.mark.parametrize("key", [wire.key("url.full"), wire.key("x" * 200), b""])
def test_string_attribute(key: bytes) -> None:
    for value in [*HOSTILE_TEXT, "y" * 120, "y" * 121, "z" * 20_000]:
        python = outcome(wire.string_attribute_python, key, value)
        assert outcome(native.string_attribute, key, value) == python, value


def run_repeats(counter: Any, calls: list[tuple[Any, ...]]) -> list[Outcome]:
    """Each call's answer: ("add", trace, kind, key, end) or ("before", trace, kind, key, start)."""
    answers = []
    for name, *arguments in calls:
        method = counter.add if name == "add" else counter.ended_before
        answers.append(outcome(method, *arguments))
    return answers


def repeat_calls(seed: int, count: int, keys: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    traces = [bytes([t]) * 16 for t in range(3)] + [b"", b"short"]
    texts = [f"10.1.0.{k}:4{k}>10.1.0.9:9080|GET|/r/{k}" for k in range(keys)] + ["", "é", "x" * 600]
    times = [0, 1, 5, -3, 2**63 - 1, 2**63, -(2**63) - 1, 2**100, -(2**100), 1_764_000_000_123_456_789]
    calls: list[tuple[Any, ...]] = []
    for _ in range(count):
        trace = rng.choice(traces)
        kind = rng.choice([ids.CLIENT, ids.SERVER, ids.HOP])
        key, when = rng.choice(texts), rng.choice(times)
        calls.append(
            ("add", trace, kind, key, when) if rng.random() < 0.7 else ("before", trace, kind, key, when)
        )
    return calls


@pytest.mark.parametrize("max_entries", [1, 2, 3, 7, 64, 65_536])
def test_repeats_count_as_the_python_twin(max_entries: int) -> None:
    """The same answers, call for call, through generations turning at every size (keys moving
    from the old generation, dropped with it), times past 64 bits, keys longer than a buffer."""
    for seed in range(4):
        calls = repeat_calls(seed, 3_000, keys=12 + seed * 40)
        python = run_repeats(ids.Repeats(max_entries), calls)
        assert run_repeats(native.Repeats(max_entries), calls) == python
        counts = {answer for kind, answer in python if kind == "value"}
        assert counts >= ({0, 1, 2} if max_entries > 7 else {0, 1})  # repeats found, not all fresh


def test_repeats_refuse_what_the_twin_cannot_be_given() -> None:
    """Arguments of the wrong type, or a time past 128 bits (never an entry's), raise."""
    counter = native.Repeats(4)
    for arguments in [
        ("t", ids.CLIENT, "k", 0),
        (b"t", ids.CLIENT, b"k", 0),
        (b"t", ids.CLIENT, "k", 2**130),
    ]:
        assert outcome(counter.add, *arguments)[0] == "error"
    assert outcome(native.Repeats, 0)[0] == "error"
    assert counter.add(b"t", ids.CLIENT, "k") == 0  # still sound after the refusals


# -- a call's whole span ---------------------------------------------------------------------------------


def span_arguments(call: Call) -> tuple[int, int, str, bytes, bytes]:
    """What the translator passes with a call: its times, and its shape's error, name and attributes
    (a name and attributes of its own where the entry's would not encode)."""
    start, end = semconv.timing(call.entry, call.side)
    error = semconv.error_type(call.entry, call.side)
    try:
        name, attributes = span_name_and_attributes(call, error)
    except UnicodeEncodeError:
        name, attributes = wire.span_name("unencodable"), b""
    return start, end, error, name, attributes


def run_call_spans(calls: list[Call], ratio: float) -> int:
    """Each call's span from ``spans.call_span`` (native first) and from ``call_span_python``, each
    twin counting repeats in its own ``Repeats``: the same bytes, or the same error, call for call.
    Returns how many the native path answered itself (not None)."""
    native_repeats, python_repeats = native.Repeats(), ids.Repeats()
    ports: dict[int, bytes] = {}
    answered = 0
    for call in calls:
        start, end, error, name, attributes = span_arguments(call)
        python = outcome(
            spans.call_span_python, call, start, end, error, name, attributes, python_repeats, ratio, {}
        )
        proxy = call.proxy
        native_args = (call.entry, call.side == "client", proxy.node_id, proxy.is_gateway, call.from_outside)
        alone = outcome(
            native.call_span, native.Repeats(), *native_args, start, end, name, attributes, error, ratio
        )
        answered += alone[0] == "value" and alone[1] is not None
        both = outcome(
            spans.call_span, call, start, end, error, name, attributes, native_repeats, ratio, ports
        )
        assert both == python, call
    return answered


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0, float("nan")])
def test_call_spans_are_the_python_twins(ratio: float) -> None:
    """Generated calls of every shape (sides, peers, trace headers, gRPC, TCP, gateways; hops
    repeated), with and without sampling: the same span bytes, and every one answered natively."""
    calls = list(generated_calls(1_500, seed=11))
    calls += calls[::7]  # the same requests again: repeat counts above 0
    assert run_call_spans(calls, ratio) == len(calls)


def hostile_calls() -> list[Call]:
    """Entries with values no Envoy sends, each where the span reads it: the native path answers
    them, or leaves them to the Python twin, but never answers otherwise."""
    proxy = PRODUCTPAGE
    base: dict[str, Any] = {
        "api_version": "v3",
        "protocol": "http",
        "start_ns": 1_764_000_000_000_000_000,
        "downstream_end_ns": 5_000_000,
        "downstream_remote": SocketAddr("10.1.0.7", 40000),
        "downstream_local": SocketAddr("10.1.0.9", 9080),
        "upstream_remote": SocketAddr("10.1.0.11", 9080),
        "upstream_local": SocketAddr("10.1.0.9", 50000),
        "method": "GET",
        "path": "/r?q=1",
        "authority": "reviews:9080",
        "request_id": "8a4c3c2e-5b1f-4c39-9e3b-6f0d2a1b7c11",
    }
    variations: list[dict[str, Any]] = [
        {},
        {"path": "/" + "p" * 5_000 + "?" + "q" * 3_000},
        {"path": "?"},
        {"path": "/a?"},
        {"path": "/\ud800"},
        {"method": "GÉT"},
        {"method": "\udcff"},
        {"authority": "é" * 300, "scheme": "https"},
        {"downstream_remote": SocketAddr("\ud800", 1)},
        {"downstream_remote": SocketAddr("x" * 2_000, -5)},
        {"downstream_remote": SocketAddr("10.1.0.7", 2**70)},
        {"downstream_remote": SocketAddr("10.1.0.7", True)},
        {"downstream_remote": ("10.1.0.7", 1, 2)},
        {"downstream_remote": None, "downstream_direct_remote": None},
        {"downstream_direct_remote": SocketAddr("10.1.0.8", 41000)},
        {"downstream_local": None, "upstream_remote": None, "upstream_local": None},
        {"upstream_remote": SocketAddr("10.1.0.11", -(2**63))},
        {"request_id": ""},
        {"request_id": "not-a-uuid"},
        {"request_id": " 8a4c3c2e5b1f4c399e3b6f0d2a1b7c11"},
        {"request_id": "é"},
        {"request_id": "\ud800"},
        {"request_headers": {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}},
        {"request_headers": {"traceparent": "00-zz-cd-01"}},
        {"request_headers": MappingProxyType({"b3": f"{'ab' * 16}-{'cd' * 8}"})},
        {"request_headers": {"x-b3-traceid": "ab" * 8, "x-b3-spanid": "\ud800"}},
        {"protocol": "tcp", "received_bytes": 2**63, "sent_bytes": -1},
        {"protocol": "tcp", "received_bytes": 2**64 + 5, "sent_bytes": 0},
        {"protocol": "tcp", "received_bytes": -(2**63) - 1, "sent_bytes": 0},
        {"protocol": "grpc", "path": "/pkg.Service/Method"},
        {"start_ns": 2**64 + 1},
        {"start_ns": -(10**9)},
        {"start_ns": 2**63 - 10, "downstream_end_ns": 5},
    ]
    calls = []
    for variation in variations:
        entry = Entry(**{**base, **variation})
        for side in ("client", "server"):
            for from_outside in (False, True):
                calls.append(Call(side, entry, proxy, None, None, from_outside))
                calls.append(Call(side, entry, GATEWAY, None, None, from_outside))
    return calls


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_hostile_call_spans(ratio: float) -> None:
    calls = hostile_calls()
    answered = run_call_spans(calls * 2, ratio)
    assert answered >= len(calls)  # the ordinary among them still answered natively


def test_call_span_leaves_a_python_repeats_to_the_twin() -> None:
    """Given the Python ``Repeats`` (never so in the bridge), the native path answers None."""
    call = next(generated_calls(1, seed=2))
    start, end, error, name, attributes = span_arguments(call)
    arguments = (call.entry, True, "node", False, False, start, end, name, attributes, error, 1.0)
    assert native.call_span(ids.Repeats(), *arguments) is None
    assert native.call_span(native.Repeats(), *arguments)
