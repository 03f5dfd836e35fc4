"""Istio's exchanged peer metadata, in every format it has shipped, into a :class:`Workload`.

* ``wasm.downstream_peer`` / ``wasm.upstream_peer`` (Istio <= 1.23): an Any holding
  a BytesValue holding a FlatBuffers ``Wasm.Common.FlatNode``;
* ``downstream_peer`` / ``upstream_peer`` (Istio 1.24+): an Any holding a Struct with
  lower-case keys (``workload``, ``name``, ``namespace``, ``service``, ``revision``,
  ``app``, ``version``, ``cluster``, ``type``, ``labels``);
* the same keys wrapped otherwise: a Struct with node keys (``NAME``, ``LABELS``, ...),
  a StringValue of ``k=v,k=v`` text or JSON;
* the ``x-envoy-peer-metadata`` header, when logged: base64 of a Struct with node keys.

Decoding is cached by the raw bytes (bounded), so a busy mesh pays once per
distinct peer. Anything that does not decode raises :class:`PeerError` with
the reason that ends up in ``als2otel_entries_unresolved_total``.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any

from flatbuffers import encode, number_types
from flatbuffers.table import Table
from google.protobuf import struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError

from .. import istio
from ..model import Workload
from ..stats import Counter

STRUCT = "type.googleapis.com/google.protobuf.Struct"
BYTES_VALUE = "type.googleapis.com/google.protobuf.BytesValue"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"

MAX_CACHED_PEERS = 16_384
"""Distinct peers kept decoded; the cache starts over when full."""


class PeerError(Exception):
    """Peer metadata that names no workload; ``reason`` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerDecoder:
    """Decodes peer metadata with a bounded cache keyed by the raw bytes."""

    def __init__(
        self,
        max_entries: int = MAX_CACHED_PEERS,
        name_labels: tuple[str, ...] = istio.NAME_LABELS,
        rotations: Counter | None = None,
    ) -> None:
        """``rotations`` counts each time the full cache starts over (``cache="peers"``)."""
        self._cache: dict[tuple[str, bytes], Workload | str] = {}
        self._max = max_entries
        self._name_labels = name_labels
        self._rotations = rotations

    def decode_any(self, type_url: str, value: bytes) -> Workload:
        key = (type_url, value)
        found = self._cache.get(key)
        if found is None:
            try:
                found = self._workload(_decode_any(type_url, value))
            except PeerError as exc:
                found = exc.reason
            if len(self._cache) >= self._max:
                self._cache.clear()
                if self._rotations is not None:
                    self._rotations.inc("peers")
            self._cache[key] = found
        if isinstance(found, str):
            raise PeerError(found)
        return found

    def decode_header(self, text: str) -> Workload:
        """``x-envoy-peer-metadata``: base64 of a serialized Struct with node keys."""
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PeerError("corrupt_peer_metadata") from exc
        return self.decode_any(STRUCT, raw)

    def _workload(self, node: Mapping[str, Any]) -> Workload:
        workload = istio.workload_from_node_metadata(node, name_labels=self._name_labels)
        if workload is None:
            raise PeerError("peer_without_name")
        return workload


def _decode_any(type_url: str, value: bytes) -> Mapping[str, Any]:
    """Node metadata (upper-case keys) from one peer value."""
    try:
        if type_url == STRUCT:
            return node_from_fields(_struct_to_dict(struct_pb2.Struct.FromString(value)))
        if type_url == BYTES_VALUE:
            return node_from_flatnode(wrappers_pb2.BytesValue.FromString(value).value)
        if type_url == STRING_VALUE:
            return node_from_text(wrappers_pb2.StringValue.FromString(value).value)
    except DecodeError as exc:
        raise PeerError("corrupt_peer_metadata") from exc
    raise PeerError("unknown_peer_format")


def _struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in message.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[key] = value.string_value
        elif kind == "struct_value":
            out[key] = _struct_to_dict(value.struct_value)
        elif kind == "number_value":
            out[key] = value.number_value
        elif kind == "bool_value":
            out[key] = value.bool_value
        elif kind == "list_value":
            out[key] = [
                v.string_value for v in value.list_value.values if v.WhichOneof("kind") == "string_value"
            ]
    return out


# Lower-case keys of Istio 1.24+'s peer Struct -> the node metadata's own keys.
_LOWER_LABELS = {
    "service": istio.CANONICAL_NAME,
    "revision": istio.CANONICAL_REVISION,
    "app": "app",
    "version": "version",
}


def node_from_fields(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """Node metadata from either generation of keys (node keys win when both are present)."""
    if any(key.isupper() for key in fields):
        return fields
    labels_raw = fields.get("labels")
    labels = {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, Mapping) else {}
    for key, label in _LOWER_LABELS.items():
        value = fields.get(key)
        if isinstance(value, str) and value:
            labels.setdefault(label, value)
    upper = {
        "NAME": fields.get("name", ""),
        "NAMESPACE": fields.get("namespace", ""),
        "WORKLOAD_NAME": fields.get("workload", ""),
        "CLUSTER_ID": fields.get("cluster", ""),
        "LABELS": labels,
    }
    if fields.get("type") in ("workloadentry", "workloadentries"):
        upper["OWNER"] = "kubernetes://apis/networking.istio.io/v1/workloadentries/" + str(
            fields.get("name", "")
        )
    return upper


def node_from_text(text: str) -> Mapping[str, Any]:
    """A StringValue: JSON of either key generation, or ``type=pod,workload=x,...``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PeerError("corrupt_peer_metadata") from exc
        if not isinstance(data, dict):
            raise PeerError("corrupt_peer_metadata")
        return node_from_fields(data)
    fields = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise PeerError("corrupt_peer_metadata")
        fields[key.strip()] = value.strip()
    return node_from_fields(fields)


# FlatNode's fields in vtable order (istio/proxy extensions/common/node_info.fbs).
_NAME, _NAMESPACE, _LABELS, _OWNER, _WORKLOAD_NAME = 0, 1, 2, 3, 4
_CLUSTER_ID = 9


class _FlatTable:
    """Bounds-checked reads of one FlatBuffers table: corrupt bytes raise, never read past the end."""

    def __init__(self, buf: bytearray, pos: int) -> None:
        if not 0 <= pos < len(buf) - 4:
            raise PeerError("corrupt_peer_metadata")
        self._table = Table(buf, pos)
        vtable = pos - encode.Get(number_types.SOffsetTFlags.packer_type, buf, pos)
        if not 0 <= vtable <= len(buf) - 4:
            raise PeerError("corrupt_peer_metadata")
        self._buf = buf

    def _field(self, slot: int) -> int:
        offset = int(self._table.Offset(4 + 2 * slot))
        if offset and not 0 <= self._table.Pos + offset < len(self._buf) - 3:
            raise PeerError("corrupt_peer_metadata")
        return offset

    def string(self, slot: int) -> str:
        offset = self._field(slot)
        if not offset:
            return ""
        start = self._table.Pos + offset
        start += encode.Get(number_types.UOffsetTFlags.packer_type, self._buf, start)
        if start + 4 > len(self._buf):
            raise PeerError("corrupt_peer_metadata")
        length = encode.Get(number_types.UOffsetTFlags.packer_type, self._buf, start)
        if start + 4 + length > len(self._buf):
            raise PeerError("corrupt_peer_metadata")
        return bytes(self._buf[start + 4 : start + 4 + length]).decode()

    def tables(self, slot: int) -> list[_FlatTable]:
        offset = self._field(slot)
        if not offset:
            return []
        count = self._table.VectorLen(offset)
        first = self._table.Vector(offset)
        if count < 0 or first + 4 * count > len(self._buf):
            raise PeerError("corrupt_peer_metadata")
        return [_FlatTable(self._buf, self._table.Indirect(first + 4 * i)) for i in range(count)]


def node_from_flatnode(data: bytes) -> Mapping[str, Any]:
    """Node metadata from Istio's FlatBuffers FlatNode (before 1.24)."""
    if len(data) < 8:
        raise PeerError("corrupt_peer_metadata")
    buf = bytearray(data)
    try:
        root = _FlatTable(buf, encode.Get(number_types.UOffsetTFlags.packer_type, buf, 0))
        labels = {kv.string(0): kv.string(1) for kv in root.tables(_LABELS)}
        fields = {
            "NAME": root.string(_NAME),
            "NAMESPACE": root.string(_NAMESPACE),
            "OWNER": root.string(_OWNER),
            "WORKLOAD_NAME": root.string(_WORKLOAD_NAME),
            "CLUSTER_ID": root.string(_CLUSTER_ID),
            "LABELS": labels,
        }
    except (IndexError, ValueError, OverflowError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise PeerError("corrupt_peer_metadata") from exc
    return fields
