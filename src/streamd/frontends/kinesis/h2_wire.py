"""HTTP/2 on the wire for the Kinesis gateway, sans-I/O: python-hyper's ``h2`` in http_wire's shape.

``H2Server`` is the server side of one HTTP/2 connection. Feed it bytes with ``receive_data``
(it answers a list of our events, below), tell it what to send (``send_answer``,
``start_answer`` + ``send_body``, ``reset``, ``close``), and write what ``data_to_send`` gives
back. It does no I/O and imports no trio; ``http2.py`` is the one trio adapter around it.

Events out of ``receive_data``:

- ``HeadReceived``: a request's header block, as the same ``RequestHead`` the HTTP/1.1 parser
  hands out (``:method``, ``:path``, lowercase headers; ``:authority`` becomes ``host`` when the
  client sent no ``host``; ``:authority`` itself stays among the headers, since the JS SDK signs
  it under that name, so SigV4's canonical request is the one the client signed). When
  ``ended`` is set the request has no body and ``BodyReceived`` follows at once.
- ``HeadRefused``: a header block over ``header_bytes_max`` (counted as HTTP/1.1 counts it:
  name, value and 4 bytes per line; 400) or a Content-Length over ``body_bytes_max`` (413). The
  caller answers the error; the connection stays usable.
- ``BodyReceived``: the request's whole body.
- ``BodyTooLarge``: the body went over its bound while arriving (413).
- ``StreamReset``: the peer reset a stream (RST_STREAM): stop working on it.
- ``PeerClosing``: the peer sent GOAWAY: it opens no more streams.

Flow control. Every stream's receive window is ``stream_window_bytes`` and the connection's is
raised to ``connection_window_bytes`` at the start. Body bytes are acknowledged (WINDOW_UPDATE,
which h2 batches) as they are taken into a request body, but only once the caller has
``admit``-ted that stream: until then the stream's credits are held back, so a body waiting for
room in the gateway's byte budget is held by the client's TCP and HTTP/2 windows, not buffered
here. A stream's body is bounded (``admit``'s bound, at most ``body_bytes_max``); past it the
stream is refused and its later bytes are dropped (acknowledged, so other streams go on).
Sending honours the peer's windows: ``send_body`` queues per stream and pushes what the stream's
and the connection's send windows allow, in frames of at most the peer's frame size; the rest
goes out as WINDOW_UPDATEs arrive (``pending_bytes`` says how much waits).

Bounds per connection: ``streams_max`` concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS; h2
refuses more), header blocks (hpack decodes at most ``header_list_bytes_max``; past that, and
past h2's 64 CONTINUATION frames, it is a connection error), bodies as above. Any input either
gives events or makes ``receive_data`` raise ``H2ProtocolError``, after a GOAWAY with the error
code is ready in ``data_to_send``: the caller sends it and closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .http_wire import RequestHead

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADER_OVERHEAD_BYTES: Final = 4  # per header line, as http_wire counts it (": " and CRLF)
_DEFAULT_CONNECTION_WINDOW_BYTES: Final = 65_535  # RFC 9113 6.9.2: every connection starts so


def preface_match(data: bytes | bytearray) -> bool | None:
    """Whether the first bytes of a connection are HTTP/2's preface: True (they start with it),
    False (they cannot: HTTP/1.1 or garbage), None (too few bytes to tell yet)."""
    head = bytes(data[: len(PREFACE)])
    if not PREFACE.startswith(head):
        return False
    return True if len(head) == len(PREFACE) else None


class H2ProtocolError(Exception):
    """The peer broke HTTP/2 (a connection error): GOAWAY is queued; send it and close."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class H2Settings:
    streams_max: int = 100
    header_bytes_max: int = 16 * 1024  # same count and bound as HTTP/1.1: 400 on the stream
    header_list_bytes_max: int = 64 * 1024  # hpack's hard bound (RFC count): a connection error
    body_bytes_max: int = 12 * 1024 * 1024
    stream_window_bytes: int = 1024 * 1024
    connection_window_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        assert 1 <= self.streams_max <= 2**31 - 1
        assert 0 < self.header_bytes_max <= self.header_list_bytes_max
        assert 65_535 <= self.stream_window_bytes <= 2**31 - 1
        assert _DEFAULT_CONNECTION_WINDOW_BYTES <= self.connection_window_bytes <= 2**31 - 1


@dataclass(frozen=True, slots=True)
class HeadReceived:
    stream_id: int
    head: RequestHead
    ended: bool  # END_STREAM came with the headers: the body is empty


@dataclass(frozen=True, slots=True)
class HeadRefused:
    stream_id: int
    status: int  # 400 (header block too large) or 413 (Content-Length too large)
    message: str


@dataclass(frozen=True, slots=True)
class BodyReceived:
    stream_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class BodyTooLarge:
    stream_id: int
    message: str


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class PeerClosing:
    last_stream_id: int
    error_code: int


Event = HeadReceived | HeadRefused | BodyReceived | BodyTooLarge | StreamReset | PeerClosing


@dataclass(slots=True)
class _Inbound:
    """A request stream's body as it arrives. Invariant: held_bytes == 0 once admitted."""

    body_bytes_max: int
    chunks: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    admitted: bool = False
    held_bytes: int = 0  # flow-controlled bytes received before admission, not yet acknowledged
    refused: bool = False  # over a bound: later bytes are dropped
    ended: bool = False


@dataclass(slots=True)
class _Outbound:
    data: bytearray = field(default_factory=bytearray)
    end: bool = False  # END_STREAM after the data


class H2Server:
    """One HTTP/2 server connection. Raises only ``H2ProtocolError`` (from ``receive_data``)."""

    def __init__(self, settings: H2Settings) -> None:
        self.settings = settings
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
        self._conn = h2.connection.H2Connection(config)
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.streams_max,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.header_list_bytes_max,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window_bytes,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._conn.decoder.max_header_list_size = settings.header_list_bytes_max
        self._frames = _GoawaySplitter()
        self._inbound: dict[int, _Inbound] = {}
        self._outbound: dict[int, _Outbound] = {}
        self.closed = False  # GOAWAY sent
        self.streams_opened = 0

    # -- connection ----------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the server's preface (SETTINGS) and the connection window's raise."""
        self._conn.initiate_connection()
        extra = self.settings.connection_window_bytes - _DEFAULT_CONNECTION_WINDOW_BYTES
        if extra:
            self._conn.increment_flow_control_window(extra)

    def data_to_send(self) -> bytes:
        return self._conn.data_to_send()

    def close(self, error_code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Queue GOAWAY (once): no new streams; the peer knows which ones we saw."""
        if self.closed:
            return
        self.closed = True
        self._conn.close_connection(error_code)

    @property
    def open_streams(self) -> int:
        return len(self._inbound.keys() | self._outbound.keys())

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Bytes from the peer in, our events out. Raises H2ProtocolError (GOAWAY queued)."""
        events: list[Event] = []
        try:
            pieces = self._frames.split(data)
        except _FrameTooLarge as exc:
            self.closed = True
            self._conn.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            code = int(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            raise H2ProtocolError(f"HTTP/2 protocol error: {exc}", code) from None
        for piece in pieces:
            if isinstance(piece, PeerClosing):
                events.append(piece)
                continue
            try:
                h2_events = self._conn.receive_data(piece)
            except h2.exceptions.ProtocolError as exc:
                code = getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self.closed = True
                self._conn.close_connection(code)
                raise H2ProtocolError(f"HTTP/2 protocol error: {exc}", int(code)) from None
            for event in h2_events:
                self._handle(event, events)
        return events

    def _handle(self, event: h2.events.Event, out: list[Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_head(event, out)
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event, out)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_end(event.stream_id, out)
        elif isinstance(event, h2.events.StreamReset):
            self._forget(event.stream_id)
            out.append(StreamReset(event.stream_id, int(event.error_code or 0)))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._push_all()
        # Others: settings acks, pings (h2 answers them), priority, unknown frames. No
        # ConnectionTerminated comes: _GoawaySplitter keeps the peer's GOAWAY from h2.

    def _on_head(self, event: h2.events.RequestReceived, out: list[Event]) -> None:
        stream_id = event.stream_id
        assert stream_id is not None and event.headers is not None
        self.streams_opened += 1
        ended = event.stream_ended is not None
        head_bytes = 0
        method = target = authority = ""
        headers: list[tuple[str, str]] = []
        for raw_name, raw_value in event.headers:
            name = bytes(raw_name).decode("latin-1")
            value = bytes(raw_value).decode("latin-1").strip()
            head_bytes += len(name) + len(value) + _HEADER_OVERHEAD_BYTES
            if name == ":method":
                method = value
            elif name == ":path":
                target = value
            elif name == ":authority":
                authority = value
                headers.append((name, value))  # SigV4 from the JS SDK signs it as a header
            elif not name.startswith(":"):
                headers.append((name, value))
        if authority and not any(name == "host" for name, _ in headers):
            headers.append(("host", authority))
        inbound = _Inbound(self.settings.body_bytes_max, ended=ended)
        self._inbound[stream_id] = inbound
        if head_bytes > self.settings.header_bytes_max:
            inbound.refused = True
            message = f"header block over {self.settings.header_bytes_max} bytes"
            out.append(HeadRefused(stream_id, 400, message))
            return
        length = _content_length(headers)
        if length is not None and length > self.settings.body_bytes_max:
            inbound.refused = True
            out.append(
                HeadRefused(stream_id, 413, f"body over {self.settings.body_bytes_max} bytes")
            )
            return
        head = RequestHead(method, target, headers, length)
        out.append(HeadReceived(stream_id, head, ended))
        if ended:
            out.append(BodyReceived(stream_id, b""))

    def _on_data(self, event: h2.events.DataReceived, out: list[Event]) -> None:
        stream_id = event.stream_id
        assert stream_id is not None and event.data is not None
        length = event.flow_controlled_length or 0
        inbound = self._inbound.get(stream_id)
        if inbound is None or inbound.refused:
            self._acknowledge(length, stream_id)  # dropped: keep the connection's window open
            return
        inbound.body_bytes += len(event.data)
        if inbound.body_bytes > inbound.body_bytes_max:
            inbound.refused = True
            inbound.chunks = []
            self._acknowledge(length + inbound.held_bytes, stream_id)
            inbound.held_bytes = 0
            out.append(BodyTooLarge(stream_id, f"body over {inbound.body_bytes_max} bytes"))
            return
        inbound.chunks.append(bytes(event.data))
        if inbound.admitted:
            self._acknowledge(length, stream_id)
        else:
            inbound.held_bytes += length

    def _on_end(self, stream_id: int | None, out: list[Event]) -> None:
        assert stream_id is not None
        inbound = self._inbound.get(stream_id)
        if inbound is None or inbound.ended:
            return
        inbound.ended = True
        if not inbound.refused:
            body = b"".join(inbound.chunks)
            inbound.chunks = []
            out.append(BodyReceived(stream_id, body))

    def _acknowledge(self, length: int, stream_id: int) -> None:
        if length > 0:
            self._conn.acknowledge_received_data(length, stream_id)

    def admit(self, stream_id: int, body_bytes_max: int) -> bool:
        """Let the stream's body come (its held credits go back to the peer), bounded by
        ``body_bytes_max`` (at most the connection's). False if what came is over it already."""
        inbound = self._inbound.get(stream_id)
        if inbound is None or inbound.refused:
            return False
        inbound.body_bytes_max = min(body_bytes_max, self.settings.body_bytes_max)
        inbound.admitted = True
        held, inbound.held_bytes = inbound.held_bytes, 0
        self._acknowledge(held, stream_id)
        if inbound.body_bytes > inbound.body_bytes_max:
            inbound.refused = True
            inbound.chunks = []
            return False
        return True

    # -- sending -------------------------------------------------------------------------------

    def send_answer(
        self,
        stream_id: int,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        head_only: bool = False,
    ) -> None:
        """A whole answer: headers with Content-Length, then the body as windows allow."""
        fields = [*headers, ("content-length", str(len(body)))]
        no_body = head_only or not body
        if not self._send_headers(stream_id, status, fields, end=no_body):
            return
        if not no_body:
            self.send_body(stream_id, body, end=True)

    def start_answer(self, stream_id: int, status: int, headers: list[tuple[str, str]]) -> bool:
        """The head of a streamed answer (its body follows with ``send_body``)."""
        return self._send_headers(stream_id, status, headers, end=False)

    def send_body(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Queue body bytes (and END_STREAM after them) and push what the windows allow."""
        outbound = self._outbound.get(stream_id)
        if outbound is None or outbound.end:
            return
        outbound.data += data
        outbound.end = end
        self._push(stream_id, outbound)

    def pending_bytes(self, stream_id: int) -> int:
        """Body bytes of ``stream_id`` waiting for the peer's window (0: all handed out)."""
        outbound = self._outbound.get(stream_id)
        return 0 if outbound is None else len(outbound.data)

    def answer_sent(self, stream_id: int) -> bool:
        """The whole answer, END_STREAM included, is in ``data_to_send`` (or the stream is gone)."""
        return stream_id not in self._outbound

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """RST_STREAM (no-op for a stream already closed); forget its queued bytes."""
        self._forget(stream_id)
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:  # closed already, or the connection is
            pass

    def finish(self, stream_id: int) -> None:
        """The caller is done with the stream (answered, reset or abandoned). If the peer has
        not ended its side, it is told it need not send the rest (RST_STREAM NO_ERROR, RFC 9113
        8.1), and anything it still sends is dropped."""
        inbound = self._inbound.pop(stream_id, None)
        outbound = self._outbound.get(stream_id)
        if outbound is not None:
            self.reset(stream_id)  # abandoned with its answer unsent
            return
        if inbound is not None and not inbound.ended:
            self._acknowledge(inbound.held_bytes, stream_id)
            self.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _send_headers(
        self, stream_id: int, status: int, headers: list[tuple[str, str]], *, end: bool
    ) -> bool:
        fields = [(":status", str(status)), *((k.lower(), v) for k, v in headers)]
        try:
            self._conn.send_headers(stream_id, fields, end_stream=end)
        except h2.exceptions.ProtocolError:  # reset by the peer meanwhile, or GOAWAY sent
            self._forget(stream_id)
            return False
        if not end:
            self._outbound[stream_id] = _Outbound()
        return True

    def _push_all(self) -> None:
        for stream_id, outbound in list(self._outbound.items()):
            self._push(stream_id, outbound)

    def _push(self, stream_id: int, outbound: _Outbound) -> None:
        conn = self._conn
        try:
            while outbound.data:
                window = conn.local_flow_control_window(stream_id)
                size = min(window, conn.max_outbound_frame_size, len(outbound.data))
                if size <= 0:
                    return
                last = outbound.end and size == len(outbound.data)
                conn.send_data(stream_id, bytes(outbound.data[:size]), end_stream=last)
                del outbound.data[:size]
                if last:
                    del self._outbound[stream_id]
                    return
            if outbound.end:
                conn.end_stream(stream_id)
                del self._outbound[stream_id]
        except h2.exceptions.ProtocolError:  # the stream (or the connection) closed meanwhile
            self._outbound.pop(stream_id, None)

    def _forget(self, stream_id: int) -> None:
        self._inbound.pop(stream_id, None)
        self._outbound.pop(stream_id, None)


_FRAME_HEADER_BYTES: Final = 9
_GOAWAY: Final = 0x7
_GOAWAY_PAYLOAD_BYTES_MIN: Final = 8  # last stream id and error code; debug data may follow
_FRAME_BYTES_MAX: Final = 16_384  # SETTINGS_MAX_FRAME_SIZE we keep (the RFC's default)


class _FrameTooLarge(Exception):
    pass


class _GoawaySplitter:
    """Takes the peer's well-formed GOAWAY frames out of the byte stream before h2 sees them.

    Why: h2 treats a received GOAWAY as the end of the connection (its state machine goes to
    CLOSED, it clears what it had queued to send, and refuses to send anything more), while RFC
    9113 6.8 lets the streams the peer already opened finish. The JS SDK's default handler
    closes its session (GOAWAY) as soon as an answer's headers arrive, so a SubscribeToShard
    event stream, or any answer larger than the client's window, would be cut off. Every other
    frame, and any GOAWAY that is malformed (not on stream 0, shorter than 8 bytes), goes to
    h2 untouched, which judges it. Only the frame headers are parsed here;
    a frame's payload passes through as it arrives (nothing but a GOAWAY is buffered, and that
    at most ``_FRAME_BYTES_MAX``). A frame header announcing more than ``_FRAME_BYTES_MAX`` (our
    SETTINGS_MAX_FRAME_SIZE) raises ``_FrameTooLarge`` at once: h2 itself would first buffer the
    whole announced frame (up to 16 MiB) before it checked the length."""

    def __init__(self) -> None:
        self._preface_left = len(PREFACE)
        self._header = bytearray()  # a frame header being gathered
        self._pass_left = 0  # bytes of the current frame still to hand to h2
        self._goaway: bytearray | None = None  # a GOAWAY payload being gathered
        self._goaway_left = 0

    def split(self, data: bytes | bytearray) -> list[bytes | PeerClosing]:
        pieces: list[bytes | PeerClosing] = []
        out = bytearray()
        view = memoryview(data)
        at = 0
        if self._preface_left:
            take = min(self._preface_left, len(view))
            out += view[:take]
            self._preface_left -= take
            at = take
        while at < len(view):
            if self._pass_left:
                take = min(self._pass_left, len(view) - at)
                out += view[at : at + take]
                self._pass_left -= take
                at += take
            elif self._goaway is not None:
                take = min(self._goaway_left, len(view) - at)
                self._goaway += view[at : at + take]
                self._goaway_left -= take
                at += take
                if not self._goaway_left:
                    if out:
                        pieces.append(bytes(out))
                        out = bytearray()
                    payload, self._goaway = self._goaway, None
                    last_stream_id = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
                    pieces.append(PeerClosing(last_stream_id, int.from_bytes(payload[4:8], "big")))
            else:
                take = min(_FRAME_HEADER_BYTES - len(self._header), len(view) - at)
                self._header += view[at : at + take]
                at += take
                if len(self._header) == _FRAME_HEADER_BYTES:
                    self._on_header(out)
        if out:
            pieces.append(bytes(out))
        return pieces

    def _on_header(self, out: bytearray) -> None:
        header, self._header = self._header, bytearray()
        length = int.from_bytes(header[:3], "big")
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF
        well_formed = length >= _GOAWAY_PAYLOAD_BYTES_MIN and stream_id == 0
        if length > _FRAME_BYTES_MAX:
            raise _FrameTooLarge(f"a frame of {length} bytes (at most {_FRAME_BYTES_MAX})")
        if header[3] == _GOAWAY and well_formed:
            self._goaway = bytearray()
            self._goaway_left = length
        else:
            out += header
            self._pass_left = length


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    """The Content-Length header, if any (h2 has checked it is a number matching the body)."""
    for name, value in headers:
        if name == "content-length":
            return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None
    return None
