"""The coordinator's value types and how its durable part is stored (CBOR documents).

What is durable and why: a group's configuration, its members, every shard's lease (owner and
epoch), pinned start positions and checkpoints. Epochs must never be reused, so they are stored
before any grant is announced; members are stored so that after a server restart the workers
that were there carry on with the leases they hold (they get one session timeout to come back).
Heartbeat times and the target assignment are not stored: the first is reset to the load time,
the second is recomputed from the stored owners.

Two kinds of keys (``keys.py`` names them): one group document per group, small and changed on
membership and lease moves, and one checkpoint document per shard, changed on every checkpoint.
Keeping checkpoints apart keeps a checkpoint write small however many shards the stream has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

from streamd_client.errors import InternalError

SHARD_END = "SHARD_END"
DOC_VERSION = 1

# Limits (invariant 8), units last.
MEMBERS_MAX = 1024
GROUPS_PER_STREAM_MAX = 256
SESSION_TIMEOUT_MS_DEFAULT = 3_000
SESSION_TIMEOUT_MS_MIN = 100
SESSION_TIMEOUT_MS_MAX = 120_000
REBALANCE_TIMEOUT_MS_DEFAULT = 30_000
REBALANCE_TIMEOUT_MS_MIN = 100
REBALANCE_TIMEOUT_MS_MAX = 600_000
HEARTBEAT_INTERVAL_MS_MAX = 500
HEARTBEAT_INTERVAL_MS_MIN = 20
CHECKPOINT_METADATA_CHARS_MAX = 4096
CLIENT_INFO_CHARS_MAX = 256


def heartbeat_interval_ms(session_timeout_ms: int) -> int:
    """At most 500 ms, and at least three heartbeats per session timeout."""
    return max(HEARTBEAT_INTERVAL_MS_MIN, min(HEARTBEAT_INTERVAL_MS_MAX, session_timeout_ms // 3))


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """A shard as the coordinator needs it: identity, lineage, and whether it is closed."""

    shard_id: str
    parents: tuple[str, ...] = ()
    closed: bool = False


@dataclass(slots=True)
class Member:
    member_id: str
    client: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    joined_ms: int
    last_seen_ms: int  # not stored: the load time after a restart


@dataclass(slots=True)
class Lease:
    """One shard's lease. Invariant: ``epoch`` only grows; ``owner`` is None or a member."""

    epoch: int = 0  # 0: never granted
    owner: str | None = None
    # The owner has been sent this lease (granted or to give up) in an answer. Until then a
    # heartbeat without it is no release: the member cannot know it yet. Stored as True.
    delivered: bool = False
    revoke_since_ms: int | None = None  # when the target moved away from the owner


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sequence: str  # a sequence number of the shard, or SHARD_END
    epoch: int
    member_id: str
    updated_ms: int
    metadata: str | None = None
    # Inside a KPL aggregate (streamd_client/kpl.py): the record at ``sequence`` is processed
    # up to and including this user record; None: the whole record is.
    sub_sequence: int | None = None

    def encode(self) -> bytes:
        doc = {
            "v": DOC_VERSION,
            "sequence": self.sequence,
            "epoch": self.epoch,
            "member_id": self.member_id,
            "updated_ms": self.updated_ms,
            "metadata": self.metadata,
        }
        if self.sub_sequence is not None:  # absent otherwise: documents stay as they were
            doc["sub_sequence"] = self.sub_sequence
        return cbor2.dumps(doc)

    @staticmethod
    def decode(raw: bytes) -> Checkpoint:
        doc = _load(raw)
        return Checkpoint(
            doc["sequence"],
            doc["epoch"],
            doc["member_id"],
            doc["updated_ms"],
            doc["metadata"],
            doc.get("sub_sequence"),
        )


@dataclass(slots=True)
class GroupDoc:
    """The stored group document (everything durable except checkpoints)."""

    stream: str
    stream_id: str  # the stream's incarnation: a re-created stream never inherits a group
    group: str
    created_ms: int
    initial: dict[str, Any]  # Position (wire form) for shards with no checkpoint and no pin
    starts: dict[str, dict[str, Any]] = field(default_factory=dict)  # pinned per shard
    members: dict[str, Member] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "v": DOC_VERSION,
                "stream": self.stream,
                "stream_id": self.stream_id,
                "group": self.group,
                "created_ms": self.created_ms,
                "initial": self.initial,
                "starts": self.starts,
                "members": {
                    m.member_id: {
                        "client": m.client,
                        "session_timeout_ms": m.session_timeout_ms,
                        "rebalance_timeout_ms": m.rebalance_timeout_ms,
                        "joined_ms": m.joined_ms,
                    }
                    for m in self.members.values()
                },
                "leases": {s: {"epoch": x.epoch, "owner": x.owner} for s, x in self.leases.items()},
            }
        )

    @staticmethod
    def decode(raw: bytes, now_ms: int) -> GroupDoc:
        """Members come back as if they had just heartbeated, leases as delivered."""
        doc = _load(raw)
        members = {
            member_id: Member(
                member_id,
                m["client"],
                m["session_timeout_ms"],
                m["rebalance_timeout_ms"],
                m["joined_ms"],
                now_ms,
            )
            for member_id, m in doc["members"].items()
        }
        leases = {
            shard_id: Lease(x["epoch"], x["owner"], delivered=True)
            for shard_id, x in doc["leases"].items()
        }
        return GroupDoc(
            doc["stream"],
            doc["stream_id"],
            doc["group"],
            doc["created_ms"],
            doc["initial"],
            doc["starts"],
            members,
            leases,
        )


def _load(raw: bytes) -> dict[str, Any]:
    try:
        doc = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several kinds; a bad document is a broken invariant
        raise InternalError(f"undecodable group document: {exc!r:.200}") from exc
    if not isinstance(doc, dict) or doc.get("v") != DOC_VERSION:
        raise InternalError(f"group document of unknown version: {str(doc)[:100]}")
    return doc
