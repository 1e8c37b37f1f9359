"""The native protocol server: trio TCP listeners, one task per connection, one per request.

Per connection: a reader loop feeds bytes to the sans-I/O ``FrameDecoder``, the first message
must be ``hello``, and every later request runs in its own task (bounded by
``requests_in_flight_max``) so a long-poll read never blocks a put on the same connection.
Responses go to an outbox that one writer task drains, joining small answers that queued up
into one ``send_all`` (fewer syscalls under load, no interleaved frames).

Memory per connection is bounded (invariant 8): the outbox holds at most ``outbox_bytes_max``
of answers, counting what requests in flight reserved for theirs (a read reserves its
max_bytes), and while it is full the reader reads no more of that client's requests, so a client
that never reads its answers stops being read and TCP flow control stops it. A request's map is
dropped once its handler has parsed it (a long-poll keeps only what it parsed). Frames decode
strictly and to a bounded size (``streamd_client.strict_cbor``).

EOF from the client (a half-close, or a close) ends reading, not answering: requests received
before it are answered and flushed, then the connection closes (bounded by ``eof_drain_ms``).
A put sent just before a half-close is therefore acknowledged, never applied in silence.

Idle connections are closed (``idle_timeout_ms``): once the hello is done, a connection with no
request in flight (a long-poll read is one) for that long gets an error frame with request id 0
and code TIMEOUT, then the close; the client library opens a new connection on its next call.
Before the hello, ``handshake_timeout_ms`` applies. Admission (connection bounds, per-address
bounds, the typed LIMIT_EXCEEDED refusal, accept() under fd exhaustion) is ``admission.py``'s.

Malformed framing (a bad length, a body that is not a CBOR map) is a protocol error: the client
gets an error frame with request id 0 and the connection closes, since its framing can no longer
be trusted. A bad request inside a good frame gets a typed error and the connection stays.

The node (streamd/node.py, the composition root) binds the listeners, builds ``Server`` with
the operation handlers bound to the engine and the group service, and runs the shutdown.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import trio

from streamd_client import wire
from streamd_client.errors import (
    InternalError,
    LimitExceededError,
    ProtocolError,
    RequestTimeoutError,
    StreamdError,
    TlsRequiredError,
    UnknownOperationError,
    UnsupportedVersionError,
)
from streamd_client.summary import summary

from ... import __version__, metrics
from ...config import ServerConfig
from ...security.guard import Guard
from ...security.tls import ServerTls
from ..admission import ConnectionSlots, admission_limits
from .api import BoundHandler
from .session import Refused, Session

log = structlog.get_logger(__name__)

_RECEIVE_BYTES = 256 * 1024
_COALESCE_BYTES = 64 * 1024


class _Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        handlers: Mapping[str, BoundHandler],
        config: ServerConfig,
        peer: str,
        guard: Guard | None = None,
    ) -> None:
        self.stream = stream
        self.handlers = handlers
        self.config = config
        self.peer = peer
        self.session = Session(guard, peer)
        self.decoder = wire.FrameDecoder(config.frame_bytes_max)
        self.outbox: deque[bytes] = deque()
        self.outbox_ready = trio.Event()
        # Invariant: outbox_bytes == bytes queued in outbox + bytes the writer is sending.
        self.outbox_bytes = 0
        # Invariant: reserved_bytes == sum of the reservations of the requests in flight.
        self.reserved_bytes = 0
        self.in_flight = 0
        self.closing = False
        # Idle tracking: when a whole request last arrived or an answer was last queued.
        self.last_active = trio.current_time()
        self.idle_closed = False
        self.writing = False  # the writer is inside send_all (a frame may be half sent)
        self.broken = False  # the writer found the peer gone: nothing more can be answered
        self.progress = trio.Event()  # set at each change of the counters above

    async def run(self) -> None:
        error: ProtocolError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer)
            try:
                await self._handshake()
                nursery.start_soon(self._close_when_idle, nursery.cancel_scope)
                await self._read_loop(nursery)
                await self._drain_after_eof()
            except ProtocolError as exc:
                error = exc
            except Refused as refused:  # its answer, then the close
                self._send(wire.error_response(refused.request_id, refused.error.to_wire()))
                with trio.move_on_after(1.0):
                    await self._until(lambda: self.broken or self.outbox_bytes == 0)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()
        if self.idle_closed:
            await self._close_idle()
        elif error is not None:
            # The writer task is gone now, so this is the only sender on the stream.
            log.info("connection.protocol_error", peer=self.peer, error=error.message)
            self.outbox.append(wire.encode_message(wire.error_response(0, error.to_wire())))
            await self._flush_and_close()

    async def _close_when_idle(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` once no request has been in flight for ``idle_timeout_ms``."""
        idle_s = self.config.idle_timeout_ms / 1000
        while True:
            await trio.sleep_until(self.last_active + idle_s)
            if self.in_flight > 0:  # a long-poll or a slow request: not idle
                self.last_active = trio.current_time()
            elif trio.current_time() >= self.last_active + idle_s:
                self.idle_closed = True
                scope.cancel()
                return

    async def _close_idle(self) -> None:
        idle_s = self.config.idle_timeout_ms / 1000
        log.info("connection.idle_closed", peer=self.peer, idle_s=idle_s)
        metrics.CONNECTIONS_IDLE_CLOSED.labels("native", "after_hello").inc()
        if self.writing:  # cancelled mid-frame: the stream is no longer framed, just close
            self.outbox.clear()
        else:
            error = RequestTimeoutError(f"connection idle for {idle_s:g} s: closed by the server")
            self.outbox.append(wire.encode_message(wire.error_response(0, error.to_wire())))
        await self._flush_and_close()

    async def _receive_message(self) -> dict[str, Any] | None:
        while True:
            message = self.decoder.next_message()
            if message is not wire.NEED_DATA:
                assert isinstance(message, dict)
                return message
            data = await self.stream.receive_some(_RECEIVE_BYTES)
            if not data:
                return None
            self.decoder.receive_data(data)

    async def _handshake(self) -> None:
        with trio.move_on_after(self.config.handshake_timeout_ms / 1000):
            message = await self._receive_message()
            if message is None:
                raise trio.BrokenResourceError
            self.last_active = trio.current_time()
            request_id, op, args = wire.check_request(message)
            if op != wire.OP_HELLO:
                raise ProtocolError(f"first request must be hello, got {summary(op, 40)}")
            versions = args.get("versions")
            if not isinstance(versions, list) or wire.PROTOCOL_VERSION not in versions:
                raise UnsupportedVersionError(
                    f"server speaks {wire.PROTOCOL_VERSION}; client offered {summary(versions)}"
                )
            self._send(
                wire.response(
                    request_id,
                    {
                        "version": wire.PROTOCOL_VERSION,
                        "server": f"streamd/{__version__}",
                        "frame_bytes_max": self.config.frame_bytes_max,
                        **self.session.hello_fields(),
                    },
                )
            )
            return
        metrics.CONNECTIONS_IDLE_CLOSED.labels("native", "before_hello").inc()
        raise ProtocolError("no hello within the handshake timeout")

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        """Read and dispatch requests until EOF. Backpressure: no request is read while the
        answers queued or reserved reach ``outbox_bytes_max`` (a client that does not read its
        answers stops being read, and TCP then stops it)."""
        while True:
            await self._until(lambda: not self._outbox_full())
            message = await self._receive_message()
            if message is None:
                return
            self.last_active = trio.current_time()
            self._admit(message, nursery)
            del message  # the request's task holds what it needs; the loop keeps nothing

    def _admit(self, message: dict[str, Any], nursery: trio.Nursery) -> None:
        try:
            request_id, op, args = wire.check_request(message)
        except ProtocolError as exc:  # the frame was whole: answer it, keep the connection
            self._send(wire.error_response(message["i"], exc.to_wire()))
            return
        try:
            answer = self.session.admit(request_id, op, args)  # Raises Refused: close
        except StreamdError as exc:
            self._send(wire.error_response(request_id, exc.to_wire()))
            return
        if answer is not None:  # authenticate: answered here, it runs no handler
            self._send(wire.response(request_id, answer))
            return
        if self.in_flight >= self.config.requests_in_flight_max:
            error = LimitExceededError(
                f"more than {self.config.requests_in_flight_max} requests in flight"
            )
            self._send(wire.error_response(request_id, error.to_wire()))
            return
        reserve = _answer_reserve_bytes(op, args, self.config.frame_bytes_max)
        self.reserved_bytes += reserve
        self.in_flight += 1
        nursery.start_soon(self._dispatch, request_id, op, args, reserve)

    def _outbox_full(self) -> bool:
        return self.outbox_bytes + self.reserved_bytes >= self.config.outbox_bytes_max

    async def _drain_after_eof(self) -> None:
        """The client closed its side (EOF): answer every request it sent before, then close.

        A half-closed client still reads, and a put it sent just before is applied, so it gets
        its answer. Bounded by ``eof_drain_ms``; ends early if the peer turns out to be gone.
        """
        with trio.move_on_after(self.config.eof_drain_ms / 1000) as scope:
            await self._until(
                lambda: self.broken or (self.in_flight == 0 and self.outbox_bytes == 0)
            )
        if scope.cancelled_caught:
            log.info("connection.eof_drain_timeout", peer=self.peer, in_flight=self.in_flight)

    async def _until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()``; re-checked at each change of the connection's counters."""
        while not done():
            self.progress = trio.Event()
            await self.progress.wait()

    async def _dispatch(self, request_id: int, op: str, args: dict[str, Any], reserve: int) -> None:
        code = "OK"
        started = time.perf_counter()
        action: tuple[str, str] | None = None
        try:
            handler = self.handlers.get(op)
            if handler is None:
                raise UnknownOperationError(f"unknown operation {summary(op)}")
            action = self.session.authorize(op, args)  # before the handler: nothing changed
            call = handler(args)
            del args  # a long-poll keeps what its handler parsed, not the request's map
            reply = wire.response(request_id, await call)
        except StreamdError as exc:
            shown = op if op in self.handlers else summary(op)  # a peer's text: bounded in logs
            log.debug("request.failed", peer=self.peer, op=shown, code=exc.code, error=exc.message)
            reply = wire.error_response(request_id, exc.to_wire())
            code = exc.code
        except Exception as exc:
            code = InternalError.code
            log.exception("request.internal_error", peer=self.peer, op=summary(op))
            message = f"internal error: {type(exc).__name__}: {summary(str(exc), 200)}"
            reply = wire.error_response(request_id, InternalError(message).to_wire())
        finally:
            self.in_flight -= 1
            self.last_active = trio.current_time()
        if action is not None:
            self.session.done(op, *action, code)
        label = op if op in self.handlers else "unknown"
        metrics.REQUESTS.labels(label, code).inc()
        metrics.REQUEST_SECONDS.labels(label).observe(time.perf_counter() - started)
        self._send(reply, reserve)

    def _send(self, message: dict[str, Any], reserve: int = 0) -> None:
        """Queue an answer; ``reserve`` is what its request reserved (now replaced by the
        answer's real size)."""
        frame = wire.encode_message(message)
        self.reserved_bytes -= reserve
        self.outbox_bytes += len(frame)
        self.outbox.append(frame)
        self.outbox_ready.set()
        self.progress.set()

    async def _writer(self) -> None:
        while True:
            await self.outbox_ready.wait()
            self.outbox_ready = trio.Event()
            while self.outbox:
                data = self._next_chunk()
                self.writing = True
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True
                    self.progress.set()
                    return
                finally:
                    self.writing = False
                self.outbox_bytes -= len(data)
                del data
                self.progress.set()

    def _next_chunk(self) -> bytes:
        """The next bytes to send: small answers joined (fewer syscalls under load), a big one
        alone (joining would copy it: two of each big answer in memory instead of one)."""
        if len(self.outbox[0]) >= _COALESCE_BYTES or len(self.outbox) == 1:
            return self.outbox.popleft()
        parts: list[bytes] = []
        size = 0
        while self.outbox and size + len(self.outbox[0]) <= _COALESCE_BYTES:
            size += len(self.outbox[0])
            parts.append(self.outbox.popleft())
        return b"".join(parts)

    async def _flush_and_close(self) -> None:
        with trio.move_on_after(1.0):
            try:
                await self.stream.send_all(b"".join(self.outbox))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self.outbox.clear()
        await self.stream.aclose()


# What a request reserves of its connection's outbox until its answer is queued. A read's
# answer holds up to max_bytes (at least one stored batch: it may exceed a small max_bytes),
# so a read reserves max_bytes, at least READ_RESERVE_BYTES_MIN; other answers are small.
READ_RESERVE_BYTES_MIN = 1024 * 1024
ANSWER_RESERVE_BYTES = 16 * 1024


def _answer_reserve_bytes(op: str, args: dict[str, Any], frame_bytes_max: int) -> int:
    if op != wire.OP_READ:
        return ANSWER_RESERVE_BYTES
    wanted = args.get("max_bytes", READ_RESERVE_BYTES_MIN)
    if type(wanted) is not int:  # the handler refuses it; its answer is small
        return ANSWER_RESERVE_BYTES
    return min(frame_bytes_max, max(READ_RESERVE_BYTES_MIN, wanted))


class Server:
    """The native listener's connection handler. ``handlers`` is every operation bound to what
    it works on (``api.bind_handlers``, called by the composition root, streamd/node.py)."""

    def __init__(
        self,
        config: ServerConfig,
        handlers: Mapping[str, BoundHandler],
        *,
        guard: Guard | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.config = config
        self.handlers = handlers
        self.guard = guard
        self.slots = ConnectionSlots(
            admission_limits(config), metrics.CONNECTIONS, "connection", "native", _refusal, tls
        )

    async def handle(self, stream: trio.SocketStream) -> None:
        async def run(peer: str, secured: trio.abc.Stream) -> None:
            await _Connection(secured, self.handlers, self.config, peer, self.guard).run()

        await self.slots.serve(stream, run)


def plaintext_refusal() -> bytes:
    """What a plaintext client on a TLS listener gets before the close: a TLS_REQUIRED error
    frame with request id 0 (the client library raises TlsRequiredError from it)."""
    error = TlsRequiredError(
        "this listener speaks TLS only: connect with tls://HOST:PORT (and --tls-ca CA.pem)"
    )
    return wire.encode_message(wire.error_response(0, error.to_wire()))


def _refusal(reason: str, message: str) -> bytes:
    """What a connection over a bound is sent before the close: a LIMIT_EXCEEDED error frame
    with request id 0 (the whole connection), naming the bound in ``details.limit``."""
    error = LimitExceededError(message, limit=reason)
    return wire.encode_message(wire.error_response(0, error.to_wire()))
