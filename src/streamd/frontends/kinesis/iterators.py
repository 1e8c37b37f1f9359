"""Shard iterators: opaque, tamper-evident tokens naming a shard position, valid 5 minutes.

A token is base64url of ``payload || HMAC-SHA256(key, payload)[:16]`` where the payload is

    off size field
    0   1    version (1)
    1   8    issued at, ms since the epoch
    9   8    offset in the shard (the next record to return)
    17  4    shard index
    21  1    stream id length n, then n bytes of stream id (the stream's incarnation)
    ..  1    stream name length m, then m bytes of stream name

The position is resolved to an offset when the iterator is made (LATEST means "after what is
there now", as in Kinesis), so a token is all GetRecords needs. The stream id makes a token of a
deleted-and-recreated stream invalid. The key is per data directory (``iterator_key``), so tokens
survive a restart of the server like Kinesis's survive a failover. Sans-I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

ITERATOR_TTL_MS: Final = 5 * 60 * 1000
_VERSION: Final = 1
_FIXED: Final = struct.Struct(">BQQI")
_MAC_BYTES: Final = 16
_TOKEN_CHARS_MAX: Final = 512


class IteratorError(ValueError):
    """A token that is malformed or was not made with this key."""


class IteratorExpiredError(ValueError):
    """A genuine token older than ``ITERATOR_TTL_MS``."""


@dataclass(frozen=True, slots=True)
class ShardIterator:
    stream: str
    stream_id: str
    shard_index: int
    offset: int
    issued_ms: int


def encode_iterator(key: bytes, it: ShardIterator) -> str:
    name = it.stream.encode()
    sid = it.stream_id.encode()
    assert len(name) < 256 and len(sid) < 256
    payload = (
        _FIXED.pack(_VERSION, it.issued_ms, it.offset, it.shard_index)
        + bytes([len(sid)])
        + sid
        + bytes([len(name)])
        + name
    )
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(payload + mac).decode("ascii")


def decode_iterator(key: bytes, token: str, now_ms: int) -> ShardIterator:
    """Raises IteratorError (malformed, forged) or IteratorExpiredError."""
    if len(token) > _TOKEN_CHARS_MAX:
        raise IteratorError("shard iterator is too long")
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise IteratorError("shard iterator is not a token this server made") from None
    if len(raw) < _FIXED.size + 2 + _MAC_BYTES:
        raise IteratorError("shard iterator is too short")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise IteratorError("shard iterator is not a token this server made")
    version, issued_ms, offset, index = _FIXED.unpack_from(payload)
    if version != _VERSION:
        raise IteratorError(f"shard iterator version {version} is not supported")
    at = _FIXED.size
    sid_len = payload[at]
    sid = payload[at + 1 : at + 1 + sid_len]
    at += 1 + sid_len
    if at >= len(payload):
        raise IteratorError("shard iterator is truncated")
    name_len = payload[at]
    name = payload[at + 1 : at + 1 + name_len]
    if at + 1 + name_len != len(payload):
        raise IteratorError("shard iterator is truncated")
    if now_ms - issued_ms > ITERATOR_TTL_MS:
        raise IteratorExpiredError(
            f"Iterator expired. The iterator was created at time {issued_ms} ms while right now "
            f"it is {now_ms} ms which is further in the future than the tolerated delay of "
            f"{ITERATOR_TTL_MS} milliseconds."
        )
    try:
        return ShardIterator(name.decode(), sid.decode(), index, offset, issued_ms)
    except UnicodeDecodeError:
        raise IteratorError("shard iterator is malformed") from None
