"""The replica state machine, driven by hand: each rule of the protocol in one small scene.

``Scene`` is a tiny synchronous driver: it carries out effects on MemoryLogs, queues messages
and lets a test deliver them one by one, drop them, or run fsyncs when it chooses, so every
interleaving in here is written down rather than drawn from a seed (the simulator does that).
"""

from __future__ import annotations

from collections import deque

import pytest

from streamd.replication import ReplicaMeta, ReplicationBroken, Role
from streamd.replication import messages as m
from streamd.replication.replica import Replica, ReplicaConfig
from streamd.replication.roles import ALL_KINDS, HANDLERS, IGNORED, TRANSITIONS
from streamd.storage.logstore import make_batch
from streamd.storage.memlog import MemoryLog

CONFIG = ReplicaConfig(heartbeat_ms=10, retry_ms=30, lease_ms=100, write_timeout_ms=500)


class Scene:
    def __init__(self, count: int = 3) -> None:
        self.logs = [MemoryLog() for _ in range(count)]
        self.metas = [ReplicaMeta() for _ in range(count)]
        self.replicas = [Replica(i, self.logs[i], self.metas[i], CONFIG) for i in range(count)]
        self.wire: deque[m.Message] = deque()
        self.outcomes: list[m.Effect] = []
        self.syncs: list[tuple[int, int]] = []
        self.now = 0
        for i in range(count):
            self.apply(i, self.replicas[i].start())
        self.sync_all()

    def apply(self, node: int, effects: list[m.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, m.Send):
                self.wire.append(effect.message)
            elif isinstance(effect, m.AppendBatches):
                self.logs[node].append(effect.batches)
            elif isinstance(effect, m.TruncateTo):
                self.logs[node].truncate_to(effect.offset)
            elif isinstance(effect, m.SyncLog):
                self.syncs.append((node, effect.generation))
            elif isinstance(effect, m.PersistMeta):
                self.metas[node] = effect.meta
            else:
                self.outcomes.append(effect)

    def step(self, node: int, event: m.Event) -> list[m.Effect]:
        effects = self.replicas[node].step(event)
        self.apply(node, effects)
        return effects

    def sync(self, node: int) -> None:
        pending = [s for s in self.syncs if s[0] == node]
        self.syncs = [s for s in self.syncs if s[0] != node]
        for _, generation in pending[-1:]:
            self.step(node, m.Durable(self.logs[node].sync(), generation))

    def sync_all(self) -> None:
        while self.syncs:
            self.sync(self.syncs[0][0])

    def deliver(
        self, keep: set[int] | None = None, hold_sync: frozenset[int] = frozenset()
    ) -> None:
        """Deliver queued messages (and what they cause) among ``keep``, dropping the others;
        run every fsync asked for, except on the nodes in ``hold_sync``."""
        for _ in range(100):
            runnable = [s for s in self.syncs if s[0] not in hold_sync]
            if not self.wire and not runnable:
                return
            while self.wire:
                msg = self.wire.popleft()
                if keep is None or (msg.src in keep and msg.dst in keep):
                    self.step(msg.dst, m.Receive(msg))
            for node in sorted({s[0] for s in runnable}):
                self.sync(node)

    def tick(self, ms: int) -> None:
        self.now += ms
        for i in range(len(self.replicas)):
            self.step(i, m.Tick(self.now))

    def lead(self, node: int, epoch: int) -> None:
        self.step(node, m.Lead(epoch, tuple(range(len(self.replicas)))))

    def write(self, node: int, write_id: int, seq: int, producer: int = 7) -> None:
        batch = make_batch(0, 1, 0, f"w{write_id}".encode(), producer_id=producer, producer_seq=seq)
        self.step(node, m.ClientWrite(write_id, batch))

    def done(self) -> dict[int, m.WriteDone]:
        return {e.write_id: e for e in self.outcomes if isinstance(e, m.WriteDone)}

    def failed(self) -> dict[int, str]:
        return {e.write_id: e.code for e in self.outcomes if isinstance(e, m.WriteFailed)}


def started(count: int = 3) -> Scene:
    scene = Scene(count)
    scene.lead(0, 1)
    scene.deliver()
    assert scene.replicas[0].role is Role.LEADING
    assert scene.replicas[0].serving()
    return scene


def test_every_input_has_a_decision_and_transitions_are_closed() -> None:
    for role in Role:
        decided = set(HANDLERS[role]) | set(IGNORED[role])
        assert decided == set(ALL_KINDS), role
        assert not set(HANDLERS[role]) & set(IGNORED[role]), role
        assert TRANSITIONS[role] <= set(Role)
        for name in HANDLERS[role].values():
            assert callable(getattr(Replica, name)), name


def test_a_fence_is_answered_only_after_the_epoch_is_persisted() -> None:
    scene = Scene()
    effects = scene.replicas[1].step(m.Receive(m.Fence(0, 1, 5)))
    kinds = [type(e) for e in effects]
    assert m.PersistMeta in kinds and m.Send in kinds
    assert kinds.index(m.PersistMeta) < kinds.index(m.Send)
    persisted = next(e for e in effects if isinstance(e, m.PersistMeta))
    assert persisted.meta.epoch == 5
    ack = next(e.message for e in effects if isinstance(e, m.Send))
    assert isinstance(ack, m.FenceAck) and ack.epoch == 5


def test_older_epochs_are_answered_stale_and_change_nothing() -> None:
    scene = Scene()
    scene.step(1, m.Receive(m.Fence(0, 1, 5)))
    scene.wire.clear()
    effects = scene.step(1, m.Receive(m.Append(2, 1, 4, 0, 0, (), 0, 0)))
    assert effects == [m.Send(m.Stale(1, 2, 5))]
    assert scene.logs[1].log_end() == 0


def test_a_write_is_acked_only_once_a_majority_has_it_durable() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver(keep=set())  # nothing reaches the followers
    scene.sync(0)  # the leader's own fsync: one vote of three
    assert 1 not in scene.done()
    scene.write(0, 2, 2)
    scene.deliver()
    assert set(scene.done()) == {1, 2}
    assert scene.replicas[0].hw == scene.logs[0].log_end()


def test_the_leaders_fsync_is_only_one_vote_and_runs_beside_shipping() -> None:
    scene = started()
    scene.write(0, 1, 1)
    # Followers get the batch in the same step as the append, before the leader's fsync.
    assert any(isinstance(msg, m.Append) and msg.batches for msg in scene.wire)
    scene.deliver(hold_sync=frozenset({0}))  # the leader's own fsync has not run
    assert scene.logs[0].durable_end() < scene.logs[0].log_end()
    assert 1 in scene.done()  # two followers are a majority without the leader's own fsync


def test_high_watermark_travels_to_followers_with_the_next_append() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    hw = scene.replicas[0].hw
    assert scene.replicas[1].hw < hw
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    assert scene.replicas[1].hw == hw == scene.replicas[2].hw


def test_a_deposed_leaders_waiting_writers_get_not_leader() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.wire.clear()
    scene.lead(1, 2)
    scene.deliver(keep={1, 2})
    scene.step(0, m.Receive(m.Fence(1, 0, 2)))
    assert scene.failed() == {1: "NOT_LEADER"}
    assert 1 not in scene.done()
    assert scene.replicas[0].role is Role.FOLLOWER


def test_a_deposed_leader_cannot_commit() -> None:
    scene = started()
    scene.lead(1, 2)
    scene.deliver(keep={1, 2})
    scene.write(0, 1, 1)  # the old leader still thinks it leads
    scene.sync(0)
    scene.deliver()
    assert 1 not in scene.done()
    assert scene.failed() == {1: "NOT_LEADER"}


def test_a_leader_cut_off_from_its_majority_stops_taking_writes() -> None:
    scene = started()
    scene.tick(CONFIG.lease_ms)  # no follower heard for a whole lease
    scene.write(0, 1, 1)
    assert scene.failed() == {1: "NOT_LEADER"}
    assert not scene.replicas[0].serving()


def test_follower_answers_a_mismatch_with_its_log_end_and_last_epoch() -> None:
    scene = Scene()
    scene.step(1, m.Receive(m.Fence(0, 1, 3)))
    scene.wire.clear()
    effects = scene.step(1, m.Receive(m.Append(0, 1, 3, 10, 2, (), 0, 12)))
    nack = next(e.message for e in effects if isinstance(e, m.Send))
    assert isinstance(nack, m.AppendNack)
    assert (nack.log_end, nack.last_epoch) == (0, 0)


def test_divergent_suffix_is_truncated_at_the_epoch_boundary() -> None:
    scene = started()
    for i in range(1, 4):
        scene.write(0, i, i)
    scene.deliver()
    committed = scene.replicas[0].hw
    # Leader 0 writes two more batches that reach nobody, then replica 1 takes over.
    scene.write(0, 10, 4)
    scene.write(0, 11, 5)
    scene.wire.clear()
    scene.sync(0)
    scene.lead(1, 2)
    scene.deliver(keep={1, 2})
    scene.write(1, 20, 1, producer=8)
    scene.deliver(keep={1, 2})
    assert 20 in scene.done()
    # Old leader rejoins: its epoch-1 suffix goes, the committed prefix stays.
    scene.tick(CONFIG.retry_ms)
    scene.deliver()
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    ours = [(b.base_offset, b.identity()) for b in scene.logs[0].batches()]
    theirs = [(b.base_offset, b.identity()) for b in scene.logs[1].batches()]
    assert ours == theirs
    assert scene.replicas[0].hw >= committed
    assert all(b.producer_seq not in (4, 5) or b.producer_id != 7 for b in scene.logs[0].batches())


def test_new_leader_takes_the_most_up_to_date_log_of_the_fenced_majority() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver(keep={0, 1})  # replica 2 misses it
    assert 1 in scene.done()
    scene.lead(2, 2)  # the controller picks the replica that lacks the committed batch
    scene.deliver(keep={1, 2})
    assert scene.replicas[2].role is Role.LEADING
    ids = [b.identity() for b in scene.logs[2].batches()]
    assert (1, 7, 1, False, b"w1") in ids  # fetched from replica 1 before leading


def test_truncating_below_the_high_watermark_is_refused() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    follower = scene.replicas[1]
    assert follower.hw > 0
    with pytest.raises(ReplicationBroken):
        follower._truncate(0)


def test_old_epoch_batches_commit_only_with_a_batch_of_the_current_epoch() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.wire.clear()  # on the leader only
    scene.sync(0)
    scene.lead(0, 2)  # same replica, new epoch: its epoch-1 batch is not committed yet
    scene.deliver(keep={0, 1})
    leader = scene.replicas[0]
    assert leader.epoch_start_offset == 2
    assert leader.hw == leader.log_end  # committed through the epoch-start batch
    assert scene.logs[1].batches()[-1].control


def test_a_retried_write_gets_its_original_offset() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    first = scene.done()[1]
    scene.write(0, 2, 1)  # the same producer sequence again: an ambiguous outcome retried
    scene.deliver()
    again = scene.done()[2]
    assert again.duplicate and again.base_offset == first.base_offset
    assert sum(1 for b in scene.logs[0].batches() if b.producer_id == 7) == 1


def test_producer_state_survives_failover_because_it_is_derived_from_the_log() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    first = scene.done()[1]
    scene.lead(1, 2)
    scene.deliver()
    scene.write(1, 2, 1)
    scene.deliver()
    assert scene.done()[2].base_offset == first.base_offset
    scene.write(1, 3, 5)  # skips sequences 2..4
    assert scene.failed()[3] == "OUT_OF_ORDER_SEQUENCE"


def test_a_damaged_replica_refetches_and_does_not_lead_meanwhile() -> None:
    scene = started()
    for i in range(1, 4):
        scene.write(0, i, i)
    scene.deliver()
    damaged = scene.logs[2].batches()[1].base_offset
    scene.step(2, m.Damaged(damaged))
    assert not scene.metas[2].whole
    assert scene.logs[2].log_end() == damaged
    scene.step(2, m.Lead(9, (0, 1, 2)))
    assert any(isinstance(e, m.LeadDeclined) for e in scene.outcomes)
    ack = scene.replicas[2].step(m.Receive(m.Fence(1, 2, 10)))
    fence_ack = next(e.message for e in ack if isinstance(e, m.Send))
    assert isinstance(fence_ack, m.FenceAck) and not fence_ack.whole
    scene.apply(2, ack)
    scene.lead(0, 11)
    scene.deliver()
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    assert scene.metas[2].whole
    assert scene.logs[2].log_end() == scene.logs[0].log_end()


def test_reads_see_only_committed_batches_and_only_from_a_serving_leader() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    scene.write(0, 2, 2)  # appended, not committed
    scene.wire.clear()
    effects = scene.step(0, m.ClientRead(1, 0, 100))
    done = next(e for e in effects if isinstance(e, m.ReadDone))
    assert all(b.next_offset <= done.hw for b in done.batches)
    assert [b.producer_seq for b in done.batches if not b.control] == [1]
    refused = scene.step(1, m.ClientRead(2, 0, 100))
    assert refused == [m.ReadFailed(2, "NOT_LEADER")]


def test_a_write_waiting_too_long_times_out_as_an_ambiguous_outcome() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.wire.clear()
    scene.step(0, m.Tick(scene.now + CONFIG.write_timeout_ms))
    assert scene.failed() == {1: "TIMEOUT"}


def test_a_repair_point_past_the_new_leaders_log_end_does_not_block_the_repair() -> None:
    """The damaged replica's uncommitted tail is gone for good: holding the leader's whole
    log (which has every committed batch) makes it whole again, even on an idle shard."""
    scene = Scene()
    scene.lead(2, 1)
    scene.deliver()
    scene.write(2, 1, 1)
    scene.deliver()
    scene.write(2, 2, 2)
    scene.write(2, 3, 3)  # on replica 2 only, never committed
    scene.wire.clear()
    scene.sync(2)
    committed_end, written_end = scene.replicas[2].hw, scene.logs[2].log_end()
    scene.step(2, m.Damaged(committed_end - 1))
    assert scene.metas[2].repair_to == written_end == committed_end + 2
    scene.lead(0, 2)
    scene.deliver()
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    assert scene.logs[2].log_end() == scene.logs[0].log_end() < written_end
    scene.tick(CONFIG.heartbeat_ms)
    scene.deliver()
    assert scene.metas[2].whole


def test_a_damaged_replica_stays_unwhole_across_a_restart_until_a_leader_refills_it() -> None:
    """Found by the simulator (hunting seed 817): after a restart, before any leader had
    spoken, the replica counted itself repaired and vouched for a log it had lost."""
    scene = started()
    for i in range(1, 4):
        scene.write(0, i, i)
    scene.deliver()
    scene.step(2, m.Damaged(1))
    assert not scene.metas[2].whole
    scene.replicas[2] = Replica(2, scene.logs[2], scene.metas[2], CONFIG)  # restart
    scene.apply(2, scene.replicas[2].start())
    scene.sync(2)
    effects = scene.step(2, m.Receive(m.Fence(1, 2, 7)))
    ack = next(e.message for e in effects if isinstance(e, m.Send))
    assert isinstance(ack, m.FenceAck) and not ack.whole
    assert not scene.metas[2].whole


def test_a_failed_append_takes_the_persisted_meta_back() -> None:
    """Found by the simulator (seed 4581, 5 replicas): a PersistMeta after an append that hit
    a full disk was dropped by the driver, but the replica went on believing it."""
    scene = started()
    replica = scene.replicas[1]
    persisted = scene.metas[1]
    replica.meta = ReplicaMeta(persisted.epoch, persisted.generation, repair_to=None)
    damaged = ReplicaMeta(persisted.epoch, persisted.generation, repair_to=9)
    scene.step(1, m.StorageFailed("disk full", damaged))
    assert replica.meta == damaged and not replica.meta.whole


def test_a_follower_keeps_producer_state_so_a_new_leader_never_rereads_its_log() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    first = scene.done()[1]
    reads: list[int] = []
    log = scene.logs[1]
    original = log.read

    def counted(offset: int, batches_max: int) -> list:
        reads.append(offset)
        return original(offset, batches_max)

    log.read = counted  # type: ignore[method-assign]
    scene.lead(1, 2)
    scene.deliver()
    scene.write(1, 2, 1)  # a retry, answered from the table the follower kept
    scene.deliver()
    assert scene.done()[2].duplicate and scene.done()[2].base_offset == first.base_offset
    assert reads == []  # the followers were caught up: nothing shipped, nothing rescanned


def test_a_cut_suffix_leaves_the_producer_table_too() -> None:
    scene = started()
    scene.write(0, 1, 1)
    scene.deliver()
    scene.write(0, 2, 2)  # reaches nobody: replica 1 takes over, replica 0's copy is cut
    scene.wire.clear()
    scene.sync(0)
    scene.lead(1, 2)
    scene.deliver(keep={1, 2})
    scene.tick(CONFIG.retry_ms)
    scene.deliver()
    scene.lead(0, 3)
    scene.deliver()
    assert scene.replicas[0].role is Role.LEADING
    scene.write(0, 3, 2)  # sequence 2 again: no longer in any log, so a new batch
    scene.deliver()
    done = scene.done()[3]
    assert not done.duplicate
    stored = [b for b in scene.logs[0].batches() if b.producer_id == 7]
    assert [b.producer_seq for b in stored] == [1, 2]
    assert stored[1].base_offset == done.base_offset
