"""kill -9 of the server in the middle of a resize, under write load, then restart.

A resize is many single splits/merges, each one atomic (one compare-and-swap closes the parents
and adds the children) and the intent (status UPDATING, target, progress) is stored first. So a
crash at any moment leaves the stream at a whole step, and the restarted server resumes the
resize. Checked here, through a real process killed with SIGKILL:

- the restarted server says it resumes (``reshard.resuming`` in its log) and the stream ends
  ACTIVE at the target's even ranges, its map consistent (open shards tile the hash space,
  parents closed, children cover their parents);
- no acknowledged record is lost, moved, duplicated or reordered per key: every shard is read
  from the trim horizon and checked with the history checker (streamd.testing.history).

The default run kills once; ``--slow`` kills several times at random points of several resizes.
"""

from __future__ import annotations

import random

import anyio
import pytest

from streamd.testing import ServerProcess
from streamd.testing.history import History, Seen, check, make_data
from streamd_client import Position, connect
from streamd_client.errors import StreamdError
from streamd_client.model import even_hash_ranges

from .test_reshard_ops import assert_consistent

KEYS = [f"key-{i}" for i in range(40)]


async def write_load(endpoint: str, stream: str, history: History, stop: anyio.Event) -> None:
    """put_records rounds (one record per key), each record's fate in the history; failures
    (the server is down) are recorded and the next round tries again."""
    counter = 0
    async with connect(endpoint, request_timeout_s=5) as client:
        while not stop.is_set():
            entries = []
            for key in KEYS:
                data = make_data(key, counter, 64)
                history.record_sent(key, counter, data)
                entries.append((data, key))
            try:
                answer = await client.put_records(stream, entries)
            except StreamdError as exc:
                for key in KEYS:
                    history.record_failure(key, counter, exc.code)
                await anyio.sleep(0.05)
            else:
                for key, result in zip(KEYS, answer.results, strict=True):
                    if hasattr(result, "sequence_number"):
                        history.record_ack(key, counter, result.shard_id, result.sequence_number)
                    else:
                        history.record_failure(key, counter, result.code)
            counter += 1
            await anyio.sleep(0.005)


async def kill_mid_resize(
    server: ServerProcess, stream: str, target: int, kill_after_steps: int
) -> None:
    """Start a resize, SIGKILL the server once ``kill_after_steps`` steps are done (and the
    resize is not finished), restart it. Asserts the kill really landed mid-resize."""
    async with connect(server.endpoint) as admin:
        total = await admin.resize_stream(stream, target)
        assert total > kill_after_steps
        with anyio.fail_after(20):
            while True:
                description = await admin.describe_stream(stream)
                assert description.status == "UPDATING", "the resize ended before the kill"
                assert description.reshard is not None
                if description.reshard.done >= kill_after_steps:
                    break
                await anyio.sleep(0.005)
    log_before = len(server.log_text())
    server.kill9()
    server.restart()
    with anyio.fail_after(30):
        while '"reshard.resuming"' not in server.log_text()[log_before:]:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def read_everything(endpoint: str, stream: str) -> dict[str, list[Seen]]:
    found: dict[str, list[Seen]] = {}
    async with connect(endpoint) as client:
        for shard in (await client.describe_stream(stream)).shards:
            reader = client.reader(stream, shard.shard_id, Position.trim_horizon())
            found[shard.shard_id] = [
                Seen(r.shard_id, r.sequence_number, r.partition_key, r.data) async for r in reader
            ]
    return found


async def crash_rounds(server: ServerProcess, stream: str, plan: list[tuple[int, int]]) -> None:
    """``plan``: (target shard count, steps done before the kill) per round."""
    history = History()
    stop = anyio.Event()
    async with connect(server.endpoint) as admin:
        await admin.create_stream(stream, 32)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(write_load, server.endpoint, stream, history, stop)
        for target, kill_after_steps in plan:
            await anyio.sleep(0.3)  # some acknowledged load before the kill
            await kill_mid_resize(server, stream, target, kill_after_steps)
            async with connect(server.endpoint) as admin:
                final = await admin.wait_for_active(stream, 60)
            assert final.reshard is None
            assert [(s.hash_key_start, s.hash_key_end) for s in final.open_shards] == (
                even_hash_ranges(target)
            )
            assert_consistent(final)
        acked_before_stop = len(history.acked)
        await anyio.sleep(0.3)  # load goes on after the last restart
        stop.set()
    assert len(history.acked) > acked_before_stop > 0
    report = check(history, await read_everything(server.endpoint, stream))
    assert report.ok, report.summary()
    assert report.found >= report.acked > 0


async def test_kill_9_mid_resize_resumes_and_loses_no_acknowledged_record(
    fresh_server: ServerProcess, stream_name: str
) -> None:
    await crash_rounds(fresh_server, stream_name, [(64, 3)])


@pytest.mark.slow
async def test_repeated_kill_9_at_random_points_of_resizes(
    fresh_server: ServerProcess, stream_name: str
) -> None:
    rng = random.Random(9)
    plan = [(64, rng.randint(1, 20)), (32, rng.randint(1, 20)), (17, rng.randint(1, 12))]
    await crash_rounds(fresh_server, stream_name, plan)
