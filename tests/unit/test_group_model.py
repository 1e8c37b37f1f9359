"""Model-based test of the group coordinator (hypothesis RuleBasedStateMachine).

Simulated workers join, heartbeat, give up revoked shards, checkpoint (as holders and as
zombies), end closed shards, crash, leave; time advances; the server restarts (the coordinator
is rebuilt from its stored documents); the group is force-reset. A trivially correct model (a dict
of which (member, epoch) may checkpoint each shard) is checked against the coordinator:

* no shard is ever granted while the model still sees a valid lease on it (never two at once);
* lease epochs strictly increase per shard, across restarts too;
* a checkpoint is accepted exactly when the model says the lease is valid (fenced otherwise);
* children are only ever granted once all their parents reached SHARD_END;
* targets are balanced at every step (``check_invariants``).
"""

from __future__ import annotations

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamd.groups import SHARD_END, Answer, Checkpoint, Coordinator, GroupDoc, ShardInfo
from streamd.groups.sim import Worker, seq
from streamd_client.group_errors import LeaseLostError, UnknownMemberError
from streamd_client.model import Position, shard_id_of

NAMES = [f"w{i}" for i in range(5)]
S = [shard_id_of(i) for i in range(7)]
TOPOLOGY = [
    ShardInfo(S[0], closed=True),
    ShardInfo(S[1], closed=True),
    ShardInfo(S[2], parents=(S[0],)),
    ShardInfo(S[3], parents=(S[0],), closed=True),
    ShardInfo(S[4], parents=(S[1], S[3])),
    ShardInfo(S[5]),
    ShardInfo(S[6]),
]
PARENTS = {s.shard_id: s.parents for s in TOPOLOGY}
CLOSED = {s.shard_id for s in TOPOLOGY if s.closed}
SESSION_MS = 3_000
REBALANCE_MS = 600_000  # revoke timeouts are covered by a unit test, not by this model


class GroupModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        doc = GroupDoc("s", "sid", "g", 0, Position.trim_horizon().to_wire())
        self.now = 0
        self.coord = Coordinator(doc, {}, TOPOLOGY, now_ms=0)
        self.workers: dict[str, Worker] = {}  # live members (in the model's view)
        self.zombies: list[Worker] = []
        self.valid: dict[str, tuple[str, int] | None] = {s: None for s in S}
        self.max_epoch: dict[str, int] = {s: 0 for s in S}
        self.last_hb: dict[str, int] = {}
        self.finished: set[str] = set()
        self.next_offset: dict[str, int] = {s: 0 for s in S}
        self.seen: list[tuple[str, str, int]] = []  # (member, shard, epoch) ever granted

    # -- helpers --------------------------------------------------------------------------------

    def _invalidate_member(self, member_id: str) -> None:
        for shard_id, lease in self.valid.items():
            if lease is not None and lease[0] == member_id:
                self.valid[shard_id] = None

    def _observe(self, worker: Worker, answer: Answer) -> None:
        for grant in answer.assignment:
            if self.valid[grant.shard_id] == (worker.member_id, grant.epoch):
                continue
            assert self.valid[grant.shard_id] is None, (grant, self.valid[grant.shard_id])
            assert grant.epoch > self.max_epoch[grant.shard_id]
            assert grant.shard_id not in self.finished
            assert all(p in self.finished for p in PARENTS[grant.shard_id])
            self.max_epoch[grant.shard_id] = grant.epoch
            self.valid[grant.shard_id] = (worker.member_id, grant.epoch)
            self.seen.append((worker.member_id, grant.shard_id, grant.epoch))
            event("child granted" if PARENTS[grant.shard_id] else "grant observed")
        for grant in answer.revoking:
            if grant.shard_id in worker.held:
                assert self.valid[grant.shard_id] == (worker.member_id, grant.epoch)

    def _heartbeat(self, worker: Worker) -> None:
        for shard_id, lease in self.valid.items():
            if lease is not None and lease[0] == worker.member_id:
                if worker.held.get(shard_id) != lease[1]:
                    self.valid[shard_id] = None  # the heartbeat without it releases it
        answer = worker.heartbeat(self.now)
        self.last_hb[worker.member_id] = self.now
        self._observe(worker, answer)

    def _expect_checkpoint(self, member_id: str, shard_id: str, epoch: int, sequence: str) -> None:
        ok = self.valid[shard_id] == (member_id, epoch)
        try:
            self.coord.checkpoint(member_id, shard_id, epoch, sequence, self.now)
        except LeaseLostError:
            assert not ok, (member_id, shard_id, epoch, self.valid[shard_id])
            event("checkpoint fenced")
            return
        event("checkpoint accepted" if sequence != SHARD_END else "shard ended")
        assert ok, (member_id, shard_id, epoch, self.valid[shard_id])
        if sequence == SHARD_END:
            self.finished.add(shard_id)
            self.valid[shard_id] = None
        else:
            self.next_offset[shard_id] += 1

    # -- rules ----------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def join(self, name: str) -> None:
        if name in self.workers:
            return
        if name in self.last_hb:  # a crashed worker's id joins again, holding nothing
            self._invalidate_member(name)
        worker = Worker(self.coord, name, SESSION_MS, REBALANCE_MS, release_at_once=False)
        answer = worker.join(self.now)
        self.workers[name] = worker
        self.last_hb[name] = self.now
        self._observe(worker, answer)

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        self._heartbeat(self.workers[data.draw(st.sampled_from(sorted(self.workers)))])

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def give_up_revoked(self, data: st.DataObject) -> None:
        self.workers[data.draw(st.sampled_from(sorted(self.workers)))].release_revoked()

    @precondition(lambda self: any(w.held for w in self.workers.values()))
    @rule(data=st.data())
    def checkpoint_held(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from([w for w in self.workers.values() if w.held]))
        shard_id = data.draw(st.sampled_from(sorted(worker.held)))
        sequence = seq(shard_id, self.next_offset[shard_id])
        self._expect_checkpoint(worker.member_id, shard_id, worker.held[shard_id], sequence)

    @precondition(lambda self: any(set(w.held) & CLOSED for w in self.workers.values()))
    @rule(data=st.data())
    def end_closed_shard(self, data: st.DataObject) -> None:
        worker = data.draw(
            st.sampled_from([w for w in self.workers.values() if set(w.held) & CLOSED])
        )
        shard_id = data.draw(st.sampled_from(sorted(set(worker.held) & CLOSED)))
        self._expect_checkpoint(worker.member_id, shard_id, worker.held[shard_id], SHARD_END)
        if shard_id in self.finished:
            worker.held.pop(shard_id)

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def zombie_checkpoint(self, data: st.DataObject) -> None:
        member_id, shard_id, epoch = data.draw(st.sampled_from(self.seen))
        if shard_id in self.finished:
            return  # a finished shard refuses everything; covered by the unit tests
        self._expect_checkpoint(
            member_id, shard_id, epoch, seq(shard_id, self.next_offset[shard_id])
        )

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.workers)))
        self.zombies.append(self.workers.pop(name))  # it will expire; the model keeps its leases

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        worker = self.workers.pop(data.draw(st.sampled_from(sorted(self.workers))))
        worker.leave(self.now)
        self._invalidate_member(worker.member_id)
        self.last_hb.pop(worker.member_id, None)

    @rule(ms=st.integers(1, 4_000))
    def advance_time(self, ms: int) -> None:
        self.now += ms
        self.coord.tick(self.now)
        self.coord.check_invariants()
        for name, last in list(self.last_hb.items()):
            if self.now - last > SESSION_MS:
                del self.last_hb[name]
                self._invalidate_member(name)
                if name in self.workers:
                    self.zombies.append(self.workers.pop(name))
        assert set(self.coord.members) == set(self.last_hb)

    @rule()
    def restart_server(self) -> None:
        doc = GroupDoc.decode(self.coord.doc.encode(), self.now)
        checkpoints = {s: Checkpoint.decode(c.encode()) for s, c in self.coord.checkpoints.items()}
        self.coord = Coordinator(doc, checkpoints, TOPOLOGY, now_ms=self.now)
        for worker in [*self.workers.values(), *self.zombies]:
            worker.coord = self.coord
        for name in self.last_hb:
            self.last_hb[name] = self.now

    @rule()
    def force_reset(self) -> None:
        self.coord.reset(Position.trim_horizon().to_wire(), {}, self.now, force=True)
        self.valid = {s: None for s in S}
        self.finished.clear()
        self.next_offset = {s: 0 for s in S}

    @precondition(lambda self: self.zombies)
    @rule(data=st.data())
    def zombie_heartbeat(self, data: st.DataObject) -> None:
        zombie = data.draw(st.sampled_from(self.zombies))
        if zombie.member_id in self.last_hb:
            return  # still within its session (a crashed worker that has not expired yet)
        try:
            zombie.heartbeat(self.now)
        except UnknownMemberError:
            return
        raise AssertionError(f"{zombie.member_id} heartbeated after it expired")

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def coordinator_agrees_with_the_model(self) -> None:
        self.coord.check_invariants()
        for shard_id, lease in self.valid.items():
            if lease is not None:
                actual = self.coord.leases[shard_id]
                assert (actual.owner, actual.epoch) == lease, (shard_id, actual, lease)
            assert self.coord.leases[shard_id].epoch >= self.max_epoch[shard_id]
            owner = self.coord.leases[shard_id].owner
            if owner is not None:
                assert all(self.coord.is_finished(p) for p in PARENTS[shard_id])


GroupModel.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestGroupModel = GroupModel.TestCase
