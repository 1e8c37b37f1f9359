"""The client's connection and plain calls against the fake server, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio
from fake_server import (  # noqa: F401 (pytest fixtures are found by name)
    anyio_backend,
    fake_server,
)

from streamd_client import (
    Position,
    PutRecordsEntry,
    PutResult,
    RecordFailure,
    batch,
    connect,
    errors,
    wire,
)
from streamd_client.results import put_records_from_wire

pytestmark = pytest.mark.anyio


async def test_each_backend_really_runs_its_own_event_loop(anyio_backend: str) -> None:  # noqa: F811
    assert sniffio.current_async_library() == anyio_backend


async def test_admin_calls_round_trip() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s1", 3, retention_hours=48)
        await client.create_stream("s0", 1)
        assert await client.list_streams() == ["s0", "s1"]
        description = await client.describe_stream("s1")
        assert (description.name, description.retention_hours) == ("s1", 48)
        assert [s.shard_id for s in description.shards] == [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002",
        ]
        assert description.shards[0].hash_key_start == 0
        assert description.shards[-1].hash_key_end == 2**128 - 1
        assert all(s.is_open for s in description.shards)
        await client.update_retention("s1", 72)
        assert (await client.describe_stream("s1")).retention_hours == 72
        await client.delete_stream("s1")
        assert await client.list_streams() == ["s0"]


async def test_server_errors_arrive_typed() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        with pytest.raises(errors.StreamExistsError):
            await client.create_stream("s", 1)
        with pytest.raises(errors.StreamNotFoundError):
            await client.describe_stream("nope")
        with pytest.raises(errors.ShardNotFoundError):
            await client.read("s", "shardId-000000000007", Position.trim_horizon())


async def test_bad_arguments_raise_before_anything_is_sent() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        with pytest.raises(errors.InvalidStreamNameError):
            await client.create_stream("no spaces", 1)
        with pytest.raises(errors.InvalidArgumentError):
            await client.create_stream("s", 0)
        with pytest.raises(errors.InvalidPartitionKeyError):
            await client.put_record("s", b"x", "")
        with pytest.raises(errors.InvalidHashKeyError):
            await client.put_record("s", b"x", "k", explicit_hash_key=2**128)
        with pytest.raises(errors.RequestTooLargeError):
            await client.put_records("s", [(b"x", "k")] * 501)
        with pytest.raises(errors.InvalidArgumentError):
            await client.read("s", "shardId-000000000000", Position.latest(), wait_ms=-1)
        assert server.requests == []


async def test_requests_are_multiplexed_and_answered_out_of_order() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        server.inject(wire.OP_DESCRIBE_STREAM, "delay", delay_s=0.5)
        finished: list[str] = []

        async def run(name: str, call: Callable[[], Awaitable[Any]]) -> None:
            await call()
            finished.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "slow", lambda: client.describe_stream("s"))
            await anyio.sleep(0.05)
            for i in range(20):
                tg.start_soon(run, f"fast{i}", client.list_streams)
        assert finished[-1] == "slow"
        assert server.connections_accepted == 1


async def test_requests_in_flight_are_bounded() -> None:
    async with fake_server() as server:
        async with connect(server.endpoint, requests_in_flight_max=2) as client:
            server.inject(wire.OP_LIST_STREAMS, "delay", times=5, delay_s=0.3)
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(client.list_streams)
                await anyio.sleep(0.15)
                assert len(server.ops(wire.OP_LIST_STREAMS)) == 2
            assert len(server.ops(wire.OP_LIST_STREAMS)) == 5


async def test_request_timeout_leaves_the_connection_usable() -> None:
    async with fake_server() as server:
        async with connect(server.endpoint, request_timeout_s=0.2) as client:
            server.inject(wire.OP_LIST_STREAMS, "stall")
            with pytest.raises(errors.RequestTimeoutError) as caught:
                await client.list_streams()
            assert caught.value.retryable
            assert await client.list_streams() == []
        assert server.connections_accepted == 1


async def test_cancelled_request_does_not_corrupt_the_stream() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        server.inject(wire.OP_LIST_STREAMS, "delay", delay_s=0.3)
        with anyio.move_on_after(0.05) as scope:
            await client.list_streams()
        assert scope.cancelled_caught
        await client.create_stream("s", 1)
        assert await client.list_streams() == ["s"]
        assert server.connections_accepted == 1


async def test_connection_loss_fails_every_pending_request_then_reconnects() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        server.inject(wire.OP_LIST_STREAMS, "stall", times=5)
        outcomes: list[BaseException] = []

        async def call() -> None:
            try:
                await client.list_streams()
            except errors.StreamdError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            await anyio.sleep(0.1)
            await server.drop_connections()
        assert len(outcomes) == 5
        assert all(isinstance(e, errors.ConnectionLostError) for e in outcomes)
        assert all(e.retryable for e in outcomes)
        await client.create_stream("s", 1)  # lazily reconnects
        assert server.connections_accepted == 2


async def test_dropped_answer_raises_connection_lost() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        server.inject(wire.OP_CREATE_STREAM, "drop_after")
        with pytest.raises(errors.ConnectionLostError):
            await client.create_stream("s", 1)
        with pytest.raises(errors.StreamExistsError):  # it did apply
            await client.create_stream("s", 1)


async def test_connect_to_a_closed_port_is_connection_lost() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    with pytest.raises(errors.ConnectionLostError):
        async with connect(f"127.0.0.1:{port}", connect_timeout_s=2):
            pass


async def test_bad_endpoint_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgumentError):
        async with connect("localhost"):
            pass


@asynccontextmanager
async def raw_server(reply: Callable[[int], bytes]) -> AsyncIterator[str]:
    """A server that answers the hello request (whatever its id) with ``reply(id)``."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            decoder = wire.FrameDecoder()
            while not isinstance(message := decoder.next_message(), dict):
                decoder.receive_data(await stream.receive())
            await stream.send(reply(message["i"]))
            await anyio.sleep(5)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_garbage_from_the_server_is_a_lost_connection_with_the_cause() -> None:
    async with raw_server(lambda _: b"\x00\x00\x00\x02\xff\xff") as endpoint:
        with pytest.raises(errors.ConnectionLostError) as caught:
            async with connect(endpoint, connect_timeout_s=2):
                pass
        assert isinstance(caught.value.__cause__, errors.ProtocolError)


async def test_unsupported_version_is_typed() -> None:
    def refuse(request_id: int) -> bytes:
        error = {"code": "UNSUPPORTED_VERSION", "message": "only v9"}
        return wire.encode_message(wire.error_response(request_id, error))

    async with raw_server(refuse) as endpoint:
        with pytest.raises(errors.UnsupportedVersionError):
            async with connect(endpoint, connect_timeout_s=2):
                pass


async def test_frame_over_the_servers_limit_is_refused_locally() -> None:
    async with fake_server(frame_bytes_max=4096) as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        with pytest.raises(errors.RequestTooLargeError):
            await client.put_record("s", b"x" * 5000, "k")
        assert await client.list_streams() == ["s"]


async def test_put_records_and_read_back() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 2)
        first = await client.put_record("s", b"zero", "k0", explicit_hash_key=0)
        assert first.shard_id == "shardId-000000000000"
        answer = await client.put_records(
            "s",
            [
                PutRecordsEntry(b"one", "k1", explicit_hash_key=1),
                (b"two", "k2", 2),
                (b"big", "k3", str(2**128 - 1)),
            ],
        )
        assert answer.failed_count == 0
        assert all(isinstance(r, PutResult) for r in answer.results)
        result = await client.read("s", "shardId-000000000000", Position.trim_horizon())
        assert [r.data for r in result.records] == [b"zero", b"one", b"two"]
        assert [r.offset for r in result.records] == [0, 1, 2]
        assert result.records[0].sequence_number == first.sequence_number
        assert result.next_position == Position.at_offset(3)
        assert result.high_watermark == 3


async def test_put_records_reports_each_failure_on_its_own() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        # The client validates too; send one bad record raw to see the server's answer shape.
        answer = await client.call(
            wire.OP_PUT_RECORDS,
            {"stream": "s", "records": [{"k": "a", "d": b"1"}, {"k": "", "d": b"2"}]},
        )
        parsed = put_records_from_wire(answer, 2)
        assert parsed.failed_count == 1
        assert isinstance(parsed.results[0], PutResult)
        failure = parsed.results[1]
        assert isinstance(failure, RecordFailure)
        assert isinstance(failure.to_error(), errors.InvalidPartitionKeyError)


async def test_read_limit_and_mid_batch_start() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        blob = batch.encode_batch(["k"] * 10, [b"\0" * 16] * 10, [bytes([i]) for i in range(10)])
        appended = await client.append_batch("s", "shardId-000000000000", blob)
        assert (appended.base_offset, appended.record_count) == (0, 10)
        page = await client.read("s", "shardId-000000000000", Position.at_offset(3), limit=4)
        assert [r.offset for r in page.records] == [3, 4, 5, 6]
        assert page.next_position == Position.at_offset(7)
        rest = await client.read("s", "shardId-000000000000", page.next_position)
        assert [r.data for r in rest.records] == [bytes([i]) for i in range(7, 10)]
        after = Position.after_sequence(rest.records[0].sequence_number)
        tail = await client.read("s", "shardId-000000000000", after)
        assert [r.offset for r in tail.records] == [8, 9]


async def test_corrupt_stored_batch_is_raised_never_skipped() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        for i in range(3):
            await client.put_record("s", b"data%d" % i, "k")
        server.corrupt("s", "shardId-000000000000", batch_index=1, byte_at=batch.HEADER_BYTES + 2)
        with pytest.raises(errors.CorruptDataError):
            await client.read("s", "shardId-000000000000", Position.trim_horizon())
        good = await client.read("s", "shardId-000000000000", Position.trim_horizon(), limit=1)
        assert [r.data for r in good.records] == [b"data0"]


async def test_long_poll_read_returns_when_a_record_commits() -> None:
    async with fake_server() as server, connect(server.endpoint) as client:
        await client.create_stream("s", 1)
        async with anyio.create_task_group() as tg:

            async def put_later() -> None:
                await anyio.sleep(0.1)
                await client.put_record("s", b"late", "k")

            tg.start_soon(put_later)
            with anyio.fail_after(5):
                result = await client.read(
                    "s", "shardId-000000000000", Position.latest(), wait_ms=3000
                )
        assert [r.data for r in result.records] == [b"late"]


async def test_closed_client_refuses_calls() -> None:
    async with fake_server() as server:
        async with connect(server.endpoint) as client:
            pass
        with pytest.raises(anyio.ClosedResourceError):
            await client.list_streams()
