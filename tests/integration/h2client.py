"""A raw HTTP/2 client for the tests: python-hyper's h2 (client side) over a trio TCP stream.

Nothing is automatic that a test may want to hold back: received DATA is acknowledged (its
WINDOW_UPDATE sent) only when ``auto_ack`` is on, so a test can stall the server on flow
control and release it later with ``ack``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

READ_TIMEOUT_S = 10.0


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    unacked: int = 0  # flow-controlled bytes received and not acknowledged


class H2Client:
    def __init__(
        self, stream: trio.SocketStream, *, window_bytes: int | None = None, auto_ack: bool = True
    ) -> None:
        self.stream = stream
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        if window_bytes is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window_bytes})
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.eof = False
        self.settings_received = False

    @classmethod
    async def connect(cls, host: str, port: int, **kwargs: Any) -> H2Client:
        client = cls(await trio.open_tcp_stream(host, port), **kwargs)
        await client.flush()
        with trio.fail_after(READ_TIMEOUT_S):  # the server's SETTINGS and window first
            while not client.settings_received and await client.receive():
                pass
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def start(
        self,
        body: bytes = b"",
        *,
        target: str = "Kinesis_20131202.ListStreams",
        headers: list[tuple[str, str]] | None = None,
        content_length: bool = True,
        end: bool = True,
    ) -> int:
        """Open a POST stream (not sent until ``flush``); returns its id."""
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", "/"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target),
            *(headers or []),
        ]
        if content_length:
            fields.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        if body:
            self.send_body(sid, body, end=end)
        self.answers[sid] = Answer()
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool) -> None:
        """Body bytes as frames of the peer's frame size (the window must allow them)."""
        size = self.conn.max_outbound_frame_size
        for at in range(0, len(body), size):
            last = at + size >= len(body)
            self.conn.send_data(sid, body[at : at + size], end_stream=end and last)

    async def receive(self, timeout_s: float = READ_TIMEOUT_S) -> bool:
        """One read and its events; False if nothing came within ``timeout_s`` (or EOF)."""
        with trio.move_on_after(timeout_s):
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
                return False
            for event in self.conn.receive_data(data):
                self._on(event)
            await self.flush()
            return True
        return False

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            answer = self.answers[event.stream_id]
            for name, value in event.headers:
                answer.headers[bytes(name).decode()] = bytes(value).decode()
            answer.status = int(answer.headers[":status"])
        elif isinstance(event, h2.events.DataReceived):
            answer = self.answers[event.stream_id]
            answer.body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                answer.unacked += event.flow_controlled_length
        elif isinstance(event, h2.events.StreamEnded):
            self.answers[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.answers[event.stream_id].reset_code = int(event.error_code)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    async def ack(self, sid: int) -> None:
        answer = self.answers[sid]
        if answer.unacked:
            self.conn.acknowledge_received_data(answer.unacked, sid)
            answer.unacked = 0
            await self.flush()

    async def wait(self, *sids: int, timeout_s: float = READ_TIMEOUT_S) -> None:
        """Read until every stream in ``sids`` ended or was reset. Raises TimeoutError."""
        with trio.fail_after(timeout_s):
            while not all(self.done(sid) for sid in sids):
                if not await self.receive(timeout_s):
                    raise AssertionError(f"connection ended (eof={self.eof}, {self.goaway})")

    def done(self, sid: int) -> bool:
        answer = self.answers[sid]
        return answer.ended or answer.reset_code is not None

    async def aclose(self) -> None:
        await self.stream.aclose()
