"""The group coordinator state machine, driven with explicit virtual time (``now_ms``)."""

from __future__ import annotations

import pytest

from streamd.groups import SHARD_END, Checkpoint, Coordinator, GroupDoc, ShardInfo
from streamd.groups.sim import SESSION_MS, Worker, coordinator, holders, seq, settle, shard_ids
from streamd_client.errors import ShardNotFoundError
from streamd_client.group_errors import (
    GroupActiveError,
    InvalidCheckpointError,
    LeaseLostError,
    UnknownMemberError,
)
from streamd_client.model import Position


def _kinds(coord: Coordinator) -> list[str]:
    return [e.kind for e in coord.take_ready().events]


def test_first_member_gets_every_shard_at_epoch_one() -> None:
    coord = coordinator(4)
    answer = Worker(coord, "a").join(0)
    assert [(g.shard_id, g.epoch) for g in answer.assignment] == [(s, 1) for s in shard_ids(4)]
    assert all(g.start == Position.trim_horizon().to_wire() for g in answer.assignment)
    assert answer.revoking == ()
    assert answer.heartbeat_interval_ms == 500 and answer.session_timeout_ms == SESSION_MS


def test_three_members_on_eight_shards_hold_two_or_three_each() -> None:
    coord = coordinator(8)
    workers = [Worker(coord, m) for m in ("a", "b", "c")]
    for w in workers:
        w.join(0)
    settle(workers, 0)
    assert sorted(len(w.held) for w in workers) == [2, 3, 3]
    assert all(len(h) == 1 for h in holders(workers).values())
    assert len(holders(workers)) == 8


def test_a_lease_moves_by_revoke_then_grant_with_a_new_epoch() -> None:
    coord = coordinator(2)
    a, b = Worker(coord, "a", release_at_once=False), Worker(coord, "b")
    a.join(0)
    b.join(10)
    assert b.held == {}  # nothing free yet: a still holds both
    a.heartbeat(20)
    assert len(a.revoking) == 1
    (moving,) = a.revoking
    coord.checkpoint("a", moving, 1, seq(moving, 5), 21)  # still the owner while revoking
    a.release_revoked()
    a.heartbeat(30)  # the heartbeat without it releases it; it goes to b at once
    assert coord.leases[moving].owner == "b" and coord.leases[moving].epoch == 2
    b.heartbeat(40)
    assert b.held == {moving: 2}
    assert b.last is not None
    assert b.last.assignment[0].start == Position.after_sequence(seq(moving, 5)).to_wire()


def test_silent_member_expires_after_session_timeout_not_before() -> None:
    coord = coordinator(4)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    settle([a, b], 0)
    coord.take_ready()
    b.heartbeat(SESSION_MS)
    coord.tick(SESSION_MS)
    assert "a" in coord.members
    coord.tick(SESSION_MS + 1)
    assert "a" not in coord.members
    kinds = _kinds(coord)
    assert "member.expired" in kinds and kinds.count("lease.granted") == 2
    b.heartbeat(SESSION_MS + 2)
    assert len(b.held) == 4 and all(e == 2 for s, e in b.held.items() if s not in (b.held))
    with pytest.raises(UnknownMemberError):
        a.heartbeat(SESSION_MS + 3)


def test_graceful_leave_frees_leases_at_once() -> None:
    coord = coordinator(4)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    settle([a, b], 0)
    a.leave(5)
    assert {x.owner for x in coord.leases.values()} == {"b"}
    b.heartbeat(6)
    assert len(b.held) == 4


def test_checkpoint_accepted_only_from_owner_at_current_epoch() -> None:
    coord = coordinator(1)
    (shard,) = shard_ids(1)
    Worker(coord, "a").join(0)
    stored = coord.checkpoint("a", shard, 1, seq(shard, 3), 1, metadata="m")
    assert stored == Checkpoint(seq(shard, 3), 1, "a", 1, "m")
    assert coord.take_ready().checkpoints == {shard: stored}
    with pytest.raises(LeaseLostError) as stale:
        coord.checkpoint("a", shard, 0, seq(shard, 4), 2)
    assert stale.value.details["current_epoch"] == 1
    with pytest.raises(LeaseLostError):
        coord.checkpoint("zed", shard, 1, seq(shard, 4), 2)
    ready = coord.take_ready()
    assert [e.kind for e in ready.events] == ["checkpoint.fenced", "checkpoint.fenced"]
    assert not ready.must_persist
    assert coord.checkpoints[shard].sequence == seq(shard, 3)


def test_zombie_checkpoint_after_expiry_is_fenced() -> None:
    coord = coordinator(1)
    (shard,) = shard_ids(1)
    zombie, survivor = Worker(coord, "z"), Worker(coord, "s")
    zombie.join(0)
    survivor.join(0)
    for t in range(500, SESSION_MS + 2, 500):
        survivor.heartbeat(t)
    survivor.heartbeat(SESSION_MS + 1)  # z has been silent past its session: expired
    assert coord.leases[shard].owner == "s" and coord.leases[shard].epoch == 2
    with pytest.raises(LeaseLostError):
        coord.checkpoint("z", shard, 1, seq(shard, 9), SESSION_MS + 2)
    coord.checkpoint("s", shard, 2, seq(shard, 9), SESSION_MS + 2)


def test_checkpoint_progress_checks() -> None:
    coord = coordinator(2)
    s0, s1 = shard_ids(2)
    Worker(coord, "a").join(0)
    coord.checkpoint("a", s0, 1, seq(s0, 10), 1)
    coord.checkpoint("a", s0, 1, seq(s0, 10), 2)  # the same again is fine
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, seq(s0, 9), 3)
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, seq(s1, 11), 3)
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, SHARD_END, 3)  # s0 is open
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, seq(s0, 11), 3, metadata="x" * 5000)
    with pytest.raises(ShardNotFoundError):
        coord.checkpoint("a", "shardId-000000000099", 1, SHARD_END, 3)


def test_undelivered_grant_survives_a_heartbeat_that_did_not_know_it() -> None:
    coord = coordinator(2)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    settle([a, b], 0)
    b.leave(1)  # b's shard is granted to a while a's last heartbeat did not know it
    s1 = shard_ids(2)[1]
    assert coord.leases[s1].owner == "a" and coord.leases[s1].epoch == 3  # a -> b -> a
    a.heartbeat(2)  # its owned list lacks s1: not a release, a was never told
    assert coord.leases[s1].epoch == 3
    assert a.held == {shard_ids(2)[0]: 1, s1: 3}


def test_owner_that_never_releases_loses_the_lease_after_rebalance_timeout() -> None:
    coord = coordinator(2)
    a = Worker(coord, "a", rebalance_timeout_ms=1_000, release_at_once=False)
    b = Worker(coord, "b")
    a.join(0)
    b.join(0)
    a.heartbeat(0)
    (stuck,) = a.revoking
    coord.take_ready()
    for t in range(0, 1_001, 200):
        a.heartbeat(t)
        b.heartbeat(t)
    assert coord.leases[stuck].owner == "a"
    assert coord.next_deadline_ms() == 1_001
    coord.tick(1_001)
    assert "lease.revoke_timeout" in _kinds(coord)
    assert coord.leases[stuck].owner == "b" and coord.leases[stuck].epoch == 2
    with pytest.raises(LeaseLostError):
        coord.checkpoint("a", stuck, 1, seq(stuck, 1), 1_002)


def test_children_wait_for_every_parent_to_reach_shard_end() -> None:
    p0, p1, c2 = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002"
    topology = [
        ShardInfo(p0, closed=True),
        ShardInfo(p1, closed=True),
        ShardInfo(c2, parents=(p0, p1)),  # a merge of p0 and p1
    ]
    coord = coordinator(topology)
    a = Worker(coord, "a")
    a.join(0)
    assert set(a.held) == {p0, p1}
    assert coord.shard_status(c2) == "WAITING_FOR_PARENTS"
    coord.checkpoint("a", p0, 1, SHARD_END, 1)
    a.heartbeat(2)
    assert c2 not in a.held
    coord.checkpoint("a", p1, 1, SHARD_END, 3)
    a.heartbeat(4)
    assert a.held == {c2: 1}
    assert a.last is not None and a.last.assignment[0].start == Position.trim_horizon().to_wire()
    assert coord.shard_status(p0) == "FINISHED"


def test_split_children_become_assignable_when_the_stream_reshards() -> None:
    coord = coordinator(1)
    (p0,) = shard_ids(1)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    split = [
        ShardInfo(p0, closed=True),
        ShardInfo("shardId-000000000001", parents=(p0,)),
        ShardInfo("shardId-000000000002", parents=(p0,)),
    ]
    coord.sync_shards(split, {}, 1)
    coord.check_invariants()
    settle([a, b], 2)
    assert set(holders([a, b])) == {p0}
    owner = coord.leases[p0].owner
    assert owner is not None
    coord.checkpoint(owner, p0, 1, SHARD_END, 3)
    settle([a, b], 4)
    assert sorted(len(w.held) for w in (a, b)) == [1, 1]


def test_reset_refused_while_active_unless_forced() -> None:
    coord = coordinator(1)
    (shard,) = shard_ids(1)
    a = Worker(coord, "a")
    a.join(0)
    coord.checkpoint("a", shard, 1, seq(shard, 7), 1)
    with pytest.raises(GroupActiveError):
        coord.reset(Position.latest().to_wire(), {}, 2)
    coord.take_ready()
    coord.reset(Position.trim_horizon().to_wire(), {}, 2, force=True)
    ready = coord.take_ready()
    assert ready.checkpoints == {shard: None} and ready.group_changed
    assert coord.leases[shard].epoch == 2  # re-granted: the old holder is fenced
    with pytest.raises(LeaseLostError):
        coord.checkpoint("a", shard, 1, seq(shard, 8), 3)
    a.heartbeat(3)
    assert a.held == {shard: 2}
    assert a.last is not None and a.last.assignment[0].start == Position.trim_horizon().to_wire()


def test_reset_of_an_empty_group_pins_starts() -> None:
    coord = coordinator(2)
    s0, s1 = shard_ids(2)
    pins = {s0: Position.at_offset(5).to_wire(), s1: Position.at_offset(0).to_wire()}
    coord.reset(Position.latest().to_wire(), pins, 0)
    assert coord.start_of(s0) == Position.at_offset(5).to_wire()


def test_state_survives_a_restart_with_epochs_owners_and_checkpoints() -> None:
    coord = coordinator(4)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    settle([a, b], 0)
    shard = next(iter(a.held))
    coord.checkpoint("a", shard, a.held[shard], seq(shard, 42), 1, metadata="meta")
    raw = coord.doc.encode()
    checkpoints = {s: Checkpoint.decode(c.encode()) for s, c in coord.checkpoints.items()}
    infos = list(coord.shards.values())

    revived = Coordinator(GroupDoc.decode(raw, 10_000), checkpoints, infos, now_ms=10_000)
    revived.check_invariants()
    assert {s: (x.owner, x.epoch) for s, x in revived.leases.items()} == {
        s: (x.owner, x.epoch) for s, x in coord.leases.items()
    }
    assert revived.checkpoints[shard].metadata == "meta"
    # a comes back within its session and keeps everything; b never does and expires.
    a.coord = revived
    a.heartbeat(10_000 + SESSION_MS)
    revived.tick(10_000 + SESSION_MS + 1)
    assert "b" not in revived.members
    a.heartbeat(10_000 + SESSION_MS + 2)
    assert len(a.held) == 4
    assert a.held[shard] == 1  # never moved, same epoch


def test_scale_one_to_four_to_two_moves_only_what_balance_needs() -> None:
    coord = coordinator(8)
    workers = [Worker(coord, "w0")]
    workers[0].join(0)
    for name in ("w1", "w2", "w3"):
        workers.append(Worker(coord, name))
        workers[-1].join(1)
    settle(workers, 2)
    assert [len(w.held) for w in workers] == [2, 2, 2, 2]
    before = {s: w.member_id for w in workers for s in w.held}
    grants_before = sum(x.epoch for x in coord.leases.values())
    assert grants_before == 8 + 6  # exactly six shards moved
    workers[2].leave(3)
    workers[3].leave(3)
    settle(workers[:2], 4)
    after = {s: w.member_id for w in workers[:2] for s in w.held}
    assert all(after[s] == m for s, m in before.items() if m in ("w0", "w1"))
    assert sum(x.epoch for x in coord.leases.values()) == grants_before + 4


def test_heartbeat_without_changes_persists_nothing() -> None:
    coord = coordinator(2)
    a = Worker(coord, "a")
    a.join(0)
    coord.take_ready()
    a.heartbeat(100)
    assert not coord.take_ready().must_persist


def test_events_cover_join_revoke_grant_leave() -> None:
    coord = coordinator(2)
    a, b = Worker(coord, "a"), Worker(coord, "b")
    a.join(0)
    b.join(0)
    a.heartbeat(1)
    a.heartbeat(1)
    b.leave(2)
    kinds = _kinds(coord)
    for kind in (
        "member.joined",
        "lease.granted",
        "lease.revoking",
        "lease.released",
        "member.left",
        "lease.freed",
    ):
        assert kind in kinds, kind


def test_describe_shows_members_leases_and_checkpoints() -> None:
    coord = coordinator(2)
    s0, _ = shard_ids(2)
    Worker(coord, "a").join(0)
    coord.checkpoint("a", s0, 1, seq(s0, 1), 5)
    view = coord.describe(10)
    assert view["state"] == "ACTIVE"
    assert view["members"][0]["leases"] == shard_ids(2)
    assert view["shards"][0]["checkpoint"] == seq(s0, 1)
    assert view["shards"][0]["status"] == "ACTIVE" and view["shards"][0]["epoch"] == 1


def test_an_expired_shard_is_revoked_then_forgotten() -> None:
    """A closed shard removed by retention: its holder gives it up, then its lease is gone."""
    coord = coordinator(2)
    a = Worker(coord, "a", release_at_once=False)
    a.join(0)
    gone, kept = shard_ids(2)
    coord.sync_shards([s for s in coord.shards.values() if s.shard_id == kept], {}, 10)
    a.heartbeat(20)
    assert gone in a.revoking
    assert gone in coord.leases  # still held: the holder decides when it lets go
    a.release_revoked()
    a.heartbeat(30)
    assert gone not in coord.leases and kept in coord.leases
    assert a.held == {kept: 1}


def test_checkpoints_inside_a_kpl_aggregate_order_and_resume_there() -> None:
    coord = coordinator(1)
    (s0,) = shard_ids(1)
    a = Worker(coord, "a", release_at_once=False)
    a.join(0)
    coord.checkpoint("a", s0, 1, seq(s0, 10), 1, sub_sequence=2)
    coord.checkpoint("a", s0, 1, seq(s0, 10), 2, sub_sequence=2)  # the same again
    coord.checkpoint("a", s0, 1, seq(s0, 10), 3, sub_sequence=5)
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, seq(s0, 10), 4, sub_sequence=4)  # backwards inside
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("a", s0, 1, seq(s0, 9), 4)  # an earlier record
    assert coord.start_of(s0) == Position.at_sequence(seq(s0, 10)).to_wire()
    (stored,) = [Checkpoint.decode(c.encode()) for c in coord.checkpoints.values()]
    assert stored.sub_sequence == 5
    shard = coord.describe(5)["shards"][0]
    assert (shard["checkpoint"], shard["checkpoint_sub_sequence"]) == (seq(s0, 10), 5)
    # The grant says where inside: a new holder skips user records 0..5 of that aggregate.
    b = Worker(coord, "b")
    a.leave(6)
    b.join(7)
    assert b.last is not None
    (grant,) = b.last.assignment
    assert grant.start == Position.at_sequence(seq(s0, 10)).to_wire()
    assert grant.to_wire()["after_sub_sequence"] == 5
    # The whole record comes after all of its user records; then nothing inside it again.
    coord.checkpoint("b", s0, 2, seq(s0, 10), 8)
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("b", s0, 2, seq(s0, 10), 9, sub_sequence=6)
    assert coord.start_of(s0) == Position.after_sequence(seq(s0, 10)).to_wire()
    with pytest.raises(InvalidCheckpointError):
        coord.checkpoint("b", s0, 2, seq(s0, 11), 9, sub_sequence=-1)
