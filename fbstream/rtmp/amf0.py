"""
AMF0 (Action Message Format 0) encoding and decoding.

Only what RTMP commands and ``onMetaData`` need: numbers, booleans, strings,
objects, null/undefined, ECMA and strict arrays, dates and long strings. The
switch to AMF3 (marker 0x11) is refused with :class:`AMFError`, as are unknown
markers, truncated input and nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from fbstream.rtmp.errors import AMFError

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
NULL = 0x05
UNDEFINED = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
AVMPLUS = 0x11

#: Objects and arrays nested deeper than this are refused (a nesting bomb).
MAX_DEPTH = 32
#: A strict array may not claim more elements than this (the count is a hint
#: we cannot trust; each element takes at least one byte anyway).
MAX_ELEMENTS = 1 << 16

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")


@attrs.frozen
class Undefined:
    """The AMF0 ``undefined`` value, distinct from ``null`` (``None``)."""


UNDEFINED_VALUE = Undefined()


@attrs.frozen
class ECMAArray:
    """An associative array; kept apart from objects so it round-trips."""

    items: dict[str, Any]


@attrs.frozen
class Date:
    """A date: milliseconds since the epoch and a (deprecated) timezone."""

    millis: float
    timezone: int = 0


def decode_all(data: bytes) -> list[Any]:
    """Decode every AMF0 value in ``data``; raise :class:`AMFError` if malformed."""
    values = []
    pos = 0
    end = len(data)
    while pos < end:
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def decode(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """Decode one value at ``pos``; return it and the position after it."""
    return _decode(data, pos, 0)


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise AMFError("truncated AMF0 value")


def _string(data: bytes, pos: int, size: int) -> tuple[str, int]:
    _need(data, pos, size)
    raw = data[pos : pos + size]
    try:
        return raw.decode("utf-8"), pos + size
    except UnicodeDecodeError:
        # Some encoders put Latin-1 in metadata; keep it readable rather than fail.
        return raw.decode("latin-1"), pos + size


def _key(data: bytes, pos: int) -> tuple[str, int]:
    _need(data, pos, 2)
    (size,) = _U16.unpack_from(data, pos)
    return _string(data, pos + 2, size)


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    items: dict[str, Any] = {}
    while True:
        _need(data, pos, 3)
        if data[pos] == 0 and data[pos + 1] == 0 and data[pos + 2] == OBJECT_END:
            return items, pos + 3
        key, pos = _key(data, pos)
        value, pos = _decode(data, pos, depth + 1)
        items[key] = value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise AMFError("AMF0 nesting deeper than %d" % (MAX_DEPTH,))
    _need(data, pos, 1)
    marker = data[pos]
    pos += 1
    if marker == NUMBER:
        _need(data, pos, 8)
        return _DOUBLE.unpack_from(data, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == STRING:
        return _key(data, pos)
    if marker == OBJECT:
        return _properties(data, pos, depth)
    if marker == NULL:
        return None, pos
    if marker == UNDEFINED:
        return UNDEFINED_VALUE, pos
    if marker == ECMA_ARRAY:
        _need(data, pos, 4)
        items, pos = _properties(data, pos + 4, depth)
        return ECMAArray(items), pos
    if marker == STRICT_ARRAY:
        _need(data, pos, 4)
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        if count > MAX_ELEMENTS or count > len(data) - pos:
            raise AMFError("AMF0 strict array claims %d elements" % (count,))
        elements = []
        for _ in range(count):
            value, pos = _decode(data, pos, depth + 1)
            elements.append(value)
        return elements, pos
    if marker == DATE:
        _need(data, pos, 10)
        millis, tz = _DATE.unpack_from(data, pos)
        return Date(millis, tz), pos + 10
    if marker == LONG_STRING:
        _need(data, pos, 4)
        (size,) = _U32.unpack_from(data, pos)
        return _string(data, pos + 4, size)
    if marker == AVMPLUS:
        raise AMFError("AMF3 values are not supported (use objectEncoding 0)")
    raise AMFError("unknown AMF0 marker 0x%02x" % (marker,))


def encode(*values: Any) -> bytes:
    """Encode values in order and return the bytes."""
    out = bytearray()
    for value in values:
        _encode(out, value, 0)
    return bytes(out)


def _encode_key(out: bytearray, key: str) -> None:
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise AMFError("AMF0 property name too long")
    out += _U16.pack(len(raw))
    out += raw


def _encode_properties(out: bytearray, items: dict[str, Any], depth: int) -> None:
    for key, value in items.items():
        _encode_key(out, key)
        _encode(out, value, depth + 1)
    out += b"\x00\x00\x09"


def _encode(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise AMFError("AMF0 nesting deeper than %d" % (MAX_DEPTH,))
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED_VALUE or isinstance(value, Undefined):
        out.append(UNDEFINED)
    elif isinstance(value, bool):
        out.append(BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, ECMAArray):
        out.append(ECMA_ARRAY)
        out += _U32.pack(len(value.items))
        _encode_properties(out, value.items, depth)
    elif isinstance(value, dict):
        out.append(OBJECT)
        _encode_properties(out, value, depth)
    elif isinstance(value, (list, tuple)):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for element in value:
            _encode(out, element, depth + 1)
    elif isinstance(value, Date):
        out.append(DATE)
        out += _DATE.pack(value.millis, value.timezone)
    else:
        raise AMFError("cannot encode %r as AMF0" % (type(value).__name__,))
