"""Stream and shard metadata, kept as one CBOR document per stream in the metadata store.

One key per stream (``streams/<name>``) holds the stream and all its shards, so a change that
touches several shards at once (a split closes one shard and opens two) is one atomic
compare-and-swap. Documents are small: a shard is a few hundred bytes.

Cluster mode (``clustered``): the controller gives every shard of these documents its
``shards/<stream>/<shard_id>`` document (placement; controller/service.py) and removes those of
shards no stream has any more; removing a stream here also deletes its shard documents at once
(one prefix delete).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import cbor2

from streamd_client.errors import InternalError, StreamExistsError, StreamNotFoundError
from streamd_client.model import (
    RECORD_DATA_BYTES_MAX,
    even_hash_ranges,
    make_sequence,
    shard_id_of,
)

from .meta import Compare, MetaStore
from .meta.keys import SHARDS_PREFIX, check_name

StreamStatus = Literal["ACTIVE", "DELETING", "UPDATING"]
StreamMode = Literal["PROVISIONED", "ON_DEMAND"]
_PREFIX = "streams/"
_CAS_ATTEMPTS_MAX = 16


@dataclass(frozen=True, slots=True)
class ShardMeta:
    shard_id: str
    index: int
    hash_key_start: int
    hash_key_end: int
    leader_epoch: int = 1
    ending_offset: int | None = None  # set when the shard is closed (resharding)
    parent_shard_id: str | None = None
    adjacent_parent_shard_id: str | None = None
    created_ms: int = 0  # when the shard opened (0: unknown, metadata from before this field)
    closed_ms: int | None = None  # when resharding closed it

    def open_at(self, at_ms: int) -> bool:
        """Whether the shard took writes at ``at_ms`` (unknown times count as open)."""
        return self.created_ms <= at_ms and (
            self.is_open or self.closed_ms is None or self.closed_ms > at_ms
        )

    @property
    def is_open(self) -> bool:
        return self.ending_offset is None

    def describe(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "hash_key_start": self.hash_key_start,
            "hash_key_end": self.hash_key_end,
            "starting_sequence": make_sequence(self.index, 0),
            "ending_sequence": (
                None
                if self.ending_offset is None
                else make_sequence(self.index, self.ending_offset)
            ),
            "parent_shard_id": self.parent_shard_id,
            "adjacent_parent_shard_id": self.adjacent_parent_shard_id,
            "created_ms": self.created_ms,
            "closed_ms": self.closed_ms,
        }


@dataclass(frozen=True, slots=True)
class StreamMeta:
    name: str
    stream_id: str  # unique per incarnation: a re-created stream never sees old files
    status: StreamStatus
    retention_hours: int
    created_ms: int
    shards: tuple[ShardMeta, ...] = field(default_factory=tuple)
    tags: dict[str, str] = field(default_factory=dict)
    mode: StreamMode = "PROVISIONED"
    # The reshard in progress while status is UPDATING: {"kind": "split"|"merge"|"resize",
    # "target": open shard count or None, "done": steps applied, "total": steps planned}.
    reshard: dict[str, Any] | None = None
    # Replicas per shard in cluster mode (the controller places that many; 1 until cluster
    # part 3 replicates). Documents from before this field read as 1.
    replication_factor: int = 1
    # Stream settings the Kinesis API changes (documents from before them read as defaults):
    # the shard-level metrics EnableEnhancedMonitoring turned on (sorted names; monitoring.py
    # exports them per shard), the resource policy PutResourcePolicy stored (JSON text as given;
    # stored and returned, not enforced until authorization exists), and the largest record
    # data the stream takes (UpdateMaxRecordSize: 1 MiB by default, up to 10 MiB).
    shard_level_metrics: tuple[str, ...] = ()
    resource_policy: str | None = None
    max_record_bytes: int = RECORD_DATA_BYTES_MAX
    # Encryption at rest (StartStreamEncryption): the keyring key new batches are sealed with,
    # as the caller named it (alias, key id or ARN); None: new batches are stored as plaintext.
    encryption_key_id: str | None = None

    @staticmethod
    def new(name: str, shard_count: int, retention_hours: int, now_ms: int) -> StreamMeta:
        shards = tuple(
            ShardMeta(shard_id_of(i), i, start, end, created_ms=now_ms)
            for i, (start, end) in enumerate(even_hash_ranges(shard_count))
        )
        return StreamMeta(name, secrets.token_hex(8), "ACTIVE", retention_hours, now_ms, shards)

    def shard(self, shard_id: str) -> ShardMeta | None:
        return next((s for s in self.shards if s.shard_id == shard_id), None)

    def open_shards(self) -> list[ShardMeta]:
        """The shards taking writes, in hash-key order (they tile 0..2**128-1)."""
        return sorted((s for s in self.shards if s.is_open), key=lambda s: s.hash_key_start)

    def children_of(self, shard_id: str) -> list[ShardMeta]:
        return [
            s for s in self.shards if shard_id in (s.parent_shard_id, s.adjacent_parent_shard_id)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "retention_hours": self.retention_hours,
            "created_ms": self.created_ms,
            "shards": [s.describe() for s in self.shards],
            "tags": dict(self.tags),
            "mode": self.mode,
            "reshard": None if self.reshard is None else dict(self.reshard),
            "shard_level_metrics": list(self.shard_level_metrics),
            "max_record_bytes": self.max_record_bytes,
            "encryption_type": "NONE" if self.encryption_key_id is None else "KMS",
            "key_id": self.encryption_key_id,
        }

    def encode(self) -> bytes:
        return cbor2.dumps(asdict(self))

    @staticmethod
    def decode(raw: bytes) -> StreamMeta:
        doc = cbor2.loads(raw)
        shards = tuple(ShardMeta(**s) for s in doc.pop("shards"))
        metrics = tuple(doc.pop("shard_level_metrics", ()))  # CBOR gives lists back
        return StreamMeta(**doc, shards=shards, shard_level_metrics=metrics)


class Catalog:
    """Reads and changes stream metadata through a MetaStore with compare-and-swap."""

    def __init__(self, store: MetaStore, *, clustered: bool = False) -> None:
        self.store = store
        self.clustered = clustered
        # The store revision of this catalog's own last write per stream: a mirror of the
        # catalog older than it must not be applied over it (cluster/follow.py).
        self.written: dict[str, int] = {}

    async def load_all(self) -> list[StreamMeta]:
        return [StreamMeta.decode(kv.value) for kv in await self.store.range(_PREFIX)]

    async def get(self, name: str) -> StreamMeta | None:
        kv = await self.store.get(_PREFIX + name)
        return None if kv is None else StreamMeta.decode(kv.value)

    @staticmethod
    def name_of(key: str) -> str | None:
        """The stream a catalog key names (None for a key that is not one)."""
        return key[len(_PREFIX) :] if key.startswith(_PREFIX) else None

    async def create(self, meta: StreamMeta) -> None:
        """Raises StreamExistsError if a stream of that name exists."""
        key = _PREFIX + meta.name
        if self.clustered:
            check_name("stream", meta.name)  # a key part in etcd
        done = await self.store.txn([Compare(key, 0)], puts=[(key, meta.encode())])
        if not done:
            raise StreamExistsError(f"stream {meta.name!r} already exists")
        self.written[meta.name] = done.revision

    async def update(self, name: str, change: Callable[[StreamMeta], StreamMeta]) -> StreamMeta:
        """Apply ``change`` atomically (it may raise to refuse). Raises StreamNotFoundError."""
        key = _PREFIX + name
        for _ in range(_CAS_ATTEMPTS_MAX):
            kv = await self.store.get(key)
            if kv is None:
                raise StreamNotFoundError(f"stream {name!r} not found")
            old = StreamMeta.decode(kv.value)
            new = change(old)
            done = await self.store.txn([Compare(key, kv.mod_revision)], puts=[(key, new.encode())])
            if done:
                self.written[name] = done.revision
                return new
        raise InternalError(f"stream {name!r} metadata kept changing under update")

    async def remove(self, name: str) -> None:
        """Delete the stream's document, its consumer groups' state (leases, checkpoints) and its
        registered fan-out consumers."""
        # Prefix deletes: one txn op each however many groups and checkpoints there are (etcd
        # refuses a txn of more than 128 operations).
        owned = [f"groups/{name}/", f"group-checkpoints/{name}/", f"consumers/{name}/"]
        if self.clustered:
            owned.append(f"{SHARDS_PREFIX}{name}/")
        done = await self.store.txn([], deletes=[_PREFIX + name], delete_prefixes=owned)
        self.written[name] = done.revision


def with_status(meta: StreamMeta, status: StreamStatus) -> StreamMeta:
    return replace(meta, status=status)
