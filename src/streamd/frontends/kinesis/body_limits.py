"""How large a request body may be, per operation and protocol, known from Content-Length alone.

Kinesis' own limits are 1 MiB of data per record and 5 MiB per PutRecords request (data and
partition keys) by default; a stream whose max record size UpdateMaxRecordSize raised takes
records up to 10 MiB and PutRecords requests up to 10 MiB. The stream is not known before the
body is decoded, so the bound here is the largest any stream takes; the stream's own limits
are applied after decoding (records.py). A body is bounded by what such a request can take
once encoded: in JSON the data is base64 (4/3 of its size), in CBOR it is raw; each record
adds its partition key and some framing (``_PER_RECORD_BYTES``, generous). Every other
operation's body is small (the largest, TagResource with 200 tags, is under 100 KiB), so 1 MiB
bounds them.

A body over its bound is refused before a byte of it is read, with the error (400) the SDKs get
from Kinesis for such a request: InvalidArgumentException "Records size exceeds 10 MB limit" for
PutRecords, ValidationException otherwise, so a client cannot make the gateway buffer
megabytes it will refuse anyway. A body under the bound that still breaks a limit (one record
of 1.1 MiB in a 2 MiB PutRecords) gets the operation's own error after decoding, as before.
No I/O here.
"""

from __future__ import annotations

from typing import Final

from streamd_client.model import (
    PUT_RECORDS_COUNT_MAX,
    PUT_RECORDS_LARGE_BYTES_MAX,
    RECORD_DATA_BYTES_CEILING,
)

from .codec import Protocol
from .errors import INVALID_ARGUMENT, VALIDATION

_PER_RECORD_BYTES: Final = 1024  # partition key (256 characters, JSON-escaped), hash key, keys
_REQUEST_OVERHEAD_BYTES: Final = 4096  # stream name or ARN, the enclosing map
OTHER_BODY_BYTES_MAX: Final = 1024 * 1024


def _encoded(data_bytes: int, protocol: Protocol) -> int:
    return -(-data_bytes * 4 // 3) if protocol is Protocol.JSON else data_bytes


def body_bytes_max(operation: str | None, protocol: Protocol) -> int:
    """The largest body ``operation`` can legitimately have in ``protocol``."""
    if operation == "PutRecords":
        framing = PUT_RECORDS_COUNT_MAX * _PER_RECORD_BYTES + _REQUEST_OVERHEAD_BYTES
        return _encoded(PUT_RECORDS_LARGE_BYTES_MAX, protocol) + framing
    if operation == "PutRecord":
        framing = _PER_RECORD_BYTES + _REQUEST_OVERHEAD_BYTES
        return _encoded(RECORD_DATA_BYTES_CEILING, protocol) + framing
    return OTHER_BODY_BYTES_MAX


def too_large(operation: str | None, content_length: int, limit: int) -> tuple[str, str]:
    """The Kinesis error (type name, message) for a body of ``content_length`` over ``limit``."""
    detail = f"the request body is {content_length} bytes; at most {limit} are accepted"
    if operation == "PutRecords":
        mib = PUT_RECORDS_LARGE_BYTES_MAX // (1024 * 1024)
        return INVALID_ARGUMENT, f"Records size exceeds {mib} MB limit ({detail})"
    if operation == "PutRecord":
        return VALIDATION, (
            "1 validation error detected: Value at 'data' failed to satisfy constraint: Member "
            f"must have length less than or equal to {RECORD_DATA_BYTES_CEILING} ({detail})"
        )
    return VALIDATION, f"request too large for {operation or 'this operation'}: {detail}"
