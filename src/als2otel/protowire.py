"""Protobuf's wire format read where no message is built: the fields of a message, where each
one's bytes are. For what is read a field at a time on its way through: an OTLP logs request's
outer layers (receiver/otlp_wire.py) and an export request cut into pieces (export/split.py).

Raises :class:`DecodeError` where the bytes are not valid protobuf, as parsing them would.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import DecodeError

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def fields(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(field number, wire type, where the field starts, where its tag ends, where its value
    starts, where it ends) for each field in ``raw[start:end]``; a length-delimited value starts
    after its length."""
    position = start
    while position < end:
        field_start = position
        key, position = varint(raw, position, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        tag_end = value_start = position
        if wire_type == VARINT:
            _, position = varint(raw, position, end)
        elif wire_type == FIXED64:
            position += 8
        elif wire_type == FIXED32:
            position += 4
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = varint(raw, position, end)
            position = value_start + length
        else:  # groups (3, 4) are not in OTLP; 6 and 7 are not wire types
            raise DecodeError(f"wire type {wire_type}")
        if position > end:
            raise DecodeError("a field runs past the end of its message")
        yield number, wire_type, field_start, tag_end, value_start, position


def varint(raw: bytes, position: int, end: int) -> tuple[int, int]:
    """The varint at ``position`` and where it ends."""
    byte = raw[position] if position < end else 0x100
    if byte < 0x80:  # one byte: nearly every tag and length
        return byte, position + 1
    value = shift = 0
    while position < end and shift < 64:
        byte = raw[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise DecodeError("a varint runs past the end of its message or past 10 bytes")
