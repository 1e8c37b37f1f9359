"""The gateway's HTTP/2 over real loopback TCP, driven by a raw h2 client (tests/integration/
h2client.py): many concurrent streams on one connection, a flow-control stall that completes
after window updates (and does not block the connection's other streams), a reset stream that
leaves the connection usable and closes an event stream's iterator, garbage after the preface
(GOAWAY with an error code, then the close), header blocks and bodies over their bounds (the
stream is refused, the connection goes on; past hpack's hard bound, GOAWAY), a body that never
ends (408), an idle connection (GOAWAY NO_ERROR), the server's shutdown (GOAWAY NO_ERROR), an
event stream's messages as DATA frames, and HTTP/1.1 still served on the same port.

The server is ``serve_connection`` (the gateway's own per-connection entry: it tells HTTP/2
from HTTP/1.1 by the first bytes) on a trio listener in this process, with a small dispatcher
whose targets make the cases, so limits and timeouts can be small.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import h2.errors
import pytest
import trio

from streamd.frontends.kinesis.dispatch import Reply, Request
from streamd.frontends.kinesis.h2_wire import PREFACE
from streamd.frontends.kinesis.http import serve_connection
from streamd.frontends.kinesis.inflight import ByteBudget
from streamd.frontends.kinesis.limits import HttpLimits
from streamd.frontends.kinesis.types import Streaming

from .h2client import H2Client

WAIT_S = 10.0


class Cases:
    """Targets: ``echo`` (the body back), ``big:N`` (N bytes), ``barrier:N`` (waits until N
    requests are in at once), ``slow`` (waits until cancelled), ``events:N`` (an event stream
    of N messages), ``forever`` (an event stream until closed)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.barrier = trio.Event()
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.iterator_closed = trio.Event()

    async def answer(self, request: Request) -> Reply:
        kind, _, arg = (request.header("x-amz-target") or "").partition(":")
        if kind == "barrier":
            self.arrived += 1
            if self.arrived == int(arg):
                self.barrier.set()
            with trio.fail_after(WAIT_S):
                await self.barrier.wait()
            return Reply(200, [("content-type", "text/plain")], request.body)
        if kind == "big":
            return Reply(
                200, [("content-type", "text/plain")], bytes(range(256)) * (int(arg) // 256)
            )
        if kind == "slow":
            self.started.set()
            try:
                await trio.sleep(WAIT_S)
            except trio.Cancelled:
                self.cancelled.set()
                raise
            return Reply(200, [], b"late")
        if kind in ("events", "forever"):
            count = int(arg) if kind == "events" else None
            return Reply(
                200,
                [("content-type", "application/vnd.amazon.eventstream")],
                streaming=Streaming(self._events(count)),
            )
        return Reply(200, [("content-type", "text/plain")], b"echo:" + request.body)

    async def _events(self, count: int | None) -> AsyncIterator[bytes]:
        try:
            i = 0
            while count is None or i < count:
                yield b"event-%d;" % i
                i += 1
                await trio.sleep(0.01)
        finally:
            self.iterator_closed.set()


@asynccontextmanager
async def gateway(
    limits: HttpLimits | None = None,
) -> AsyncIterator[tuple[Cases, int, trio.CancelScope]]:
    cases = Cases()
    limits = limits or HttpLimits()
    budget = ByteBudget(limits.bodies_in_flight_bytes_max)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await serve_connection(stream, cases, limits, "test", budget)  # type: ignore[arg-type]
        finally:
            await stream.aclose()

    server = trio.CancelScope()  # the server's own: cancelling it leaves the test running

    async def serve() -> None:
        with server:
            await trio.serve_listeners(handle, listeners)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        yield cases, port, server
        nursery.cancel_scope.cancel()


async def connect(port: int, **kwargs: Any) -> H2Client:
    return await H2Client.connect("127.0.0.1", port, **kwargs)


async def until(condition: Callable[[], bool], client: H2Client) -> None:
    with trio.fail_after(WAIT_S):
        while not condition():
            await client.receive(WAIT_S)


async def test_many_concurrent_streams_are_served_at_once_on_one_connection() -> None:
    count = 60
    async with gateway() as (_cases, port, _):
        client = await connect(port)
        bodies = {
            client.start(b"x" * (i * 300), target=f"barrier:{count}"): i for i in range(count)
        }
        await client.flush()
        await client.wait(*bodies)  # the barrier opens only once all 60 are in at once
        for sid, i in bodies.items():
            answer = client.answers[sid]
            assert (answer.status, bytes(answer.body)) == (200, b"x" * (i * 300))
        await client.aclose()


async def test_a_flow_control_stall_completes_after_window_updates() -> None:
    size = 200 * 1024
    async with gateway() as (_cases, port, _):
        client = await connect(port, window_bytes=1024, auto_ack=False)
        sid = client.start(target=f"big:{size}")
        await client.flush()
        await until(lambda: len(client.answers[sid].body) >= 1024, client)
        while await client.receive(0.3):  # nothing more comes while the window is closed
            pass
        assert len(client.answers[sid].body) == 1024 and not client.answers[sid].ended
        # The stalled stream does not block the connection: another stream goes through.
        other = client.start(b"hi", target="echo")
        await client.flush()
        await until(lambda: len(client.answers[other].body) >= 7, client)
        await client.ack(other)
        assert bytes(client.answers[other].body) == b"echo:hi"
        # Window updates let the rest come.
        with trio.fail_after(WAIT_S):
            while not client.answers[sid].ended:
                await client.ack(sid)
                await client.receive(WAIT_S)
        assert bytes(client.answers[sid].body) == bytes(range(256)) * (size // 256)
        await client.aclose()


async def test_a_reset_stream_is_cancelled_and_leaves_the_connection_usable() -> None:
    async with gateway() as (cases, port, _):
        client = await connect(port)
        slow = client.start(target="slow")
        await client.flush()
        with trio.fail_after(WAIT_S):
            await cases.started.wait()
        client.conn.reset_stream(slow, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        with trio.fail_after(WAIT_S):
            await cases.cancelled.wait()  # the operation was cancelled, not left running
        # An event stream reset half-way: its iterator is closed.
        events = client.start(target="forever")
        await client.flush()
        await until(lambda: b"event-2;" in client.answers[events].body, client)
        client.conn.reset_stream(events, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        with trio.fail_after(WAIT_S):
            await cases.iterator_closed.wait()
        after = client.start(b"still", target="echo")
        await client.flush()
        await client.wait(after)
        assert bytes(client.answers[after].body) == b"echo:still"
        assert client.goaway is None
        await client.aclose()


async def test_garbage_after_the_preface_gets_goaway_with_an_error_and_the_close() -> None:
    async with gateway() as (_cases, port, _):
        client = await connect(port)
        await client.stream.send_all(b"\x00\x00\x04\x99garbage that is not a frame" * 4)
        with trio.fail_after(WAIT_S):
            while await client.receive(WAIT_S):
                pass
        assert client.goaway is not None and client.goaway.error_code != 0
        assert client.eof  # and the socket is closed
        await client.aclose()


async def test_a_header_block_over_the_bound_gets_400_and_the_connection_goes_on() -> None:
    async with gateway() as (_cases, port, _):
        client = await connect(port)
        big = client.start(b"{}", target="echo", headers=[("x-padding", "p" * 20_000)])
        await client.flush()
        await client.wait(big)
        answer = client.answers[big]
        assert answer.status == 400 and b"header block over 16384 bytes" in answer.body
        ok = client.start(b"1", target="echo")
        await client.flush()
        await client.wait(ok)
        assert client.answers[ok].status == 200
        # Past hpack's hard bound the whole connection goes.
        client.start(b"{}", target="echo", headers=[("x-padding", "p" * 70_000)])
        await client.flush()
        with trio.fail_after(WAIT_S):
            while await client.receive(WAIT_S):
                pass
        assert client.goaway is not None and client.goaway.error_code != 0
        await client.aclose()


async def test_bodies_over_their_bounds_are_refused_and_the_connection_goes_on() -> None:
    async with gateway(HttpLimits(body_bytes_max=3 * 1024 * 1024)) as (_cases, port, _):
        client = await connect(port)
        # Content-Length over the operation's bound (1 MiB for ListStreams): refused before a
        # byte of the body is read, with the operation's error.
        declared = client.start(
            target="Kinesis_20131202.ListStreams",
            headers=[("content-length", str(2 * 1024 * 1024))],
            content_length=False,
            end=False,
        )
        await client.flush()
        await client.wait(declared)
        answer = client.answers[declared]
        assert answer.status == 400
        assert json.loads(answer.body)["__type"] == "ValidationException"
        # No Content-Length: the body is counted as it comes, and refused (413) past the bound.
        streamed = client.start(
            target="Kinesis_20131202.ListStreams", content_length=False, end=False
        )
        chunk = b"a" * 16_384
        for _ in range(80):  # 1.25 MiB
            if client.done(streamed):
                break
            client.send_body(streamed, chunk, end=False)
            await client.flush()
            await client.receive(0.01)
        await client.wait(streamed)
        assert client.answers[streamed].status == 413
        ok = client.start(b"1", target="echo")
        await client.flush()
        await client.wait(ok)
        assert bytes(client.answers[ok].body) == b"echo:1"
        await client.aclose()


async def test_a_body_that_never_ends_gets_408() -> None:
    async with gateway(HttpLimits(read_timeout_s=0.3)) as (_cases, port, _):
        client = await connect(port)
        sid = client.start(b"part", target="echo", end=False)
        await client.flush()
        await client.wait(sid)
        assert client.answers[sid].status == 408
        await client.aclose()


async def test_an_idle_connection_gets_goaway_no_error_then_the_close() -> None:
    async with gateway(HttpLimits(first_request_timeout_s=0.3)) as (_cases, port, _):
        client = await connect(port)
        with trio.fail_after(WAIT_S):
            while await client.receive(WAIT_S):
                pass
        assert client.goaway is not None and client.goaway.error_code == 0
        assert client.eof
        await client.aclose()


async def test_shutdown_sends_goaway_no_error() -> None:
    async with gateway() as (cases, port, server):
        client = await connect(port)
        client.start(target="slow")
        await client.flush()
        with trio.fail_after(WAIT_S):
            await cases.started.wait()
        server.cancel()  # what the node does to its connections at shutdown
        with trio.fail_after(WAIT_S):
            while await client.receive(WAIT_S):
                pass
        assert client.goaway is not None and client.goaway.error_code == 0
        await client.aclose()


async def test_an_event_stream_is_data_frames_then_the_stream_end() -> None:
    async with gateway() as (cases, port, _):
        client = await connect(port)
        sid = client.start(target="events:5")
        await client.flush()
        await client.wait(sid)
        answer = client.answers[sid]
        assert answer.status == 200 and answer.ended
        assert answer.headers["content-type"] == "application/vnd.amazon.eventstream"
        assert bytes(answer.body) == b"".join(b"event-%d;" % i for i in range(5))
        assert cases.iterator_closed.is_set()
        await client.aclose()


@pytest.mark.parametrize("piece_bytes", [1, 5, len(PREFACE)])
async def test_the_preface_is_recognised_however_it_is_cut(piece_bytes: int) -> None:
    async with gateway() as (_cases, port, _):
        client = H2Client(await trio.open_tcp_stream("127.0.0.1", port))
        sid = client.start(b"cut", target="echo")
        data = client.conn.data_to_send()
        for at in range(0, 40, piece_bytes):
            await client.stream.send_all(data[at : min(at + piece_bytes, 40)])
            await trio.sleep(0.001)
        await client.stream.send_all(data[40:])
        await client.wait(sid)
        assert bytes(client.answers[sid].body) == b"echo:cut"
        await client.aclose()


async def test_http11_is_still_served_on_the_same_port() -> None:
    async with gateway() as (_cases, port, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: echo\r\ncontent-length: 2\r\n"
            b"connection: close\r\n\r\nhi"
        )
        received = b""
        with trio.fail_after(WAIT_S):
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"echo:hi")
        await stream.aclose()
