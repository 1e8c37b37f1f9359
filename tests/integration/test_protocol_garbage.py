"""Bad bytes on a raw socket: the server answers PROTOCOL_ERROR (request id 0) and closes when
the framing cannot be trusted, answers a typed error and keeps the connection when only the
request is bad, and in every case stays up for everyone else (invariant 7)."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest

from streamd.testing import ServerProcess
from streamd_client import wire
from streamd_client.sync import connect as sync_connect

SOCKET_TIMEOUT_S = 10.0


class RawConnection:
    """A blocking socket speaking frames by hand (nothing of the client library)."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
        self.decoder = wire.FrameDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, request_id: int, op: str, args: dict[str, Any]) -> None:
        self.send(wire.encode_message(wire.request(request_id, op, args)))

    def hello(self) -> None:
        self.request(1, wire.OP_HELLO, {"versions": [1], "client": "raw-test"})
        assert "r" in self.receive()

    def receive(self) -> dict[str, Any]:
        """The next message; raises EOFError if the server closed first."""
        while True:
            message = self.decoder.next_message()
            if message is not wire.NEED_DATA:
                assert isinstance(message, dict)
                return message
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.decoder.receive_data(data)

    def closed_by_server(self) -> bool:
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[RawConnection]:
    connection = RawConnection(server.endpoint)
    yield connection
    connection.close()


def assert_server_still_serves(server: ServerProcess) -> None:
    with sync_connect(server.endpoint, connect_timeout_s=5.0) as client:
        client.list_streams()


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("hello_first", "garbage"),
    [
        pytest.param(False, b"\xff\xff\xff\xff" + b"x" * 100, id="length over the limit"),
        pytest.param(False, b"\x00\x00\x00\x00", id="zero length"),
        pytest.param(False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http request"),
        pytest.param(False, frame(b"\xff\xfe not cbor"), id="body not cbor"),
        pytest.param(True, frame(b"\xff\xfe not cbor"), id="body not cbor after hello"),
        pytest.param(True, frame(cbor2.dumps([1, 2, 3])), id="body not a map"),
        pytest.param(True, frame(cbor2.dumps({"op": "list_streams"})), id="no request id"),
        pytest.param(True, b"\x7f\xff\xff\xff", id="2 GiB length after hello"),
    ],
)
def test_broken_framing_gets_protocol_error_and_close(
    server: ServerProcess, raw: RawConnection, hello_first: bool, garbage: bytes
) -> None:
    if hello_first:
        raw.hello()
    raw.send(garbage)
    message = raw.receive()
    assert message["i"] == 0
    assert message["e"]["code"] == "PROTOCOL_ERROR"
    assert raw.closed_by_server()
    assert_server_still_serves(server)


def test_first_request_must_be_hello(server: ServerProcess, raw: RawConnection) -> None:
    raw.request(5, "list_streams", {})
    message = raw.receive()
    assert message["e"]["code"] == "PROTOCOL_ERROR"
    assert raw.closed_by_server()
    assert_server_still_serves(server)


def test_unsupported_version(server: ServerProcess, raw: RawConnection) -> None:
    raw.request(1, wire.OP_HELLO, {"versions": [99]})
    message = raw.receive()
    assert message["e"]["code"] == "UNSUPPORTED_VERSION"
    assert raw.closed_by_server()


def test_bad_request_in_a_good_frame_keeps_the_connection(raw: RawConnection) -> None:
    raw.hello()
    raw.request(2, "no_such_operation", {})
    answer = raw.receive()
    assert answer["i"] == 2 and answer["e"]["code"] == "UNKNOWN_OPERATION"
    raw.request(3, "describe_stream", {"stream": 42})
    assert raw.receive()["e"]["code"] == "INVALID_ARGUMENT"
    raw.send(frame(cbor2.dumps({"i": 4, "op": 7})))  # op is not text: that request only
    assert raw.receive()["i"] == 4
    raw.request(5, "list_streams", {})
    answer = raw.receive()
    assert answer["i"] == 5 and "streams" in answer["r"]


def test_random_garbage_never_takes_the_server_down(server: ServerProcess) -> None:
    rng = random.Random(2024)
    for round_number in range(20):
        connection = RawConnection(server.endpoint)
        try:
            if round_number % 2:
                connection.hello()
            connection.send(rng.randbytes(rng.randrange(1, 20_000)))
            try:
                message = connection.receive()
            except (EOFError, ConnectionResetError, TimeoutError):
                continue  # closing on garbage is fine too, as long as the server lives
            if "e" in message:
                assert isinstance(message["e"]["code"], str)
        finally:
            connection.close()
    assert_server_still_serves(server)
