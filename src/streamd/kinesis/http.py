"""The Kinesis gateway's HTTP/1.1 server: trio sockets around h11's sans-I/O state machine.

One task per connection (in the server's connection nursery), requests served one after the
other on it (HTTP/1.1 keep-alive; no pipelining in flight, h11 buffers what arrives early).
Everything is bounded: header block (``header_bytes_max``: 431 if over), body
(``body_bytes_max``: 413, checked against Content-Length before reading and while reading
chunked bodies), connections (``connections_max``: new ones are closed at once), and every wait
has a timeout: idle keep-alive, reading a request, sending an answer, running the operation.
Bytes that are not HTTP get a 400 and the connection closes, since its framing is lost.

A ``Streaming`` answer (SubscribeToShard) is sent chunked, one chunk per event as the iterator
yields it; a watcher task reads the socket meanwhile so that a client hanging up cancels the
stream at once, and the iterator is always closed (``aclose``). The connection closes after a
streamed answer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import h11
import structlog
import trio

from ..config import ServerConfig, parse_host_port
from ..engine import Engine
from . import metrics
from .codec import Protocol
from .dispatch import Dispatcher, Reply, Request, error_reply
from .types import GatewayContext

log = structlog.get_logger(__name__)

KINESIS_PORT_DEFAULT: Final = 4567
ITERATOR_KEY_FILE: Final = "kinesis-iterator.key"
_RECEIVE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_bytes_max: int = 16 * 1024
    # PutRecords: 5 MiB of data is 6.7 MiB in base64, plus keys and JSON framing; the headroom
    # lets a request somewhat over the limit get Kinesis's own error, not a bare 413.
    body_bytes_max: int = 12 * 1024 * 1024
    connections_max: int = 1024
    idle_timeout_s: float = 120.0  # keep-alive: longer than the SDKs' pool idle times
    read_timeout_s: float = 30.0  # from a request's first byte to its last
    send_timeout_s: float = 30.0
    operation_timeout_s: float = 60.0


class _Closed(Exception):
    """The peer went away or the connection must close; nothing more to send."""


class HttpConnection:
    def __init__(
        self, stream: trio.SocketStream, dispatcher: Dispatcher, limits: HttpLimits, peer: str
    ) -> None:
        self.stream = stream
        self.dispatcher = dispatcher
        self.limits = limits
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.header_bytes_max)

    async def run(self) -> None:
        try:
            while True:
                request = await self._receive_request()
                if request is None:
                    return
                reply = await self.dispatcher.answer(request)
                if reply.streaming is not None:
                    await self._send_streaming(reply)
                    return
                await self._send_reply(reply)
                if self.conn.our_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._reject(exc.error_status_hint, f"malformed HTTP request: {exc}", "malformed")
        except _Closed:
            pass

    # -- receiving -----------------------------------------------------------------------------

    async def _next_event(self, timeout_s: float) -> object:
        """The next h11 event (or PAUSED), reading the socket as needed. Raises TimeoutError,
        _Closed, h11.RemoteProtocolError."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = b""
            with trio.move_on_after(timeout_s) as scope:
                try:
                    data = await self.stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise _Closed from None
            if scope.cancelled_caught:
                raise TimeoutError
            self.conn.receive_data(data)

    async def _receive_request(self) -> Request | None:
        try:
            event = await self._next_event(self.limits.idle_timeout_s)
        except TimeoutError:
            return None  # idle keep-alive connection: close quietly
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Closed
        try:
            with trio.fail_after(self.limits.read_timeout_s):
                return await self._receive_body(event)
        except (TimeoutError, trio.TooSlowError):
            await self._reject(408, "request not received in time", "timeout")
            raise _Closed from None

    async def _receive_body(self, head: h11.Request) -> Request:
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers]
        length = next((v for k, v in headers if k == "content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.limits.body_bytes_max:
            await self._reject(413, f"body over {self.limits.body_bytes_max} bytes", "too_large")
            raise _Closed
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(self.limits.read_timeout_s)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.body_bytes_max:
                    await self._reject(
                        413, f"body over {self.limits.body_bytes_max} bytes", "too_large"
                    )
                    raise _Closed
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Closed
        return Request(
            head.method.decode("ascii", "replace"),
            head.target.decode("latin-1"),
            headers,
            b"".join(chunks),
        )

    # -- sending -------------------------------------------------------------------------------

    async def _send(self, data: bytes | None) -> None:
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

    async def _send_reply(self, reply: Reply) -> None:
        headers = [*reply.headers, ("content-length", str(len(reply.body)))]
        head = self.conn.send(h11.Response(status_code=reply.status, headers=headers))
        body = self.conn.send(h11.Data(data=reply.body))
        end = self.conn.send(h11.EndOfMessage())
        await self._send(b"".join(part or b"" for part in (head, body, end)))  # one write

    async def _reject(self, status: int, message: str, reason: str) -> None:
        """Answer an HTTP-level failure (if an answer can still be sent) and stop."""
        metrics.BAD_REQUESTS.labels(reason).inc()
        log.info("kinesis.http_rejected", peer=self.peer, status=status, reason=message[:200])
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        type_name = "SerializationException" if status == 400 else "ValidationException"
        reply = error_reply(Protocol.JSON, type_name, message, status)
        reply.headers.append(("connection", "close"))
        try:
            await self._send_reply(reply)
        except (_Closed, h11.LocalProtocolError):
            pass

    async def _send_streaming(self, reply: Reply) -> None:
        assert reply.streaming is not None
        events = reply.streaming.events
        try:
            headers = [*reply.headers, ("connection", "close")]
            await self._send(self.conn.send(h11.Response(status_code=200, headers=headers)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_hangup, nursery.cancel_scope)
                await self._pump(events)
                nursery.cancel_scope.cancel()
            await self._send(self.conn.send(h11.EndOfMessage()))
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(self.limits.send_timeout_s) as cleanup:
                    cleanup.shield = True
                    await aclose()

    async def _pump(self, events: AsyncIterator[bytes]) -> None:
        async for event in events:
            await self._send(self.conn.send(h11.Data(data=event)))

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
    """The Kinesis HTTP listener's state: dispatcher, limits, the connection count."""

    def __init__(self, config: ServerConfig, engine: Engine, limits: HttpLimits) -> None:
        self.limits = limits
        ctx = GatewayContext(
            engine,
            region=config.kinesis_region,
            account_id=config.kinesis_account_id,
            iterator_key=_iterator_key(config.data_dir),
        )
        self.dispatcher = Dispatcher(
            ctx, dict(config.kinesis_credentials), limits.operation_timeout_s
        )
        self.signed = bool(config.kinesis_credentials)
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            return
        if self.connections >= self.limits.connections_max:
            log.warning("kinesis.connection_refused", peer=peer, reason="connections_max")
            metrics.BAD_REQUESTS.labels("connections_max").inc()
            await stream.aclose()
            return
        self.connections += 1
        metrics.CONNECTIONS.inc()
        try:
            await HttpConnection(stream, self.dispatcher, self.limits, peer).run()
        except Exception:  # one connection's bug must never take the gateway down
            log.exception("kinesis.connection_failed", peer=peer)
        finally:
            self.connections -= 1
            metrics.CONNECTIONS.dec()
            with trio.move_on_after(1.0):
                await stream.aclose()


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
    tmp.write_bytes(key)
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


async def open_gateway_listeners(
    config: ServerConfig, engine: Engine, limits: HttpLimits | None = None
) -> tuple[Gateway, list[trio.SocketListener]]:
    """Bind the gateway's address (``config.kinesis_listen``). Raises OSError (address in use)."""
    assert config.kinesis_listen is not None
    host, port = parse_host_port(config.kinesis_listen, KINESIS_PORT_DEFAULT)
    gateway = await trio.to_thread.run_sync(
        partial(Gateway, config, engine, limits or HttpLimits())
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    return gateway, listeners
