"""The group worker library against an in-memory fake client whose group calls go to a real
Coordinator and whose shards are lists of records: resharding lineage (SHARD_END before
children), lease loss, processor failures, heartbeats during slow processing. On asyncio and
on trio. (The real server is in tests/integration/test_groups*.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from streamd.groups import SHARD_END, Coordinator, GroupDoc, ShardInfo
from streamd_client.errors import CoordinatorUnavailableError, InvalidArgumentError
from streamd_client.group import Batch, Checkpointer, GroupWorker, RecordProcessor, ShardLease
from streamd_client.model import Position, make_sequence, parse_sequence, shard_id_of
from streamd_client.results import ReadResult, Record

pytestmark = pytest.mark.anyio

P0, C1, C2 = shard_id_of(0), shard_id_of(1), shard_id_of(2)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def _records(shard_id: str, count: int) -> list[Record]:
    index = int(shard_id[-12:])
    return [
        Record(shard_id, make_sequence(index, i), f"k{i}", f"{shard_id}:{i}".encode(), 0, i)
        for i in range(count)
    ]


class FakeClient:
    """Just what GroupWorker uses: ``call`` (group ops) and ``read``."""

    def __init__(self, topology: list[ShardInfo], records: dict[str, int]) -> None:
        doc = GroupDoc("s", "sid", "g", 0, Position.trim_horizon().to_wire())
        self.coordinator = Coordinator(doc, {}, topology, now_ms=self.now_ms())
        self.shards = {s: _records(s, n) for s, n in records.items()}
        self.closed = {info.shard_id for info in topology if info.closed}
        self.reads: list[tuple[str, int]] = []
        self.fail_heartbeats = False
        self.unavailable: dict[str, int] = {}  # op -> how many more calls answer it

    @staticmethod
    def now_ms() -> int:
        return time.monotonic_ns() // 1_000_000

    async def call(self, op: str, args: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        await anyio.lowlevel.checkpoint()
        if self.unavailable.get(op, 0) > 0:  # a cluster moving the group's coordinator
            self.unavailable[op] -= 1
            raise CoordinatorUnavailableError(f"{op}: the coordinator is moving; retry")
        c, now, member = self.coordinator, self.now_ms(), args.get("member_id", "")
        owned = [tuple(o) for o in args.get("owned", [])]
        if op == "group_join":
            return c.join(
                member,
                now,
                session_timeout_ms=args["session_timeout_ms"],
                rebalance_timeout_ms=args["rebalance_timeout_ms"],
            ).to_wire()
        if op == "group_heartbeat":
            return c.heartbeat(member, now, owned).to_wire()  # type: ignore[arg-type]
        if op == "group_leave":
            c.leave(member, now)
            return {}
        if op == "group_checkpoint":
            args = dict(args)
            c.checkpoint(member, args["shard_id"], args["epoch"], args["sequence"], now)
            return {}
        raise AssertionError(op)

    async def read(
        self,
        stream: str,
        shard_id: str,
        position: Position,
        *,
        max_bytes: int,
        wait_ms: int,
        limit: int | None,
    ) -> ReadResult:
        records = self.shards[shard_id]
        if position.kind == "trim_horizon":
            offset = 0
        elif position.kind == "at_offset":
            assert position.offset is not None
            offset = position.offset
        else:
            assert position.kind == "after_sequence"
            offset = parse_sequence(position.sequence)[1] + 1
        page = records[offset : offset + (limit or 5)]
        self.reads.append((shard_id, offset))
        if not page:
            await anyio.sleep(min(wait_ms, 20) / 1000)
        end = offset + len(page)
        shard_end = shard_id in self.closed and end >= len(records)  # as the server says it
        return ReadResult(page, Position.at_offset(end), 0, len(records), shard_end)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks change
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


def _worker(client: FakeClient, **options: Any) -> GroupWorker:
    return GroupWorker(client, "s", "g", read_wait_ms=20, **options)  # type: ignore[arg-type]


async def test_children_start_only_after_their_parent_reached_shard_end() -> None:
    topology = [ShardInfo(P0, closed=True), ShardInfo(C1, (P0,)), ShardInfo(C2, (P0,))]
    client = FakeClient(topology, {P0: 12, C1: 6, C2: 6})
    order: list[str] = []
    async with _worker(client, checkpoint_every_records=5) as worker:
        async for batch in worker:
            order.extend(f"{r.shard_id}:{r.offset}" for r in batch.records)
            if batch.shard_end:
                order.append(f"{batch.shard_id}:END")
            if len(order) == 12 + 1 + 12:
                break
    parent_end = order.index(f"{P0}:END")
    assert parent_end == 12 and all(o.startswith(P0) for o in order[:parent_end])
    assert client.coordinator.checkpoints[P0].sequence == SHARD_END
    assert client.coordinator.shard_status(P0) == "FINISHED"


async def test_processor_style_shard_end_is_checkpointed_after_shard_ended() -> None:
    events: list[str] = []

    class Processor(RecordProcessor):
        def __init__(self, lease: ShardLease) -> None:
            self.shard_id = lease.shard_id

        async def process_records(self, batch: Batch) -> None:
            events.append(f"records {self.shard_id} {len(batch.records)}")

        async def shard_ended(self, checkpointer: Checkpointer) -> None:
            events.append(f"ended {self.shard_id}")

    client = FakeClient([ShardInfo(P0, closed=True), ShardInfo(C1, (P0,))], {P0: 3, C1: 2})
    async with _worker(client, processor=Processor) as worker:
        await wait_until(lambda: f"records {C1} 2" in events, 5, "the child is processed")
        worker.request_shutdown()
    assert events[:2] == [f"records {P0} 3", f"ended {P0}"]
    assert client.coordinator.is_finished(P0)


async def test_a_fenced_lease_is_lost_and_granted_again_from_the_checkpoint() -> None:
    lost: list[str] = []
    starts: list[tuple[str, int, str]] = []

    class Processor(RecordProcessor):
        def __init__(self, lease: ShardLease) -> None:
            starts.append((lease.shard_id, lease.epoch, lease.start.kind))

        async def process_records(self, batch: Batch) -> None:
            await batch.checkpoint()

        async def lease_lost(self) -> None:
            lost.append("lost")

    client = FakeClient([ShardInfo(P0)], {P0: 4})
    async with _worker(client, processor=Processor) as worker:
        await wait_until(lambda: client.coordinator.checkpoints.get(P0) is not None, 5, "cp")
        client.coordinator.reset(Position.trim_horizon().to_wire(), {}, client.now_ms(), force=True)
        await wait_until(lambda: worker.assignment() == {P0: 2}, 5, "the epoch-2 lease")
        worker.request_shutdown()
    assert lost == ["lost"]
    assert starts[0] == (P0, 1, "trim_horizon") and starts[1] == (P0, 2, "trim_horizon")


async def test_a_processor_exception_stops_the_worker_and_is_raised() -> None:
    class Broken(RecordProcessor):
        async def process_records(self, batch: Batch) -> None:
            raise ValueError("poison record")

    client = FakeClient([ShardInfo(P0)], {P0: 4})
    with pytest.raises(ValueError, match="poison"):
        async with _worker(client, processor=lambda lease: Broken()) as worker:
            with anyio.fail_after(5):
                await worker.run()
    assert client.coordinator.members == {}  # it left on the way out
    assert P0 not in client.coordinator.checkpoints


async def test_slow_processing_does_not_starve_heartbeats() -> None:
    class Slow(RecordProcessor):
        async def process_records(self, batch: Batch) -> None:
            await anyio.sleep(1.0)  # longer than the 300 ms session timeout

    client = FakeClient([ShardInfo(P0)], {P0: 3})
    async with _worker(client, processor=lambda lease: Slow(), session_timeout_ms=300) as worker:
        await anyio.sleep(1.2)
        assert worker.member_id in client.coordinator.members
        assert client.coordinator.leases[P0].epoch == 1
        worker.request_shutdown()


async def test_graceful_shutdown_checkpoints_what_the_loop_finished() -> None:
    client = FakeClient([ShardInfo(P0)], {P0: 10})
    seen = 0
    async with _worker(client, batch_records_max=4, checkpoint_every_records=100) as worker:
        async for batch in worker:
            seen += len(batch.records)
            if seen >= 8:
                worker.request_shutdown()  # this batch is done: the loop asks for the next one
    checkpoint = client.coordinator.checkpoints[P0]
    assert parse_sequence(checkpoint.sequence)[1] == 7


def test_options_are_checked() -> None:
    client: Any = object()
    for bad in (
        {"checkpoint_every_records": 0},
        {"checkpoint_every_s": 0},
        {"read_wait_ms": -1},
        {"batch_records_max": 0},
        {"initial": Position.at_offset(3)},
    ):
        with pytest.raises(InvalidArgumentError, match=r"must|starts"):
            GroupWorker(client, "s", "g", **bad)


async def test_a_shard_forgotten_past_retention_ends_its_lease_not_the_worker() -> None:
    """The group fell a whole retention period behind on a closed parent: the server forgot
    it (SHARD_NOT_FOUND). The lease ends, the worker goes on, and the child is processed."""
    from streamd_client.errors import ShardNotFoundError

    class ExpiringClient(FakeClient):
        async def read(self, stream: str, shard_id: str, position: Position, **kw: Any) -> Any:
            if shard_id == P0:
                child = [info for info in self.coordinator.shards.values() if info.shard_id != P0]
                self.coordinator.sync_shards(child, {}, self.now_ms())  # as retention does
                raise ShardNotFoundError(f"stream s has no shard {P0}", shard_id=P0)
            return await super().read(stream, shard_id, position, **kw)

    lost: list[str] = []
    seen: list[str] = []

    class Processor(RecordProcessor):
        def __init__(self, lease: ShardLease) -> None:
            self.shard_id = lease.shard_id

        async def process_records(self, batch: Batch) -> None:
            seen.extend(r.shard_id for r in batch.records)

        async def lease_lost(self) -> None:
            lost.append(self.shard_id)

    client = ExpiringClient([ShardInfo(P0, closed=True), ShardInfo(C1, (P0,))], {P0: 3, C1: 2})
    async with _worker(client, processor=Processor) as worker:
        await wait_until(lambda: seen.count(C1) == 2, 5, "the child is processed")
        await wait_until(lambda: P0 not in client.coordinator.leases, 5, "P0's lease is gone")
        worker.request_shutdown()
    assert lost == [P0] and P0 not in seen


async def test_joining_retries_while_the_coordinator_is_unavailable() -> None:
    client = FakeClient([ShardInfo(P0)], {P0: 3})
    client.unavailable["group_join"] = 4
    async with _worker(client) as worker:
        await wait_until(lambda: worker.assignment() != {}, 5, "a lease")
    assert client.unavailable["group_join"] == 0


async def test_joining_gives_up_after_join_timeout_s() -> None:
    client = FakeClient([ShardInfo(P0)], {P0: 3})
    client.unavailable["group_join"] = 10_000
    started = anyio.current_time()
    with pytest.raises(CoordinatorUnavailableError):
        async with _worker(client, join_timeout_s=0.3):
            raise AssertionError("joined")
    assert anyio.current_time() - started < 2


async def test_a_checkpoint_rides_out_a_coordinator_move_longer_than_five_attempts() -> None:
    client = FakeClient([ShardInfo(P0)], {P0: 4})
    async with _worker(client) as worker:
        async for batch in worker:
            client.unavailable["group_checkpoint"] = 8  # more than the old 5-attempt limit
            await batch.checkpoint()
            break
    assert client.unavailable["group_checkpoint"] == 0
    assert parse_sequence(client.coordinator.checkpoints[P0].sequence)[1] == 3
