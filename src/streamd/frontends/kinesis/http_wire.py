"""HTTP/1.1 on the wire for the Kinesis gateway, sans-I/O: a request parser and answer encoders.

``RequestParser`` wraps httptools (llhttp, the C parser uvicorn uses) in h11's shape: feed bytes
with ``receive_data`` (``b""`` for end of file), pull with ``next_event``: a ``ParsedRequest``
(whole: head and body), ``NEED_DATA`` or ``CLOSED`` (the peer closed between requests). Any input
either parses or makes ``next_event`` raise ``HttpParseError`` (with the status to answer), once
the requests completed before the bad bytes have been handed out, so pipelined requests are
answered in order. After an error the parser ignores further bytes: the framing is lost.

Why not h11: a profile of single PutRecord calls spent ~27% of the server's busy time in h11's
pure-Python parsing and validation. llhttp parses in C and calls back here once per URL piece,
header, and body piece.

Limits are enforced while parsing, before anything large is buffered: the header block
(``header_bytes_max``: 400, as the docs promise; httptools buffers a header line until it ends,
so an unfinished head is bounded by the limit plus one ``receive_data`` call), the body
(``body_bytes_max``: 413, checked against Content-Length when the head ends, and while chunked
bodies arrive). ``take_head`` hands out the head of a request whose body is still to come, so
the caller can refuse or admit that body (by its Content-Length) before reading it, and
``limit_body`` lowers the bound for that one request.

The encoders write answers directly as bytes: status line, headers, Content-Length (or chunked
Transfer-Encoding for streamed answers), ``connection: close`` when the connection ends after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Final

import httptools


class HttpParseError(Exception):
    """The request cannot be parsed or is over a limit: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def reason(self) -> str:
        """The metrics label: ``too_large`` (413) or ``malformed``."""
        return "too_large" if self.status == 413 else "malformed"


class Event(Enum):
    NEED_DATA = "need data"  # nothing complete yet: receive more bytes
    CLOSED = "closed"  # the peer closed its side between requests


NEED_DATA: Final = Event.NEED_DATA
CLOSED: Final = Event.CLOSED


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request whose header block has ended and whose body is still to come: what the caller
    needs to admit (or refuse) the body before reading it."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # lowercase names, values stripped
    content_length: int | None  # None: chunked

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]  # lowercase names, values stripped
    body: bytes
    http_11: bool  # HTTP/1.1: chunked answers possible
    keep_alive: bool  # HTTP/1.1 without Connection: close (HTTP/1.0 always closes, as with h11)


class _Stop(Exception):
    """Raised in a callback to stop llhttp; the reason is already in ``RequestParser._error``."""


# Counted per header line on top of name and value: ": " and CRLF.
_HEADER_OVERHEAD_BYTES: Final = 4
# Content-Length values longer than this are over any body limit (and int() of a huge digit string
# is slow); llhttp has already rejected values over 2**64.
_CONTENT_LENGTH_DIGITS_MAX: Final = 18


class RequestParser:
    """Bytes in, whole requests out. Raises only ``HttpParseError`` (from ``next_event``)."""

    def __init__(self, header_bytes_max: int, body_bytes_max: int) -> None:
        assert header_bytes_max > 0 and body_bytes_max >= 0
        self.header_bytes_max = header_bytes_max
        self.body_bytes_max = body_bytes_max
        self._parser = httptools.HttpRequestParser(self)
        self._ready: deque[ParsedRequest] = deque()
        self._error: HttpParseError | None = None
        self._eof = False
        # The request being parsed. Invariant: _in_head implies _started.
        self._started = False  # its first byte has arrived and it is not complete
        self._in_head = False  # its header block has not ended yet
        self._began_in_this_feed = False
        self._head_bytes = 0  # URL and header lines seen in callbacks
        self._head_fed_bytes = 0  # bytes fed while in the head, a lower bound of its size
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._expect_continue = False
        self._continue_due = False
        self._http_11 = False
        self._keep_alive = False
        self._content_length: int | None = None
        self._head: RequestHead | None = None  # set when a head ends, until taken or complete
        self._request_body_max = body_bytes_max  # this request's bound (``limit_body``)
        self.completed = 0  # requests parsed whole so far

    # -- the caller's side ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the socket; ``b""`` means the peer closed its side."""
        if self._error is not None or self._eof:
            return
        if not data:
            self._eof = True
            if self._started:
                self._error = HttpParseError(400, "connection closed in the middle of a request")
            return
        self._began_in_this_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self._error is None:  # a callback failed by itself: a bug, not bad input
                raise exc.__context__ or exc from None
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._error is None:
                self._error = HttpParseError(400, f"malformed HTTP request: {exc}")
        if self._in_head and self._error is None:
            self._bound_unfinished_head(len(data))

    def next_event(self) -> ParsedRequest | Event:
        """The next whole request, NEED_DATA or CLOSED. Raises HttpParseError."""
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        return CLOSED if self._eof else NEED_DATA

    @property
    def request_started(self) -> bool:
        """Bytes of a request not yet complete have arrived (its read timeout is running)."""
        return self._started

    @property
    def waiting_for_100_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits for the 100 before its body."""
        return self._continue_due and self._error is None

    def continue_sent(self) -> None:
        self._continue_due = False

    def take_head(self) -> RequestHead | None:
        """The head of the request being received, once, if its body has not all arrived yet
        (a request complete within one ``receive_data`` call never shows here)."""
        head, self._head = self._head, None
        return head if self._error is None else None

    def limit_body(self, body_bytes_max: int) -> None:
        """Bound the body of the request being received (a chunked one: while it arrives)."""
        self._request_body_max = min(body_bytes_max, self.body_bytes_max)

    def _bound_unfinished_head(self, fed_bytes: int) -> None:
        # When the head began in this feed, only what the callbacks saw is known to be head;
        # in later feeds, every byte is.
        if self._began_in_this_feed:
            self._head_fed_bytes = self._head_bytes
        else:
            self._head_fed_bytes += fed_bytes
        if self._head_fed_bytes > self.header_bytes_max:
            self._fail_head()

    def _fail_head(self) -> _Stop:
        return self._fail(400, f"header block over {self.header_bytes_max} bytes")

    def _fail(self, status: int, message: str) -> _Stop:
        self._error = HttpParseError(status, message)
        return _Stop()

    # -- llhttp's callbacks (httptools.HTTPProtocol) ------------------------------------------

    def on_message_begin(self) -> None:
        self._started = self._in_head = self._began_in_this_feed = True
        self._head_bytes = self._head_fed_bytes = self._body_bytes = 0
        self._url, self._headers, self._body = [], [], []
        self._expect_continue = self._continue_due = False
        self._content_length = None
        self._head = None
        self._request_body_max = self.body_bytes_max

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self.header_bytes_max:
            raise self._fail_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + _HEADER_OVERHEAD_BYTES
        if self._head_bytes > self.header_bytes_max:
            raise self._fail_head()
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        self._headers.append((key, text))
        if key == "content-length":
            if not (text.isascii() and text.isdigit()):
                raise self._fail(400, f"Content-Length {text!r:.40} is not a number")
            if len(text) > _CONTENT_LENGTH_DIGITS_MAX or int(text) > self.body_bytes_max:
                raise self._fail(413, f"body over {self.body_bytes_max} bytes")
            self._content_length = int(text)
        elif key == "expect":
            self._expect_continue = text.lower() == "100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        if parser.should_upgrade():
            raise self._fail(400, "protocol upgrades (and CONNECT) are not supported")
        self._http_11 = parser.get_http_version() == "1.1"
        if self._http_11 and sum(1 for k, _ in self._headers if k == "host") != 1:
            raise self._fail(400, "an HTTP/1.1 request needs exactly one Host header")
        self._keep_alive = self._http_11 and parser.should_keep_alive()
        self._continue_due = self._expect_continue and self._http_11
        if self._content_length != 0:
            self._head = RequestHead(
                parser.get_method().decode("ascii", "replace"),
                b"".join(self._url).decode("latin-1"),
                self._headers,
                self._content_length,
            )

    def on_body(self, body: bytes) -> None:
        self._continue_due = False
        self._body_bytes += len(body)
        if self._body_bytes > self._request_body_max:
            raise self._fail(413, f"body over {self._request_body_max} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._ready.append(
            ParsedRequest(
                self._parser.get_method().decode("ascii", "replace"),
                b"".join(self._url).decode("latin-1"),
                self._headers,
                body,
                self._http_11,
                self._keep_alive,
            )
        )
        self._started = self._continue_due = False
        self._head = None
        self.completed += 1
        self._url, self._headers, self._body = [], [], []


# -- answers ---------------------------------------------------------------------------------

_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_END: Final = b"0\r\n\r\n"


def encode_head(
    status: int,
    headers: list[tuple[str, str]],
    *,
    content_length: int | None = None,
    chunked: bool = False,
    close: bool,
) -> bytes:
    """Status line and headers. The body that follows is ``content_length`` bytes, or chunked,
    or (neither: streaming to an HTTP/1.0 peer) delimited by the connection's close."""
    assert content_length is None or not chunked
    assert content_length is not None or chunked or close
    # Headers come from the gateway, never from a request; a CR or LF would still split the
    # answer, so it is checked as h11 did: exactly one CRLF per header line.
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError(f"CR or LF in an answer header: {headers!r:.200}")
    parts = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n", lines]
    if content_length is not None:
        parts.append(f"content-length: {content_length}\r\n")
    elif chunked:
        parts.append("transfer-encoding: chunked\r\n")
    if close:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def encode_answer(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    close: bool,
    head_only: bool = False,
) -> bytes:
    """A whole answer in one buffer (one write). ``head_only``: the answer to a HEAD request."""
    head = encode_head(status, headers, content_length=len(body), close=close)
    return head if head_only else head + body


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data is no chunk (a zero-size chunk ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
