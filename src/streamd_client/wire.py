"""The native protocol's frame codec and message schema, sans I/O (docs/protocol.md).

A frame is a 4-byte big-endian length followed by that many bytes of CBOR holding one message
(a map). Messages:

    request   {"i": request_id, "op": name, "a": {args}}
    response  {"i": request_id, "r": {result}}
    error     {"i": request_id, "e": {"code": str, "message": str, "details"?: {...}}}

The first request on a connection must be ``hello`` with ``{"versions": [1, ...]}``; the server
answers with the version it picked. Request ids are chosen by the client and may be in flight
concurrently; responses come in any order.

Like h11, this module does no I/O: feed bytes with ``receive_data`` and pull messages with
``next_message`` (NEED_DATA when a frame is incomplete). Any malformed input raises
``ProtocolError`` and nothing else.

A frame body is decoded by ``strict_cbor``: no tags but short bignums, no indefinite lengths,
text or bytes map keys, at most ``FRAME_DEPTH_MAX`` levels and ``items_max`` items, and nothing
after the one item. The server bounds requests to ``FRAME_ITEMS_MAX_DEFAULT`` items (a put of
500 records is about 3,500), so a frame decodes to at most its own size plus a few MiB; the
client allows more in answers (a read may return many small batches).
"""

from __future__ import annotations

import struct
from typing import Any, Final

import cbor2

from . import strict_cbor
from .errors import ProtocolError

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
FRAME_BYTES_MAX_DEFAULT: Final = 16 * 1024 * 1024  # a 10 MiB record and its framing
FRAME_ITEMS_MAX_DEFAULT: Final = 65_536  # requests, as the server reads them
ANSWER_ITEMS_MAX_DEFAULT: Final = 1 << 20  # answers, as the client reads them
FRAME_DEPTH_MAX: Final = 16
REQUEST_ID_MAX: Final = 2**64 - 1
_LEN = struct.Struct(">I")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

# Operation names.
OP_HELLO: Final = "hello"
OP_AUTHENTICATE: Final = "authenticate"
OP_CREATE_STREAM: Final = "create_stream"
OP_DELETE_STREAM: Final = "delete_stream"
OP_LIST_STREAMS: Final = "list_streams"
OP_DESCRIBE_STREAM: Final = "describe_stream"
OP_UPDATE_RETENTION: Final = "update_retention"
OP_SET_ENCRYPTION: Final = "set_encryption"
OP_PUT_RECORDS: Final = "put_records"
OP_APPEND_BATCH: Final = "append_batch"
OP_READ: Final = "read"


def encode_message(message: dict[str, Any]) -> bytes:
    """One frame holding ``message``."""
    body = cbor2.dumps(message)
    return _LEN.pack(len(body)) + body


def request(request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"i": request_id, "op": op, "a": args}


def response(request_id: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"i": request_id, "r": result}


def error_response(request_id: int, error: dict[str, Any]) -> dict[str, Any]:
    return {"i": request_id, "e": error}


class FrameDecoder:
    """Splits a byte stream into messages; bounded by ``frame_bytes_max`` and ``items_max``."""

    def __init__(
        self,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        items_max: int = FRAME_ITEMS_MAX_DEFAULT,
    ) -> None:
        assert frame_bytes_max > 0 and items_max > 0
        self.frame_bytes_max = frame_bytes_max
        self.items_max = items_max
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> dict[str, Any] | _NeedData:
        """The next whole message, or NEED_DATA. Raises ProtocolError on malformed input."""
        available = len(self._buf) - self._pos
        if available < 4:
            return NEED_DATA
        (length,) = _LEN.unpack_from(self._buf, self._pos)
        if length == 0 or length > self.frame_bytes_max:
            raise ProtocolError(
                f"frame length {length} outside 1..{self.frame_bytes_max}",
                frame_bytes_max=self.frame_bytes_max,
            )
        if available < 4 + length:
            return NEED_DATA
        start = self._pos + 4
        body = bytes(self._buf[start : start + length])
        self._pos = start + length
        try:
            message = strict_cbor.loads(body, items_max=self.items_max, depth_max=FRAME_DEPTH_MAX)
        except strict_cbor.StrictCborError as exc:
            raise ProtocolError(f"frame refused: {exc}") from None
        request_id = message.get("i") if isinstance(message, dict) else None
        if type(request_id) is not int or not 0 <= request_id <= REQUEST_ID_MAX:
            raise ProtocolError("message must be a map with a request id 'i' in 0..2**64-1")
        assert isinstance(message, dict)
        return message


def check_request(message: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """Split a request message into id, op and args; ProtocolError if it is not one."""
    request_id = message["i"]
    op = message.get("op")
    args = message.get("a", {})
    if not isinstance(op, str) or not isinstance(args, dict):
        raise ProtocolError("request must carry a string 'op' and a map 'a'")
    return request_id, op, args
