"""The Kinesis gateway's HTTP/1.1 server: trio sockets around the sans-I/O ``http_wire``.

One port, two protocols: ``serve_connection`` reads a connection's first bytes and hands it to
``http2.py`` when they are HTTP/2's preface (h2c with prior knowledge, what the JS SDK sends to
an http:// endpoint), to ``HttpConnection`` below otherwise; HTTP/1.1 is told at its first byte,
so it waits for nothing. Both hand the same ``Request`` to the same ``Dispatcher``.

One task per connection (in the server's connection nursery), requests served one after the
other on it (HTTP/1.1 keep-alive; pipelined requests are parsed as they arrive and answered in
order, and the socket is read again only when no whole request is waiting). HTTP/1.0 and
``Connection: close`` close after the answer. Everything is bounded: header block
(``header_bytes_max``: 400 if over), body (``body_bytes_max``: 413, checked against
Content-Length before reading and while reading chunked bodies), connections (``admission.py``:
per listener and per client address; a connection over a bound gets a 503 ServiceUnavailable
with a Kinesis error body, then the close), and every wait has a timeout: a new connection's
first request (``first_request_timeout_s``), idle keep-alive between requests
(``idle_timeout_s``), reading a request (from its first byte to its last: 408), sending an
answer, running the operation. Bytes that are not HTTP get a 400 and the connection closes,
since its framing is lost.

A ``Streaming`` answer (SubscribeToShard) is sent chunked, one chunk per event as the iterator
yields it; a watcher task reads the socket meanwhile so that a client hanging up cancels the
stream at once, and the iterator is always closed (``aclose``). The connection closes after a
streamed answer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Final

import structlog
import trio

from ... import malloc
from ... import metrics as server_metrics
from ...config import ServerConfig, parse_host_port
from ...engine import Engine
from ...security.guard import Guard
from ...security.tls import ServerTls
from ..admission import ConnectionSlots, admission_limits
from . import metrics
from .body_limits import body_bytes_max, too_large
from .codec import Protocol, operation_of, protocol_of
from .decoding import BodyDecoder
from .dispatch import Dispatcher, Reply, Request, error_reply
from .errors import SERVICE_UNAVAILABLE
from .h2_wire import preface_match
from .http2 import PROTOCOL_LABEL as HTTP2_LABEL
from .http2 import Http2Connection
from .http_wire import (
    CHUNKED_END,
    CLOSED,
    CONTINUE,
    HttpParseError,
    ParsedRequest,
    RequestHead,
    RequestParser,
    encode_answer,
    encode_chunk,
    encode_head,
)
from .inflight import ByteBudget
from .limits import HttpLimits
from .types import GatewayContext

log = structlog.get_logger(__name__)

KINESIS_PORT_DEFAULT: Final = 4567
PROTOCOL_LABEL: Final = "http/1.1"
ITERATOR_KEY_FILE: Final = "kinesis-iterator.key"
_RECEIVE_BYTES: Final = 64 * 1024
# While an admitted large body arrives: fewer, larger reads (its bytes are reserved already).
_RECEIVE_BODY_BYTES: Final = 1024 * 1024


class _Closed(Exception):
    """The peer went away or the connection must close; nothing more to send."""


class HttpConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatcher: Dispatcher,
        limits: HttpLimits,
        peer: str,
        budget: ByteBudget | None = None,
        *,
        initial: bytes = b"",
    ) -> None:
        self.stream = stream
        self._initial = initial  # bytes already read (to tell HTTP/1.1 from HTTP/2)
        self.dispatcher = dispatcher
        self.limits = limits
        self.peer = peer
        self.parser = RequestParser(limits.header_bytes_max, limits.body_bytes_max)
        self.budget = budget or ByteBudget(limits.bodies_in_flight_bytes_max)
        self.requests_served = 0
        self.requests_received = 0
        # The budget's bytes this connection holds, and the request (by receive count) they are
        # for: pipelined requests complete in order, so it is the next one to complete.
        self.reserved_bytes = 0
        self.reserved_for = 0

    async def run(self) -> None:
        try:
            while True:
                parsed = await self._receive_request()
                if parsed is None:
                    return
                http_11, keep_alive = parsed.http_11, parsed.keep_alive
                head_only = parsed.method == "HEAD"
                request = Request(parsed.method, parsed.target, parsed.headers, parsed.body)
                del parsed  # the body goes with the request: nothing holds it past the answer
                reply = await self.dispatcher.answer(request)
                del request
                if reply.streaming is not None:
                    self._release_body(self.requests_received)
                    await self._send_streaming(reply, chunked=http_11)
                    metrics.STREAMS.labels(PROTOCOL_LABEL, "answered").inc()
                    return
                await self._send_reply(reply, close=not keep_alive, head_only=head_only)
                del reply
                self._release_body(self.requests_received)
                self.requests_served += 1
                metrics.STREAMS.labels(PROTOCOL_LABEL, "answered").inc()
                if not keep_alive:
                    return
        except HttpParseError as exc:
            await self._reject(exc.status, exc.message, exc.reason)
        except _Closed:
            pass
        finally:
            self._release_body(None)

    def _release_body(self, request_number: int | None) -> None:
        """Give the budget back once request ``request_number`` is answered (None: all)."""
        if self.reserved_bytes and request_number in (None, self.reserved_for):
            self.budget.release(self.reserved_bytes)
            self.reserved_bytes = 0

    # -- receiving -----------------------------------------------------------------------------

    async def _receive_request(self) -> ParsedRequest | None:
        """The next whole request; None when the client closed or stayed idle between requests.
        Raises HttpParseError, _Closed (after a 408 when a request is not received in time)."""
        first = self.requests_served == 0
        wait_s = self.limits.first_request_timeout_s if first else self.limits.idle_timeout_s
        deadline = trio.current_time() + wait_s
        idle = True
        while True:
            event = self.parser.next_event()
            if isinstance(event, ParsedRequest):
                self.requests_received += 1
                return event
            if event is CLOSED:
                return None
            if self.parser.waiting_for_100_continue:
                self.parser.continue_sent()
                await self._send(CONTINUE)
            if idle and self.parser.request_started:
                idle = False
                deadline = trio.current_time() + self.limits.read_timeout_s
            data: bytes | bytearray | None
            if self._initial:
                data, self._initial = self._initial, b""
            else:
                data = await self._receive(deadline)
            if data is None:
                if idle:  # idle keep-alive connection (or one that never sent): close quietly
                    phase = "before_first_request" if first else "keep_alive"
                    server_metrics.CONNECTIONS_IDLE_CLOSED.labels("kinesis", phase).inc()
                    log.debug("kinesis.connection.idle_closed", peer=self.peer, phase=phase)
                    return None
                await self._reject(408, "request not received in time", "timeout")
                raise _Closed
            self.parser.receive_data(data)
            head = self.parser.take_head()
            if head is not None:
                await self._admit_body(head)

    async def _admit_body(self, head: RequestHead) -> None:
        """Before a body is read: refuse it when its Content-Length is over what its operation
        can take (400, the operation's Kinesis error); reserve a large one's bytes in the
        gateway's budget (503 if they do not fit in time). Raises _Closed after a refusal."""
        protocol = protocol_of(head.header("content-type")) or Protocol.JSON
        operation = operation_of(head.header("x-amz-target"))
        limit = body_bytes_max(operation, protocol)
        size = head.content_length
        if size is not None and size > limit:
            type_name, message = too_large(operation, size, limit)
            await self._refuse_body(400, type_name, message, protocol, size, "too_large")
        self.parser.limit_body(limit)  # a chunked body: checked as it arrives
        reserve = min(limit, self.limits.body_bytes_max) if size is None else size
        if reserve < self.limits.body_reserve_min_bytes:
            return
        assert self.reserved_bytes == 0  # one body is received at a time
        if not await self.budget.acquire(reserve, self.limits.body_wait_timeout_s):
            message = (
                f"too many request bytes in flight (server holds at most "
                f"{self.limits.bodies_in_flight_bytes_max}); retry"
            )
            await self._refuse_body(503, SERVICE_UNAVAILABLE, message, protocol, size, "busy")
        self.reserved_bytes = reserve
        self.reserved_for = self.parser.completed + 1

    async def _refuse_body(
        self,
        status: int,
        type_name: str,
        message: str,
        protocol: Protocol,
        size: int | None,
        reason: str,
    ) -> None:
        """Answer before the body is read, then read and drop what the client still sends (at
        most its Content-Length, for at most ``refusal_linger_s``) so that our close is not a
        reset that could destroy the answer before the client reads it. Raises _Closed."""
        metrics.BAD_REQUESTS.labels(reason).inc()
        log.info("kinesis.body_refused", peer=self.peer, status=status, reason=message[:200])
        reply = error_reply(protocol, type_name, message, status)
        headers = [*reply.headers, ("retry-after", "1")] if status == 503 else reply.headers
        await self._send(encode_answer(status, headers, reply.body, close=True))
        left = self.limits.body_bytes_max if size is None else size
        with trio.move_on_after(self.limits.refusal_linger_s):
            while left > 0:
                try:
                    data = await self.stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                left -= len(data)
        raise _Closed

    async def _receive(self, deadline: float) -> bytes | bytearray | None:
        """Bytes from the socket (b"" at end of file), or None at the deadline. Raises _Closed."""
        with trio.move_on_at(deadline):
            try:
                size = _RECEIVE_BODY_BYTES if self.reserved_bytes else _RECEIVE_BYTES
                return await self.stream.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        return None

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout_s) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        if scope.cancelled_caught:
            metrics.BAD_REQUESTS.labels("send_timeout").inc()
            raise _Closed

    async def _send_reply(self, reply: Reply, *, close: bool, head_only: bool) -> None:
        answer = encode_answer(
            reply.status, reply.headers, reply.body, close=close, head_only=head_only
        )
        await self._send(answer)  # one write

    async def _reject(self, status: int, message: str, reason: str) -> None:
        """Answer an HTTP-level failure (if it can still be sent) and stop."""
        metrics.BAD_REQUESTS.labels(reason).inc()
        log.info("kinesis.http_rejected", peer=self.peer, status=status, reason=message[:200])
        type_name = "SerializationException" if status == 400 else "ValidationException"
        reply = error_reply(Protocol.JSON, type_name, message, status)
        try:
            await self._send(encode_answer(reply.status, reply.headers, reply.body, close=True))
        except _Closed:
            pass

    async def _send_streaming(self, reply: Reply, *, chunked: bool) -> None:
        """Send a streamed answer: chunked to HTTP/1.1 peers, delimited by the close to 1.0."""
        assert reply.streaming is not None
        events = reply.streaming.events
        try:
            head = encode_head(reply.status, reply.headers, chunked=chunked, close=True)
            await self._send(head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_hangup, nursery.cancel_scope)
                await self._pump(events, chunked)
                nursery.cancel_scope.cancel()
            if chunked:
                await self._send(CHUNKED_END)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(self.limits.send_timeout_s) as cleanup:
                    cleanup.shield = True
                    await aclose()

    async def _pump(self, events: AsyncIterator[bytes], chunked: bool) -> None:
        async for event in events:
            await self._send(encode_chunk(event) if chunked else event)

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        """Cancel a streamed answer when the client closes its side (or the socket breaks)."""
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                log.debug("kinesis.stream_hangup", peer=self.peer)
                scope.cancel()
                return


class Gateway:
    """The Kinesis HTTP listener's state: dispatcher, body decoder, limits, the bound on body
    bytes in flight, the connection count."""

    def __init__(
        self,
        config: ServerConfig,
        engine: Engine,
        limits: HttpLimits,
        *,
        guard: Guard | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.limits = limits
        ctx = GatewayContext(
            engine,
            region=config.kinesis_region,
            account_id=config.kinesis_account_id,
            iterator_key=_iterator_key(config.data_dir),
        )
        self.decoder = BodyDecoder()
        self.dispatcher = Dispatcher(
            ctx, dict(config.kinesis_credentials), limits.operation_timeout_s, self.decoder, guard
        )
        self.signed = bool(config.kinesis_credentials) or (guard is not None and guard.enabled)
        self.budget = ByteBudget(limits.bodies_in_flight_bytes_max)
        self.slots = ConnectionSlots(
            admission_limits(config),
            metrics.CONNECTIONS,
            "kinesis.connection",
            "kinesis",
            _refusal,
            tls,  # TLS at the listener: every connection is secured before HTTP sees a byte
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the body decoder's worker processes while the gateway serves (until cancelled),
        and give memory back after bursts of large bodies; start it before the listener."""
        async with self.decoder:
            task_status.started()
            trimmed_at = self.budget.granted_total
            while True:
                await trio.sleep(malloc.TRIM_INTERVAL_S)
                if self.budget.used == 0 and self.budget.granted_total != trimmed_at:
                    trimmed_at = self.budget.granted_total
                    await trio.to_thread.run_sync(malloc.trim)

    async def handle(self, stream: trio.SocketStream) -> None:
        async def run(peer: str, secured: trio.abc.Stream) -> None:
            await serve_connection(secured, self.dispatcher, self.limits, peer, self.budget)

        await self.slots.serve(stream, run)


async def serve_connection(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    limits: HttpLimits,
    peer: str,
    budget: ByteBudget,
) -> None:
    """Serve one admitted connection (plain TCP, or TLS already negotiated) in its protocol:
    HTTP/2 when TLS's ALPN picked "h2" (once the listener offers it) or when the first bytes are
    the preface (prior knowledge), HTTP/1.1 otherwise (garbage included: it gets the 400)."""
    tls = isinstance(stream, trio.SSLStream)
    if isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() == "h2":
        await _serve(Http2Connection(stream, dispatcher, limits, peer, budget), "h2", peer)
        return
    initial = await read_preface(stream, trio.current_time() + limits.first_request_timeout_s)
    if initial is None:  # nothing in time, or closed at once: as HttpConnection would
        server_metrics.CONNECTIONS_IDLE_CLOSED.labels("kinesis", "before_first_request").inc()
        log.debug("kinesis.connection.idle_closed", peer=peer, phase="before_first_request")
        return
    connection: HttpConnection | Http2Connection
    if preface_match(initial):
        connection = Http2Connection(stream, dispatcher, limits, peer, budget, initial=initial)
        label = "h2" if tls else HTTP2_LABEL
    else:
        connection = HttpConnection(stream, dispatcher, limits, peer, budget, initial=initial)
        label = PROTOCOL_LABEL
    await _serve(connection, label, peer)


async def _serve(connection: HttpConnection | Http2Connection, label: str, peer: str) -> None:
    log.debug("kinesis.connection.protocol", peer=peer, protocol=label)
    metrics.PROTOCOL_CONNECTIONS_OPENED.labels(label).inc()
    gauge = metrics.PROTOCOL_CONNECTIONS.labels(label)
    gauge.inc()
    try:
        await connection.run()
    finally:
        gauge.dec()


async def read_preface(stream: trio.abc.Stream, deadline: float) -> bytes | None:
    """The connection's first bytes, read until they tell HTTP/2's preface from anything else
    (HTTP/1.1 tells at its first byte, so it waits for nothing more). None when nothing came
    before ``deadline`` or the peer closed first."""
    data = b""
    while True:
        with trio.move_on_at(deadline):
            try:
                chunk = await stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return None if not data else data
            data += chunk
            if preface_match(data) is not None:
                return data
            continue
        return data or None


def _refusal(reason: str, message: str) -> bytes:
    """A connection over an admission bound: 503 ServiceUnavailable (the SDKs back off and
    retry it) with the Kinesis error body, before the close."""
    reply = error_reply(Protocol.JSON, SERVICE_UNAVAILABLE, message, 503)
    headers = [*reply.headers, ("retry-after", "1")]
    return encode_answer(reply.status, headers, reply.body, close=True)


def http_limits(config: ServerConfig) -> HttpLimits:
    return HttpLimits(
        idle_timeout_s=config.kinesis_idle_timeout_ms / 1000,
        first_request_timeout_s=config.handshake_timeout_ms / 1000,
    )


def _iterator_key(data_dir: Path) -> bytes:
    """The data dir's secret for shard iterators (made once): iterators outlive a restart."""
    path = data_dir / ITERATOR_KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its mode; O_EXCL makes a fresh 0600 one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    return key


async def open_gateway_listeners(
    config: ServerConfig,
    engine: Engine,
    limits: HttpLimits | None = None,
    *,
    guard: Guard | None = None,
    tls: ServerTls | None = None,
) -> tuple[Gateway, list[trio.SocketListener]]:
    """Bind the gateway's address (``config.kinesis_listen``). Raises OSError (address in use)."""
    assert config.kinesis_listen is not None
    host, port = parse_host_port(config.kinesis_listen, KINESIS_PORT_DEFAULT)
    gateway = await trio.to_thread.run_sync(
        partial(Gateway, config, engine, limits or http_limits(config), guard=guard, tls=tls)
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    return gateway, listeners
