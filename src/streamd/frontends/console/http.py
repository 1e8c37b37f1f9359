"""The console's HTTP/1.1 server: trio sockets around the gateway's sans-I/O ``http_wire``.

The same parser as the Kinesis gateway (llhttp through httptools, with the header and body
bounds enforced while parsing) and the same answer encoders; what differs is the application
behind it, which is a function ``Request -> Response`` here (``app.py``). One task per
connection (in the node's connection nursery, admitted by ``admission.ConnectionSlots``),
requests answered in order, keep-alive between them. Every wait has a timeout: the first
request (``first_request_timeout_s``), idle keep-alive (``idle_timeout_s``), reading a request
(``read_timeout_s``: 408), sending (``send_timeout_s``), answering (``answer_timeout_s``: 503).

A ``Response`` with ``events`` is a Server-Sent Events stream: sent chunked, one chunk per item
the iterator yields, while a watcher reads the socket so that a closed tab ends the stream at
once; the iterator is always closed. The connection closes after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import structlog
import trio

from ..kinesis.http_wire import (
    CHUNKED_END,
    CLOSED,
    HttpParseError,
    ParsedRequest,
    RequestParser,
    encode_answer,
    encode_chunk,
    encode_head,
)

log = structlog.get_logger(__name__)

_RECEIVE_BYTES: Final = 64 * 1024
QUERY_FIELDS_MAX: Final = 64


class NotFound(Exception):
    """No page, file, stream, shard or group at the path asked for: answered 404."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ConsoleHttpLimits:
    header_bytes_max: int = 16 * 1024
    body_bytes_max: int = 16 * 1024  # forms only: a few short fields
    first_request_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    read_timeout_s: float = 15.0
    send_timeout_s: float = 15.0
    answer_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # as sent, without the query (the router decodes each segment alone)
    query: dict[str, str]  # first value of each name
    headers: dict[str, str]  # lowercase names; the last value of a repeated header
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def wants_fragment(self) -> bool:
        """An htmx request: answer the part of the page it swaps, not a whole page."""
        return self.headers.get("hx-request") == "true"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    events: AsyncIterator[bytes] | None = None  # Server-Sent Events: chunks as they come


App = Callable[[Request], Awaitable[Response]]


def request_of(parsed: ParsedRequest) -> Request | None:
    """The request's parts, or None if its target is not an origin-form path."""
    target = parsed.target
    if not target.startswith("/"):
        return None
    parts = urlsplit(target)
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True)[:QUERY_FIELDS_MAX]:
        query.setdefault(name, value)
    headers = dict(parsed.headers)
    return Request(parsed.method, parts.path, query, headers, parsed.body)


class _Closed(Exception):
    pass


SECURITY_HEADERS: Final = [
    # Scripts and styles only from the console itself (no inline script, no CDN).
    ("content-security-policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
]


def encode_response(response: Response, *, close: bool) -> bytes:
    headers = [("content-type", response.content_type), *SECURITY_HEADERS, *response.headers]
    return encode_answer(response.status, headers, response.body, close=close)


class ConsoleConnection:
    def __init__(
        self, stream: trio.abc.Stream, app: App, limits: ConsoleHttpLimits, peer: str
    ) -> None:
        self.stream = stream
        self.app = app
        self.limits = limits
        self.peer = peer
        self.parser = RequestParser(limits.header_bytes_max, limits.body_bytes_max)
        self.served = 0

    async def run(self) -> None:
        try:
            while True:
                parsed = await self._receive_request()
                if parsed is None:
                    return
                keep_alive = parsed.keep_alive
                request = request_of(parsed)
                if request is None:
                    await self._send(encode_response(Response(400, b"bad target"), close=True))
                    return
                response = await self._answer(request)
                if response.events is not None:
                    await self._send_events(response)
                    return
                await self._send(encode_response(response, close=not keep_alive))
                self.served += 1
                if not keep_alive:
                    return
        except HttpParseError as exc:
            body = exc.message.encode()
            try:
                await self._send(encode_response(Response(exc.status, body), close=True))
            except _Closed:
                pass
        except _Closed:
            pass

    async def _answer(self, request: Request) -> Response:
        with trio.move_on_after(self.limits.answer_timeout_s):
            return await self.app(request)
        log.warning("console.answer_timeout", path=request.path[:200])
        return Response(503, b"the console took too long to answer; try again")

    async def _receive_request(self) -> ParsedRequest | None:
        first = self.served == 0
        wait_s = self.limits.first_request_timeout_s if first else self.limits.idle_timeout_s
        deadline = trio.current_time() + wait_s
        idle = True
        while True:
            event = self.parser.next_event()
            if isinstance(event, ParsedRequest):
                return event
            if event is CLOSED:
                return None
            if self.parser.waiting_for_100_continue:
                self.parser.continue_sent()
                await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            if idle and self.parser.request_started:
                idle = False
                deadline = trio.current_time() + self.limits.read_timeout_s
            data = await self._receive(deadline)
            if data is None:
                if not idle:
                    await self._send(encode_response(Response(408, b"too slow"), close=True))
                return None
            self.parser.receive_data(data)
            self.parser.take_head()  # forms are small: the body bound is the only admission

    async def _receive(self, deadline: float) -> bytes | bytearray | None:
        with trio.move_on_at(deadline):
            try:
                return await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        return None

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout_s) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Closed from None
        if scope.cancelled_caught:
            raise _Closed

    async def _send_events(self, response: Response) -> None:
        assert response.events is not None
        events = response.events
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-store"),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        try:
            await self._send(encode_head(response.status, headers, chunked=True, close=True))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_hangup, nursery.cancel_scope)
                async for chunk in events:
                    await self._send(encode_chunk(chunk))
                nursery.cancel_scope.cancel()
            await self._send(CHUNKED_END)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with trio.move_on_after(self.limits.send_timeout_s) as cleanup:
                    cleanup.shield = True
                    await aclose()

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                scope.cancel()
                return
