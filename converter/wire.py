"""The protobuf wire format, as much of it as reading and writing caffemodels needs.

The weight reader walks a caffemodel's bytes field by field (so that blob
payloads can be viewed in place), and the writer appends packed blob data
without the message classes; both speak the encoding defined here.
"""

from __future__ import annotations

from typing import Iterator, Union

from google.protobuf.message import DecodeError

# Wire types (the low three bits of a field key).
WIRE_VARINT, WIRE_64BIT, WIRE_LEN, WIRE_32BIT = 0, 1, 2, 5

#: a field's value: an integer (varint) or the (start, end) span of its bytes
FieldValue = Union[int, tuple[int, int]]


class Truncated(Exception):
    """The buffer ends inside a field."""


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def iter_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, FieldValue]]:
    """Yield (field number, wire type, value or (start, end) span) over a message."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire == WIRE_VARINT:
            value, pos = read_varint(buf, pos, end)
            yield number, wire, value
            continue
        if wire == WIRE_LEN:
            length, pos = read_varint(buf, pos, end)
        elif wire in (WIRE_32BIT, WIRE_64BIT):
            length = 4 if wire == WIRE_32BIT else 8
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos + length > end:
            raise Truncated
        yield number, wire, (pos, pos + length)
        pos += length


def encode_varint(value: int) -> bytes:
    """``value`` as a varint; negative numbers as their 64-bit two's complement, as protobuf does."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(number: int, wire: int) -> bytes:
    return encode_varint((number << 3) | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field (message, bytes or packed values) holding ``payload``."""
    return encode_key(number, WIRE_LEN) + encode_varint(len(payload)) + payload


def reencode_field(buf: memoryview, number: int, wire: int, value: FieldValue) -> bytes:
    """The bytes of a field that ``iter_fields`` yielded from ``buf``."""
    if wire == WIRE_VARINT:
        return encode_key(number, wire) + encode_varint(value)
    start, end = value
    if wire == WIRE_LEN:
        return length_delimited(number, bytes(buf[start:end]))
    return encode_key(number, wire) + bytes(buf[start:end])
