"""Client routing against fake nodes over loopback TCP: bootstrap lists, leader redirects,
retries within the request budget, and the producer's order and idempotence through them."""

from __future__ import annotations

import anyio
import pytest
from fake_server import (  # noqa: F401 (pytest fixtures are found by name)
    FakeCluster,
    FakeServer,
    anyio_backend,
    dead_endpoint,
    fake_cluster,
    fake_server,
)

from streamd_client import batch, connect, errors, model, wire
from streamd_client.pool import ConnectionPool

pytestmark = pytest.mark.anyio

SHARD0 = "shardId-000000000000"
SHARD1 = "shardId-000000000001"


def _lead(cluster: FakeCluster, stream: str, shard_id: str, node: FakeServer | None) -> None:
    cluster.leaders[(stream, shard_id)] = None if node is None else node.endpoint


def _stored(server: FakeServer, stream: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for shard in server.streams[stream].shards:
        out.extend(server.records(stream, shard.shard_id))
    return out


# -- the bootstrap list ------------------------------------------------------------------------


async def test_a_dead_first_bootstrap_address_is_skipped() -> None:
    async with fake_server() as server:
        async with connect(f"{dead_endpoint()},{server.endpoint}") as client:
            await client.create_stream("s", 1)
            assert await client.list_streams() == ["s"]
            assert client.endpoints[1] == server.endpoint
        assert server.connections_accepted == 1


async def test_a_single_dead_address_fails_as_it_always_did() -> None:
    dead = dead_endpoint()
    with pytest.raises(errors.ConnectionLostError, match=f"cannot connect to {dead}"):
        async with connect(dead, connect_timeout_s=2):
            pass


async def test_a_bootstrap_list_of_dead_addresses_names_each_one() -> None:
    first, second = dead_endpoint(), dead_endpoint()
    with pytest.raises(errors.ConnectionLostError, match="no bootstrap address answered") as info:
        async with connect(f"{first}, {second}", connect_timeout_s=2):
            pass
    assert first in info.value.message and second in info.value.message


async def test_a_malformed_address_in_the_list_is_refused_before_connecting() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="host:port"):
        async with connect("127.0.0.1:7070,nonsense"):
            pass


async def test_a_broken_connection_reconnects_to_the_next_address() -> None:
    async with fake_server() as first, fake_server() as second:
        async with connect(f"{first.endpoint},{second.endpoint}") as client:
            await client.list_streams()
            await first.drop_connections()
            with anyio.fail_after(10):
                while (await client.connection()).endpoint != second.endpoint:  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # until the reader noticed the drop
            await client.list_streams()
            assert second.ops(wire.OP_LIST_STREAMS)
            await second.drop_connections()
            with anyio.fail_after(10):
                while (await client.connection()).endpoint != first.endpoint:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        assert first.connections_accepted == 2 and second.connections_accepted == 1


# -- the embedded default ----------------------------------------------------------------------


async def test_without_leaders_everything_takes_the_one_connection() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 2)
        async with client.producer("s") as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i}") for i in range(100)]
        for pending in pendings:
            await pending.result()
        async with client.stream_reader("s") as reader:
            assert len([r async for r in reader]) == 100
        assert dict(client.leader_cache) == {}
        assert client.router.stats.leader_requests == 0
        assert client.router.pool.stats.opened == 0
        assert server.connections_accepted == 1
        # No extra round trip: one describe (the producer's), one append per batch.
        assert len(server.ops(wire.OP_DESCRIBE_STREAM)) == 2  # producer + stream reader


# -- leaders -----------------------------------------------------------------------------------


async def test_describe_fills_the_leader_cache_and_appends_go_straight_to_leaders() -> None:
    async with fake_cluster(3) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        await client.create_stream("s", 2)
        _lead(cluster, "s", SHARD0, nodes[1])
        _lead(cluster, "s", SHARD1, nodes[2])
        async with client.producer("s") as producer:
            pendings = [await producer.put(b"%d" % i, f"k{i}") for i in range(200)]
        assert {(await p.result()).shard_id for p in pendings} == {SHARD0, SHARD1}
        assert dict(client.leader_cache) == {
            ("s", SHARD0): nodes[1].endpoint,
            ("s", SHARD1): nodes[2].endpoint,
        }
        assert nodes[0].ops(wire.OP_APPEND_BATCH) == []
        assert {a["shard_id"] for a in nodes[1].ops(wire.OP_APPEND_BATCH)} == {SHARD0}
        assert {a["shard_id"] for a in nodes[2].ops(wire.OP_APPEND_BATCH)} == {SHARD1}
        assert client.router.stats.redirects == 0
        assert sorted(client.router.pool.addresses) == sorted(
            [nodes[1].endpoint, nodes[2].endpoint]
        )


async def test_not_leader_with_an_address_redirects_and_is_remembered() -> None:
    async with fake_cluster(3) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        cluster.describe_leaders = False  # learn only from NOT_LEADER
        await client.create_stream("s", 1)
        _lead(cluster, "s", SHARD0, nodes[2])
        blob = batch.encode_batch(["k"], [model.hash_bytes_of("k")], [b"x"])
        first = await client.append_batch("s", SHARD0, blob)
        assert client.leader_cache[("s", SHARD0)] == nodes[2].endpoint
        assert client.router.stats.redirects == 1
        page = await client.read("s", SHARD0, model.Position.trim_horizon())
        assert [r.data for r in page.records] == [b"x"]
        assert page.records[0].sequence_number == first.base_sequence
        assert len(nodes[0].ops(wire.OP_APPEND_BATCH)) == 1  # only the redirected attempt
        assert nodes[0].ops(wire.OP_READ) == []  # the read went straight to the leader
        assert len(nodes[2].ops(wire.OP_READ)) == 1
        assert client.router.stats.redirects == 1


async def test_not_leader_without_an_address_redescribes_the_stream() -> None:
    async with fake_cluster(3) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        await client.create_stream("s", 1)
        _lead(cluster, "s", SHARD0, nodes[1])
        await client.describe_stream("s")
        assert client.leader_cache[("s", SHARD0)] == nodes[1].endpoint
        cluster.redirect_with_address = False
        _lead(cluster, "s", SHARD0, nodes[2])  # leadership moved; node 1 does not say where
        page = await client.read("s", SHARD0, model.Position.trim_horizon())
        assert page.records == []
        assert client.leader_cache[("s", SHARD0)] == nodes[2].endpoint
        assert client.router.stats.refreshes == 1
        assert client.router.stats.redirects == 0
        assert len(nodes[0].ops(wire.OP_DESCRIBE_STREAM)) == 2


async def test_shard_unavailable_twice_then_success_is_retried_with_backoff() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        unavailable = errors.ShardUnavailableError("down", stream="s", shard_id=SHARD0)
        server.inject(wire.OP_APPEND_BATCH, "error", times=2, error=unavailable)
        blob = batch.encode_batch(["k"], [model.hash_bytes_of("k")], [b"x"], producer_id=7)
        result = await client.append_batch("s", SHARD0, blob)
        assert result.record_count == 1 and not result.duplicate
        assert len(server.ops(wire.OP_APPEND_BATCH)) == 3
        assert client.router.stats.retries == 2
        server.inject(wire.OP_READ, "error", times=2, error=unavailable)
        page = await client.read("s", SHARD0, model.Position.trim_horizon())
        assert [r.data for r in page.records] == [b"x"]
        assert client.router.stats.retries == 4


async def test_retries_stop_at_the_request_budget_with_the_last_error() -> None:
    async with fake_cluster(2) as (cluster, nodes):
        async with connect(nodes[0].endpoint, request_timeout_s=1.0) as client:
            await client.create_stream("s", 1)
            _lead(cluster, "s", SHARD0, None)
            started = anyio.current_time()
            with anyio.fail_after(10), pytest.raises(errors.StreamdError) as info:
                await client.read("s", SHARD0, model.Position.trim_horizon())
            # The last error: SHARD_UNAVAILABLE (or TIMEOUT, if the last attempt, started with
            # at least ATTEMPT_S_MIN left, found the machine that busy).
            assert isinstance(info.value, errors.ShardUnavailableError | errors.RequestTimeoutError)
            # A bound on correctness (the budget), not on speed: generous for a loaded machine.
            assert anyio.current_time() - started <= 1.0 + 1.0
            assert client.router.stats.retries >= 2


async def test_a_dead_leader_is_dropped_and_the_bootstrap_node_asked_again() -> None:
    async with fake_cluster(2) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        await client.create_stream("s", 1)
        dead = dead_endpoint()
        cluster.leaders[("s", SHARD0)] = dead  # the map still names a node that died
        await client.describe_stream("s")
        assert client.leader_cache[("s", SHARD0)] == dead

        async def failover() -> None:
            await anyio.sleep(0.2)
            _lead(cluster, "s", SHARD0, nodes[1])

        async with anyio.create_task_group() as tg:
            tg.start_soon(failover)
            with anyio.fail_after(10):
                page = await client.read("s", SHARD0, model.Position.trim_horizon())
        assert page.records == []
        assert client.leader_cache[("s", SHARD0)] == nodes[1].endpoint
        assert len(nodes[1].ops(wire.OP_READ)) == 1


async def test_a_lost_answer_from_a_leader_is_retried_and_deduplicated() -> None:
    async with fake_cluster(2) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        await client.create_stream("s", 1)
        _lead(cluster, "s", SHARD0, nodes[1])
        await client.describe_stream("s")
        nodes[1].inject(wire.OP_APPEND_BATCH, "drop_after")  # stored, then the connection dies
        blob = batch.encode_batch(["k"], [model.hash_bytes_of("k")], [b"x"], producer_id=9)
        result = await client.append_batch("s", SHARD0, blob)
        assert result.duplicate  # the retry carried the same producer sequence
        assert nodes[1].records("s", SHARD0) == [("k", b"x")]
        assert [a["batch"] for a in nodes[1].ops(wire.OP_APPEND_BATCH)] == [blob, blob]


async def test_a_write_whose_outcome_became_unknown_is_not_reported_as_not_stored() -> None:
    async with fake_cluster(2) as (cluster, nodes):
        async with connect(nodes[0].endpoint, request_timeout_s=0.5) as client:
            await client.create_stream("s", 1)
            _lead(cluster, "s", SHARD0, nodes[1])
            await client.describe_stream("s")
            nodes[1].inject(wire.OP_APPEND_BATCH, "drop_after")
            blob = batch.encode_batch(["k"], [model.hash_bytes_of("k")], [b"x"], producer_id=9)

            async def shard_goes_down() -> None:  # right after the answer was lost
                # Wait for the record to be stored, not for the request to arrive: the fake logs
                # a request before its handler runs, and a shard gone before the handler ran
                # answers SHARD_UNAVAILABLE for a write never stored (the test failed under load).
                while not nodes[1].records("s", SHARD0):  # noqa: ASYNC110 (the fake's log)
                    await anyio.sleep(0.001)
                _lead(cluster, "s", SHARD0, None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(shard_goes_down)
                with anyio.fail_after(10), pytest.raises(errors.ConnectionLostError) as info:
                    await client.append_batch("s", SHARD0, blob)
            assert "SHARD_UNAVAILABLE" in info.value.message
            assert isinstance(info.value.__cause__, errors.ShardUnavailableError)
            assert nodes[1].records("s", SHARD0) == [("k", b"x")]  # it was stored after all


# -- the producer through leader moves ---------------------------------------------------------


async def test_producer_keeps_order_and_sequences_through_leader_moves() -> None:
    async with fake_cluster(3) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        cluster.describe_leaders = False  # every move is found through NOT_LEADER
        await client.create_stream("s", 2)
        _lead(cluster, "s", SHARD0, nodes[1])
        _lead(cluster, "s", SHARD1, nodes[2])
        count = 3000
        async with client.producer("s", linger_ms=1, batch_records_max=50) as producer:
            pendings = []
            for i in range(count):
                pendings.append(await producer.put(b"%d" % i, f"key{i % 13}"))
                if i % 400 == 399:  # move both leaders round the nodes
                    step = i // 400
                    _lead(cluster, "s", SHARD0, nodes[(1 + step) % 3])
                    _lead(cluster, "s", SHARD1, nodes[(2 + step) % 3])
                    await anyio.sleep(0.005)
        with anyio.fail_after(10):
            results = [await p.result() for p in pendings]
        assert len(results) == count
        assert client.router.stats.redirects >= 4
        assert producer.stats.failed_records == 0
        stored = _stored(nodes[0], "s")
        assert sorted(int(d) for _, d in stored) == list(range(count))  # each exactly once
        last: dict[str, int] = {}
        for key, data in stored:
            assert int(data) > last.get(key, -1)
            last[key] = int(data)
        # Every shard's batches carry one producer id and consecutive sequence numbers, and a
        # batch redirected after NOT_LEADER was sent again byte for byte.
        sent = [a for node in nodes for a in node.ops(wire.OP_APPEND_BATCH)]
        for shard in (SHARD0, SHARD1):
            blobs = cluster.streams["s"].shard(shard).batches
            headers = [batch.parse_header(b) for b in blobs]
            assert len({h.producer_id for h in headers}) == 1
            assert [h.producer_seq for h in headers] == list(range(len(headers)))
            by_seq: dict[int, set[bytes]] = {}
            for args in sent:
                if args["shard_id"] == shard:
                    by_seq.setdefault(batch.parse_header(args["batch"]).producer_seq, set()).add(
                        args["batch"]
                    )
            assert all(len(versions) == 1 for versions in by_seq.values())


async def test_group_style_reads_follow_the_leader() -> None:
    async with fake_cluster(2) as (cluster, nodes), connect(nodes[0].endpoint) as client:
        await client.create_stream("s", 1)
        await client.put_record("s", b"a", "k")  # server-routed: the bootstrap node takes it
        _lead(cluster, "s", SHARD0, nodes[1])
        cluster.describe_leaders = False
        records = [r async for r in client.reader("s", SHARD0)]
        assert [r.data for r in records] == [b"a"]
        assert nodes[1].ops(wire.OP_READ)


# -- the pool ----------------------------------------------------------------------------------


async def test_the_pool_closes_idle_connections_and_makes_room() -> None:
    async with fake_server() as first, fake_server() as second, anyio.create_task_group() as tg:
        pool = ConnectionPool(
            tg,
            connect_timeout_s=2,
            request_timeout_s=2,
            requests_in_flight_max=8,
            connections_max=1,
            idle_timeout_s=0.2,
        )
        try:
            async with pool.lease(first.endpoint, 2) as connection:
                await connection.request(wire.OP_LIST_STREAMS, {})
                with pytest.raises(errors.LimitExceededError, match="busy"):
                    async with pool.lease(second.endpoint, 2):
                        pass
            async with pool.lease(second.endpoint, 2) as connection:  # evicts the idle first
                await connection.request(wire.OP_LIST_STREAMS, {})
            assert pool.addresses == [second.endpoint]
            assert pool.stats.closed_idle == 1
            with anyio.fail_after(5):
                while pool.addresses:  # noqa: ASYNC110 - the sweeper closes them
                    await anyio.sleep(0.05)
            assert pool.stats.closed_idle == 2 and pool.stats.opened == 2
        finally:
            await pool.aclose()


async def test_a_batch_failed_on_not_leader_restarts_the_producer_sequence() -> None:
    async with fake_server() as server, connect(server.endpoint, request_timeout_s=0.3) as client:
        await client.create_stream("s", 1)
        deposed = errors.NotLeaderError("deposed", stream="s", shard_id=SHARD0)
        server.inject(wire.OP_APPEND_BATCH, "error", times=1000, error=deposed)
        async with client.producer("s", retries_max=0) as producer:
            first = await producer.put(b"a", "k")
            await producer.flush()
            with pytest.raises(errors.NotLeaderError):
                await first.result()
            server.clear_faults()  # the shard is led again
            second = await producer.put(b"b", "k")
        await second.result()
        sent = [batch.parse_header(a["batch"]) for a in server.ops(wire.OP_APPEND_BATCH)]
        # It may have committed on the deposed leader: the next batch must not reuse its
        # (producer id, sequence), or the server would drop it as a duplicate.
        assert (sent[-1].producer_id, sent[-1].producer_seq) != (sent[0].producer_id, 0)
        assert server.records("s", SHARD0) == [("k", b"b")]
