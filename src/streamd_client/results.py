"""The client's public value types, and their parsing from answers received on the wire.

Everything the server sends is untrusted input: each ``*_from_wire`` parser checks the shape and
raises ``ProtocolError`` (and nothing else) when an answer does not match docs/protocol.md, so a
buggy or newer server surfaces as one clear error instead of a KeyError deep in user code.

The values are NamedTuples: immutable, cheap to build by the million (``Record``), and they
unpack like tuples.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from .errors import ProtocolError, StreamdError, error_from_wire
from .model import Position
from .summary import summary

_T = TypeVar("_T")


class Record(NamedTuple):
    """One record as read back. ``arrival_ms`` is the server time its batch was sealed.

    ``sub_sequence`` is None for a stored record; a user record unpacked from a KPL aggregate
    (kpl.py, readers with ``deaggregate=True``) has the aggregate's sequence number and offset
    and its own index in the aggregate here (0, 1, ...)."""

    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes
    arrival_ms: int
    offset: int
    sub_sequence: int | None = None


class PutResult(NamedTuple):
    """Where one record was stored."""

    shard_id: str
    sequence_number: str


class RecordFailure(NamedTuple):
    """Why one record of a ``put_records`` call was not stored (a code of errors.py).

    ``details`` as the error's: THROTTLED carries ``retry_after_ms`` (when the shard's quota
    would take the record) and ``quota``."""

    code: str
    message: str
    details: dict[str, object] | None = None

    def to_error(self) -> StreamdError:
        """The typed exception for this failure."""
        return error_from_wire(
            {"code": self.code, "message": self.message, "details": self.details or {}}
        )


class PutRecordsEntry(NamedTuple):
    """One record for ``put_records``; a plain ``(data, partition_key)`` tuple works too."""

    data: bytes
    partition_key: str
    explicit_hash_key: int | str | None = None


PutRecordsInput = PutRecordsEntry | tuple[bytes, str] | tuple[bytes, str, int | str | None]


class PutRecordsResult(NamedTuple):
    """One result per entry, in order; ``failed_count`` counts the RecordFailure items."""

    failed_count: int
    results: list[PutResult | RecordFailure]


class AppendResult(NamedTuple):
    """The answer to ``append_batch``; ``duplicate`` means an earlier send already stored it."""

    shard_id: str
    base_offset: int
    base_sequence: str
    record_count: int
    duplicate: bool


class ShardDescription(NamedTuple):
    """One shard; it is open for writes while ``ending_sequence`` is None.

    ``leader`` (node id) and ``leader_address`` (its native "host:port") come from cluster
    nodes only, and are None there while no live node leads the shard; an embedded server
    sends neither (every shard is on the node itself).
    """

    shard_id: str
    hash_key_start: int
    hash_key_end: int
    starting_sequence: str
    ending_sequence: str | None
    parent_shard_id: str | None
    adjacent_parent_shard_id: str | None
    leader: str | None = None
    leader_address: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ending_sequence is None


class ReshardProgress(NamedTuple):
    """A reshard the server is running (``resize``: ``done`` of ``total`` splits/merges;
    ``target`` is the open shard count a resize goes to, None for a split or merge)."""

    kind: str
    target: int | None
    done: int
    total: int


class StreamDescription(NamedTuple):
    """A stream; ``status`` is ACTIVE, UPDATING (a reshard runs: see ``reshard``) or DELETING."""

    name: str
    status: str
    retention_hours: int
    created_ms: int
    shards: list[ShardDescription]
    reshard: ReshardProgress | None = None
    # Encryption at rest: the server keyring key new batches are sealed with (None: plaintext).
    encryption_key_id: str | None = None

    @property
    def open_shards(self) -> list[ShardDescription]:
        """The shards open for writes, in hash-key order."""
        return sorted((s for s in self.shards if s.is_open), key=lambda s: s.hash_key_start)


class ChildShard(NamedTuple):
    """A shard that continues a closed one (read answers at SHARD_END, like Kinesis's)."""

    shard_id: str
    parent_shard_ids: tuple[str, ...]
    hash_key_start: int
    hash_key_end: int


class SkippedRange(NamedTuple):
    """Records an operator quarantined (damaged on the server's disk; docs/operations.md): a
    read that began inside them went on after them. Both sequence numbers are included."""

    shard_id: str
    from_sequence: str
    to_sequence: str
    base_offset: int
    next_offset: int  # excluded


class ReadResult(NamedTuple):
    """A page of records; ``next_position`` is where the following read continues.

    ``shard_end``: the shard is closed (resharded) and this page reached its last record; no
    record will ever follow, and ``child_shards`` name the shards that continue it.
    ``skipped``: the read began inside a quarantined range and continued after it (the gap in
    the sequence numbers, named); None otherwise.
    """

    records: list[Record]
    next_position: Position
    millis_behind: int
    high_watermark: int
    shard_end: bool = False
    child_shards: tuple[ChildShard, ...] = ()
    skipped: SkippedRange | None = None


class RawRead(NamedTuple):
    """A read answer before its batches are decoded (docs/protocol.md, ReadResult)."""

    batches: list[bytes]
    start_offset: int
    next_offset: int
    high_watermark: int
    millis_behind: int
    shard_end: bool = False
    child_shards: tuple[ChildShard, ...] = ()
    skipped: tuple[int, int] | None = None  # [base, next) of a quarantined range jumped


def field(body: Any, name: str, kind: type[_T], *, optional: bool = False) -> _T:
    """``body[name]`` checked to be a ``kind`` (bool is not an int here); else ProtocolError."""
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a map holding {name!r}, got {type(body).__name__}")
    value = body.get(name)
    if value is None and optional:
        return value  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} must be {kind.__name__}, got {summary(value, 80)}")
    return value


def _count(body: Any, name: str) -> int:
    value = field(body, name, int)
    if value < 0:
        raise ProtocolError(f"field {name!r} must not be negative, got {summary(value)}")
    return value


def shard_from_wire(body: Any) -> ShardDescription:
    return ShardDescription(
        shard_id=field(body, "shard_id", str),
        hash_key_start=_count(body, "hash_key_start"),
        hash_key_end=_count(body, "hash_key_end"),
        starting_sequence=field(body, "starting_sequence", str),
        ending_sequence=field(body, "ending_sequence", str, optional=True),
        parent_shard_id=field(body, "parent_shard_id", str, optional=True),
        adjacent_parent_shard_id=field(body, "adjacent_parent_shard_id", str, optional=True),
        leader=field(body, "leader", str, optional=True),
        leader_address=field(body, "leader_address", str, optional=True),
    )


def stream_from_wire(body: Any) -> StreamDescription:
    return StreamDescription(
        name=field(body, "name", str),
        status=field(body, "status", str),
        retention_hours=_count(body, "retention_hours"),
        created_ms=_count(body, "created_ms"),
        shards=[shard_from_wire(s) for s in field(body, "shards", list)],
        reshard=_reshard_from_wire(field(body, "reshard", dict, optional=True)),
        encryption_key_id=field(body, "key_id", str, optional=True),
    )


def _reshard_from_wire(body: dict[str, Any] | None) -> ReshardProgress | None:
    if body is None:
        return None
    progress = ReshardProgress(
        kind=field(body, "kind", str),
        target=None if body.get("target") is None else _count(body, "target"),
        done=_count(body, "done"),
        total=_count(body, "total"),
    )
    if progress.done > progress.total:
        raise ProtocolError(f"reshard progress {progress.done}/{progress.total} is past its end")
    return progress


def child_shard_from_wire(body: Any) -> ChildShard:
    parents = field(body, "parent_shard_ids", list)
    if not parents or not all(isinstance(p, str) for p in parents):
        raise ProtocolError(f"child shard parents must be shard ids, got {summary(parents)}")
    child = ChildShard(
        shard_id=field(body, "shard_id", str),
        parent_shard_ids=tuple(parents),
        hash_key_start=_count(body, "hash_key_start"),
        hash_key_end=_count(body, "hash_key_end"),
    )
    if child.hash_key_end < child.hash_key_start:
        raise ProtocolError(f"child shard {child.shard_id} has an empty hash-key range")
    return child


def put_records_from_wire(body: Any, entry_count: int) -> PutRecordsResult:
    items = field(body, "results", list)
    if len(items) != entry_count:
        raise ProtocolError(f"put_records sent {entry_count} records, got {len(items)} results")
    results: list[PutResult | RecordFailure] = []
    for item in items:
        if isinstance(item, dict) and "code" in item:
            details = item.get("details")
            results.append(
                RecordFailure(
                    field(item, "code", str),
                    field(item, "message", str),
                    details if isinstance(details, dict) and details else None,
                )
            )
        else:
            results.append(PutResult(field(item, "shard_id", str), field(item, "sequence", str)))
    failed = sum(isinstance(r, RecordFailure) for r in results)
    if field(body, "failed", int) != failed:
        raise ProtocolError(f"put_records 'failed' disagrees with its {failed} failed results")
    return PutRecordsResult(failed, results)


def append_from_wire(body: Any) -> AppendResult:
    return AppendResult(
        shard_id=field(body, "shard_id", str),
        base_offset=_count(body, "base_offset"),
        base_sequence=field(body, "base_sequence", str),
        record_count=_count(body, "record_count"),
        duplicate=field(body, "duplicate", bool),
    )


def raw_read_from_wire(body: Any) -> RawRead:
    batches = field(body, "batches", list)
    if not all(type(b) is bytes for b in batches):
        raise ProtocolError("read 'batches' must be byte strings")
    raw = RawRead(
        batches=batches,
        start_offset=_count(body, "start_offset"),
        next_offset=_count(body, "next_offset"),
        high_watermark=_count(body, "high_watermark"),
        millis_behind=_count(body, "millis_behind"),
        # Absent from servers without resharding: such a shard never ends.
        shard_end=bool(field(body, "shard_end", bool, optional=True)),
        child_shards=tuple(
            child_shard_from_wire(c) for c in field(body, "child_shards", list, optional=True) or ()
        ),
    )
    skipped = field(body, "skipped", dict, optional=True)  # absent: no gap (or older servers)
    if skipped is not None:
        gap = (_count(skipped, "base_offset"), _count(skipped, "next_offset"))
        if not gap[0] < gap[1] <= raw.start_offset:
            raise ProtocolError(f"read skipped {gap} but starts at {raw.start_offset}")
        raw = raw._replace(skipped=gap)
    if raw.child_shards and not raw.shard_end:
        raise ProtocolError("read named child shards without reaching the shard's end")
    if raw.next_offset < raw.start_offset:
        raise ProtocolError(f"read next_offset {raw.next_offset} < start {raw.start_offset}")
    return raw
