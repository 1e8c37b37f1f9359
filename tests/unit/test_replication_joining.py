"""Replica-set changes in the core: a joining replica votes nowhere until it has caught up.

Hand-driven scenes (``Scene`` from test_replication_replica) of the rules in
docs/replication.md, "Replica set changes": the set {0, 1, 2} becomes {0, 1, 3} with 3 new
(an empty log) and listed in ``Lead.joining``.
"""

from __future__ import annotations

from test_replication_replica import Scene

from streamd.replication import Role
from streamd.replication import messages as m
from streamd.testing.sim.mutants import JoinerVotesAtOnce

OLD = (0, 1, 2)
NEW = (0, 1, 3)


def committed_on_0_and_2() -> Scene:
    """Four replicas; 0 leads {0, 1, 2}; write 1 commits on 0 and 2 only (1 misses it)."""
    scene = Scene(4)
    scene.step(0, m.Lead(1, OLD))
    scene.deliver(keep={0, 1, 2})
    assert scene.replicas[0].serving()
    scene.write(0, 1, 1)
    scene.deliver(keep={0, 2})
    assert 1 in scene.done()
    return scene


def holds_w1(scene: Scene, node: int) -> bool:
    return any(b.payload == b"w1" for b in scene.logs[node].batches())


def test_a_joining_replica_does_not_count_in_the_fencing_majority() -> None:
    scene = committed_on_0_and_2()
    # 2 is lost; 1 (which lacks write 1) leads the new set, 3 (empty) joins.
    scene.step(1, m.Lead(2, NEW, joining=(3,)))
    scene.deliver(keep={1, 3})
    scene.tick(10)
    scene.deliver(keep={1, 3})
    assert scene.replicas[1].role is Role.FENCING  # {1, 3} is no majority of voters
    scene.deliver(keep={0, 1, 3})
    for _ in range(5):
        scene.tick(40)
        scene.deliver(keep={0, 1, 3})
    assert scene.replicas[1].role is Role.LEADING
    assert holds_w1(scene, 1)  # chosen from 0's log, as a fenced voter majority must


def test_the_mutant_that_counts_the_joiner_loses_a_committed_write() -> None:
    """The same scene with the joiner counted at once: {1, 3} is taken for a majority, 1
    leads its own log, and the committed write 1 is gone from it."""
    scene = committed_on_0_and_2()
    scene.replicas[1] = JoinerVotesAtOnce(
        1, scene.logs[1], scene.metas[1], scene.replicas[1].config
    )
    scene.apply(1, scene.replicas[1].start())
    scene.sync_all()
    scene.step(1, m.Lead(2, NEW, joining=(3,)))
    scene.deliver(keep={1, 3})
    assert scene.replicas[1].role is Role.LEADING
    assert not holds_w1(scene, 1)


def test_a_joiner_is_not_in_the_commit_quorum_and_is_reported_caught_up() -> None:
    scene = committed_on_0_and_2()
    scene.step(0, m.Lead(2, NEW, joining=(3,)))
    scene.deliver(keep={0, 1, 3})
    leader = scene.replicas[0]
    assert leader.serving()
    caught = [e for e in scene.outcomes if isinstance(e, m.JoinerCaughtUp)]
    assert caught == [m.JoinerCaughtUp(3, 2)]  # once, for this epoch
    assert holds_w1(scene, 3)
    # With 1 cut off, the joiner's durable copy does not make a majority of voters.
    scene.write(0, 2, 2)
    scene.deliver(keep={0, 3})
    assert 2 not in scene.done()
    # Named a voter by a later epoch (write 2's writer got NOT_LEADER then), it counts.
    scene.step(0, m.Lead(3, NEW))
    scene.deliver(keep={0, 3})
    assert scene.failed().get(2) == "NOT_LEADER"
    assert scene.replicas[0].serving()
    scene.write(0, 3, 2)  # the retry: same producer sequence
    scene.deliver(keep={0, 3})
    assert 3 in scene.done()


def test_a_joining_replica_declines_to_lead() -> None:
    scene = committed_on_0_and_2()
    effects = scene.step(3, m.Lead(2, NEW, joining=(3,)))
    assert [e for e in effects if isinstance(e, m.LeadDeclined)]
    assert scene.replicas[3].role is Role.FOLLOWER


def test_a_late_copy_of_a_divergence_answer_does_not_truncate_a_fetched_batch() -> None:
    """A catching-up leader that backed up once, fetched and took batches, must not back up
    again on a duplicated (or late) copy of the first answer: it would drop a committed batch
    it just fetched (found by the simulator, reconfig hunting seed 598)."""
    scene = Scene(3)
    scene.lead(2, 1)
    scene.deliver()
    scene.write(2, 1, 1)
    scene.deliver(keep={2})  # 2 alone holds write 1 (epoch 1), uncommitted
    scene.lead(0, 2)
    scene.deliver(keep={0, 1})  # epoch 2 starts at offset 1 on 0 and 1, committed
    assert scene.replicas[0].serving()
    scene.lead(2, 3)
    replies: list[m.FetchReply] = []
    for _ in range(20):  # fence {1, 2}, catch up from 1 (epoch 2 is the newest log)
        if not scene.wire:
            scene.sync_all()
            if not scene.wire:
                break
        msg = scene.wire.popleft()
        if msg.src not in (1, 2) or msg.dst not in (1, 2):
            continue
        if isinstance(msg, m.FetchReply) and msg.diverge_at is not None:
            replies.append(msg)
        scene.step(msg.dst, m.Receive(msg))
        if any(b.epoch == 2 for b in scene.logs[2].batches()):
            break  # took epoch 2's batches; not leading yet (its next fetch is in flight)
    assert replies and scene.replicas[2].role is Role.CATCHING_UP
    epochs_held = [b.epoch for b in scene.logs[2].batches()]
    assert 2 in epochs_held  # fetched epoch 2's start batch from 1
    end = scene.logs[2].log_end()
    scene.step(2, m.Receive(replies[0]))  # the duplicate arrives
    assert scene.logs[2].log_end() == end
    assert [b.epoch for b in scene.logs[2].batches()] == epochs_held
