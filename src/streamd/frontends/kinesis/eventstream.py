"""The AWS event-stream message codec (``application/vnd.amazon.eventstream``), sans-I/O.

SubscribeToShard answers with a stream of these messages. One message on the wire::

    total_length   u32 BE   the whole message, this field and the trailing CRC included
    headers_length u32 BE
    prelude_crc    u32 BE   CRC32 (zlib's, not CRC32C) of the 8 bytes above
    headers        headers_length bytes: name_len u8, name (UTF-8), type u8, value
    payload        total_length - headers_length - 16 bytes
    message_crc    u32 BE   CRC32 of everything before it, prelude and its CRC included

Header value types are a closed table (``_TYPE_*`` below). ``encode_message`` builds a message;
``EventStreamDecoder`` is the h11-style parser: ``receive_data(bytes)`` then ``next_message()``
until it answers None (it needs more bytes). For any input the decoder either yields messages
or raises ``EventStreamError``; no other exception escapes it. Limits are those of the SDKs
(botocore refuses headers over 128 KiB and payloads over 24 MiB), so we never build a message a
client would refuse.

The Kinesis helpers at the bottom name the three message shapes the gateway sends: the
``initial-response`` event, a modelled event (``SubscribeToShardEvent``) and an exception.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

PRELUDE_BYTES: Final = 12
CRC_BYTES: Final = 4
MESSAGE_OVERHEAD_BYTES: Final = PRELUDE_BYTES + CRC_BYTES
HEADERS_BYTES_MAX: Final = 128 * 1024
PAYLOAD_BYTES_MAX: Final = 24 * 1024 * 1024
HEADER_NAME_BYTES_MAX: Final = 255
HEADER_VALUE_BYTES_MAX: Final = 0xFFFF

# Header value types, as the event-stream format numbers them.
_TYPE_TRUE: Final = 0
_TYPE_FALSE: Final = 1
_TYPE_BYTE: Final = 2
_TYPE_SHORT: Final = 3
_TYPE_INTEGER: Final = 4
_TYPE_LONG: Final = 5
_TYPE_BYTES: Final = 6
_TYPE_STRING: Final = 7
_TYPE_TIMESTAMP: Final = 8
_TYPE_UUID: Final = 9

_FIXED_INT: Final = {
    _TYPE_BYTE: struct.Struct(">b"),
    _TYPE_SHORT: struct.Struct(">h"),
    _TYPE_INTEGER: struct.Struct(">i"),
    _TYPE_LONG: struct.Struct(">q"),
}
_PRELUDE: Final = struct.Struct(">III")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_I64: Final = struct.Struct(">q")


class EventStreamError(Exception):
    """Malformed, oversized or corrupt event-stream bytes (or an unencodable header)."""


@dataclass(frozen=True, slots=True)
class Int8:
    """A header value sent as a 1-byte integer (plain ints are sent as 4 bytes)."""

    value: int


@dataclass(frozen=True, slots=True)
class Int16:
    value: int


@dataclass(frozen=True, slots=True)
class Int64:
    value: int


HeaderValue = bool | int | Int8 | Int16 | Int64 | bytes | str | datetime | uuid.UUID


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: headers as Python values (ints of any width come back as int)."""

    headers: dict[str, bool | int | bytes | str | datetime | uuid.UUID]
    payload: bytes


# -- encoding ---------------------------------------------------------------------------------


def _encode_value(value: HeaderValue) -> bytes:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return bytes([_TYPE_TRUE if value else _TYPE_FALSE])
    if isinstance(value, Int8):
        return bytes([_TYPE_BYTE]) + _FIXED_INT[_TYPE_BYTE].pack(value.value)
    if isinstance(value, Int16):
        return bytes([_TYPE_SHORT]) + _FIXED_INT[_TYPE_SHORT].pack(value.value)
    if isinstance(value, Int64):
        return bytes([_TYPE_LONG]) + _FIXED_INT[_TYPE_LONG].pack(value.value)
    if isinstance(value, int):
        return bytes([_TYPE_INTEGER]) + _FIXED_INT[_TYPE_INTEGER].pack(value)
    if isinstance(value, bytes):
        return bytes([_TYPE_BYTES]) + _length_prefixed(value)
    if isinstance(value, str):
        return bytes([_TYPE_STRING]) + _length_prefixed(value.encode())
    if isinstance(value, datetime):
        millis = round(value.timestamp() * 1000)
        return bytes([_TYPE_TIMESTAMP]) + _I64.pack(millis)
    if isinstance(value, uuid.UUID):
        return bytes([_TYPE_UUID]) + value.bytes
    raise EventStreamError(f"unsupported header value type {type(value).__name__}")


def _length_prefixed(raw: bytes) -> bytes:
    if len(raw) > HEADER_VALUE_BYTES_MAX:
        raise EventStreamError(f"header value of {len(raw)} bytes over {HEADER_VALUE_BYTES_MAX}")
    return _U16.pack(len(raw)) + raw


def encode_headers(headers: dict[str, HeaderValue]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode()
        if not 0 < len(raw_name) <= HEADER_NAME_BYTES_MAX:
            raise EventStreamError(f"header name of {len(raw_name)} bytes (1..255 allowed)")
        out.append(len(raw_name))
        out += raw_name
        try:
            out += _encode_value(value)
        except struct.error as exc:
            raise EventStreamError(f"header {name!r}: {exc}") from None
    return bytes(out)


def encode_message(headers: dict[str, HeaderValue], payload: bytes) -> bytes:
    """One whole message. Raises EventStreamError if it would exceed the SDKs' limits."""
    raw_headers = encode_headers(headers)
    if len(raw_headers) > HEADERS_BYTES_MAX:
        raise EventStreamError(f"headers of {len(raw_headers)} bytes over {HEADERS_BYTES_MAX}")
    if len(payload) > PAYLOAD_BYTES_MAX:
        raise EventStreamError(f"payload of {len(payload)} bytes over {PAYLOAD_BYTES_MAX}")
    total = MESSAGE_OVERHEAD_BYTES + len(raw_headers) + len(payload)
    prelude = _U32.pack(total) + _U32.pack(len(raw_headers))
    head = prelude + _U32.pack(zlib.crc32(prelude))
    message_crc = zlib.crc32(payload, zlib.crc32(raw_headers, zlib.crc32(head)))
    out = b"".join((head, raw_headers, payload, _U32.pack(message_crc)))
    assert len(out) == total
    return out


# -- decoding ---------------------------------------------------------------------------------


class EventStreamDecoder:
    """Incremental parser: feed bytes with ``receive_data``, take messages with ``next_message``.

    Holds at most one partial message (bounded by the limits above). After an error the
    decoder is broken: every later call raises the same error, as the stream cannot be resynced.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: EventStreamError | None = None

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes arrive. Raises EventStreamError."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except EventStreamError as exc:
            self._error = exc
            raise

    def _next(self) -> Message | None:
        buf = self._buffer
        if len(buf) < PRELUDE_BYTES:
            return None
        total, headers_length, prelude_crc = _PRELUDE.unpack_from(buf)
        if zlib.crc32(buf[:8]) != prelude_crc:
            raise EventStreamError("prelude CRC mismatch")
        if headers_length > HEADERS_BYTES_MAX:
            raise EventStreamError(f"headers length {headers_length} over {HEADERS_BYTES_MAX}")
        payload_length = total - headers_length - MESSAGE_OVERHEAD_BYTES
        if payload_length < 0:
            raise EventStreamError(
                f"total length {total} too small for {headers_length} header bytes"
            )
        if payload_length > PAYLOAD_BYTES_MAX:
            raise EventStreamError(f"payload length {payload_length} over {PAYLOAD_BYTES_MAX}")
        if len(buf) < total:
            return None
        (message_crc,) = _U32.unpack_from(buf, total - CRC_BYTES)
        if zlib.crc32(buf[: total - CRC_BYTES]) != message_crc:
            raise EventStreamError("message CRC mismatch")
        headers_end = PRELUDE_BYTES + headers_length
        headers = decode_headers(bytes(buf[PRELUDE_BYTES:headers_end]))
        payload = bytes(buf[headers_end : total - CRC_BYTES])
        del buf[:total]
        return Message(headers, payload)


def decode_headers(raw: bytes) -> dict[str, bool | int | bytes | str | datetime | uuid.UUID]:
    """Parse a headers block. Raises EventStreamError on any malformation."""
    headers: dict[str, bool | int | bytes | str | datetime | uuid.UUID] = {}
    at = 0
    while at < len(raw):
        name_length = raw[at]
        at += 1
        if name_length == 0 or at + name_length + 1 > len(raw):
            raise EventStreamError("truncated or empty header name")
        name = _utf8(raw[at : at + name_length])
        at += name_length
        value_type = raw[at]
        at += 1
        value, at = _decode_value(raw, at, value_type)
        headers[name] = value
    return headers


def _decode_value(
    raw: bytes, at: int, value_type: int
) -> tuple[bool | int | bytes | str | datetime | uuid.UUID, int]:
    if value_type == _TYPE_TRUE:
        return True, at
    if value_type == _TYPE_FALSE:
        return False, at
    fixed = _FIXED_INT.get(value_type)
    if fixed is not None:
        _need(raw, at, fixed.size)
        return fixed.unpack_from(raw, at)[0], at + fixed.size
    if value_type in (_TYPE_BYTES, _TYPE_STRING):
        _need(raw, at, 2)
        (length,) = _U16.unpack_from(raw, at)
        _need(raw, at + 2, length)
        value = raw[at + 2 : at + 2 + length]
        return (value if value_type == _TYPE_BYTES else _utf8(value)), at + 2 + length
    if value_type == _TYPE_TIMESTAMP:
        _need(raw, at, 8)
        (millis,) = _I64.unpack_from(raw, at)
        try:
            stamp = datetime.fromtimestamp(millis / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise EventStreamError(f"timestamp header out of range: {millis}") from None
        return stamp, at + 8
    if value_type == _TYPE_UUID:
        _need(raw, at, 16)
        return uuid.UUID(bytes=raw[at : at + 16]), at + 16
    raise EventStreamError(f"unknown header value type {value_type}")


def _need(raw: bytes, at: int, size: int) -> None:
    if at + size > len(raw):
        raise EventStreamError("truncated header value")


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise EventStreamError("header name or string value is not UTF-8") from None


# -- the Kinesis messages ---------------------------------------------------------------------


def event_message(event_type: str, payload: bytes, content_type: str) -> bytes:
    """A modelled event (``initial-response``, ``SubscribeToShardEvent``)."""
    return encode_message(
        {":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
        payload,
    )


def initial_response(payload: bytes, content_type: str) -> bytes:
    """The first message of the stream: the operation's non-stream output members (none here)."""
    return event_message("initial-response", payload, content_type)


def exception_message(exception_type: str, payload: bytes, content_type: str) -> bytes:
    """A modelled error mid-stream; botocore raises it as EventStreamError with this code."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": content_type,
            ":message-type": "exception",
        },
        payload,
    )
