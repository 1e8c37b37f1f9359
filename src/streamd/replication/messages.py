"""Everything that goes into a replica and everything that comes out, as plain values.

Three families, in the shape of etcd-io/raft:

* **Messages** travel between the replicas of one shard (``src`` -> ``dst``). Every message
  carries the sender's epoch; a receiver at a higher epoch answers ``Stale`` and ignores the
  rest, so nothing from a deposed leader is ever acted on.
* **Events** are what the driver feeds ``Replica.step``: a message received, a tick of the clock,
  a client write or read, the storage driver's "durable up to N", a storage failure, a damaged
  batch found by a scrub, and the controller's role commands (``Lead``).
* **Effects** are what ``step`` returns for the driver to carry out, in order: writes to the
  log (``AppendBatches``, ``TruncateTo``, ``PersistMeta``: apply each before the next effect),
  fsync requests (``SyncLog``: run it in the background, answer with ``Durable``), messages to
  send (after the writes before them are applied: a replica never answers about a write the
  driver has not made), and the outcomes for clients.

The protocol, message by message, is in docs/replication.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.logstore import StoredBatch
from .meta import ReplicaMeta

# -- messages between replicas ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fence:
    """Leader ``src`` starts epoch ``epoch``: refuse every older epoch from now on."""

    src: int
    dst: int
    epoch: int


@dataclass(frozen=True, slots=True)
class FenceAck:
    """``src`` persisted ``epoch`` before answering; here is what its log holds.

    ``whole`` is False while the replica is refetching a damaged log: it is fenced (it refuses
    older epochs) but it cannot vouch for what it once acknowledged, so it is not counted in the
    majority that a new leader takes its log from.
    """

    src: int
    dst: int
    epoch: int
    log_end: int
    last_epoch: int
    whole: bool


@dataclass(frozen=True, slots=True)
class Append:
    """Batches following ``prev_offset`` (whose batch has ``prev_epoch``); empty = heartbeat.

    ``hw`` is the leader's high watermark: it travels with every append and heartbeat.
    ``leader_end`` is the leader's log end (a repairing follower is whole again once it holds
    the leader's log up to its repair point or up to this, whichever comes first).
    """

    src: int
    dst: int
    epoch: int
    prev_offset: int
    prev_epoch: int
    batches: tuple[StoredBatch, ...]
    hw: int
    leader_end: int


@dataclass(frozen=True, slots=True)
class AppendAck:
    """``src``'s log matches the leader's up to ``log_end``; durable up to ``durable_end``.

    ``generation`` counts the follower's truncations: a report from before a truncation (a
    delayed or duplicated message) may claim batches the follower no longer has, so the leader
    drops any report older than the newest generation it has seen.
    """

    src: int
    dst: int
    epoch: int
    log_end: int
    durable_end: int
    generation: int


@dataclass(frozen=True, slots=True)
class AppendNack:
    """``prev`` did not match: ``src``'s log, as far as it may match, ends at ``log_end`` with
    ``last_epoch``; the leader backs up to where its own history agrees (KIP-101)."""

    src: int
    dst: int
    epoch: int
    log_end: int
    last_epoch: int
    generation: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """A new leader catching up asks ``dst`` (the most up-to-date fenced replica) for batches
    from ``from_offset`` on, where the batch before it has ``last_epoch``."""

    src: int
    dst: int
    epoch: int
    from_offset: int
    last_epoch: int


@dataclass(frozen=True, slots=True)
class FetchReply:
    """Either batches from ``from_offset`` on (``diverge_at`` is None: the logs match below it),
    or the point ``diverge_at`` (whose previous batch has ``diverge_epoch``) to back up to."""

    src: int
    dst: int
    epoch: int
    from_offset: int
    batches: tuple[StoredBatch, ...]
    source_end: int
    diverge_at: int | None
    diverge_epoch: int


@dataclass(frozen=True, slots=True)
class Stale:
    """``src`` has seen ``epoch``, newer than the sender's: the sender is deposed."""

    src: int
    dst: int
    epoch: int


Message = Fence | FenceAck | Append | AppendAck | AppendNack | Fetch | FetchReply | Stale

# -- events into a replica ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receive:
    message: Message


@dataclass(frozen=True, slots=True)
class Tick:
    now_ms: int


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """A producer's batch (its offset and epoch are assigned by the leader)."""

    write_id: int
    batch: StoredBatch


@dataclass(frozen=True, slots=True)
class ClientRead:
    """Committed batches from ``offset`` on, at most ``batches_max``."""

    read_id: int
    offset: int
    batches_max: int


@dataclass(frozen=True, slots=True)
class Durable:
    """The storage driver's fsync (for ``SyncLog(generation)``) covers everything below ``end``."""

    end: int
    generation: int


@dataclass(frozen=True, slots=True)
class StorageFailed:
    """An append failed (a full disk): nothing of it was written, and the effects after it in
    that step were not carried out. ``meta`` is what the driver has persisted (a PersistMeta
    after the failed append was dropped with the rest)."""

    reason: str
    meta: ReplicaMeta


@dataclass(frozen=True, slots=True)
class Damaged:
    """A scrub or a read found the batch at ``offset`` failing its checksum."""

    offset: int


@dataclass(frozen=True, slots=True)
class Lead:
    """The controller (through etcd) makes this replica the leader of ``epoch`` over
    ``replicas`` (itself included). ``joining``: those of ``replicas`` just added to the set
    (a replacement or a move), not yet known to hold the committed prefix. The leader ships
    them the log like any follower, but they count in no fencing majority, in no choice of
    the most up-to-date log, in no commit quorum and in no lease, until a later ``Lead``
    names them voters (docs/replication.md, "Replica set changes")."""

    epoch: int
    replicas: tuple[int, ...]
    joining: tuple[int, ...] = ()


Event = Receive | Tick | ClientWrite | ClientRead | Durable | StorageFailed | Damaged | Lead

# -- effects out of a replica -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True)
class AppendBatches:
    batches: tuple[StoredBatch, ...]


@dataclass(frozen=True, slots=True)
class TruncateTo:
    offset: int


@dataclass(frozen=True, slots=True)
class SyncLog:
    generation: int


@dataclass(frozen=True, slots=True)
class PersistMeta:
    """Write ``meta`` durably (write, fsync, rename) before carrying out any later effect."""

    meta: ReplicaMeta


@dataclass(frozen=True, slots=True)
class WriteDone:
    """The write is committed at ``base_offset`` (``duplicate``: an earlier copy of it was)."""

    write_id: int
    base_offset: int
    epoch: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class WriteFailed:
    """``code`` is a wire error code (streamd_client.errors); NOT_LEADER and TIMEOUT are
    retryable, and TIMEOUT is ambiguous: the write may still commit."""

    write_id: int
    code: str


@dataclass(frozen=True, slots=True)
class ReadDone:
    read_id: int
    batches: tuple[StoredBatch, ...]
    hw: int


@dataclass(frozen=True, slots=True)
class ReadFailed:
    read_id: int
    code: str


@dataclass(frozen=True, slots=True)
class HighWatermark:
    """Everything below ``hw`` is committed (and will never change): wake tailing readers."""

    hw: int


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """For logs and metrics: the replica's role, epoch and leader now, and why it changed."""

    role: str
    epoch: int
    leader: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class LeadDeclined:
    """The controller's ``Lead`` was refused (an epoch not newer than one seen, or a damaged
    log): the controller picks again."""

    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class JoinerCaughtUp:
    """A joining replica now holds durably this leader's log through its epoch-start batch,
    hence every batch committed before this epoch (and it takes the later ones like any
    follower): the controller may name it a voter (a new ``Lead`` with it out of
    ``joining``). Emitted once per joining replica per epoch."""

    replica: int
    epoch: int


Effect = (
    Send
    | AppendBatches
    | TruncateTo
    | SyncLog
    | PersistMeta
    | WriteDone
    | WriteFailed
    | ReadDone
    | ReadFailed
    | HighWatermark
    | RoleChanged
    | LeadDeclined
    | JoinerCaughtUp
)
