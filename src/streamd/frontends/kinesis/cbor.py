"""A small CBOR codec (RFC 8949) for the Kinesis gateway's ``application/x-amz-cbor-1.1`` bodies.

Why not cbor2 here: tag 1 means "epoch seconds" to cbor2 (and to RFC 8949), which turns a value
outside datetime's range into an exception deep inside the decoder; the AWS Java SDK puts epoch
*milliseconds* under tag 1. This decoder hands tag 1 back as ``EpochTag(number)`` and lets the
caller decide what the number means. It also bounds nesting depth, container lengths (against
the bytes left) and the number of items in a body (``ITEMS_MAX``: a body of one-byte nulls or
empty maps would otherwise decode to 8 to 72 times its size), and raises only ``CborError`` for
any input (the sans-I/O rule: one error type escapes a decoder). Tags 28/29 (shared
references), 25/256 (string references) and every tag but 1 are refused.

Decoded types: int, bytes, str, list, dict (keys of any decoded scalar type), float, bool, None,
``EpochTag``. Indefinite-length strings, arrays and maps are accepted (the Jackson CBOR generator
the Java SDK uses writes indefinite-length maps). Other tags are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

DEPTH_MAX: Final = 32
ITEMS_MAX: Final = 65_536  # a PutRecords of 500 records is about 3,500
_BREAK: Final = object()


class CborError(ValueError):
    """The bytes are not a CBOR item this codec accepts."""


@dataclass(frozen=True, slots=True)
class EpochTag:
    """CBOR tag 1 around a number: an epoch time whose unit the caller decides."""

    value: int | float


class CborItemsError(CborError):
    """The body holds more items than the decoder was allowed to make."""


class _Reader:
    def __init__(self, data: bytes, items_max: int = ITEMS_MAX) -> None:
        self.items_max = items_max
        self.data = data
        self.at = 0
        self.items = 0

    def take(self, count: int) -> bytes:
        end = self.at + count
        if count < 0 or end > len(self.data):
            raise CborError("CBOR item runs past the end of the body")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        if info == 25:
            return int(struct.unpack(">H", self.take(2))[0])
        if info == 26:
            return int(struct.unpack(">I", self.take(4))[0])
        if info == 27:
            return int(struct.unpack(">Q", self.take(8))[0])
        raise CborError(f"reserved CBOR additional information {info}")

    def item(self, depth: int) -> Any:
        if depth > DEPTH_MAX:
            raise CborError(f"CBOR nesting deeper than {DEPTH_MAX}")
        self.items += 1
        if self.items > self.items_max:
            raise CborItemsError(f"more than {self.items_max} CBOR items in one body")
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        if info == 31:
            return self._indefinite(major, depth)
        value = self.argument(info)
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self.take(value)
        if major == 3:
            return _text(self.take(value))
        if major == 4:
            self._check_count(value)
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            self._check_count(value)
            return self._map(value, depth)
        return self._tag(value, depth)  # major 6

    def _check_count(self, count: int) -> None:
        # Every item takes at least one byte: a count beyond what is left is a lie.
        if count > len(self.data) - self.at:
            raise CborError("CBOR container claims more items than the body holds")

    def _map(self, count: int, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for _ in range(count):
            key = self.item(depth + 1)
            _check_key(key)
            out[key] = self.item(depth + 1)
        return out

    def _tag(self, tag: int, depth: int) -> Any:
        if tag != 1:  # refused before its content is read: nothing of it is built
            raise CborError(f"CBOR tag {tag} is not supported")
        value = self.item(depth + 1)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CborError("CBOR tag 1 must wrap a number")
        return EpochTag(value)

    def _simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info in (22, 23):
            return None
        if info == 25:
            return _half(self.take(2))
        if info == 26:
            return float(struct.unpack(">f", self.take(4))[0])
        if info == 27:
            return float(struct.unpack(">d", self.take(8))[0])
        if info == 31:
            return _BREAK
        raise CborError(f"CBOR simple value {info} is not supported")

    def _indefinite(self, major: int, depth: int) -> Any:
        if major in (2, 3):
            parts: list[bytes] = []
            while (initial := self.take(1)[0]) != 0xFF:
                if initial >> 5 != major or initial & 0x1F == 31:
                    raise CborError("bad chunk in an indefinite-length CBOR string")
                parts.append(self.take(self.argument(initial & 0x1F)))
            joined = b"".join(parts)
            return joined if major == 2 else _text(joined)
        if major == 4:
            items: list[Any] = []
            while (item := self.item(depth + 1)) is not _BREAK:
                items.append(item)
            return items
        if major == 5:
            out: dict[Any, Any] = {}
            while (key := self.item(depth + 1)) is not _BREAK:
                _check_key(key)
                value = self.item(depth + 1)
                if value is _BREAK:
                    raise CborError("CBOR map ends between a key and its value")
                out[key] = value
            return out
        raise CborError(f"CBOR major type {major} cannot have an indefinite length")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CborError("CBOR text string is not valid UTF-8") from None


def _half(raw: bytes) -> float:
    return float(struct.unpack(">e", raw)[0])


def _check_key(key: Any) -> None:
    if isinstance(key, list | dict | EpochTag) or key is _BREAK:
        raise CborError("CBOR map key must be a scalar")


def loads(data: bytes, items_max: int = ITEMS_MAX) -> Any:
    """Decode exactly one CBOR item filling ``data``, making at most ``items_max`` items.
    Raises CborError (CborItemsError past ``items_max``)."""
    reader = _Reader(data, items_max)
    try:
        value = reader.item(0)
    except RecursionError:
        raise CborError("CBOR nesting too deep") from None
    if value is _BREAK:
        raise CborError("unexpected CBOR break")
    if reader.at != len(data):
        raise CborError(f"{len(data) - reader.at} bytes after the CBOR item")
    return value


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    if value < 0x100:
        return bytes([major << 5 | 24, value])
    if value < 0x10000:
        return bytes([major << 5 | 25]) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes([major << 5 | 26]) + struct.pack(">I", value)
    return bytes([major << 5 | 27]) + struct.pack(">Q", value)


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise CborError(f"integer {value} does not fit CBOR's 64-bit heads")
        out += _head(0, value) if value >= 0 else _head(1, -1 - value)
    elif isinstance(value, float):
        out += b"\xfb" + struct.pack(">d", value)
    elif isinstance(value, bytes | bytearray | memoryview):
        out += _head(2, len(value))
        out += value
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += _head(3, len(raw)) + raw
    elif isinstance(value, list | tuple):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        out += _head(5, len(value))
        for key, item in value.items():
            _encode(key, out)
            _encode(item, out)
    elif isinstance(value, datetime):
        # AWS CBOR 1.1 (the Java SDK's convention): tag 1 around integer epoch milliseconds.
        out += b"\xc1"
        _encode(round(value.timestamp() * 1000), out)
    elif isinstance(value, EpochTag):
        out += b"\xc1"
        _encode(value.value, out)
    else:
        raise CborError(f"cannot encode {type(value).__name__} as CBOR")


def dumps(value: Any) -> bytes:
    """Encode ``value`` (definite lengths; datetimes as tag 1 epoch milliseconds)."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)
