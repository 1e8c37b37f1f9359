"""The shard pipeline's commit rule: the local fsync is one vote, run beside the committer's.

Real files and real fsync (a ``ShardLog`` in a temporary directory); ``os.fdatasync`` is wrapped
in a gate the test opens, so the local vote can be held back, failed, or released by the
committer's own shipping. The committer is a double with one follower vote the test casts. Every
ordering is asserted with events (what happened before what), never with timing; the waits are
bounded only so that a broken pipeline fails instead of hanging.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from streamd.catalog import ShardMeta
from streamd.clock import VirtualClock
from streamd.replication import LocalCommitter, Proposal
from streamd.shard import PipelineConfig, ShardPipeline
from streamd.storage import LogConfig, ShardLog
from streamd_client import batch as batchfmt
from streamd_client.errors import (
    InternalError,
    InvalidSequenceNumberError,
    NotLeaderError,
    ShuttingDownError,
    StreamdError,
)
from streamd_client.model import HASH_KEY_MAX, Position, hash_bytes_of, make_sequence

SHARD = ShardMeta("shardId-000000000000", 0, 0, HASH_KEY_MAX)
WAIT_S = 10.0  # reached only when the pipeline is broken (it would otherwise hang)


def records(n: int, prefix: str = "k") -> tuple[list[str], list[bytes], list[bytes]]:
    keys = [f"{prefix}{i}" for i in range(n)]
    return keys, [hash_bytes_of(k) for k in keys], [k.encode() for k in keys]


class FsyncGate:
    """``os.fdatasync`` behind a gate: each call waits for ``opened`` (bounded), then syncs for
    real, or raises ``error``; ``events`` records each outcome in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
        self.opened = threading.Event()
        self.synced = threading.Event()
        self.timed_out = False
        self.error: OSError | None = None
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            if not self.opened.wait(WAIT_S):
                self.timed_out = True
            if self.error is not None:
                events.append("fsync failed")
                raise self.error
            real(fd)
            events.append("fsynced")
            self.synced.set()

        monkeypatch.setattr(os, "fdatasync", fdatasync)


class FollowerVote:
    """A committer double with a quorum of the local vote and one follower's, which the test
    casts (``follower.set()``) or fails (``failure``). ``needs_local=False``: the follower alone
    is a quorum (as two followers of three would be). ``on_ship`` runs when a proposal ships."""

    ships = True

    def __init__(
        self,
        events: list[str],
        *,
        needs_local: bool = True,
        open_at: int | None = None,
        on_ship: Callable[[], None] | None = None,
    ) -> None:
        self.events = events
        self.needs_local = needs_local
        self.open_at = open_at
        self.on_ship = on_ship
        self.proposals: list[Proposal] = []
        self.failure: StreamdError | None = None
        self.cancelled = 0
        self.next_proposal()

    def next_proposal(self) -> None:
        self.shipped = trio.Event()
        self.follower = trio.Event()

    async def committed_at_open(self, shard_key: str, leader_epoch: int, log_end: int) -> int:
        return log_end if self.open_at is None else self.open_at

    async def replicate(self, proposal: Proposal) -> None:
        self.proposals.append(proposal)
        self.events.append("shipped")
        if self.on_ship is not None:
            self.on_ship()
        self.shipped.set()
        try:
            await self.follower.wait()
            if self.failure is not None:
                raise self.failure
            if self.needs_local:
                await proposal.local.durable()
        except trio.Cancelled:
            self.cancelled += 1
            self.events.append("replicate cancelled")
            raise
        self.events.append("quorum")


async def open_pipeline(
    directory: Path,
    committer: object,
    nursery: trio.Nursery,
    clock: VirtualClock | None = None,
) -> ShardPipeline:
    p = ShardPipeline(
        "s",
        SHARD,
        ShardLog.open(directory, LogConfig()),
        PipelineConfig(),
        committer,  # type: ignore[arg-type]
        clock=clock,
    )
    await nursery.start(p.run)
    return p


async def keys_of(p: ShardPipeline) -> list[str]:
    read = await p.read(Position.trim_horizon(), 1 << 20, 0)
    return [
        k for b in read.batches for k in batchfmt.decode_records(b, batchfmt.parse_header(b))[0]
    ]


async def stop(p: ShardPipeline) -> None:
    await p.close()
    await p.close_log()


async def test_ack_waits_for_both_the_local_vote_and_the_followers(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    committer = FollowerVote(events)
    p = await open_pipeline(tmp_path, committer, nursery)
    gate = FsyncGate(monkeypatch, events)
    # The follower votes first; the local fsync is held back: no ack, nothing readable.
    write = p.enqueue_records(*records(3))
    with trio.fail_after(WAIT_S):
        await committer.shipped.wait()
    committer.follower.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not write.done.is_set() and p.high_watermark == 0
    gate.opened.set()
    with trio.fail_after(WAIT_S):
        assert await write.wait() == (0, 3, False)
    assert p.high_watermark == 3
    assert events == ["shipped", "fsynced", "quorum"]
    # The local vote first; the follower's is held back: no ack either.
    committer.next_proposal()
    write = p.enqueue_records(*records(2, "b"))
    with trio.fail_after(WAIT_S):
        await committer.shipped.wait()
        proposal = committer.proposals[-1]
        assert await proposal.local.durable() >= proposal.end_offset == 5
    await trio.testing.wait_all_tasks_blocked()
    assert not write.done.is_set() and p.high_watermark == 3
    committer.follower.set()
    with trio.fail_after(WAIT_S):
        assert await write.wait() == (3, 2, False)
    assert p.high_watermark == 5 and not gate.timed_out
    await stop(p)


async def test_shipping_starts_before_the_local_fsync_ends(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync only proceeds once the committer has the batches: a pipeline that synced
    before shipping would hold its fsync until the gate gave up (``timed_out``)."""
    events: list[str] = []
    synced_when_shipped: list[bool] = []
    gate = FsyncGate(monkeypatch, events)

    def shipped() -> None:
        synced_when_shipped.append(gate.synced.is_set())
        gate.opened.set()

    committer = FollowerVote(events, on_ship=shipped)
    committer.follower.set()
    p = await open_pipeline(tmp_path, committer, nursery)
    with trio.fail_after(WAIT_S):
        assert await p.enqueue_records(*records(3)).wait() == (0, 3, False)
    assert not gate.timed_out
    assert synced_when_shipped == [False]
    assert events == ["shipped", "fsynced", "quorum"]
    (proposal,) = committer.proposals
    assert (proposal.base_offset, proposal.end_offset) == (0, 3)
    assert proposal.shard_key == SHARD.shard_id and len(proposal.batches) == 1
    await stop(p)


async def test_a_failed_local_fsync_cancels_shipping_and_publishes_nothing(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    committer = FollowerVote(events)  # the follower never votes
    p = await open_pipeline(tmp_path, committer, nursery)
    gate = FsyncGate(monkeypatch, events)
    write = p.enqueue_records(*records(3))
    with trio.fail_after(WAIT_S):
        await committer.shipped.wait()
    gate.error = OSError(errno.EIO, "Input/output error")
    gate.opened.set()
    with trio.fail_after(WAIT_S), pytest.raises(InternalError, match="fsync"):
        await write.wait()
    assert committer.cancelled == 1
    assert events == ["shipped", "fsync failed", "replicate cancelled"]
    assert p.high_watermark == 0 and await keys_of(p) == []
    with pytest.raises(InternalError, match="refuses writes"):
        p.enqueue_records(*records(1, "next"))
    await stop(p)


async def test_a_failed_follower_vote_fails_the_group_once_the_local_vote_is_in(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group is answered only after its local fsync finished (no lane job outlives its
    group), never published, and cut before the next group."""
    events: list[str] = []
    committer = FollowerVote(events)
    p = await open_pipeline(tmp_path, committer, nursery)
    gate = FsyncGate(monkeypatch, events)
    write = p.enqueue_records(*records(3, "lost"))
    with trio.fail_after(WAIT_S):
        await committer.shipped.wait()
    committer.failure = NotLeaderError("deposed while replicating")
    committer.follower.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not write.done.is_set()  # the local fsync is still held
    gate.opened.set()
    with trio.fail_after(WAIT_S), pytest.raises(NotLeaderError):
        await write.wait()
    assert events == ["shipped", "fsynced"]
    assert p.high_watermark == 0 and await keys_of(p) == []
    committer.failure = None
    committer.next_proposal()
    committer.follower.set()
    with trio.fail_after(WAIT_S):
        assert await p.enqueue_records(*records(2, "after")).wait() == (0, 2, False)
    assert await keys_of(p) == ["after0", "after1"]
    await stop(p)
    reopened = ShardLog.open(tmp_path, LogConfig())
    assert reopened.next_offset == 2
    reopened.close()


async def test_a_cancelled_commit_answers_its_writers_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    committer = FollowerVote(events)
    async with trio.open_nursery() as nursery:
        p = await open_pipeline(tmp_path, committer, nursery)
        write = p.enqueue_records(*records(3))
        with trio.fail_after(WAIT_S):
            await committer.shipped.wait()
        nursery.cancel_scope.cancel()  # the server stops while the group waits for a quorum
    assert committer.cancelled == 1
    assert write.done.is_set()
    with pytest.raises(ShuttingDownError):
        await write.wait()
    assert p.high_watermark == 0
    await p.close_log()


async def test_a_quorum_without_the_local_vote_commits_and_a_late_local_failure_fences(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer decides the quorum: with the followers' votes the group commits while the
    local fsync is still held. If that fsync then fails, the acknowledged records are not cut
    (they are committed elsewhere); the shard refuses writes until a restart."""
    events: list[str] = []
    committer = FollowerVote(events, needs_local=False)
    committer.follower.set()
    p = await open_pipeline(tmp_path, committer, nursery)
    gate = FsyncGate(monkeypatch, events)
    write = p.enqueue_records(*records(3))
    with trio.fail_after(WAIT_S):
        assert await write.wait() == (0, 3, False)
    assert events == ["shipped", "quorum"] and p.high_watermark == 3
    gate.error = OSError(errno.EIO, "Input/output error")
    gate.opened.set()
    with trio.fail_after(WAIT_S), pytest.raises(InternalError, match="refuses writes"):
        await p.enqueue_records(*records(1, "late")).wait()
    assert events == ["shipped", "quorum", "fsync failed"]
    assert p.high_watermark == 3 and await keys_of(p) == ["k0", "k1", "k2"]
    await stop(p)


async def test_open_high_watermark_is_what_the_committer_confirms(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    first = await open_pipeline(tmp_path, LocalCommitter(), nursery)
    await first.enqueue_records(*records(3)).wait()
    await first.enqueue_records(*records(2, "tail")).wait()
    await stop(first)
    # The quorum confirms 3 of the 5 offsets on the local log: the tail is not served...
    committer = FollowerVote([], open_at=3)
    committer.follower.set()
    p = await open_pipeline(tmp_path, committer, nursery)
    assert p.high_watermark == 3 and p.log.next_offset == 5
    assert await keys_of(p) == ["k0", "k1", "k2"]
    assert p.resolve(Position.latest()) == 3
    with pytest.raises(InvalidSequenceNumberError):
        p.resolve(Position.at_sequence(make_sequence(0, 4)))
    # ... and cut before the next group, whose offsets follow the confirmed ones.
    with trio.fail_after(WAIT_S):
        assert await p.enqueue_records(*records(1, "new")).wait() == (3, 1, False)
    assert await keys_of(p) == ["k0", "k1", "k2", "new0"]
    await stop(p)
    # The local committer's quorum is the recovered log itself: its end, as before.
    again = await open_pipeline(tmp_path, LocalCommitter(), nursery)
    assert again.high_watermark == 4 == again.log.next_offset
    await stop(again)


async def test_a_committer_confirming_more_than_the_log_holds_fences_the_shard(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    p = await open_pipeline(tmp_path, FollowerVote([], open_at=7), nursery)
    assert p.high_watermark == 0
    with pytest.raises(InternalError, match="confirms offsets up to 7"):
        p.enqueue_records(*records(1))
    await stop(p)


async def test_arrival_times_come_from_the_clock_the_pipeline_is_given(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    clock = VirtualClock(wall_origin_ms=1_700_000_000_000)
    t0 = clock.now_ms()
    p = await open_pipeline(tmp_path, LocalCommitter(), nursery, clock=clock)
    await p.enqueue_records(*records(2)).wait()
    clock.advance_ms(5_000)
    data = batchfmt.encode_batch(*records(1, "client"))
    await p.enqueue_batch(data, batchfmt.parse_header(data)).wait()
    read = await p.read(Position.trim_horizon(), 1 << 20, 0)
    stamps = [
        (h.first_arrival_ms, h.last_arrival_ms) for h in map(batchfmt.parse_header, read.batches)
    ]
    assert stamps == [(t0, t0), (t0 + 5_000, t0 + 5_000)]
    assert read.tip_arrival_ms == t0 + 5_000
    assert p.resolve(Position.at_timestamp(t0 + 1)) == 2
    behind = await p.read(Position.trim_horizon(), 1, 0)  # the first batch only
    assert behind.next_offset == 2 and behind.millis_behind == 5_000
    await stop(p)
