"""The gateway's HTTP layer over in-memory streams: chunked streamed answers, and a client that
hangs up mid-stream cancels the stream and closes its iterator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import h11
import trio
import trio.testing

from streamd.kinesis.dispatch import Reply, Request
from streamd.kinesis.http import HttpConnection, HttpLimits
from streamd.kinesis.types import Streaming


class StreamingDispatcher:
    def __init__(self, count: int | None) -> None:
        self.count = count
        self.closed = trio.Event()

    async def events(self) -> AsyncIterator[bytes]:
        try:
            i = 0
            while self.count is None or i < self.count:
                yield b"event-%d" % i
                i += 1
                await trio.sleep(0.001 if self.count is None else 0)
        finally:
            self.closed.set()

    async def answer(self, request: Request) -> Reply:
        return Reply(
            200,
            [("content-type", "application/vnd.amazon.eventstream")],
            streaming=Streaming(self.events()),
        )


REQUEST = (
    b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.SubscribeToShard\r\n"
    b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"
)


async def serve(dispatcher: Any, server: Any) -> None:
    await HttpConnection(server, dispatcher, HttpLimits(), "test").run()


async def test_streamed_answer_is_chunked_event_by_event() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = StreamingDispatcher(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        await client.send_all(REQUEST)
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        parser.send(h11.EndOfMessage())
        events: list[Any] = []
        with trio.fail_after(5):
            while not any(isinstance(e, h11.EndOfMessage) for e in events):
                parser.receive_data(await client.receive_some(65536))
                while (event := parser.next_event()) is not h11.NEED_DATA:
                    events.append(event)
        response = events[0]
        assert response.status_code == 200
        assert (b"transfer-encoding", b"chunked") in response.headers
        assert (
            b"".join(e.data for e in events if isinstance(e, h11.Data)) == b"event-0event-1event-2"
        )
        assert dispatcher.closed.is_set()


async def test_hangup_cancels_the_stream_and_closes_the_iterator() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = StreamingDispatcher(None)  # endless
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        await client.send_all(REQUEST)
        with trio.fail_after(5):
            received = b""
            while b"event-0" not in received:
                received += await client.receive_some(65536)
            await client.send_eof()
            await dispatcher.closed.wait()
