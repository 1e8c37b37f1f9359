"""Kinesis request and response bodies: AWS JSON 1.1 and AWS CBOR 1.1, sans-I/O.

Operations see one shape whatever the protocol: blobs as ``bytes``, timestamps as aware
``datetime``s. Decoding is name-driven (Kinesis's blob members are all called ``Data``; its
timestamp members are the names in ``TIMESTAMP_FIELDS``); encoding is type-driven (``bytes``
becomes base64 text in JSON and a byte string in CBOR, ``datetime`` becomes epoch seconds as a
number in JSON and tag 1 around epoch milliseconds in CBOR, as the AWS Java SDK reads it).

A timestamp *received* as a number is read as seconds, unless it is so large that it can only be
milliseconds (>= 1e11: seconds would be past the year 5000); that accepts both botocore's and
the Java SDK's conventions. ``None`` members are left out of answers, as AWS does.

Only ``CodecError`` escapes ``decode_request`` for any input.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

from streamd_client.summary import summary

from . import cbor
from .cbor import CborError, CborItemsError, EpochTag

TARGET_PREFIX: Final = "Kinesis_20131202."
BLOB_FIELDS: Final = frozenset({"Data"})
TIMESTAMP_FIELDS: Final = frozenset(
    {
        "Timestamp",
        "StreamCreationTimestamp",
        "ApproximateArrivalTimestamp",
        "ConsumerCreationTimestamp",
    }
)
_MILLIS_THRESHOLD: Final = 1e11
_EPOCH_SECONDS_MAX: Final = 253402300799  # 9999-12-31T23:59:59Z


class CodecError(ValueError):
    """A body that cannot be decoded (answered as SerializationException)."""


class CborTooManyItemsError(CodecError):
    """A CBOR body with more items than the decoder was allowed to make."""


class InvalidTextError(CodecError):
    """A string member that is not Unicode text: a lone surrogate, which JSON's ``\\ud800``
    escape (or its raw UTF-8 form, which json.loads lets through) can carry. It has no UTF-8 form,
    so it could not be hashed, stored or answered (answered as ValidationException)."""


@dataclass(frozen=True, slots=True)
class OversizedNumber:
    """A JSON integer of more than ``JSON_INT_DIGITS_MAX`` digits, kept as its length: Python's
    ``int()`` refuses it (and ``str()`` of it raises), so member checks name it out of range."""

    digits: int
    negative: bool

    def __str__(self) -> str:
        return f"an integer of {self.digits} digits"


JSON_INT_DIGITS_MAX: Final = 4300  # sys.get_int_max_str_digits()'s default
# A PutRecords of 500 records holds about 2,000 values; 500 partition keys of 256 commas would
# count 128,000. Past this a body is refused before it is parsed.
JSON_ITEMS_MAX: Final = 1 << 18
# A lone surrogate's JSON escape, or its (invalid) UTF-8 bytes: only then are strings walked.
_SURROGATE_HINT: Final = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class Protocol(Enum):
    JSON = "application/x-amz-json-1.1"
    CBOR = "application/x-amz-cbor-1.1"


_CONTENT_TYPES: Final = {
    "application/x-amz-json-1.1": Protocol.JSON,
    "application/x-amz-json-1.0": Protocol.JSON,
    "application/json": Protocol.JSON,
    "application/x-amz-cbor-1.1": Protocol.CBOR,
    "application/cbor": Protocol.CBOR,
}


def protocol_of(content_type: str | None) -> Protocol | None:
    """The protocol a Content-Type names (parameters ignored), or None if unsupported."""
    if content_type is None:
        return None
    return _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())


def operation_of(target: str | None) -> str | None:
    """``Kinesis_20131202.PutRecord`` -> ``PutRecord``; None if the prefix is not Kinesis's."""
    if target is None or not target.startswith(TARGET_PREFIX):
        return None
    name = target[len(TARGET_PREFIX) :]
    return name if name.isascii() and name.isalnum() else None


# -- decoding ------------------------------------------------------------------------------------


def decode_request(
    protocol: Protocol, body: bytes, *, cbor_items_max: int = cbor.ITEMS_MAX
) -> dict[str, Any]:
    """The request map with blobs as bytes and timestamps as datetimes. Raises CodecError
    (CborTooManyItemsError when a CBOR body holds more than ``cbor_items_max`` items)."""
    if not body.strip():
        return {}
    if protocol is Protocol.JSON:
        # Every JSON value after a container's first is preceded by a comma, so commas and
        # brackets bound the values (counted at memchr speed, inside strings too: a bound,
        # never an undercount). Without it a body of "{}," decodes to 24 times its size.
        items = body.count(b",") + body.count(b"{") + body.count(b"[")
        if items > JSON_ITEMS_MAX:
            raise CodecError(f"body holds more than {JSON_ITEMS_MAX} JSON values")
        try:
            doc = json.loads(body, parse_int=_parse_int)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
            raise CodecError(f"body is not valid JSON: {summary(str(exc), 200)}") from None
        if _SURROGATE_HINT.search(body) is not None:
            _check_text(doc, 0)
    else:
        try:
            doc = cbor.loads(body, cbor_items_max)
        except CborItemsError as exc:
            raise CborTooManyItemsError(f"body is not valid CBOR: {exc}") from None
        except CborError as exc:
            raise CodecError(f"body is not valid CBOR: {exc}") from None
    if not isinstance(doc, dict):
        raise CodecError("request body must be an object")
    return _convert_map(doc, protocol, 0)


def _parse_int(text: str) -> int | OversizedNumber:
    negative = text.startswith("-")
    digits = len(text) - negative
    return int(text) if digits <= JSON_INT_DIGITS_MAX else OversizedNumber(digits, negative)


def _check_text(value: Any, depth: int) -> None:
    """Raise InvalidTextError if any string in ``value`` (keys too) holds a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidTextError(
                f"1 validation error detected: Value {summary(value)} is not valid Unicode "
                "text (it holds a lone surrogate)"
            ) from None
    elif isinstance(value, dict) and depth <= cbor.DEPTH_MAX:
        for key, item in value.items():
            _check_text(key, depth + 1)
            _check_text(item, depth + 1)
    elif isinstance(value, list) and depth <= cbor.DEPTH_MAX:
        for item in value:
            _check_text(item, depth + 1)


def _convert_map(doc: dict[Any, Any], protocol: Protocol, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if not isinstance(key, str):
            raise CodecError("member names must be strings")
        if key == "Records" and protocol is Protocol.JSON and type(value) is list:
            out[key] = _json_records(value, depth)
        elif key in BLOB_FIELDS:
            out[key] = _blob(value, protocol, key)
        elif key in TIMESTAMP_FIELDS:
            out[key] = _timestamp(value, key)
        else:
            out[key] = _convert(value, protocol, depth + 1)
    return out


def _json_records(entries: list[Any], depth: int) -> list[Any]:
    """PutRecords' entries (the hot path): flat maps whose one blob is ``Data``. Entries of
    another shape take the general walk."""
    out: list[Any] = []
    for entry in entries:
        if type(entry) is dict and len(entry) <= 3 and "Data" in entry:
            # Changed in place: json.loads made it for us. Its keys are strings (JSON's only
            # kind); its other members are checked by the operation.
            entry["Data"] = _blob(entry["Data"], Protocol.JSON, "Data")
            out.append(entry)
        else:
            out.append(_convert(entry, Protocol.JSON, depth + 1))
    return out


def _convert(value: Any, protocol: Protocol, depth: int) -> Any:
    if depth > cbor.DEPTH_MAX:
        raise CodecError("request nested too deep")
    if isinstance(value, dict):
        return _convert_map(value, protocol, depth)
    if isinstance(value, list):
        return [_convert(v, protocol, depth + 1) for v in value]
    if isinstance(value, EpochTag):
        raise CodecError("a timestamp where no timestamp belongs")
    return value


def _blob(value: Any, protocol: Protocol, key: str) -> bytes:
    if protocol is Protocol.CBOR:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):  # some encoders send text; take its UTF-8 bytes
            return value.encode("utf-8")
        raise CodecError(f"{key} must be a byte string")
    if not isinstance(value, str):
        raise CodecError(f"{key} must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)  # b64decode(validate=True), faster
    except (binascii.Error, ValueError):
        raise CodecError(f"{key} is not valid base64") from None


def _timestamp(value: Any, key: str) -> datetime:
    if isinstance(value, EpochTag):
        value = value.value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise CodecError(f"{key} is not a timestamp: {summary(value, 40)}") from None
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise CodecError(f"{key} must be a timestamp")
    seconds = value / 1000 if abs(value) >= _MILLIS_THRESHOLD else value
    if not 0 <= seconds <= _EPOCH_SECONDS_MAX:
        raise CodecError(f"{key} is out of range: {summary(value)}")
    return datetime.fromtimestamp(seconds, UTC)


# -- encoding ------------------------------------------------------------------------------------


def encode_response(
    protocol: Protocol, body: Mapping[str, Any], *, none_free: bool = False
) -> bytes:
    """The answer body. ``none_free`` says the caller built it with no ``None`` member anywhere,
    so the walk that leaves them out is skipped (the record operations' hot path)."""
    if not none_free:
        body = _prune(body)
    if protocol is Protocol.CBOR:
        return cbor.dumps(body)
    return _JSON_ENCODER.encode(body).encode()


def encode_error(protocol: Protocol, type_name: str, message: str) -> bytes:
    """The error body botocore and the Java SDK parse: ``__type`` and ``message``."""
    return encode_response(protocol, {"__type": type_name, "message": message})


def _prune(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_prune(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """What the C JSON encoder cannot write itself: blobs as base64, timestamps as seconds."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return round(value.timestamp(), 3)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__} in an answer")


_JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=_json_default)
