"""The gateway's HTTP connection over in-memory streams: keep-alive, pipelining, 100-continue,
HTTP/1.0 and Connection: close, limits and garbage (answer, then close), timeouts in virtual time,
chunked streamed answers, and a client that hangs up mid-stream cancels the stream and closes its
iterator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httptools
import pytest
import trio
import trio.testing

from streamd.frontends.kinesis.dispatch import Reply, Request
from streamd.frontends.kinesis.http import HttpConnection, HttpLimits
from streamd.frontends.kinesis.inflight import ByteBudget
from streamd.frontends.kinesis.types import Streaming


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


class EchoDispatcher:
    """Answers each request with its target and body, and remembers the requests."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def answer(self, request: Request) -> Reply:
        self.requests.append(request)
        return Reply(200, [("content-type", "text/plain")], request.target.encode() + request.body)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False


class ResponseReader:
    """The client side: llhttp's response parser over what the connection wrote."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True

    async def read_until_closed(self, client: trio.testing.MemoryReceiveStream | Any) -> bytes:
        raw = b""
        with trio.fail_after(30):
            while data := await client.receive_some(65536):
                raw += data
        return raw


REQUEST = (
    b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.SubscribeToShard\r\n"
    b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"
)


def post(target: str, body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = b"POST %s HTTP/%s\r\nHost: x\r\nContent-Length: %d\r\n" % (
        target.encode(),
        version,
        len(body),
    )
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


async def serve(dispatcher: Any, server: Any, limits: HttpLimits | None = None) -> None:
    """One connection, closed afterwards as ``Gateway.handle`` does."""
    try:
        await HttpConnection(server, dispatcher, limits or HttpLimits(), "test").run()
    finally:
        await server.aclose()


async def exchange(
    data: bytes, *, limits: HttpLimits | None = None, eof: bool = True
) -> tuple[list[Response], bytes, EchoDispatcher]:
    """Send ``data`` (then EOF), read until the server closes: the responses and raw bytes."""
    client, server = trio.testing.memory_stream_pair()
    dispatcher = EchoDispatcher()
    reader = ResponseReader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server, limits)
        await client.send_all(data)
        if eof:
            await client.send_eof()
        raw = await reader.read_until_closed(client)
    reader.parser.feed_data(raw)
    return reader.responses, raw, dispatcher


async def test_keep_alive_serves_requests_one_after_the_other() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = EchoDispatcher()
    reader = ResponseReader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        for i in range(3):
            await client.send_all(post(f"/{i}", b"body"))
            with trio.fail_after(5):
                while len(reader.responses) <= i or not reader.responses[i].complete:
                    reader.parser.feed_data(await client.receive_some(65536))
        await client.send_eof()
    assert [(r.status, r.body) for r in reader.responses] == [
        (200, b"/0body"),
        (200, b"/1body"),
        (200, b"/2body"),
    ]
    assert all("connection" not in r.headers for r in reader.responses)


async def test_pipelined_requests_are_answered_in_order() -> None:
    data = b"".join(post(f"/{i}", b"x" * i) for i in range(5))
    responses, _, dispatcher = await exchange(data)
    assert [r.body for r in responses] == [b"/%d" % i + b"x" * i for i in range(5)]
    assert [r.target for r in dispatcher.requests] == [f"/{i}" for i in range(5)]


async def test_connection_close_and_http_10_close_after_the_answer() -> None:
    for request in (post("/a", b"", b"Connection: close"), post("/a", b"", version=b"1.0")):
        responses, _, dispatcher = await exchange(request + post("/b", b""), eof=False)
        assert [r.body for r in responses] == [b"/a"]
        assert responses[0].headers["connection"] == "close"
        assert len(dispatcher.requests) == 1


async def test_chunked_request_body() -> None:
    data = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    responses, _, _ = await exchange(data)
    assert [r.body for r in responses] == [b"/cabcde"]


async def test_expect_100_continue_gets_a_100_before_the_body() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = EchoDispatcher()
    head = b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        await client.send_all(head)
        with trio.fail_after(5):
            interim = await client.receive_some(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send_all(b"body")
        await client.send_eof()
        reader = ResponseReader()
        reader.parser.feed_data(await reader.read_until_closed(client))
    assert [(r.status, r.body) for r in reader.responses] == [(200, b"/ebody")]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n", 400),
    ],
    ids=["garbage", "body-too-large", "header-too-large"],
)
async def test_bad_requests_are_answered_then_the_connection_closes(
    data: bytes, status: int
) -> None:
    responses, _, dispatcher = await exchange(data, eof=False)
    assert [r.status for r in responses] == [status]
    assert responses[0].headers["connection"] == "close"
    assert dispatcher.requests == []


async def test_good_requests_before_garbage_are_answered_first() -> None:
    responses, _, _ = await exchange(post("/ok", b"") + b"\x00garbage\r\n\r\n", eof=False)
    assert [r.status for r in responses] == [200, 400]


async def test_an_idle_connection_closes_quietly(autojump_clock: Any) -> None:
    client, server = trio.testing.memory_stream_pair()
    limits = HttpLimits(idle_timeout_s=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, EchoDispatcher(), server, limits)
        with trio.fail_after(11):
            assert await client.receive_some(65536) == b""
        assert trio.current_time() >= 10.0


async def test_a_request_not_received_in_time_is_408(autojump_clock: Any) -> None:
    client, server = trio.testing.memory_stream_pair()
    limits = HttpLimits(idle_timeout_s=100.0, read_timeout_s=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, EchoDispatcher(), server, limits)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        reader = ResponseReader()
        reader.parser.feed_data(await reader.read_until_closed(client))
        assert 5.0 <= trio.current_time() < 6.0
    assert [r.status for r in reader.responses] == [408]


async def test_a_head_request_gets_no_body() -> None:
    data = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    _, raw, _ = await exchange(data)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"content-length: 1\r\n\r\n")


async def test_streamed_answer_is_chunked_event_by_event() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = StreamingDispatcher(3)
    reader = ResponseReader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        await client.send_all(REQUEST)
        raw = await reader.read_until_closed(client)
    reader.parser.feed_data(raw)
    [response] = reader.responses
    assert response.status == 200 and response.complete
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["connection"] == "close"
    assert response.body == b"event-0event-1event-2"
    assert b"7\r\nevent-1\r\n" in raw  # one chunk per event
    assert dispatcher.closed.is_set()


async def test_streamed_answer_to_http_10_is_delimited_by_the_close() -> None:
    client, server = trio.testing.memory_stream_pair()
    dispatcher = StreamingDispatcher(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server)
        await client.send_all(REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
        raw = await ResponseReader().read_until_closed(client)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head and body == b"event-0event-1"


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


# -- large bodies: refused from their Content-Length, bounded in flight (issue 10, item 8) ----


def kinesis_head(
    operation: str, length: int, content_type: str = "application/x-amz-json-1.1"
) -> bytes:
    return (
        f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.{operation}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_over_its_operation_bound_is_refused_before_it_is_read() -> None:
    """The answer comes while the client has sent only the head; the dispatcher never runs."""
    client, server = trio.testing.memory_stream_pair()
    dispatcher = EchoDispatcher()
    reader = ResponseReader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, dispatcher, server, None)
        await client.send_all(kinesis_head("PutRecords", 15 * 1024 * 1024))
        with trio.fail_after(5):
            reader.parser.feed_data(await client.receive_some(65536))
        await client.send_all(b"x" * 100_000)  # what the client was still sending is drained
        await client.send_eof()
        reader.parser.feed_data(await reader.read_until_closed(client))
    (response,) = reader.responses
    assert response.status == 400
    assert b"Records size exceeds 10 MB limit" in response.body
    assert b"InvalidArgumentException" in response.body
    assert dispatcher.requests == []


async def test_bodies_in_flight_share_a_byte_budget(autojump_clock: Any) -> None:
    """With room for one large body, a second connection's large body waits; when the first is
    answered, it goes on. A third that cannot get room in time gets 503 before its body is read."""
    limits = HttpLimits(bodies_in_flight_bytes_max=300_000, body_wait_timeout_s=5.0)
    budget = ByteBudget(limits.bodies_in_flight_bytes_max)
    pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
    body = b"{" + b" " * 199_998 + b"}"
    readers = [ResponseReader() for _ in pairs]
    async with trio.open_nursery() as nursery:
        for _, server in pairs:
            connection = HttpConnection(server, EchoDispatcher(), limits, "test", budget)
            nursery.start_soon(connection.run)
        first, second, third = (client for client, _ in pairs)
        await first.send_all(kinesis_head("PutRecords", len(body)))
        await trio.sleep(0.1)
        assert budget.used == len(body)
        await second.send_all(kinesis_head("PutRecords", len(body)))
        await trio.sleep(0.1)
        assert budget.waiting == 1
        await first.send_all(body)  # answered: its bytes go back, the second is admitted
        await trio.sleep(0.1)
        assert (budget.used, budget.waiting) == (len(body), 0)
        await third.send_all(kinesis_head("PutRecords", len(body)))
        await trio.sleep(6)  # the second never sends its body: the third times out waiting
        readers[2].parser.feed_data(await third.receive_some(65536))
        assert readers[2].responses[0].status == 503
        assert b"ServiceUnavailable" in readers[2].responses[0].body
        nursery.cancel_scope.cancel()
    assert budget.used == 0  # every reservation was given back, the cancelled one too
