"""The consumer-group coordinator: a deterministic state machine with no I/O (like etcd's raft).

Inputs are messages (``join``, ``heartbeat``, ``leave``, ``checkpoint``, ``reset``), the stream's
shard topology (``sync_shards``) and the clock (``tick``); every input carries ``now_ms``, so
tests drive virtual time by hand. Outputs are the answers, plus a ``Ready`` taken after each step:
what to persist (the group document, checkpoints) and the events to log. The caller (service.py)
persists the Ready *before* it sends the answer: an epoch is never announced before it is durable.

How a lease moves (in the spirit of Kafka's KIP-848):

* Every change of members or of assignable shards recomputes the *target* (assign.py): balanced
  and sticky. A free shard whose target is a member is granted at once: ``epoch + 1``.
* A shard whose owner is not its target is *revoking*: the owner is told in its next heartbeat
  answer, finishes what it has in flight, checkpoints (it still holds the lease, so it may), and
  stops reporting the shard. The heartbeat without it releases the lease, which is granted to the
  target in the same step; the target learns it in its own next heartbeat.
* A member silent for longer than its session timeout is expired: its leases are freed at once.
  An owner that does not give up a revoking lease within its rebalance timeout loses it.
* A checkpoint is accepted only from the lease's owner at the lease's current epoch (fencing);
  anything else is ``LeaseLostError``. ``SHARD_END`` finishes a closed shard and frees its lease;
  a shard's children become assignable only when all of its parents are finished.

Invariants (checked by ``check_invariants``, which the tests call after every step):
* a lease's owner is a member; an epoch only grows;
* a target shard is assignable and its member exists; no member's target exceeds its quota;
* a granted lease of an assignable shard belongs to its target or is revoking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamd_client.errors import InvalidArgumentError, LimitExceededError, ShardNotFoundError
from streamd_client.group_errors import (
    GroupActiveError,
    InvalidCheckpointError,
    LeaseLostError,
    UnknownMemberError,
)
from streamd_client.model import SUB_SEQUENCE_MAX, Position, parse_sequence, shard_index_of
from streamd_client.summary import summary

from .assign import balanced_sticky
from .state import (
    CHECKPOINT_METADATA_CHARS_MAX,
    CLIENT_INFO_CHARS_MAX,
    MEMBERS_MAX,
    REBALANCE_TIMEOUT_MS_MAX,
    REBALANCE_TIMEOUT_MS_MIN,
    SESSION_TIMEOUT_MS_MAX,
    SESSION_TIMEOUT_MS_MIN,
    SHARD_END,
    Checkpoint,
    GroupDoc,
    Lease,
    Member,
    ShardInfo,
    heartbeat_interval_ms,
)


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth one structured log line (``kind`` is the event name)."""

    kind: str
    fields: dict[str, Any]


@dataclass(slots=True)
class Ready:
    """A step's effects: persist these (group doc first-class, checkpoints by shard; None deletes),
    then log the events, then send the answer."""

    group_changed: bool = False
    checkpoints: dict[str, Checkpoint | None] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    @property
    def must_persist(self) -> bool:
        return self.group_changed or bool(self.checkpoints)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease as a member sees it: process ``shard_id`` under ``epoch`` from ``start``."""

    shard_id: str
    epoch: int
    start: dict[str, Any]  # Position wire form: where the last checkpoint leaves off
    closed: bool
    # A checkpoint inside a KPL aggregate: ``start`` is at the aggregate, and its user records
    # up to and including this one are done (the worker skips them).
    after_sub_sequence: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "shard_id": self.shard_id,
            "epoch": self.epoch,
            "start": self.start,
            "closed": self.closed,
        }
        if self.after_sub_sequence is not None:
            wire["after_sub_sequence"] = self.after_sub_sequence
        return wire


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to join and heartbeat.

    ``assignment``: leases the member holds and keeps. ``revoking``: leases it still holds but
    must give up (finish, checkpoint, stop reporting). Whatever else it processes is lost.
    """

    member_id: str
    assignment: tuple[Grant, ...]
    revoking: tuple[Grant, ...]
    heartbeat_interval_ms: int
    session_timeout_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "assignment": [g.to_wire() for g in self.assignment],
            "revoking": [g.to_wire() for g in self.revoking],
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "session_timeout_ms": self.session_timeout_ms,
        }


class Coordinator:
    """One consumer group of one stream. Not thread-safe; one caller steps it at a time."""

    def __init__(
        self,
        doc: GroupDoc,
        checkpoints: dict[str, Checkpoint] | None = None,
        shards: Iterable[ShardInfo] = (),
        *,
        now_ms: int,
    ) -> None:
        self.doc = doc
        self.checkpoints: dict[str, Checkpoint] = dict(checkpoints or {})
        self.shards: dict[str, ShardInfo] = {}
        self.target: dict[str, str] = {}  # shard -> member; recomputed, never stored
        self._ready = Ready()
        self._rebalance_needed = True
        self.sync_shards(shards, {}, now_ms)

    @property
    def stream(self) -> str:
        return self.doc.stream

    @property
    def group(self) -> str:
        return self.doc.group

    @property
    def members(self) -> dict[str, Member]:
        return self.doc.members

    @property
    def leases(self) -> dict[str, Lease]:
        return self.doc.leases

    # -- outputs ---------------------------------------------------------------------------------

    def take_ready(self) -> Ready:
        """The effects accumulated since the last call (persist, then log, then answer)."""
        ready, self._ready = self._ready, Ready()
        return ready

    def next_deadline_ms(self) -> int | None:
        """The earliest time at which ``tick`` has something to do (expiry or revoke timeout)."""
        deadlines = [m.last_seen_ms + m.session_timeout_ms + 1 for m in self.members.values()]
        for lease in self.leases.values():
            if lease.owner is not None and lease.revoke_since_ms is not None:
                member = self.members[lease.owner]
                deadlines.append(lease.revoke_since_ms + member.rebalance_timeout_ms + 1)
        return min(deadlines, default=None)

    # -- topology --------------------------------------------------------------------------------

    def unknown_shards(self, shards: Iterable[ShardInfo]) -> list[ShardInfo]:
        """Shards the group has never seen: the caller resolves their start positions."""
        return [s for s in shards if s.shard_id not in self.leases]

    def sync_shards(
        self, shards: Iterable[ShardInfo], starts: dict[str, dict[str, Any]], now_ms: int
    ) -> None:
        """Adopt the stream's current shards. ``starts`` pins start positions of new shards."""
        new = {s.shard_id: s for s in shards}
        if new == self.shards:
            return
        self.shards = new
        for shard_id in new:
            if shard_id not in self.leases:
                self.leases[shard_id] = Lease()
                if shard_id in starts:
                    self.doc.starts[shard_id] = starts[shard_id]
                self._ready.group_changed = True
        self._rebalance_needed = True
        self._settle(now_ms)

    def is_finished(self, shard_id: str) -> bool:
        checkpoint = self.checkpoints.get(shard_id)
        return checkpoint is not None and checkpoint.sequence == SHARD_END

    def is_assignable(self, shard_id: str) -> bool:
        """Known, not finished, and every parent the stream still has is finished."""
        info = self.shards.get(shard_id)
        if info is None or self.is_finished(shard_id):
            return False
        return all(p not in self.shards or self.is_finished(p) for p in info.parents)

    # -- messages --------------------------------------------------------------------------------

    def join(
        self,
        member_id: str,
        now_ms: int,
        *,
        client: str = "",
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        owned: Sequence[tuple[str, int]] = (),
    ) -> Answer:
        """Add the member (or refresh it if known), then answer as a heartbeat would.

        Raises InvalidArgumentError (timeouts, client info), LimitExceededError (members_max).
        """
        _check_range(
            "session_timeout_ms", session_timeout_ms, SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX
        )
        _check_range(
            "rebalance_timeout_ms",
            rebalance_timeout_ms,
            REBALANCE_TIMEOUT_MS_MIN,
            REBALANCE_TIMEOUT_MS_MAX,
        )
        if len(client) > CLIENT_INFO_CHARS_MAX or not member_id or len(member_id) > 128:
            raise InvalidArgumentError("member_id must be 1..128 and client 0..256 characters")
        self._expire(now_ms)
        member = self.members.get(member_id)
        if member is None:
            if len(self.members) >= MEMBERS_MAX:
                raise LimitExceededError(f"group {self.group!r} has {MEMBERS_MAX} members")
            member = Member(
                member_id, client, session_timeout_ms, rebalance_timeout_ms, now_ms, now_ms
            )
            self.members[member_id] = member
            self._rebalance_needed = True
            self._event(
                "member.joined",
                member_id=member_id,
                client=client,
                session_timeout_ms=session_timeout_ms,
                members=len(self.members),
            )
        else:
            member.session_timeout_ms = session_timeout_ms
            member.rebalance_timeout_ms = rebalance_timeout_ms
            member.client = client or member.client
        self._ready.group_changed = True
        return self.heartbeat(member_id, now_ms, owned)

    def heartbeat(
        self, member_id: str, now_ms: int, owned: Sequence[tuple[str, int]] = ()
    ) -> Answer:
        """Record liveness and what the member holds; answer with its target leases.

        A delivered lease of this member missing from ``owned`` (at its current epoch) has been
        released. Raises UnknownMemberError (expired or left: join again).
        """
        self._expire(now_ms)
        member = self.members.get(member_id)
        if member is None:
            raise UnknownMemberError(
                f"member {member_id!r} is not in group {self.group!r}; join again",
                member_id=member_id,
            )
        member.last_seen_ms = now_ms
        held = set(owned)
        for shard_id, lease in self.leases.items():
            if lease.owner == member_id and lease.delivered and (shard_id, lease.epoch) not in held:
                self._free(shard_id, lease, "lease.released", member_id=member_id)
        self._settle(now_ms)
        return self._answer(member)

    def leave(self, member_id: str, now_ms: int) -> None:
        """Remove the member and free its leases at once (idempotent)."""
        self._expire(now_ms)
        if member_id in self.members:
            self._remove_member(member_id, "member.left")
            self._settle(now_ms)

    def tick(self, now_ms: int) -> None:
        """Expire silent members and overdue revocations."""
        self._expire(now_ms)
        self._settle(now_ms)

    def checkpoint(
        self,
        member_id: str,
        shard_id: str,
        epoch: int,
        sequence: str,
        now_ms: int,
        metadata: str | None = None,
        sub_sequence: int | None = None,
    ) -> Checkpoint:
        """Store progress for a shard: ``sequence`` (processed up to and including) or SHARD_END.
        ``sub_sequence``: only the user records of the KPL aggregate at ``sequence`` up to and
        including that one are processed (ordered after the records before ``sequence`` and
        before the whole of ``sequence``).

        Raises ShardNotFoundError, LeaseLostError (fenced: not the owner at that epoch),
        InvalidCheckpointError (other shard's sequence, backwards, SHARD_END of an open shard).
        """
        self._expire(now_ms)
        info = self.shards.get(shard_id)
        if info is None:
            raise ShardNotFoundError(
                f"stream {self.stream!r} has no shard {summary(shard_id)}", shard_id=shard_id
            )
        lease = self.leases[shard_id]
        if lease.owner != member_id or lease.epoch != epoch:
            self._event(
                "checkpoint.fenced",
                shard_id=shard_id,
                member_id=member_id,
                epoch=epoch,
                current_epoch=lease.epoch,
                owner=lease.owner,
            )
            raise LeaseLostError(
                f"{member_id!r} does not hold {shard_id} at epoch {epoch} "
                f"(current epoch {lease.epoch}); checkpoint refused",
                shard_id=shard_id,
                epoch=epoch,
                current_epoch=lease.epoch,
                owner=lease.owner,
            )
        if metadata is not None and len(metadata) > CHECKPOINT_METADATA_CHARS_MAX:
            raise InvalidCheckpointError(
                f"checkpoint metadata is over {CHECKPOINT_METADATA_CHARS_MAX} characters"
            )
        if sub_sequence is not None and (
            sequence == SHARD_END or not 0 <= sub_sequence <= SUB_SEQUENCE_MAX
        ):
            raise InvalidCheckpointError(
                f"a sub-sequence number is 0..{SUB_SEQUENCE_MAX} with a sequence number, "
                f"got {summary(sub_sequence)} with {summary(sequence)}"
            )
        self._check_progress(info, sequence, sub_sequence)
        checkpoint = Checkpoint(sequence, epoch, member_id, now_ms, metadata, sub_sequence)
        self.checkpoints[shard_id] = checkpoint
        self._ready.checkpoints[shard_id] = checkpoint
        if sequence == SHARD_END:
            self._free(shard_id, lease, "shard.ended", member_id=member_id)
            self._rebalance_needed = True
            self._settle(now_ms)
        return checkpoint

    def reset(
        self,
        initial: dict[str, Any],
        starts: dict[str, dict[str, Any]],
        now_ms: int,
        *,
        force: bool = False,
    ) -> None:
        """Forget every checkpoint; shards start again from ``starts`` or ``initial``.

        With members present it needs ``force``, and then every lease is taken back (its holder's
        checkpoints are fenced) and granted again with a new epoch.
        Raises GroupActiveError.
        """
        self._expire(now_ms)
        if self.members and not force:
            raise GroupActiveError(
                f"group {self.group!r} has {len(self.members)} active members; stop them or force",
                members=sorted(self.members),
            )
        for shard_id, lease in self.leases.items():
            if lease.owner is not None:
                self._free(shard_id, lease, "lease.fenced_by_reset", member_id=lease.owner)
        for shard_id in self.checkpoints:
            self._ready.checkpoints[shard_id] = None
        self.checkpoints.clear()
        self.doc.initial = initial
        self.doc.starts = dict(starts)
        self._ready.group_changed = True
        self._rebalance_needed = True
        self._event("group.reset", initial=initial, forced=force, members=len(self.members))
        self._settle(now_ms)

    # -- queries ---------------------------------------------------------------------------------

    def start_of(self, shard_id: str) -> dict[str, Any]:
        """Where processing of the shard resumes (Position wire form)."""
        checkpoint = self.checkpoints.get(shard_id)
        if checkpoint is not None and checkpoint.sub_sequence is not None:
            return Position.at_sequence(checkpoint.sequence).to_wire()  # inside an aggregate
        if checkpoint is not None and checkpoint.sequence != SHARD_END:
            return Position.after_sequence(checkpoint.sequence).to_wire()
        if checkpoint is not None:  # finished: nothing left; the worker sees the end at once
            return Position.latest().to_wire()
        info = self.shards.get(shard_id)
        pinned = self.doc.starts.get(shard_id)
        if pinned is not None:
            return pinned
        if info is not None and info.parents:
            return Position.trim_horizon().to_wire()  # children continue where parents ended
        return self.doc.initial

    def shard_status(self, shard_id: str) -> str:
        lease = self.leases.get(shard_id)
        if self.is_finished(shard_id):
            return "FINISHED"
        if not self.is_assignable(shard_id):
            return "WAITING_FOR_PARENTS"
        if lease is None or lease.owner is None:
            return "UNASSIGNED"
        return "REVOKING" if self.target.get(shard_id) != lease.owner else "ACTIVE"

    def describe(self, now_ms: int) -> dict[str, Any]:
        """The group as ``describe_group`` shows it (lag is added by the service)."""
        members = []
        for member in sorted(self.members.values(), key=lambda m: m.member_id):
            owned = sorted(s for s, x in self.leases.items() if x.owner == member.member_id)
            members.append(
                {
                    "member_id": member.member_id,
                    "client": member.client,
                    "joined_ms": member.joined_ms,
                    "last_heartbeat_ms_ago": max(0, now_ms - member.last_seen_ms),
                    "session_timeout_ms": member.session_timeout_ms,
                    "leases": owned,
                    "target": sorted(s for s, m in self.target.items() if m == member.member_id),
                }
            )
        shards = []
        for shard_id in sorted(self.shards):
            lease = self.leases[shard_id]
            checkpoint = self.checkpoints.get(shard_id)
            shards.append(
                {
                    "shard_id": shard_id,
                    "status": self.shard_status(shard_id),
                    "owner": lease.owner,
                    "epoch": lease.epoch,
                    "target": self.target.get(shard_id),
                    "parents": list(self.shards[shard_id].parents),
                    "checkpoint": None if checkpoint is None else checkpoint.sequence,
                    "checkpoint_sub_sequence": None
                    if checkpoint is None
                    else checkpoint.sub_sequence,
                    "checkpoint_ms": None if checkpoint is None else checkpoint.updated_ms,
                    "metadata": None if checkpoint is None else checkpoint.metadata,
                    "start": self.start_of(shard_id),
                }
            )
        return {
            "stream": self.stream,
            "group": self.group,
            "created_ms": self.doc.created_ms,
            "initial": self.doc.initial,
            "state": "ACTIVE" if self.members else "EMPTY",
            "members": members,
            "shards": shards,
        }

    def check_invariants(self) -> None:
        """Assert the invariants of the module docstring (tests call it after every step)."""
        assignable = [s for s in self.shards if self.is_assignable(s)]
        for shard_id, lease in self.leases.items():
            assert lease.epoch >= 0
            assert lease.owner is None or lease.owner in self.members, (shard_id, lease)
            assert lease.owner is None or lease.epoch >= 1
            if lease.owner is not None and lease.owner != self.target.get(shard_id):
                assert lease.revoke_since_ms is not None, (shard_id, lease)
        if not self.members:
            assert not self.target
            return
        cap = math.ceil(len(assignable) / len(self.members))
        counts: dict[str, int] = {}
        for shard_id, member_id in self.target.items():
            assert self.is_assignable(shard_id) and member_id in self.members
            counts[member_id] = counts.get(member_id, 0) + 1
        assert set(self.target) == set(assignable)
        assert all(c <= cap for c in counts.values()), (counts, cap)
        assert len(assignable) // len(self.members) <= min(counts.get(m, 0) for m in self.members)

    # -- internals -------------------------------------------------------------------------------

    def _check_progress(self, info: ShardInfo, sequence: str, sub_sequence: int | None) -> None:
        previous = self.checkpoints.get(info.shard_id)
        if sequence == SHARD_END:
            if not info.closed:
                raise InvalidCheckpointError(f"{info.shard_id} is open; it has no SHARD_END")
            return
        index, offset = parse_sequence(sequence)
        if index != shard_index_of(info.shard_id):
            raise InvalidCheckpointError(f"sequence {sequence} is not of {info.shard_id}")
        if previous is not None and previous.sequence != SHARD_END:
            # (offset, sub-sequence), a whole record after every sub-record of it
            before = (parse_sequence(previous.sequence)[1], _sub_rank(previous.sub_sequence))
            if (offset, _sub_rank(sub_sequence)) < before:
                raise InvalidCheckpointError(
                    f"checkpoint {sequence} is behind the stored {previous.sequence}",
                    checkpoint=previous.sequence,
                )

    def _expire(self, now_ms: int) -> None:
        for member in sorted(self.members.values(), key=lambda m: m.member_id):
            if now_ms - member.last_seen_ms > member.session_timeout_ms:
                self._remove_member(
                    member.member_id, "member.expired", silent_ms=now_ms - member.last_seen_ms
                )
        for shard_id, lease in self.leases.items():
            if lease.owner is None or lease.revoke_since_ms is None:
                continue
            limit_ms = self.members[lease.owner].rebalance_timeout_ms
            if now_ms - lease.revoke_since_ms > limit_ms:
                self._free(shard_id, lease, "lease.revoke_timeout", member_id=lease.owner)

    def _remove_member(self, member_id: str, kind: str, **fields: Any) -> None:
        for shard_id, lease in self.leases.items():
            if lease.owner == member_id:
                self._free(shard_id, lease, "lease.freed", member_id=member_id, reason=kind)
        del self.members[member_id]
        self._ready.group_changed = True
        self._rebalance_needed = True
        self._event(kind, member_id=member_id, members=len(self.members), **fields)

    def _free(self, shard_id: str, lease: Lease, kind: str, **fields: Any) -> None:
        lease.owner = None
        lease.delivered = False
        lease.revoke_since_ms = None
        self._ready.group_changed = True
        self._event(kind, shard_id=shard_id, epoch=lease.epoch, **fields)

    def _settle(self, now_ms: int) -> None:
        """Recompute the target if needed, mark revocations, grant free shards."""
        if self._rebalance_needed:
            self._rebalance_needed = False
            owners = {s: x.owner for s, x in self.leases.items() if x.owner is not None}
            assignable = [s for s in sorted(self.shards) if self.is_assignable(s)]
            self.target = balanced_sticky(sorted(self.members), assignable, self.target, owners)
        for shard_id in sorted(self.leases):
            lease = self.leases[shard_id]
            want = self.target.get(shard_id)
            if lease.owner is None and shard_id not in self.shards:
                del self.leases[shard_id]  # the shard expired (past retention) and was released
                self.doc.starts.pop(shard_id, None)
                self._ready.group_changed = True
                continue
            if lease.owner is None:
                if want is not None:
                    lease.epoch += 1
                    lease.owner = want
                    self._ready.group_changed = True
                    self._event(
                        "lease.granted", shard_id=shard_id, member_id=want, epoch=lease.epoch
                    )
            elif lease.owner != want and lease.revoke_since_ms is None:
                lease.revoke_since_ms = now_ms
                self._event(
                    "lease.revoking",
                    shard_id=shard_id,
                    member_id=lease.owner,
                    epoch=lease.epoch,
                    to=want,
                )
            elif lease.owner == want:
                lease.revoke_since_ms = None

    def _answer(self, member: Member) -> Answer:
        keep: list[Grant] = []
        give_up: list[Grant] = []
        for shard_id in sorted(self.leases):
            lease = self.leases[shard_id]
            if lease.owner != member.member_id:
                continue
            lease.delivered = True
            checkpoint = self.checkpoints.get(shard_id)
            grant = Grant(
                shard_id,
                lease.epoch,
                self.start_of(shard_id),
                self.shards[shard_id].closed if shard_id in self.shards else True,
                None if checkpoint is None else checkpoint.sub_sequence,
            )
            (keep if self.target.get(shard_id) == member.member_id else give_up).append(grant)
        return Answer(
            member.member_id,
            tuple(keep),
            tuple(give_up),
            heartbeat_interval_ms(member.session_timeout_ms),
            member.session_timeout_ms,
        )

    def _event(self, kind: str, **fields: Any) -> None:
        self._ready.events.append(
            Event(kind, {"stream": self.stream, "group": self.group, **fields})
        )


def _sub_rank(sub_sequence: int | None) -> int:
    """Order within one record: its sub-records by index, the whole record after all of them."""
    return SUB_SEQUENCE_MAX + 1 if sub_sequence is None else sub_sequence


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be {low}..{high}, got {summary(value)}")
