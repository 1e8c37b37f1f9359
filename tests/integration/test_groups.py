"""Consumer groups against a real server, with in-process workers on asyncio and on trio:
balance and completeness, incremental scaling under load, a zombie's fenced checkpoint, the
record-processor style, and a server restart that keeps groups, epochs and checkpoints.

Each worker has its own connection, as separate processes would. Every wait is bounded
(``wait_until``); workers are always shut down by their ``async with``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from streamd.testing import ServerProcess
from streamd_client import Position, connect, group_admin
from streamd_client.errors import ConnectionLostError
from streamd_client.group import Batch, Checkpointer, GroupWorker, RecordProcessor, ShardLease
from streamd_client.group_errors import GroupActiveError, LeaseLostError

pytestmark = pytest.mark.anyio

FAST = {"read_wait_ms": 200, "checkpoint_every_records": 20, "checkpoint_every_s": 0.2}


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks and processes change
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


class Seen:
    """What one worker processed, per (shard, epoch) in the order it saw it."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
        self.data: set[bytes] = set()

    def add(self, batch: Batch) -> None:
        self.offsets[(batch.shard_id, batch.epoch)].extend(r.offset for r in batch.records)
        self.data.update(r.data for r in batch.records)

    def check_order(self) -> None:
        """Within one lease, a shard's records come in order, without gaps or repeats."""
        for key, offsets in self.offsets.items():
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), key


class Running:
    def __init__(self, worker: GroupWorker, seen: Seen) -> None:
        self.worker = worker
        self.seen = seen


async def _consume(
    endpoint: str,
    stream: str,
    name: str,
    seen: Seen,
    *,
    task_status: anyio.abc.TaskStatus[Running],
    **options: Any,
) -> None:
    async with connect(endpoint) as client:
        async with GroupWorker(client, stream, "g", member_id=name, **{**FAST, **options}) as w:
            task_status.started(Running(w, seen))
            async for batch in w:
                seen.add(batch)


@asynccontextmanager
async def workers_running(endpoint: str, stream: str) -> AsyncIterator[Callable[..., Any]]:
    """Yields ``start(name, **options) -> Running``; every worker stops gracefully on exit."""
    async with anyio.create_task_group() as task_group:
        running: list[Running] = []

        async def start(name: str, **options: Any) -> Running:
            handle: Running = await task_group.start(
                lambda task_status: _consume(
                    endpoint, stream, name, Seen(), task_status=task_status, **options
                )
            )
            running.append(handle)
            return handle

        try:
            yield start
        finally:
            for handle in running:
                handle.worker.request_shutdown()


async def _produce(client: Any, stream: str, first: int, count: int) -> set[bytes]:
    data = [f"r{i:07d}".encode() for i in range(first, first + count)]
    for i in range(0, count, 400):
        chunk = data[i : i + 400]
        result = await client.put_records(stream, [(d, d.decode()) for d in chunk])
        assert result.failed_count == 0
    return set(data)


async def _retrying(call: Callable[[], Any], attempts: int = 5) -> Any:
    """A call that may meet the connection a restart broke (the next attempt reconnects)."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except ConnectionLostError:
            await anyio.sleep(0.1)
    return await call()


async def _epochs(client: Any, stream: str) -> dict[str, tuple[str | None, int]]:
    view = await group_admin.describe_group(client, stream, "g")
    return {s["shard_id"]: (s["owner"], s["epoch"]) for s in view["shards"]}


async def test_three_workers_on_eight_shards_are_balanced_and_see_every_record(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 8)
        expected = await _produce(client, stream_name, 0, 800)
        async with workers_running(endpoint, stream_name) as start:
            handles = [await start(f"w{i}") for i in range(3)]

            def balanced() -> bool:
                counts = sorted(len(h.worker.assignment()) for h in handles)
                return counts == [2, 3, 3]

            await wait_until(balanced, 10, "3 workers hold 2, 3 and 3 shards")
            seen = lambda: set().union(*(h.seen.data for h in handles))  # noqa: E731
            await wait_until(lambda: seen() >= expected, 10, "every record was processed")
            owners = await _epochs(client, stream_name)
            assert {o for o, _ in owners.values()} == {"w0", "w1", "w2"}
        for h in handles:
            h.seen.check_order()
        view = await group_admin.describe_group(client, stream_name, "g")
        assert view["state"] == "EMPTY"  # every worker left on the way out
        assert all(s["lag_records"] == 0 for s in view["shards"])


async def test_scale_one_to_four_to_two_moves_only_what_balance_needs(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 8)
        produced: set[bytes] = set()
        stop_producing = anyio.Event()

        async def producer() -> None:
            first = 0
            while not stop_producing.is_set():
                produced.update(await _produce(client, stream_name, first, 40))
                first += 40
                await anyio.sleep(0.02)

        async with (
            anyio.create_task_group() as load,
            workers_running(endpoint, stream_name) as start,
        ):
            load.start_soon(producer)
            a = await start("a")
            await wait_until(lambda: len(a.worker.assignment()) == 8, 5, "a holds all 8")
            before = await _epochs(client, stream_name)
            assert all(epoch == 1 for _, epoch in before.values())

            others: list[Running] = []
            async with anyio.create_task_group() as joining:  # the three join together

                async def join(name: str) -> None:
                    others.append(await start(name))

                for name in ("b", "c", "d"):
                    joining.start_soon(join, name)
            four = [a, *others]
            await wait_until(
                lambda: [len(h.worker.assignment()) for h in four] == [2, 2, 2, 2],
                10,
                "4 workers hold 2 shards each",
            )
            middle = await _epochs(client, stream_name)
            kept = [s for s, (owner, _) in middle.items() if owner == "a"]
            assert len(kept) == 2 and all(middle[s][1] == 1 for s in kept)  # a's never moved
            # Each other shard moved once; twice only if a join landed after a's release.
            assert 6 <= sum(e for _, e in middle.values()) - 8 <= 8

            for h in four:
                if h.worker.member_id in ("c", "d"):
                    h.worker.request_shutdown()
            b = next(h for h in others if h.worker.member_id == "b")
            await wait_until(
                lambda: [len(h.worker.assignment()) for h in (a, b)] == [4, 4],
                10,
                "a and b hold 4 shards each",
            )
            after = await _epochs(client, stream_name)
            for shard_id, (owner, epoch) in middle.items():
                if owner in ("a", "b"):
                    assert after[shard_id] == (owner, epoch), shard_id  # stayed put
                else:
                    assert after[shard_id][1] == epoch + 1, shard_id  # moved exactly once
            stop_producing.set()
            await wait_until(
                lambda: set().union(*(h.seen.data for h in four)) >= produced,
                10,
                "every produced record was processed",
            )
        for h in four:
            h.seen.check_order()


async def test_a_zombie_workers_checkpoint_is_refused_with_a_typed_error(
    endpoint: str, stream_name: str
) -> None:
    """The zombie is a real worker whose whole event loop stops (a stop-the-world pause) in
    another thread: its heartbeats stop, its session expires, another worker takes its shards;
    when it wakes up its checkpoint is fenced with LeaseLostError."""
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2)
        expected = await _produce(client, stream_name, 0, 200)
    state: dict[str, Any] = {"frozen": threading.Event()}

    class Freezer(RecordProcessor):
        async def process_records(self, batch: Batch) -> None:
            if state["frozen"].is_set():
                return
            state["frozen"].set()
            time.sleep(2.0)  # noqa: ASYNC251 - the point: freeze its whole event loop
            try:
                await batch.checkpoint()
            except LeaseLostError as exc:
                state["error"] = exc
                raise

    def zombie() -> None:
        async def main() -> None:
            async with connect(endpoint) as zombie_client:
                async with GroupWorker(
                    zombie_client,
                    stream_name,
                    "g",
                    processor=lambda lease: Freezer(),
                    member_id="zombie",
                    session_timeout_ms=800,
                    shutdown_timeout_s=2,
                    **FAST,
                ) as w:
                    with anyio.move_on_after(6):
                        while "error" not in state:  # noqa: ASYNC110 - set by another task
                            await anyio.sleep(0.05)
                    w.request_shutdown()

        anyio.run(main)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(anyio.to_thread.run_sync, zombie)
        await wait_until(state["frozen"].is_set, 5, "the zombie froze")
        async with workers_running(endpoint, stream_name) as start:
            live = await start("live")
            await wait_until(lambda: len(live.worker.assignment()) == 2, 5, "live holds both")
            await wait_until(lambda: "error" in state, 6, "the zombie tried to checkpoint")
            await wait_until(lambda: live.seen.data >= expected, 5, "live processed everything")
    error = state["error"]
    assert isinstance(error, LeaseLostError) and error.code == "LEASE_LOST"
    assert error.details["current_epoch"] > error.details["epoch"]


async def test_raw_zombie_checkpoint_after_expiry_is_fenced(
    endpoint: str, stream_name: str
) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 1)
        await _produce(client, stream_name, 0, 5)
        page = await client.read(stream_name, "shardId-000000000000", Position.trim_horizon())
        answer = await group_admin.join(
            client,
            stream_name,
            "g",
            "paused",
            client_info="test",
            initial=Position.trim_horizon(),
            session_timeout_ms=300,
            rebalance_timeout_ms=30_000,
        )
        (grant,) = answer.assignment
        await anyio.sleep(0.4)  # paused past its session
        with pytest.raises(LeaseLostError) as info:
            await group_admin.checkpoint(
                client,
                stream_name,
                "g",
                "paused",
                grant.shard_id,
                grant.epoch,
                page.records[-1].sequence_number,
            )
        assert info.value.details["owner"] is None and info.value.details["epoch"] == 1


async def test_record_processor_style_with_manual_checkpoints_and_shutdown(
    endpoint: str, stream_name: str
) -> None:
    calls: list[tuple[str, str]] = []

    class Processor(RecordProcessor):
        def __init__(self, lease: ShardLease) -> None:
            self.shard_id = lease.shard_id
            self.count = 0

        async def initialize(self, lease: ShardLease) -> None:
            calls.append(("initialize", lease.shard_id))

        async def process_records(self, batch: Batch) -> None:
            self.count += len(batch.records)
            await anyio.sleep(0.01)  # slow processing: heartbeats must not starve

        async def shutdown_requested(self, checkpointer: Checkpointer) -> None:
            calls.append(("shutdown_requested", self.shard_id))
            await checkpointer.checkpoint()  # everything handed over so far

    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2)
        await _produce(client, stream_name, 0, 300)
        async with GroupWorker(
            client, stream_name, "g", processor=Processor, read_wait_ms=100, batch_records_max=7
        ) as worker:
            await wait_until(lambda: worker.records_processed >= 300, 10, "300 processed")
            worker.request_shutdown()
            await worker.run()
        assert sorted(calls) == sorted(
            [
                (k, s)
                for s in ("shardId-000000000000", "shardId-000000000001")
                for k in ("initialize", "shutdown_requested")
            ]
        )
        view = await group_admin.describe_group(client, stream_name, "g")
        assert [s["lag_records"] for s in view["shards"]] == [0, 0]
        with pytest.raises(GroupActiveError):  # a member is back: reset needs force
            async with GroupWorker(client, stream_name, "g", processor=Processor):
                await group_admin.reset_group(client, stream_name, "g", Position.trim_horizon())
        await group_admin.reset_group(client, stream_name, "g", Position.trim_horizon())
        view = await group_admin.describe_group(client, stream_name, "g")
        assert sum(s["lag_records"] for s in view["shards"]) == 300
        assert [g["group"] for g in await group_admin.list_groups(client, stream_name)] == ["g"]


async def test_server_restart_keeps_groups_epochs_and_checkpoints(
    fresh_server: ServerProcess, stream_name: str
) -> None:
    endpoint = fresh_server.endpoint
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 4)
        expected = await _produce(client, stream_name, 0, 400)
        async with workers_running(endpoint, stream_name) as start:
            handles = [await start("w0"), await start("w1")]
            everything = lambda: set().union(*(h.seen.data for h in handles))  # noqa: E731
            await wait_until(lambda: everything() >= expected, 10, "first 400 processed")
            await wait_until(
                lambda: sorted(len(h.worker.assignment()) for h in handles) == [2, 2], 5, "2+2"
            )
            await anyio.sleep(0.5)  # let the last automatic checkpoints land
            before = await group_admin.describe_group(client, stream_name, "g")
            fresh_server.kill9()
            fresh_server.restart()
            after = await _retrying(lambda: group_admin.describe_group(client, stream_name, "g"))
            strip = lambda view: [  # noqa: E731
                (s["shard_id"], s["owner"], s["epoch"], s["checkpoint"]) for s in view["shards"]
            ]
            assert strip(after) == strip(before)
            assert after["created_ms"] == before["created_ms"]
            expected |= await _produce(client, stream_name, 400, 400)
            await wait_until(lambda: everything() >= expected, 10, "the next 400 processed")
            final = await _epochs(client, stream_name)
            assert all(
                final[s][1] >= e for s, (_, e) in (await _epochs(client, stream_name)).items()
            )
        for h in handles:
            h.seen.check_order()
