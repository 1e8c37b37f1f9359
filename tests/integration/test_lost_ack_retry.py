"""A producer whose connection drops after the server committed a batch but before the ack
arrived: it retries the same bytes, the server recognises the batch (idempotent produce) and
answers ``duplicate: true``, and the stream holds each record exactly once.

The fault comes from ``AckDroppingProxy``, a frame-aware TCP proxy between client and server:
it watches the client's ``append_batch`` request ids and, the first ``drops`` times a
first-time commit's response to one comes back, closes both sides instead of forwarding it.
The server has committed by then (it only answers after the commit), so the loss is exactly
"committed, ack lost".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from streamd.testing import ServerProcess
from streamd_client import connect, wire

pytestmark = pytest.mark.anyio


class AckDroppingProxy:
    def __init__(self, upstream: str, drops: int) -> None:
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.drops_left = drops
        self.dropped = 0
        self.connections = 0

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        append_ids: set[int] = set()
        async with client, await anyio.connect_tcp(self.upstream_host, self.upstream_port) as up:
            async with anyio.create_task_group() as tg:

                async def client_to_server() -> None:
                    decoder = wire.FrameDecoder()
                    async for data in client:
                        decoder.receive_data(data)
                        while (message := decoder.next_message()) is not wire.NEED_DATA:
                            assert isinstance(message, dict)
                            if message.get("op") == wire.OP_APPEND_BATCH:
                                append_ids.add(message["i"])
                        await up.send(data)
                    tg.cancel_scope.cancel()

                async def server_to_client() -> None:
                    decoder = wire.FrameDecoder()
                    async for data in up:
                        decoder.receive_data(data)
                        while (message := decoder.next_message()) is not wire.NEED_DATA:
                            assert isinstance(message, dict)
                            if self._should_drop(message, append_ids):
                                self.drops_left -= 1
                                self.dropped += 1
                                tg.cancel_scope.cancel()  # drop the ack and the connection
                                return
                            await client.send(wire.encode_message(message))
                    tg.cancel_scope.cancel()

                tg.start_soon(client_to_server)
                tg.start_soon(server_to_client)

    def _should_drop(self, message: dict[str, object], append_ids: set[int]) -> bool:
        """A first-time commit's ack (not a duplicate's: each drop is then a distinct batch)."""
        result = message.get("r")
        return (
            self.drops_left > 0
            and message["i"] in append_ids
            and isinstance(result, dict)
            and result.get("duplicate") is False
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self.handle)
            yield f"127.0.0.1:{port}"
            tg.cancel_scope.cancel()


async def test_lost_ack_is_retried_and_stored_once(server: ServerProcess, stream_name: str) -> None:
    async with connect(server.endpoint) as admin:
        await admin.create_stream(stream_name, 2)
    proxy = AckDroppingProxy(server.endpoint, drops=3)
    count = 3000
    with anyio.fail_after(60):
        async with proxy.running() as endpoint, connect(endpoint) as client:
            async with client.producer(stream_name, linger_ms=1, batch_records_max=100) as producer:
                pendings = [
                    await producer.put(f"record-{i}".encode(), f"key-{i % 5}") for i in range(count)
                ]
                await producer.flush()
                results = [await p.result() for p in pendings]
            stats = producer.stats
    assert proxy.dropped == 3 and proxy.connections >= 4
    assert stats.failed_records == 0 and stats.acked_records == count
    assert stats.duplicate_batches >= 3, "each lost ack must come back as a duplicate"

    async with connect(server.endpoint) as reader_client:
        stored: list[bytes] = []
        for shard_id in sorted({r.shard_id for r in results}):
            async for record in reader_client.reader(stream_name, shard_id):
                stored.append(record.data)
    assert len(stored) == count, "a retried batch was stored twice (or lost)"
    assert sorted(stored) == sorted(f"record-{i}".encode() for i in range(count))
    # The acks the producer finally got point at the one stored copy.
    assert len({r.sequence_number for r in results}) == count
