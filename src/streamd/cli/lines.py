"""How the command line turns stdin lines into records (``put``) and records into lines
(``read``, ``group consume``).

Put: a plain line is one record's data; its partition key is ``--partition-key K`` or, with
``--random-key``, a fresh random one. ``--json`` lines are ``{"partition_key": str, "data": str
[, "encoding": "text"|"base64"|"hex"]}``; a line without a key takes ``--partition-key`` or a
random one with ``--random-key``. An empty or missing key is refused (INVALID_PARTITION_KEY, as
Kinesis refuses it) and never silently replaced by a random one: random keys are asked for.

Read, three forms, one record per line:

- plain (the default, for people and terminals): the data as text when it is UTF-8 without
  terminal control characters (tab, newline and carriage return are allowed), else encoded
  (``--binary base64``, the default, or ``hex``), so that binary data never reaches a terminal;
- ``--json``: one JSON object; ``data`` is text when it is UTF-8 (JSON escapes any control
  character, so nothing more is needed), else encoded the same way and ``"encoding"`` says how;
  what ``put --json`` reads back unchanged;
- ``--raw``: the data bytes as stored, then a newline (binary included: for pipes).

Plain output cannot tell a text record that looks like base64 from an encoded binary one; use
``--json`` where that matters.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any, Final

from .common import iso_time

BINARY_ENCODINGS: Final = ("base64", "hex")
# C0 controls but tab, newline and carriage return; DEL; C1 controls (ESC starts a terminal
# escape sequence, C1 CSI does too).
_CONTROL_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class RecordInputError(ValueError):
    """A ``put --json`` line that is not a record (malformed JSON, bad field); not a key."""


class MissingKeyError(ValueError):
    """A record with an empty or missing partition key and no ``--random-key``."""


# -- put --------------------------------------------------------------------------------------


def random_key() -> str:
    return uuid.uuid4().hex


def parse_put_line(
    line: bytes, as_json: bool, default_key: str | None, random_keys: bool = False
) -> tuple[bytes, str]:
    """One stdin line (without its newline) -> (data, partition key).

    Raises RecordInputError, MissingKeyError.
    """
    if not as_json:
        return line, _key_or_default(None, default_key, random_keys)
    try:
        item = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordInputError(f"not JSON: {exc}") from None
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        raise RecordInputError('expected an object with a string "data"')
    key = item.get("partition_key")
    if key is not None and not isinstance(key, str):
        raise RecordInputError('"partition_key" must be a string')
    return _decode_data(item["data"], item.get("encoding", "text")), _key_or_default(
        key, default_key, random_keys
    )


def _key_or_default(key: str | None, default_key: str | None, random_keys: bool) -> str:
    if key:
        return key
    if random_keys:
        return random_key()
    if key is None and default_key:
        return default_key
    if key == "":
        raise MissingKeyError('"partition_key" is empty (give --random-key for a random key)')
    raise MissingKeyError(
        'no "partition_key" (give --partition-key K for lines without one, or --random-key)'
    )


def _decode_data(data: str, encoding: Any) -> bytes:
    try:
        if encoding == "text":
            return data.encode()
        if encoding == "base64":
            return base64.b64decode(data, validate=True)
        if encoding == "hex":
            return bytes.fromhex(data)
    except (ValueError, binascii.Error):  # UnicodeEncodeError too: a lone surrogate
        raise RecordInputError(f'"data" is not valid {encoding}') from None
    raise RecordInputError(f'unknown "encoding" {encoding!r:.40} (text, base64 or hex)')


# -- read -------------------------------------------------------------------------------------


def encode_binary(data: bytes, encoding: str) -> str:
    assert encoding in BINARY_ENCODINGS, encoding
    return data.hex() if encoding == "hex" else base64.b64encode(data).decode("ascii")


def terminal_text(data: bytes) -> str | None:
    """``data`` as text if it is UTF-8 that is safe to print on a terminal, else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL_RE.search(text) else text


def plain_line(data: bytes, binary: str = "base64") -> bytes:
    """One record as a plain output line (newline included)."""
    text = terminal_text(data)
    if text is not None:
        return data + b"\n"
    return encode_binary(data, binary).encode("ascii") + b"\n"


def record_document(record: Any, binary: str = "base64") -> dict[str, Any]:
    """One record as the ``read --json`` object: data as text when it is UTF-8, else encoded
    with ``binary`` and named in ``"encoding"``."""
    document: dict[str, Any] = {
        "shard_id": record.shard_id,
        "sequence_number": record.sequence_number,
        "partition_key": record.partition_key,
    }
    try:
        document["data"] = record.data.decode("utf-8")
    except UnicodeDecodeError:
        document["data"] = encode_binary(record.data, binary)
        document["encoding"] = binary
    document["arrival_time"] = iso_time(record.arrival_ms)
    if getattr(record, "sub_sequence", None) is not None:  # a user record of a KPL aggregate
        document["sub_sequence"] = record.sub_sequence
    return document
