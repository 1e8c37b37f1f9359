"""The Kinesis gateway's HTTP/2 server: trio around the sans-I/O ``h2_wire``.

``Http2Connection(stream, ...).run()`` serves one HTTP/2 connection over any ``trio.abc.Stream``:
today a TCP socket whose first bytes were the h2c preface (``http.py`` tells the protocols
apart), later a TLS stream whose ALPN said "h2". ``initial`` holds bytes already read from it.

Tasks, all in the connection's nursery:

- the reader: feeds received bytes to ``H2Server`` and hands its events on (a new stream gets a
  task; a body wakes its stream; RST_STREAM cancels its stream's task). It alone reads.
- the writer: writes whatever ``H2Server.data_to_send`` holds, woken by anyone who queued bytes.
  It alone writes, so a stream task cancelled mid-answer (its peer reset it) can never cut a
  frame in half; a write that times out or is cancelled half-way marks the connection broken.
- one task per stream: admit its body (the operation's bound, as over HTTP/1.1: 400 with the
  operation's error from Content-Length alone; large bodies reserve their bytes in the gateway's
  ``ByteBudget`` first, 503 if no room in time), wait for the body, ``Dispatcher.answer`` it
  (the same ``Request`` and ``Reply`` as HTTP/1.1: every operation works over both), send the
  answer as the peer's windows allow. A ``Streaming`` answer (SubscribeToShard) is an HTTP/2
  stream of DATA frames, one event-stream message after the other: the same events, heartbeats
  and endings as over HTTP/1.1; the next event is taken only when the previous one is handed to
  the socket (the peer's window and ``h2_write_backlog_bytes_max`` are the backpressure), and
  the iterator is always closed.

Every wait has a timeout: the first stream (``first_request_timeout_s``), idle with no stream
(``idle_timeout_s``: then GOAWAY NO_ERROR), a body (``read_timeout_s`` from its headers: 408),
room in the budget (``body_wait_timeout_s``: 503), an answer waiting for the peer's window or
the socket (``send_timeout_s``: RST_STREAM), a write (``send_timeout_s``: broken). A protocol
error gets GOAWAY with its code, then the close; so does the server's shutdown (GOAWAY
NO_ERROR, then the close; h2 refuses to send on streams after a GOAWAY, so streams still
running are cut, as over HTTP/1.1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog
import trio

from . import metrics
from .body_limits import body_bytes_max, too_large
from .codec import Protocol, operation_of, protocol_of
from .dispatch import Dispatcher, Reply, Request, error_reply
from .errors import SERVICE_UNAVAILABLE
from .h2_wire import (
    BodyReceived,
    BodyTooLarge,
    Event,
    H2ProtocolError,
    H2Server,
    H2Settings,
    HeadReceived,
    HeadRefused,
    PeerClosing,
    StreamReset,
)
from .http_wire import RequestHead
from .inflight import ByteBudget
from .limits import HttpLimits

log = structlog.get_logger(__name__)

PROTOCOL_LABEL: Final = "h2c"
_RECEIVE_BYTES: Final = 256 * 1024
_GOAWAY_TIMEOUT_S: Final = 1.0  # the last GOAWAY at shutdown: best effort, never a hang
_LINGER_S: Final = 1.0  # after our GOAWAY and FIN, for the peer's close
_ERROR_CANCEL: Final = 0x8
_ERROR_REFUSED_STREAM: Final = 0x7


def settings_of(limits: HttpLimits) -> H2Settings:
    return H2Settings(
        streams_max=limits.h2_streams_max,
        header_bytes_max=limits.header_bytes_max,
        header_list_bytes_max=max(limits.h2_header_list_bytes_max, limits.header_bytes_max),
        body_bytes_max=limits.body_bytes_max,
        stream_window_bytes=limits.h2_stream_window_bytes,
        connection_window_bytes=limits.h2_connection_window_bytes,
    )


class _Broken(Exception):
    """The socket failed or a write timed out: nothing more can be sent."""


@dataclass(eq=False, slots=True)
class _Stream:
    stream_id: int
    head: RequestHead | None  # None: refused at its headers (``refusal`` says how)
    refusal: tuple[int, str] | None = None
    body: bytes | None = None
    too_large: str | None = None
    arrived: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reset_by_peer: bool = False
    reserved_bytes: int = 0


class Http2Connection:
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
        self.dispatcher = dispatcher
        self.limits = limits
        self.peer = peer
        self.budget = budget or ByteBudget(limits.bodies_in_flight_bytes_max)
        self.protocol = H2Server(settings_of(limits))
        self._initial = initial
        self._streams: dict[int, _Stream] = {}
        self._progress = trio.Event()  # set (and replaced) whenever windows or writes move
        self._wake_writer = trio.Event()
        self._writing_bytes = 0  # what the writer is handing to the socket right now
        self._writer_idle = False  # the writer found nothing to send and waits
        self._broken = False
        self._peer_closing = False
        self._goaway_reason = "shutdown"  # why the connection ends, if it ends with our GOAWAY

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the peer closes, idles out, breaks the protocol, or we are cancelled."""
        log.debug("kinesis.h2.connection_opened", peer=self.peer)
        self.protocol.initiate()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._reader(nursery)
                await self._drain(trio.current_time() + _GOAWAY_TIMEOUT_S)
                nursery.cancel_scope.cancel()
        except _Broken:
            pass
        finally:
            await self._last_goaway()
            await self._linger()
            log.debug(
                "kinesis.h2.connection_closed",
                peer=self.peer,
                streams=self.protocol.streams_opened,
                reason=self._goaway_reason,
            )

    async def _last_goaway(self) -> None:
        """At the end, if the socket is still whole: GOAWAY NO_ERROR unless one is queued
        already (shutdown, the peer's GOAWAY), then whatever is still unsent. Shielded and
        timed: cleanup must neither hang nor be cut short by the cancellation."""
        if self._broken:
            return
        if not self.protocol.closed:
            self.protocol.close()
            metrics.H2_GOAWAYS.labels(self._goaway_reason).inc()
        with trio.move_on_after(_GOAWAY_TIMEOUT_S) as scope:
            scope.shield = True
            try:
                await self.stream.send_all(self.protocol.data_to_send())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _linger(self) -> None:
        """After our GOAWAY: send FIN, then read and drop what the peer still sends (frames it
        wrote before it saw the GOAWAY) until its close, for at most ``_LINGER_S``. Closing
        with unread bytes would reset the connection, and a reset can destroy the GOAWAY (or
        the last answers) before the peer reads them. Shielded: cleanup is never cut short."""
        if self._broken or not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return
        with trio.move_on_after(_LINGER_S) as scope:
            scope.shield = True
            try:
                await self.stream.send_eof()
                while await self.stream.receive_some(_RECEIVE_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    async def _drain(self, deadline: float) -> None:
        """Wait (until ``deadline``) for the writer to hand everything queued to the socket."""
        self._wake()
        await self._wait_until(lambda: self._writing_bytes == 0 and self._writer_idle, deadline)

    # -- reading -------------------------------------------------------------------------------

    async def _reader(self, nursery: trio.Nursery) -> None:
        """Returns when the connection is to end (GOAWAY queued, or the peer is gone)."""
        if self._initial and not self._feed(self._initial, nursery):
            return
        self._initial = b""
        while True:
            if self._peer_closing and not self._streams:
                self._goaway_reason = "peer_closed"
                return
            first = self.protocol.streams_opened == 0
            wait_s = self.limits.first_request_timeout_s if first else self.limits.idle_timeout_s
            data: bytes | bytearray | None = None
            with trio.move_on_after(wait_s):
                try:
                    data = await self.stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if data is None:
                if self._streams:  # they run under their own deadlines
                    continue
                self._goaway_reason = "idle"
                log.debug("kinesis.h2.idle_closed", peer=self.peer, first=first)
                self._close("idle")
                return
            if not data:
                self._broken = True  # the peer is gone: nothing to say to it
                return
            if not self._feed(data, nursery):
                return

    def _feed(self, data: bytes | bytearray, nursery: trio.Nursery) -> bool:
        """Hand bytes to the protocol and act on its events; False once the connection is to
        end (a protocol error: GOAWAY with its code is queued)."""
        try:
            events = self.protocol.receive_data(data)
        except H2ProtocolError as exc:
            metrics.BAD_REQUESTS.labels("h2_protocol_error").inc()
            metrics.H2_GOAWAYS.labels("protocol_error").inc()
            log.info("kinesis.h2.protocol_error", peer=self.peer, reason=exc.message[:200])
            self._goaway_reason = "protocol_error"
            self._wake()
            return False
        for event in events:
            self._on_event(event, nursery)
        self._wake()
        self._poke()
        return True

    def _on_event(self, event: Event, nursery: trio.Nursery) -> None:
        if isinstance(event, HeadReceived | HeadRefused):
            if len(self._streams) >= 2 * self.limits.h2_streams_max or self._peer_closing:
                # Tasks of reset streams still winding down count too: a client resetting
                # streams as fast as it opens them cannot pile up tasks.
                self.protocol.reset(event.stream_id, _ERROR_REFUSED_STREAM)
                metrics.STREAMS.labels(PROTOCOL_LABEL, "refused").inc()
                return
            if isinstance(event, HeadReceived):
                opened = _Stream(event.stream_id, event.head)
            else:
                opened = _Stream(event.stream_id, None, (event.status, event.message))
            self._streams[event.stream_id] = opened
            metrics.H2_OPEN_STREAMS.inc()
            nursery.start_soon(self._serve_stream, opened)
            return
        if isinstance(event, PeerClosing):
            self._peer_closing = True
            return
        state = self._streams.get(event.stream_id)
        if state is None:
            return
        if isinstance(event, BodyReceived):
            state.body = event.body
            state.arrived.set()
        elif isinstance(event, BodyTooLarge):
            state.too_large = event.message
            state.arrived.set()
        elif isinstance(event, StreamReset):
            state.reset_by_peer = True
            state.scope.cancel()

    def _close(self, reason: str) -> None:
        if not self.protocol.closed:
            self.protocol.close()
            metrics.H2_GOAWAYS.labels(reason).inc()
            self._wake()

    # -- writing -------------------------------------------------------------------------------

    async def _writer(self, connection: trio.CancelScope) -> None:
        """The only task that writes to the socket."""
        while True:
            self._wake_writer = trio.Event()
            data = self.protocol.data_to_send()
            if not data:
                self._writer_idle = True
                self._poke()
                await self._wake_writer.wait()  # woken by whoever queues bytes; cancelled with us
                continue
            self._writer_idle = False
            self._writing_bytes = len(data)
            written = False
            try:
                with trio.move_on_after(self.limits.send_timeout_s):
                    await self.stream.send_all(data)
                    written = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._writing_bytes = 0
                if not written:  # failed, timed out or cancelled half-way: framing is lost
                    self._broken = True
            if not written:
                metrics.BAD_REQUESTS.labels("send_timeout").inc()
                log.debug("kinesis.h2.write_failed", peer=self.peer)
                connection.cancel()
                return
            self._poke()

    def _wake(self) -> None:
        """Bytes were queued: the writer has work (and is not idle until it finds none)."""
        self._writer_idle = False
        self._wake_writer.set()

    def _poke(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _wait_until(self, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``ready()`` (re-checked whenever windows or writes move), at most until
        ``deadline``."""
        while not ready():
            if trio.current_time() >= deadline:
                return False
            with trio.move_on_at(deadline):
                await self._progress.wait()
        return True

    # -- one stream ----------------------------------------------------------------------------

    async def _serve_stream(self, state: _Stream) -> None:
        ending = "abandoned"
        try:
            with state.scope:
                ending = await self._exchange(state)
            if state.reset_by_peer:
                ending = "reset"
                log.debug("kinesis.h2.stream_reset", peer=self.peer, stream=state.stream_id)
        finally:
            if state.reserved_bytes:
                self.budget.release(state.reserved_bytes)
                state.reserved_bytes = 0
            self.protocol.finish(state.stream_id)
            self._wake()
            self._poke()
            del self._streams[state.stream_id]
            metrics.H2_OPEN_STREAMS.dec()
            metrics.STREAMS.labels(PROTOCOL_LABEL, ending).inc()

    async def _exchange(self, state: _Stream) -> str:
        """Receive, dispatch, answer one stream; returns how it ended (the metrics label)."""
        limits = self.limits
        read_deadline = trio.current_time() + limits.read_timeout_s
        if state.head is None:
            assert state.refusal is not None
            status, message = state.refusal
            type_name = "SerializationException" if status == 400 else "ValidationException"
            reason = "too_large" if status == 413 else "malformed"
            return await self._refuse(state, Protocol.JSON, type_name, message, status, reason)
        head = state.head
        protocol = protocol_of(head.header("content-type")) or Protocol.JSON
        refused = await self._admit(state, head, protocol)
        if refused is not None:
            return refused
        with trio.move_on_at(read_deadline):
            await state.arrived.wait()
        if state.too_large is not None:
            return await self._refuse(
                state, protocol, "ValidationException", state.too_large, 413, "too_large"
            )
        if state.body is None:
            message = "request not received in time"
            return await self._refuse(
                state, protocol, "ValidationException", message, 408, "timeout"
            )
        request = Request(head.method, head.target, head.headers, state.body)
        state.body = None
        reply = await self.dispatcher.answer(request)
        del request
        if reply.streaming is not None:
            return await self._send_streaming(state, reply)
        return await self._send_reply(state, reply, head_only=head.method == "HEAD")

    async def _admit(self, state: _Stream, head: RequestHead, protocol: Protocol) -> str | None:
        """Bound the body by its operation and reserve a large one's bytes, then let it come.
        Returns the ending if the stream was refused instead."""
        operation = operation_of(head.header("x-amz-target"))
        limit = body_bytes_max(operation, protocol)
        size = head.content_length
        if size is not None and size > limit:
            type_name, message = too_large(operation, size, limit)
            return await self._refuse(state, protocol, type_name, message, 400, "too_large")
        reserve = min(limit, self.limits.body_bytes_max) if size is None else size
        if state.arrived.is_set():  # the whole body is here already (or there is none)
            reserve = len(state.body or b"")
        if reserve >= self.limits.body_reserve_min_bytes:
            if not await self.budget.acquire(reserve, self.limits.body_wait_timeout_s):
                message = (
                    f"too many request bytes in flight (server holds at most "
                    f"{self.limits.bodies_in_flight_bytes_max}); retry"
                )
                return await self._refuse(
                    state, protocol, SERVICE_UNAVAILABLE, message, 503, "busy"
                )
            state.reserved_bytes = reserve
        if not self.protocol.admit(state.stream_id, limit):
            message = f"body over {limit} bytes"
            return await self._refuse(
                state, protocol, "ValidationException", message, 413, "too_large"
            )
        self._wake()  # the held credits: WINDOW_UPDATE
        return None

    async def _refuse(
        self,
        state: _Stream,
        protocol: Protocol,
        type_name: str,
        message: str,
        status: int,
        reason: str,
    ) -> str:
        """Answer an error before (or instead of) the body; the connection stays usable."""
        metrics.BAD_REQUESTS.labels(reason).inc()
        log.info(
            "kinesis.h2.stream_refused",
            peer=self.peer,
            stream=state.stream_id,
            status=status,
            reason=message[:200],
        )
        reply = error_reply(protocol, type_name, message, status)
        if status == 503:
            reply.headers.append(("retry-after", "1"))
        await self._send_reply(state, reply, head_only=False)
        return "timeout" if reason == "timeout" else "refused"

    async def _send_reply(self, state: _Stream, reply: Reply, *, head_only: bool) -> str:
        sid = state.stream_id
        self.protocol.send_answer(sid, reply.status, reply.headers, reply.body, head_only=head_only)
        self._wake()
        deadline = trio.current_time() + self.limits.send_timeout_s
        if not await self._wait_until(lambda: self.protocol.answer_sent(sid), deadline):
            metrics.BAD_REQUESTS.labels("send_timeout").inc()
            self.protocol.reset(sid, _ERROR_CANCEL)
            return "timeout"
        return "answered"

    async def _send_streaming(self, state: _Stream, reply: Reply) -> str:
        """An event stream as DATA frames: one message per ``send_body``, backpressured."""
        assert reply.streaming is not None
        sid = state.stream_id
        events = reply.streaming.events
        try:
            if not self.protocol.start_answer(sid, reply.status, reply.headers):
                return "reset"
            self._wake()
            if not await self._pump(sid, events):
                self.protocol.reset(sid, _ERROR_CANCEL)
                metrics.BAD_REQUESTS.labels("send_timeout").inc()
                return "timeout"
            self.protocol.send_body(sid, b"", end=True)
            self._wake()
            deadline = trio.current_time() + self.limits.send_timeout_s
            if not await self._wait_until(lambda: self.protocol.answer_sent(sid), deadline):
                self.protocol.reset(sid, _ERROR_CANCEL)
                return "timeout"
            return "answered"
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(self.limits.send_timeout_s) as cleanup:
                    cleanup.shield = True
                    await aclose()

    async def _pump(self, sid: int, events: AsyncIterator[bytes]) -> bool:
        """Send every event; False if one could not be handed to the socket in time."""
        backlog_max = self.limits.h2_write_backlog_bytes_max

        def sent() -> bool:
            return self.protocol.pending_bytes(sid) == 0 and self._writing_bytes <= backlog_max

        async for event in events:
            self.protocol.send_body(sid, event)
            self._wake()
            deadline = trio.current_time() + self.limits.send_timeout_s
            if not await self._wait_until(sent, deadline):
                return False
        return True
