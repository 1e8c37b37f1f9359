"""One shard replica as a pure state machine: ``step(event) -> effects`` (etcd-io/raft's shape).

The caller (a trio driver in the server, the simulator in tests) owns all I/O: it feeds events,
carries out the effects in order, and lends the replica a read-only ``LogView`` of its log.
Contract with the driver:

* Carry out ``AppendBatches``, ``TruncateTo`` and ``PersistMeta`` in order, each before the
  effects after it, and all of a step's effects before the next ``step``. If an append fails
  (disk full), drop the rest of that step's effects and feed ``StorageFailed``.
* Run ``SyncLog`` in the background and feed ``Durable(end, generation)`` when it is done.
* Send ``Send`` messages after the writes before them (so an ack never runs ahead of a write).

The replica mirrors its log's end and epoch history (it emitted every change to them), reads
batch bytes through the view only for offsets the driver has already written, and keeps the
rest of its state in memory: the high watermark comes back from the quorum after a restart,
never from the local log.

Roles and their transitions are in ``roles.py``; the commit rule in ``quorum.py``; the epoch
history questions in ``epochs.py``. The leader side (progress per follower, waiting writers, the
producer table) is in ``leading.py``. Protocol and invariants: docs/replication.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from streamd_client.errors import (
    NotLeaderError,
    OutOfOrderSequenceError,
    RequestTimeoutError,
    StorageFullError,
    ThrottledError,
)

from ..storage.logstore import LogView, StoreCorruptError, StoredBatch, make_batch, restamp
from . import epochs
from . import messages as m
from .errors import require
from .leading import Producers, Progress, Waiter, Writers
from .meta import ReplicaMeta
from .quorum import commit_point, lease_holds, majority_of, quorum_end
from .roles import TRANSITIONS, Role, handler_for

NOT_LEADER = NotLeaderError.code
TIMEOUT = RequestTimeoutError.code
THROTTLED = ThrottledError.code
STORAGE_FULL = StorageFullError.code
OUT_OF_ORDER = OutOfOrderSequenceError.code


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    heartbeat_ms: int = 50
    retry_ms: int = 150
    lease_ms: int = 600
    write_timeout_ms: int = 3_000
    batches_per_message_max: int = 8
    waiting_writers_max: int = 1_000
    producers_max: int = 10_000


_REQUESTS = (m.Fence, m.Append, m.Fetch)
FETCH_RETRIES_MAX = 4  # unanswered fetch rounds before a catching-up leader fences again


class Replica:
    def __init__(
        self,
        replica_id: int,
        view: LogView,
        meta: ReplicaMeta,
        config: ReplicaConfig | None = None,
        now_ms: int = 0,
        producers: Producers | None = None,
    ) -> None:
        """``producers``: the idempotence table of ``view``'s log, if the caller built it (the
        driver does, in a worker thread, while it scrubs: up to the first damaged batch, which
        the caller then steps as ``Damaged``); else it is read from ``view`` here."""
        self.id = replica_id
        self.view = view
        self.meta = meta
        self.config = config or ReplicaConfig()
        self.now_ms = now_ms
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self.replicas: tuple[int, ...] = ()
        self.joining: frozenset[int] = frozenset()  # of replicas: not voters yet (Lead)
        # Invariant: _log_end and _epochs mirror the log as the driver will hold it.
        self._log_end = view.log_end()
        self._epochs = list(view.epoch_history())
        # Invariant: durable_end <= _log_end; hw only grows (within this process's life).
        self.durable_end = 0
        self.hw = 0
        # Follower: the log is known to match the current leader's below this offset.
        self._matched_end = 0
        self._leader_end: int | None = None  # the leader's log end, as its appends said
        # FENCING: replica -> its FenceAck; CATCHING_UP: whom we fetch from.
        self._fence_acks: dict[int, m.FenceAck] = {}
        self._fence_sent_ms = 0
        self._source: int | None = None
        self._source_match = 0  # our log matches the source's below this (its replies said)
        self._fetch_sent_ms = 0
        self._fetch_heard_ms = 0
        self._out: list[m.Effect] = []
        # LEADING only.
        self.progress: dict[int, Progress] = {}
        self.writers = Writers(self.config.waiting_writers_max)
        # Mirrors the log in every role (None: a damaged log, built again on first use).
        self._producers = producers
        if producers is None:
            try:
                self._producers = Producers.from_log(view, self._log_end, self.config.producers_max)
            except StoreCorruptError:
                pass
        self.epoch_start_offset = -1  # where our epoch-start batch sits
        self._epoch_start_written = False
        self._caught_up: set[int] = set()  # joining replicas reported caught up this epoch

    # -- the entry points --------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    @property
    def log_end(self) -> int:
        return self._log_end

    @property
    def last_epoch(self) -> int:
        return epochs.last_epoch(self._epochs)

    def start(self) -> list[m.Effect]:
        """After construction (a start or restart): learn what of the log is durable."""
        return [m.SyncLog(self.meta.generation)]

    def step(self, event: m.Event) -> list[m.Effect]:
        self._out = []
        if isinstance(event, m.Tick):
            self.now_ms = max(self.now_ms, event.now_ms)
        if isinstance(event, m.Receive):
            message = event.message
            if not self._admit(message):
                return self._out
            kind: type = type(message)
            payload: object = message
        else:
            kind, payload = type(event), event
        name = handler_for(self.role, kind)
        if name is not None:
            getattr(self, name)(payload)
        return self._out

    def _admit(self, message: m.Message) -> bool:
        """Epochs first: older is refused (answered Stale), newer makes us its follower."""
        if isinstance(message, m.Stale):
            return message.epoch > self.epoch
        if message.epoch < self.epoch:
            if isinstance(message, _REQUESTS):
                self._send(m.Stale(self.id, message.src, self.epoch))
            return False
        if message.epoch > self.epoch:
            if not isinstance(message, _REQUESTS):
                return False  # an answer about an epoch we never had: impossible, drop it
            self._adopt_epoch(message.epoch, message.src)
        return True

    # -- effects -----------------------------------------------------------------------------

    def _send(self, message: m.Message) -> None:
        self._out.append(m.Send(message))

    def _persist(self, meta: ReplicaMeta) -> None:
        self.meta = meta
        self._out.append(m.PersistMeta(meta))

    def _append(self, batches: Sequence[StoredBatch]) -> None:
        for batch in batches:
            require(batch.base_offset == self._log_end, "append must extend the log")
            self._epochs = epochs.extended(self._epochs, batch.base_offset, batch.epoch)
            self._log_end = batch.next_offset
            if self._producers is not None:
                self._producers.record(batch)
        self._out.append(m.AppendBatches(tuple(batches)))
        self._out.append(m.SyncLog(self.meta.generation))

    def _truncate(self, offset: int, *, repair: bool = False) -> None:
        """Drop the log from ``offset``: a divergent suffix (never below the high watermark), or
        a damaged one (``repair``: the replica then stops vouching for its log)."""
        if offset >= self._log_end:
            return
        require(repair or offset >= self.hw, f"truncate to {offset} below hw {self.hw}")
        self._persist(replace(self.meta, generation=self.meta.generation + 1))
        self._out.append(m.TruncateTo(offset))
        self._log_end = offset
        self._forget_producers_from(offset)
        self._epochs = epochs.truncated(self._epochs, offset)
        self.durable_end = min(self.durable_end, offset)
        self._matched_end = min(self._matched_end, offset)

    def _set_hw(self, hw: int) -> None:
        if hw > self.hw:
            self.hw = hw
            self._out.append(m.HighWatermark(hw))

    def _set_role(self, role: Role, reason: str) -> None:
        if role is self.role:
            return
        require(role in TRANSITIONS[self.role], f"no transition {self.role} -> {role}")
        self.role = role
        self._out.append(m.RoleChanged(role.value, self.epoch, self.leader, reason))

    def _read(self, offset: int, batches_max: int) -> list[StoredBatch] | None:
        """Batches from the log, or None (and we step down) when one is damaged."""
        try:
            return self.view.read(offset, batches_max)
        except StoreCorruptError as exc:
            self.on_damaged(m.Damaged(exc.offset))
            return None

    # -- epochs and roles --------------------------------------------------------------------

    def _adopt_epoch(self, epoch: int, leader: int | None) -> None:
        require(epoch > self.epoch, "epochs only grow")
        self._step_down(f"epoch {epoch} began")
        self._persist(replace(self.meta, epoch=epoch))
        self.leader = leader
        self._matched_end = 0
        self._leader_end = None
        self._out.append(m.RoleChanged(self.role.value, epoch, leader, f"epoch {epoch} began"))

    def _step_down(self, why: str) -> None:
        if self.role is Role.LEADING:
            self._out.extend(self.writers.fail_all(NOT_LEADER))
            self.progress = {}
        self._fence_acks = {}
        self._source = None
        self._set_role(Role.FOLLOWER, why)

    def on_lead(self, command: m.Lead) -> None:
        if command.epoch <= self.epoch:
            self._out.append(m.LeadDeclined(command.epoch, f"epoch {self.epoch} already seen"))
            return
        if not self.meta.whole or self.id not in command.replicas:
            self._out.append(m.LeadDeclined(command.epoch, "log is being repaired"))
            return
        if self.id in command.joining:
            self._out.append(m.LeadDeclined(command.epoch, "joining: not a voter yet"))
            return
        self._step_down("leading a newer epoch")
        self._persist(replace(self.meta, epoch=command.epoch))
        self.leader = self.id
        self.replicas = command.replicas
        self.joining = frozenset(command.joining) & frozenset(command.replicas)
        self._caught_up = set()
        self._set_role(Role.FENCING, f"controller: lead epoch {command.epoch}")
        self.begin_fencing()

    def begin_fencing(self) -> None:
        """Fence every other replica at our epoch; our own (persisted) epoch is our first ack."""
        self._fence_acks = {
            self.id: m.FenceAck(
                self.id, self.id, self.epoch, self._log_end, self.last_epoch, self.meta.whole
            )
        }
        self._send_fences()
        self._decide_fencing()

    def _send_fences(self) -> None:
        self._fence_sent_ms = self.now_ms
        for peer in self.replicas:
            if peer not in self._fence_acks:
                self._send(m.Fence(self.id, peer, self.epoch))

    def on_fence(self, fence: m.Fence) -> None:
        if self.role is not Role.FOLLOWER:
            return  # our own epoch: we lead it, and nobody else does
        self.leader = fence.src
        self._send(
            m.FenceAck(
                self.id, fence.src, self.epoch, self._log_end, self.last_epoch, self.meta.whole
            )
        )

    def on_fence_ack(self, ack: m.FenceAck) -> None:
        self._fence_acks[ack.src] = ack
        self._decide_fencing()

    def counts(self, replica: int) -> bool:
        """Whether ``replica`` votes (fencing, choice, commit, lease): a joining replica does
        not, whatever its log holds (it may be empty, or stale from an earlier membership)."""
        return replica not in self.joining

    def _decide_fencing(self) -> None:
        whole = [a for a in self._fence_acks.values() if a.whole and self.counts(a.src)]
        if len(whole) < majority_of(len(self.replicas)):
            return
        best = max(whole, key=lambda a: (a.last_epoch, a.log_end, a.src == self.id))
        if best.src == self.id or (best.last_epoch, best.log_end) == (
            self.last_epoch,
            self._log_end,
        ):
            self.become_leader()
            return
        self._source = best.src
        self._source_match = 0
        self._fetch_heard_ms = self.now_ms
        self._set_role(Role.CATCHING_UP, f"replica {best.src} holds the most up-to-date log")
        self._send_fetch(self._log_end, self.last_epoch)

    def on_tick_fencing(self, tick: m.Tick) -> None:
        if self.now_ms - self._fence_sent_ms >= self.config.retry_ms:
            self._send_fences()

    def on_stale(self, stale: m.Stale) -> None:
        self._adopt_epoch(stale.epoch, None)

    # -- catching up (a new leader fetching the most up-to-date log) -------------------------

    def _send_fetch(self, from_offset: int, last_epoch: int) -> None:
        assert self._source is not None
        self._fetch_sent_ms = self.now_ms
        self._send(m.Fetch(self.id, self._source, self.epoch, from_offset, last_epoch))

    def on_fetch(self, fetch: m.Fetch) -> None:
        """Serve a catching-up leader: batches if our logs match below ``from_offset``, else
        the boundary to back up to (the KIP-101 exchange, run by the fetcher)."""
        if not self.meta.whole:
            return  # we lost batches we vouched for: the fetcher must fence again and choose
        point = epochs.match_point(self._epochs, self._log_end, fetch.from_offset, fetch.last_epoch)
        here = epochs.epoch_at(self._epochs, point - 1)
        if point == fetch.from_offset and here == fetch.last_epoch:
            batches = self._read(point, self.config.batches_per_message_max)
            if batches is None:
                return  # the read found damage: we no longer vouch for this log
            if batches and batches[0].base_offset != point:
                batches = []  # not a boundary of ours: cannot match (the epoch property)
            reply = m.FetchReply(
                self.id, fetch.src, self.epoch, point, tuple(batches), self._log_end, None, 0
            )
        else:
            reply = m.FetchReply(
                self.id, fetch.src, self.epoch, point, (), self._log_end, point, here
            )
        self._send(reply)

    def on_fetch_reply(self, reply: m.FetchReply) -> None:
        if reply.src != self._source:
            return
        self._fetch_heard_ms = self.now_ms
        if reply.diverge_at is not None:
            if reply.diverge_at < self._source_match:
                return  # a late (or duplicated) answer to a fetch from before we matched
            self._back_up_fetch(reply.diverge_at, reply.diverge_epoch)
            return
        if reply.from_offset > self._log_end or any(not b.intact() for b in reply.batches):
            return  # stale (from before we truncated) or damaged in flight: ask again on tick
        end = self._take_batches(reply.from_offset, reply.batches)
        self._source_match = max(self._source_match, min(end, self._log_end))
        if self._log_end >= reply.source_end and not reply.batches:
            self.become_leader()
        else:
            self._send_fetch(self._log_end, self.last_epoch)

    def _back_up_fetch(self, offset: int, epoch_before: int) -> None:
        if offset <= self._log_end and epochs.epoch_at(self._epochs, offset - 1) == epoch_before:
            self._truncate(offset)
            self._send_fetch(offset, epoch_before)
            return
        end, last = epochs.backed_up_hint(self._epochs, self._log_end, offset)
        self._send_fetch(end, last)

    def on_tick_catching_up(self, tick: m.Tick) -> None:
        if self.now_ms - self._fetch_heard_ms >= self.config.retry_ms * FETCH_RETRIES_MAX:
            self._set_role(Role.FENCING, "catch-up source went silent: fencing again")
            self.begin_fencing()
        elif self.now_ms - self._fetch_sent_ms >= self.config.retry_ms:
            self._send_fetch(self._log_end, self.last_epoch)

    # -- following ---------------------------------------------------------------------------

    def on_append(self, append: m.Append) -> None:
        self.leader = append.src
        if not self.prev_matches(append.prev_offset, append.prev_epoch):
            end, last = self._nack_hint(append.prev_offset)
            self._send(
                m.AppendNack(self.id, append.src, self.epoch, end, last, self.meta.generation)
            )
            return
        if any(not b.intact() for b in append.batches):
            return  # damaged in flight: the leader sends it again
        end = self._take_batches(append.prev_offset, append.batches)
        self._matched_end = min(max(self._matched_end, end), self._log_end)
        self._leader_end = max(self._leader_end or 0, append.leader_end)  # grows in an epoch
        self._set_hw(min(append.hw, self._matched_end))
        self._ack_leader()
        self._check_repaired()

    def prev_matches(self, prev_offset: int, prev_epoch: int) -> bool:
        """The follower's rule: our log holds ``prev_offset`` and the batch before it is of
        ``prev_epoch`` (so, by the epoch property, our logs agree below ``prev_offset``)."""
        if prev_offset > self._log_end:
            return False
        return epochs.epoch_at(self._epochs, prev_offset - 1) == prev_epoch

    def _nack_hint(self, prev_offset: int) -> tuple[int, int]:
        if prev_offset > self._log_end:
            return self._log_end, self.last_epoch
        return epochs.backed_up_hint(self._epochs, self._log_end, prev_offset)

    def _take_batches(self, offset: int, batches: Sequence[StoredBatch]) -> int:
        """Batches following ``offset`` (where our logs match): skip those we hold already,
        truncate at the first that differs, append the rest. Returns where they end."""
        fresh: list[StoredBatch] = []
        end = offset
        for batch in batches:
            require(batch.base_offset == end, "batches in a message are consecutive")
            if not fresh and batch.base_offset < self._log_end:
                if self.holds_same_batch(batch):
                    end = batch.next_offset
                    continue
                self._truncate(batch.base_offset)
            fresh.append(batch)
            end = batch.next_offset
        if fresh:
            self._append(fresh)
        return end

    def holds_same_batch(self, batch: StoredBatch) -> bool:
        """Same offset and same epoch is the same batch (one leader wrote each epoch, once)."""
        return epochs.epoch_at(self._epochs, batch.base_offset) == batch.epoch

    def _ack_leader(self) -> None:
        if self.leader is None or self.leader == self.id:
            return
        self._send(
            m.AppendAck(
                self.id,
                self.leader,
                self.epoch,
                self._matched_end,
                min(self.durable_end, self._matched_end),
                self.meta.generation,
            )
        )

    def on_tick_follower(self, tick: m.Tick) -> None:
        return  # followers wait: the controller decides when a leader is gone

    # -- storage events ----------------------------------------------------------------------

    def on_durable(self, durable: m.Durable) -> None:
        if durable.generation != self.meta.generation:
            return  # an fsync from before a truncation: it says nothing about today's log
        end = min(durable.end, self._log_end)
        if end <= self.durable_end:
            return
        self.durable_end = end
        if self.role is Role.FOLLOWER:
            self._ack_leader()
            self._check_repaired()
        elif self.role is Role.LEADING:
            self.advance_commit()

    def on_storage_failed(self, failed: m.StorageFailed) -> None:
        """The driver dropped the rest of the step: re-read our mirrors from the log, and take
        the persisted meta back (a change after the failed append never reached the disk)."""
        self.meta = failed.meta
        self._log_end = self.view.log_end()
        self._epochs = list(self.view.epoch_history())
        self.durable_end = min(self.durable_end, self._log_end)
        self._matched_end = min(self._matched_end, self._log_end)
        self._forget_producers_from(self._log_end)
        if self.role is Role.LEADING:
            self.after_failed_append()

    def on_damaged(self, damaged: m.Damaged) -> None:
        """A batch fails its checksum: drop it and what follows, stop vouching for the log
        (persisted first), and refetch from the leader; never lead meanwhile."""
        if damaged.offset >= self._log_end:
            return
        repair_to = max(self._log_end, self.meta.repair_to or 0)
        self._persist(replace(self.meta, repair_to=repair_to))
        self._truncate(damaged.offset, repair=True)
        if self.role is not Role.FOLLOWER:
            self._step_down("own log damaged")
            self.leader = None

    def _check_repaired(self) -> None:
        repair_to = self.meta.repair_to
        if repair_to is None or self._leader_end is None:
            return  # nothing to repair, or no leader has told us its log yet
        # What we acknowledged and what got committed is below repair_to, and every committed
        # batch is in the leader's log: holding the leader's log up to the first of the two
        # ends holds all of it (a divergent suffix we had may have been cut since).
        if min(self.durable_end, self._matched_end) >= min(repair_to, self._leader_end):
            self._persist(replace(self.meta, repair_to=None))

    # -- clients -----------------------------------------------------------------------------

    def refuse_write(self, write: m.ClientWrite) -> None:
        self._out.append(m.WriteFailed(write.write_id, NOT_LEADER))

    def on_client_read(self, read: m.ClientRead) -> None:
        if not self.serving():
            self._out.append(m.ReadFailed(read.read_id, NOT_LEADER))
            return
        batches: list[StoredBatch] = []
        if read.offset < self.hw:
            found = self._read(
                read.offset, min(read.batches_max, self.config.batches_per_message_max)
            )
            if found is None:
                self._out.append(m.ReadFailed(read.read_id, NOT_LEADER))
                return
            batches = [b for b in found if b.next_offset <= self.hw]
        self._out.append(m.ReadDone(read.read_id, tuple(batches), self.hw))

    # -- leading -----------------------------------------------------------------------------

    def become_leader(self) -> None:
        """Our log is now the most up-to-date of a fenced majority: write the epoch-start batch
        and start replicating from it (followers back up from there as they need)."""
        self._source = None
        self._set_role(Role.LEADING, "fenced a majority and holds the most up-to-date log")
        self.epoch_start_offset = self._log_end
        self.progress = {
            peer: Progress(next_offset=self.epoch_start_offset, heard_ms=self.now_ms)
            for peer in self.replicas
            if peer != self.id
        }
        self._write_epoch_start()

    def _write_epoch_start(self) -> None:
        start = make_epoch_start(self.epoch_start_offset, self.epoch)
        self._epoch_start_written = True
        self._append([start])
        self._ship_fresh([start])

    def serving(self) -> bool:
        """Reads need our epoch to have committed (then hw covers every earlier commit) and a
        lease (else a deposed leader could serve stale reads for long)."""
        return self.role is Role.LEADING and self.hw > self.epoch_start_offset and self.lease_ok()

    def lease_ok(self) -> bool:
        heard = [self.now_ms] + [
            p.heard_ms for peer, p in self.progress.items() if self.counts(peer)
        ]
        return lease_holds(heard, len(self.replicas), self.now_ms, self.config.lease_ms)

    def on_client_write(self, write: m.ClientWrite) -> None:
        if not self._epoch_start_written or not self.lease_ok():
            self._out.append(m.WriteFailed(write.write_id, NOT_LEADER))
            return
        if self.writers.full():
            self._out.append(m.WriteFailed(write.write_id, THROTTLED))
            return
        producers = self._producer_table()
        if producers is None:
            self._out.append(m.WriteFailed(write.write_id, NOT_LEADER))
            return
        verdict, base, count = producers.classify(write.batch)
        if verdict == "out_of_order":
            self._out.append(m.WriteFailed(write.write_id, OUT_OF_ORDER))
            return
        deadline = self.now_ms + self.config.write_timeout_ms
        if verdict == "retry":
            self.writers.add(Waiter(write.write_id, base, base + count, True, deadline))
            self._out.extend(self.writers.committed(self.hw, self.epoch))
            return
        batch = restamp(write.batch, self._log_end, self.epoch)
        self._append([batch])
        self.writers.add(
            Waiter(write.write_id, batch.base_offset, batch.next_offset, False, deadline)
        )
        self._ship_fresh([batch])

    def _producer_table(self) -> Producers | None:
        """Built from our log on first use (None, and we step down, if the log is damaged)."""
        if self._producers is None:
            try:
                self._producers = Producers.from_log(
                    self.view, self._log_end, self.config.producers_max
                )
            except StoreCorruptError as exc:
                self.on_damaged(m.Damaged(exc.offset))
                return None
        return self._producers

    def _forget_producers_from(self, offset: int) -> None:
        if self._producers is not None:
            self._producers.forget_from(offset)

    def _ship_fresh(self, batches: list[StoredBatch]) -> None:
        """Batches just appended go at once to every follower that is caught up to them."""
        base = batches[0].base_offset
        for peer, progress in self.progress.items():
            if progress.next_offset == base:
                self._send_append(peer, progress, batches)

    def _send_append(self, peer: int, progress: Progress, batches: Sequence[StoredBatch]) -> None:
        prev = progress.next_offset
        self._send(
            m.Append(
                self.id,
                peer,
                self.epoch,
                prev,
                epochs.epoch_at(self._epochs, prev - 1),
                tuple(batches),
                self.hw,
                self._log_end,
            )
        )
        progress.sent_ms = self.now_ms
        if batches:
            progress.next_offset = batches[-1].next_offset

    def _ship(self, peer: int, progress: Progress) -> None:
        """Send what the follower lacks from ``next_offset`` (or a heartbeat if it lacks none).

        Reads only below what the driver has written (earlier steps); this step's own appends
        went out through ``_ship_fresh``.
        """
        batches: list[StoredBatch] = []
        if progress.next_offset < self.view.log_end():
            found = self._read(progress.next_offset, self.config.batches_per_message_max)
            if found is None:
                return  # our own log is damaged: we stepped down
            # Not at one of our batch boundaries: the follower's hint came from a log that
            # diverged inside a batch of ours. A bare probe at ``prev`` makes it back up.
            batches = found if found and found[0].base_offset == progress.next_offset else []
        self._send_append(peer, progress, batches)

    def on_append_ack(self, ack: m.AppendAck) -> None:
        progress = self.progress.get(ack.src)
        if progress is None or not progress.take_ack(ack, self.now_ms):
            return
        self._check_caught_up(ack.src, progress)
        self.advance_commit()
        if self.role is Role.LEADING and progress.next_offset < self.view.log_end():
            self._ship(ack.src, progress)

    def on_append_nack(self, nack: m.AppendNack) -> None:
        progress = self.progress.get(nack.src)
        if progress is None or nack.generation < progress.generation:
            return
        progress.heard_ms = self.now_ms
        progress.generation = nack.generation
        progress.next_offset = epochs.match_point(
            self._epochs, self._log_end, nack.log_end, nack.last_epoch
        )
        progress.match_end = min(progress.match_end, progress.next_offset)
        progress.durable_end = min(progress.durable_end, progress.match_end)
        self._ship(nack.src, progress)

    def quorum_end(self) -> int:
        ends = [self.durable_end] + [
            p.durable_end for peer, p in self.progress.items() if self.counts(peer)
        ]
        return quorum_end(ends, len(self.replicas))

    def _check_caught_up(self, peer: int, progress: Progress) -> None:
        """A joining follower durable through our epoch-start batch holds every batch
        committed before our epoch (our log has them all below it): say so, once."""
        if (
            peer in self.joining
            and peer not in self._caught_up
            and progress.durable_end > self.epoch_start_offset
        ):
            self._caught_up.add(peer)
            self._out.append(m.JoinerCaughtUp(peer, self.epoch))

    def commit_point(self, quorum: int) -> int:
        return commit_point(quorum, self.epoch_start_offset, self.hw)

    def advance_commit(self) -> None:
        hw = self.commit_point(self.quorum_end())
        require(hw <= self._log_end, "hw beyond the leader's log")
        if hw > self.hw:
            self._set_hw(hw)
            self._out.extend(self.writers.committed(self.hw, self.epoch))

    def on_tick_leading(self, tick: m.Tick) -> None:
        self._out.extend(self.writers.timed_out(self.now_ms, TIMEOUT))
        if not self._epoch_start_written:
            self._write_epoch_start()
            return
        for peer, progress in self.progress.items():
            if self.now_ms - progress.sent_ms < self.config.heartbeat_ms:
                continue
            if self.now_ms - progress.heard_ms >= self.config.retry_ms:
                progress.next_offset = progress.match_end  # go back: something was lost
            self._ship(peer, progress)
            if self.role is not Role.LEADING:
                return

    def after_failed_append(self) -> None:
        """An append did not happen: fail its writers (its producer state is gone already)."""
        self._out.extend(self.writers.beyond(self._log_end, STORAGE_FULL))
        if self._log_end <= self.epoch_start_offset:
            self._epoch_start_written = False
        for progress in self.progress.values():
            progress.next_offset = min(progress.next_offset, self._log_end)


def make_epoch_start(offset: int, epoch: int) -> StoredBatch:
    """The control batch a new leader writes first: committing it commits every older batch."""
    return make_batch(offset, 1, epoch, b"", control=True)
