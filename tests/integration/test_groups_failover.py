"""Consumer-group failover with real worker processes (``streamd group consume --json``) under
load: kill -9 of one worker moves its shards to the survivors within session timeout + one
heartbeat, they resume exactly after the dead worker's last checkpoint (nothing skipped;
duplicates only from the window it had not checkpointed), and a graceful stop (SIGTERM) hands
its shards over at once. The measured times are printed (``pytest -s``) and asserted loosely.

The workers are separate processes because kill -9 is only honest against a process. They are
killed in ``finally`` whatever happens; every wait has a timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from streamd_client import connect, group_admin
from streamd_client.model import parse_sequence

pytestmark = pytest.mark.anyio

SESSION_MS = 3_000
HEARTBEAT_MS = 500
SLACK_S = 1.0  # scheduling, process start-up noise on a loaded 2-core machine


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the workers under test are subprocesses; the test's loop hardly matters


class WorkerProcess:
    """One ``streamd group consume --json`` process and the records it printed."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.records: list[dict[str, Any]] = []
        self.first_seen_s: dict[tuple[str, int], float] = {}  # (shard, epoch) -> when

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_lines(self) -> None:
        assert self.process.stdout is not None
        reader = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await reader.receive_until(b"\n", 1 << 20)
                record = json.loads(line)
                key = (record["shard_id"], record["lease_epoch"])
                self.first_seen_s.setdefault(key, time.monotonic())
                self.records.append(record)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            return

    def offsets(self, shard_id: str) -> list[int]:
        return [_offset(r) for r in self.records if r["shard_id"] == shard_id]


def _offset(record: dict[str, Any]) -> int:
    return parse_sequence(record["sequence_number"])[1]


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks and processes change
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


async def _start_worker(
    endpoint: str, stream: str, task_group: anyio.abc.TaskGroup
) -> WorkerProcess:
    command = [
        sys.executable, "-m", "streamd", "group", "consume", stream, "g", "--json",
        "--checkpoint-every", "10", "--checkpoint-interval-s", "0.2",
        "--session-timeout-ms", str(SESSION_MS), "--endpoint", endpoint,
    ]  # fmt: skip
    process = await anyio.open_process(command, stderr=subprocess.DEVNULL)
    worker = WorkerProcess(process)
    task_group.start_soon(worker.read_lines)
    return worker


async def _stop(worker: WorkerProcess, signum: int = signal.SIGKILL) -> None:
    if worker.process.returncode is None:
        worker.process.send_signal(signum)
    with anyio.move_on_after(15):
        await worker.process.wait()
        return
    worker.process.kill()
    with anyio.move_on_after(5):
        await worker.process.wait()


async def test_kill9_and_graceful_stop_move_shards_fast_and_skip_nothing(
    endpoint: str, stream_name: str
) -> None:
    produced: list[bytes] = []
    workers: list[WorkerProcess] = []
    async with connect(endpoint) as client, anyio.create_task_group() as task_group:
        await client.create_stream(stream_name, 8)
        stop_producing = anyio.Event()

        async def producer() -> None:
            n = 0
            while not stop_producing.is_set():
                batch = [f"r{i:07d}".encode() for i in range(n, n + 16)]
                result = await client.put_records(stream_name, [(d, d.decode()) for d in batch])
                assert result.failed_count == 0
                produced.extend(batch)
                n += 16
                await anyio.sleep(0.01)

        async def owners() -> dict[str, tuple[str | None, int, str | None]]:
            view = await group_admin.describe_group(client, stream_name, "g")
            return {
                s["shard_id"]: (s["owner"], s["epoch"], s["checkpoint"]) for s in view["shards"]
            }

        async def members() -> dict[int, str]:
            view = await group_admin.describe_group(client, stream_name, "g")
            return {int(m["client"].rsplit("/", 1)[1]): m["member_id"] for m in view["members"]}

        try:
            task_group.start_soon(producer)
            for _ in range(3):
                workers.append(await _start_worker(endpoint, stream_name, task_group))
            await wait_until(lambda: any(w.records for w in workers), 10, "a worker prints")
            balanced = False
            with anyio.move_on_after(20):
                while not balanced:
                    await anyio.sleep(0.1)
                    by_member = defaultdict(int)
                    for owner, _, _ in (await owners()).values():
                        by_member[owner] += 1
                    balanced = sorted(by_member.values()) == [2, 3, 3] and None not in by_member
            assert balanced, "3 workers never balanced 2/3/3"
            await wait_until(lambda: all(w.records for w in workers), 10, "all workers print")

            # -- kill -9 one worker under load --------------------------------------------------
            victim, survivors = workers[0], workers[1:]
            victim_member = (await members())[victim.pid]
            killed_s = time.monotonic()
            await _stop(victim, signal.SIGKILL)
            at_kill = await owners()  # the dead worker can no longer move its checkpoints
            moved = {s: c for s, (o, _, c) in at_kill.items() if o == victim_member}
            assert moved

            async def moved_elsewhere() -> float:
                while True:
                    now = await owners()
                    if all(now[s][0] not in (None, victim_member) for s in moved):
                        return time.monotonic()
                    await anyio.sleep(0.02)

            with anyio.fail_after(SESSION_MS / 1000 + 5):
                regranted_s = await moved_elsewhere()
            after_kill = await owners()
            keys = [(s, after_kill[s][1]) for s in moved]

            def first_seen(key: tuple[str, int]) -> float | None:
                return next((w.first_seen_s[key] for w in survivors if key in w.first_seen_s), None)

            await wait_until(
                lambda: all(first_seen(k) is not None for k in keys), 5, "moved shards resume"
            )
            failover_s = regranted_s - killed_s
            resumed_s = max(first_seen(k) or 0.0 for k in keys) - killed_s
            print(
                f"\nkill -9: leases regranted after {failover_s * 1000:.0f} ms, "
                f"records processed again after {resumed_s * 1000:.0f} ms"
            )
            assert failover_s <= (SESSION_MS + HEARTBEAT_MS) / 1000 + SLACK_S

            # -- graceful stop of a second worker -----------------------------------------------
            leaving, _ = survivors
            leaving_member = (await members())[leaving.pid]
            its_shards = [s for s, (o, _, _) in (await owners()).items() if o == leaving_member]
            stopped_s = time.monotonic()
            await _stop(leaving, signal.SIGTERM)
            assert leaving.process.returncode == 0

            async def handed_over() -> float:
                while True:
                    now = await owners()
                    if all(now[s][0] not in (None, leaving_member) for s in its_shards):
                        return time.monotonic()
                    await anyio.sleep(0.01)

            with anyio.fail_after(5):
                handover_s = await handed_over() - stopped_s
            print(f"graceful stop (SIGTERM): leases regranted after {handover_s * 1000:.0f} ms")
            assert handover_s <= HEARTBEAT_MS / 1000 + SLACK_S + 1.0

            await anyio.sleep(0.3)
            stop_producing.set()
            everything = lambda: {r["data"].encode() for w in workers for r in w.records}  # noqa: E731
            await wait_until(lambda: everything() >= set(produced), 15, "all records printed")
        finally:
            stop_producing.set()
            for worker in workers:
                await _stop(worker)
            task_group.cancel_scope.cancel()

    # -- at-least-once, nothing skipped -------------------------------------------------------
    for shard_id, checkpoint in moved.items():
        resumed_at = 0 if checkpoint is None else parse_sequence(checkpoint)[1] + 1
        new_epoch = after_kill[shard_id][1]
        firsts = [
            _offset(r)
            for w in survivors
            for r in w.records
            if r["shard_id"] == shard_id and r["lease_epoch"] == new_epoch
        ]
        assert firsts and firsts[0] == resumed_at, (shard_id, firsts[:3], resumed_at)
        duplicates = [o for o in victim.offsets(shard_id) if o >= resumed_at]
        print(f"{shard_id}: resumed at {resumed_at}, {len(duplicates)} records processed twice")
    for shard_id in {r["shard_id"] for w in workers for r in w.records}:
        offsets = sorted({o for w in workers for o in w.offsets(shard_id)})
        assert offsets == list(range(len(offsets))), f"{shard_id} has a gap"


async def _cli(endpoint: str, *args: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "streamd", "group", *args, "--endpoint", endpoint]
    with anyio.fail_after(30):
        done = await anyio.run_process(command, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_group_commands(endpoint: str, stream_name: str) -> None:
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2)
        await client.put_records(stream_name, [(f"v{i}".encode(), f"k{i}") for i in range(10)])
    code, out, _ = await _cli(endpoint, "consume", stream_name, "g", "--json", "--limit", "10")
    assert code == 0
    printed = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["data"] for r in printed) == sorted(f"v{i}" for i in range(10))
    assert all(r["lease_epoch"] >= 1 and "sequence_number" in r for r in printed)

    code, out, _ = await _cli(endpoint, "list", stream_name, "--json")
    assert code == 0 and [g["group"] for g in json.loads(out)] == ["g"]
    code, out, _ = await _cli(endpoint, "describe", stream_name, "g", "--json")
    view = json.loads(out)
    assert code == 0 and view["state"] == "EMPTY"
    assert sum(s["lag_records"] for s in view["shards"]) == 0
    code, out, _ = await _cli(endpoint, "describe", stream_name, "g")
    assert code == 0 and "shardId-000000000000" in out

    code, _, _ = await _cli(endpoint, "reset", stream_name, "g", "--to", "trim-horizon")
    assert code == 0
    code, out, _ = await _cli(endpoint, "describe", stream_name, "g", "--json")
    assert sum(s["lag_records"] for s in json.loads(out)["shards"]) == 10

    code, _, err = await _cli(endpoint, "reset", stream_name, "g", "--to", "yesterday")
    assert code == 1 and "expected trim-horizon" in err
    code, _, err = await _cli(endpoint, "describe", stream_name, "nope")
    assert code == 1 and "GROUP_NOT_FOUND" in err
    code, _, _ = await _cli(endpoint, "delete", stream_name, "g")
    assert code == 0


@pytest.mark.slow
async def test_rounds_of_kill9_and_replacement_under_load_lose_nothing(
    endpoint: str, stream_name: str
) -> None:
    """Six rounds: kill -9 a random worker of four, start a replacement, keep producing. In the
    end every acknowledged record was printed, each lease saw its shard in order from where the
    previous one's checkpoint left off, and no shard has a gap."""
    import random

    rng = random.Random(20240501)
    produced: list[bytes] = []
    workers: list[WorkerProcess] = []
    alive: list[WorkerProcess] = []
    async with connect(endpoint) as client, anyio.create_task_group() as task_group:
        await client.create_stream(stream_name, 8)
        stop_producing = anyio.Event()

        async def producer() -> None:
            n = 0
            while not stop_producing.is_set():
                batch = [f"r{i:07d}".encode() for i in range(n, n + 16)]
                result = await client.put_records(stream_name, [(d, d.decode()) for d in batch])
                assert result.failed_count == 0
                produced.extend(batch)
                n += 16
                await anyio.sleep(0.01)

        try:
            task_group.start_soon(producer)
            for _ in range(4):
                worker = await _start_worker(endpoint, stream_name, task_group)
                workers.append(worker)
                alive.append(worker)
            for _ in range(6):
                await anyio.sleep(rng.uniform(1.0, 2.5))
                victim = alive.pop(rng.randrange(len(alive)))
                await _stop(victim, signal.SIGKILL)
                worker = await _start_worker(endpoint, stream_name, task_group)
                workers.append(worker)
                alive.append(worker)
            await anyio.sleep(SESSION_MS / 1000 + 1)
            stop_producing.set()
            everything = lambda: {r["data"].encode() for w in workers for r in w.records}  # noqa: E731
            await wait_until(lambda: everything() >= set(produced), 30, "all records printed")
        finally:
            stop_producing.set()
            for worker in workers:
                await _stop(worker)
            task_group.cancel_scope.cancel()

    for shard_id in {r["shard_id"] for w in workers for r in w.records}:
        offsets = sorted({o for w in workers for o in w.offsets(shard_id)})
        assert offsets == list(range(len(offsets))), f"{shard_id} has a gap"
        for worker in workers:
            by_epoch: dict[int, list[int]] = defaultdict(list)
            for r in worker.records:
                if r["shard_id"] == shard_id:
                    by_epoch[r["lease_epoch"]].append(_offset(r))
            for epoch, seen in by_epoch.items():
                assert seen == list(range(seen[0], seen[0] + len(seen))), (shard_id, epoch)
