"""Operator calls that repair a server's data (docs/operations.md, "Damaged data"), on a Client.

    result = await admin.quarantine_range(client, "events", "shardId-000000000000",
                                          from_sequence=error.details["from_sequence"],
                                          to_sequence=error.details["to_sequence"])

The answer is untrusted input: its parser checks the shape and raises ProtocolError only.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from .client_api import Caller
from .errors import ProtocolError
from .model import check_stream_name, parse_sequence, shard_index_of
from .results import field

OP_QUARANTINE_RANGE: Final = "quarantine_range"
QUARANTINE_TIMEOUT_S: Final = 120.0  # it copies the damaged bytes and fsyncs: allow for a slow disk


class QuarantineResult(NamedTuple):
    """A range moved aside: its records (both sequence numbers included), where its bytes went,
    and whether it had been quarantined before (then nothing changed)."""

    stream: str
    shard_id: str
    from_sequence: str
    to_sequence: str
    base_offset: int
    next_offset: int  # excluded
    records: int
    size_bytes: int
    file: str  # on the server
    already: bool


async def quarantine_range(
    client: Caller, stream: str, shard_id: str, *, from_sequence: str, to_sequence: str
) -> QuarantineResult:
    """Move the damaged records ``from_sequence`` .. ``to_sequence`` of a shard aside; reads
    then skip them with a visible gap. Only a wholly damaged range is accepted.

    Raises: InvalidSequenceNumberError (malformed, or another shard's), InvalidArgumentError
    (the range holds an intact batch, or does not start and end where the damage does),
    StreamNotFoundError, ShardNotFoundError, StorageFullError.
    """
    shard_index_of(shard_id)
    parse_sequence(from_sequence)
    parse_sequence(to_sequence)
    args = {
        "stream": check_stream_name(stream),
        "shard_id": shard_id,
        "from_sequence": from_sequence,
        "to_sequence": to_sequence,
    }
    answer = await client.call(OP_QUARANTINE_RANGE, args, timeout_s=QUARANTINE_TIMEOUT_S)
    result = QuarantineResult(
        field(answer, "stream", str),
        field(answer, "shard_id", str),
        field(answer, "from_sequence", str),
        field(answer, "to_sequence", str),
        field(answer, "base_offset", int),
        field(answer, "next_offset", int),
        field(answer, "records", int),
        field(answer, "bytes", int),
        field(answer, "file", str),
        field(answer, "already", bool),
    )
    if not 0 <= result.base_offset < result.next_offset:
        raise ProtocolError(
            f"quarantine answered offsets {result.base_offset}..{result.next_offset}"
        )
    return result
