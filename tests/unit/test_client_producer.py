"""The Producer against the fake server: batching, linger, order, retries, dedup, resharding."""

from __future__ import annotations

import anyio
import pytest
from fake_server import (  # noqa: F401 (pytest fixtures are found by name)
    FakeServer,
    anyio_backend,
    fake_server,
)

from streamd_client import PutResult, connect, errors, model, wire
from streamd_client.producer import PendingPut

pytestmark = pytest.mark.anyio

SHARD0 = "shardId-000000000000"


async def _results(pendings: list[PendingPut]) -> list[PutResult]:
    with anyio.fail_after(10):
        return [await p.result() for p in pendings]


def _all_records(server: FakeServer, stream: str) -> list[tuple[str, bytes]]:
    """Every stored record, parents before children (the order a consumer group reads in)."""
    out: list[tuple[str, bytes]] = []
    for shard in server.streams[stream].shards:
        out.extend(server.records(stream, shard.shard_id))
    return out


def _assert_order_per_key(records: list[tuple[str, bytes]]) -> None:
    last: dict[str, int] = {}
    for key, data in records:
        n = int(data)
        assert n > last.get(key, -1), f"key {key}: {n} after {last[key]}"
        last[key] = n


async def test_records_are_acked_with_their_sequence_numbers_and_read_back() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 4)
        async with client.producer("s") as producer:
            pendings = [await producer.put(b"%d" % i, f"key{i % 37}") for i in range(2000)]
        results = await _results(pendings)
        assert producer.stats.acked_records == 2000
        assert producer.stats.failed_records == 0
        assert all(p.done() for p in pendings)
        for result in results[:50]:
            page = await client.read(
                "s", result.shard_id, model.Position.at_sequence(result.sequence_number), limit=1
            )
            assert page.records[0].sequence_number == result.sequence_number
        stored = _all_records(server, "s")
        assert sorted(int(d) for _, d in stored) == list(range(2000))
        _assert_order_per_key(stored)


async def test_records_are_routed_by_key_hash_and_explicit_hash_key() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 4)
        ranges = model.even_hash_ranges(4)
        async with client.producer("s") as producer:
            by_key = await producer.put(b"x", "some-key")
            explicit = await producer.put(b"y", "k", explicit_hash_key=str(ranges[2][0]))
        expected = next(
            i for i, (lo, hi) in enumerate(ranges) if lo <= model.hash_key_of("some-key") <= hi
        )
        assert (await by_key.result()).shard_id == model.shard_id_of(expected)
        assert (await explicit.result()).shard_id == model.shard_id_of(2)


async def test_full_batches_go_out_without_waiting_for_linger() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s", linger_ms=60_000, batch_records_max=10) as producer:
            pendings = [await producer.put(b"%d" % i, "k") for i in range(100)]
            with anyio.fail_after(5):
                await pendings[-1].result()
        assert len(server.ops(wire.OP_APPEND_BATCH)) == 10
        assert server.records("s", SHARD0) == [("k", b"%d" % i) for i in range(100)]


async def test_batch_bytes_max_splits_batches() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s", linger_ms=60_000, batch_bytes_max=10_000) as producer:
            for _ in range(10):
                await producer.put(b"x" * 3000, "k")
        assert len(server.ops(wire.OP_APPEND_BATCH)) == 4  # 3 records of ~3 kB per batch


async def test_a_lone_record_waits_for_linger_then_goes() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s", linger_ms=300) as producer:
            started = anyio.current_time()
            pending = await producer.put(b"one", "k")
            await anyio.sleep(0.1)
            assert not pending.done() and server.ops(wire.OP_APPEND_BATCH) == []
            with anyio.fail_after(5):
                await pending.result()
            assert anyio.current_time() - started >= 0.29


async def test_flush_sends_without_lingering() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 2)
        async with client.producer("s", linger_ms=60_000) as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i}") for i in range(10)]
            with anyio.fail_after(5):
                await producer.flush()
            assert all(p.done() for p in pendings)


async def test_throttled_batches_are_retried_with_backoff() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "error", times=3, error=errors.ThrottledError("busy"))
        producer = client.producer("s", backoff_ms_initial=20, backoff_ms_max=50)
        async with producer:
            pendings = [await producer.put(b"%d" % i, "k") for i in range(5)]
        await _results(pendings)
        assert producer.stats.retried_batches == 3
        assert len(server.ops(wire.OP_APPEND_BATCH)) == 4
        assert len(server.records("s", SHARD0)) == 5


async def test_retries_resend_the_same_bytes_and_a_lost_ack_is_deduplicated() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "drop_after")  # stored, then the answer is lost
        async with client.producer("s", backoff_ms_initial=5) as producer:
            pendings = [await producer.put(b"%d" % i, "k") for i in range(50)]
        results = await _results(pendings)
        sent = [args["batch"] for args in server.ops(wire.OP_APPEND_BATCH)]
        assert len(sent) == 2 and sent[0] == sent[1]
        assert producer.stats.duplicate_batches == 1
        assert server.records("s", SHARD0) == [("k", b"%d" % i) for i in range(50)]
        assert [r.sequence_number for r in results] == [
            model.make_sequence(0, i) for i in range(50)
        ]


async def test_an_ambiguous_final_failure_restarts_the_sequence() -> None:
    # The batch is stored but the producer gives up (no retries): the next batch must not
    # reuse that sequence, or the server would take it for a duplicate and drop its records.
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "drop_after")
        async with client.producer("s", retries_max=0) as producer:
            first = await producer.put(b"first", "k")
            await producer.flush()
            second = await producer.put(b"second", "k")
        with pytest.raises(errors.ConnectionLostError):
            await first.result()
        await second.result()
        assert server.records("s", SHARD0) == [("k", b"first"), ("k", b"second")]


async def test_non_retryable_errors_fail_that_batch_only() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "error", error=errors.InvalidBatchError("no"))
        async with client.producer("s") as producer:
            doomed = [await producer.put(b"%d" % i, "k") for i in range(3)]
            await producer.flush()
            fine = await producer.put(b"later", "k")
        for pending in doomed:
            with pytest.raises(errors.InvalidBatchError):
                await pending.result()
        await fine.result()
        assert producer.stats.failed_records == 3
        assert producer.stats.acked_records == 1


async def test_retries_give_up_after_retries_max() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "error", times=10, error=errors.ThrottledError("x"))
        async with client.producer("s", retries_max=2, backoff_ms_initial=1) as producer:
            pending = await producer.put(b"x", "k")
        with pytest.raises(errors.ThrottledError):
            await pending.result()
        assert len(server.ops(wire.OP_APPEND_BATCH)) == 3


async def test_out_of_order_sequence_fails_the_batch_then_the_producer_goes_on() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        error = errors.OutOfOrderSequenceError("skipped")
        server.inject(wire.OP_APPEND_BATCH, "error", error=error)
        async with client.producer("s") as producer:
            doomed = await producer.put(b"a", "k")
            await producer.flush()
            fine = await producer.put(b"b", "k")
        with pytest.raises(errors.OutOfOrderSequenceError):
            await doomed.result()
        await fine.result()


async def test_closed_shard_refreshes_the_map_and_reroutes_in_order() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s", linger_ms=1, batch_records_max=20) as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i % 11}") for i in range(100)]
            await producer.flush()
            server.split_shard("s", SHARD0)
            pendings += [await producer.put(b"%d" % i, f"k{i % 11}") for i in range(100, 400)]
        results = await _results(pendings)
        assert {r.shard_id for r in results[100:]} == {
            "shardId-000000000001",
            "shardId-000000000002",
        }
        assert producer.stats.rerouted_batches >= 1
        stored = _all_records(server, "s")
        assert sorted(int(d) for _, d in stored) == list(range(400))
        _assert_order_per_key(stored)


async def test_wrong_shard_refreshes_the_map() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s") as producer:
            server.split_shard("s", SHARD0)
            server.inject(wire.OP_APPEND_BATCH, "error", error=errors.WrongShardError("moved"))
            pendings = [await producer.put(b"%d" % i, f"k{i}") for i in range(50)]
        results = await _results(pendings)
        assert SHARD0 not in {r.shard_id for r in results}
        assert len(server.ops(wire.OP_DESCRIBE_STREAM)) == 2


async def test_wrong_shard_with_an_unchanged_map_fails_the_batch() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "error", error=errors.WrongShardError("?"))
        async with client.producer("s") as producer:
            pending = await producer.put(b"x", "k")
        with pytest.raises(errors.WrongShardError):
            await pending.result()


async def test_backpressure_bounds_the_buffer() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_APPEND_BATCH, "delay", delay_s=0.3)
        producer = client.producer("s", linger_ms=0, buffer_records_max=10, batch_records_max=5)
        async with producer:
            pendings = [producer.put_nowait(b"%d" % i, "k") for i in range(10)]
            with pytest.raises(anyio.WouldBlock):
                producer.put_nowait(b"x", "k")
            started = anyio.current_time()
            with anyio.fail_after(5):
                pendings.append(await producer.put(b"10", "k"))  # waits for the slow batch
            assert anyio.current_time() - started >= 0.2
        await _results(pendings)
        assert server.records("s", SHARD0) == [("k", b"%d" % i) for i in range(11)]


async def test_bad_input_raises_at_once() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with client.producer("s") as producer:
            with pytest.raises(errors.InvalidPartitionKeyError):
                await producer.put(b"x", "")
            with pytest.raises(errors.InvalidArgumentError):
                producer.put_nowait("not bytes", "k")  # type: ignore[arg-type]
            with pytest.raises(errors.RecordTooLargeError):
                await producer.put(b"x" * (model.RECORD_DATA_BYTES_MAX + 1), "k")
            with pytest.raises(errors.InvalidHashKeyError):
                await producer.put(b"x", "k", explicit_hash_key=-1)
        with pytest.raises(anyio.ClosedResourceError):
            await producer.put(b"x", "k")
        assert producer.stats.acked_records == 0


async def test_options_out_of_range_are_refused() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        with pytest.raises(errors.InvalidArgumentError):
            client.producer("s", batch_records_max=0)
        with pytest.raises(errors.InvalidArgumentError):
            client.producer("s", batch_bytes_max=12 << 20)  # over the batch payload bound
        with pytest.raises(errors.StreamNotFoundError):
            async with client.producer("missing"):
                pass


async def test_leaving_with_an_exception_fails_what_was_not_sent() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        producer = client.producer("s", linger_ms=60_000)
        with pytest.raises(KeyError):
            async with producer:
                pending = await producer.put(b"x", "k")
                raise KeyError("boom")
        with pytest.raises(errors.ConnectionLostError):
            await pending.result()
        assert server.ops(wire.OP_APPEND_BATCH) == []


async def test_producer_survives_a_dropped_connection() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 2)
        server.inject(wire.OP_APPEND_BATCH, "drop", times=2)
        async with client.producer("s", backoff_ms_initial=5) as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i}") for i in range(100)]
        await _results(pendings)
        assert sorted(int(d) for _, d in _all_records(server, "s")) == list(range(100))
        assert server.connections_accepted >= 2


async def test_a_throttled_batch_waits_as_told_and_the_hint_uses_no_retry() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        hint = errors.ThrottledError("quota", shard_id=SHARD0, retry_after_ms=100)
        server.inject(wire.OP_APPEND_BATCH, "error", times=4, error=hint)
        producer = client.producer("s", retries_max=1, backoff_ms_initial=1)
        started = anyio.current_time()
        async with producer:
            pendings = [await producer.put(b"%d" % i, "k") for i in range(5)]
        await _results(pendings)
        assert anyio.current_time() - started >= 0.4  # 4 waits of 100 ms (plus jitter)
        assert producer.stats.throttled_batches == 4 and producer.stats.retried_batches == 0
        assert server.records("s", SHARD0) == [("k", b"%d" % i) for i in range(5)]


async def test_throttled_waits_are_bounded_per_batch() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        hint = errors.ThrottledError("quota", retry_after_ms=50)
        server.inject(wire.OP_APPEND_BATCH, "error", times=100, error=hint)
        producer = client.producer("s", retries_max=0, throttled_wait_ms_max=200)
        async with producer:
            pending = await producer.put(b"x", "k")
        with pytest.raises(errors.ThrottledError):
            await pending.result()
        assert 3 <= producer.stats.throttled_batches <= 4
