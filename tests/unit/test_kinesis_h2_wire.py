"""The sans-I/O HTTP/2 server (h2_wire.H2Server) against h2's own client, no sockets: requests
come out the same fed whole or one byte at a time; the preface is told apart; bodies are held
(not acknowledged) until admitted; the peer's GOAWAY leaves open streams able to finish; a
frame header over the frame size is refused before its payload; and any bytes after the
preface give events or H2ProtocolError, nothing else (a fuzz target)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.frontends.kinesis.h2_wire import (
    PREFACE,
    BodyReceived,
    H2ProtocolError,
    H2Server,
    H2Settings,
    HeadReceived,
    PeerClosing,
    preface_match,
)


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def request(conn: h2.connection.H2Connection, body: bytes, *, end: bool = True) -> int:
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "example:4567"),
            (":path", "/"),
            ("x-amz-target", "Kinesis_20131202.PutRecord"),
            ("content-length", str(len(body))),
        ],
    )
    for at in range(0, len(body), 16_384):
        last = at + 16_384 >= len(body)
        conn.send_data(sid, body[at : at + 16_384], end_stream=end and last)
    return sid


def server() -> H2Server:
    srv = H2Server(H2Settings())
    srv.initiate()
    return srv


def test_preface_match_tells_http2_from_anything_else() -> None:
    assert preface_match(PREFACE + b"more") is True
    assert preface_match(PREFACE[:10]) is None
    assert preface_match(b"") is None
    assert preface_match(b"POST / HTTP/1.1\r\n") is False
    assert preface_match(b"PRI * HTTP/1.1") is False


def test_a_request_is_the_same_whole_or_byte_by_byte() -> None:
    conn = client()
    sid = request(conn, b'{"Data": "eA=="}')
    data = conn.data_to_send()
    whole = server()
    events_whole = whole.receive_data(data)
    single = server()
    events_single = [e for i in range(len(data)) for e in single.receive_data(data[i : i + 1])]
    assert events_whole == events_single
    head, body = events_whole
    assert isinstance(head, HeadReceived) and isinstance(body, BodyReceived)
    assert head.stream_id == sid and head.head.method == "POST" and head.head.target == "/"
    assert head.head.header("host") == "example:4567"
    assert head.head.header(":authority") == "example:4567"  # kept for SigV4
    assert head.head.content_length == 16
    assert body.body == b'{"Data": "eA=="}'


def test_a_body_is_not_acknowledged_until_admitted() -> None:
    conn = client()
    srv = server()
    srv.receive_data(conn.data_to_send())
    conn.receive_data(srv.data_to_send())
    # Over half the stream's 1 MiB window: h2 sends WINDOW_UPDATE once it is acknowledged.
    sid = request(conn, b"x" * 600_000, end=False)
    srv.receive_data(conn.data_to_send())
    window_before = conn.local_flow_control_window(sid)
    events = conn.receive_data(srv.data_to_send())
    assert not any(isinstance(e, h2.events.WindowUpdated) for e in events)  # held back
    assert conn.local_flow_control_window(sid) == window_before
    assert srv.admit(sid, 1024 * 1024)
    events = conn.receive_data(srv.data_to_send())
    assert any(isinstance(e, h2.events.WindowUpdated) for e in events)


def test_the_peers_goaway_lets_open_streams_finish() -> None:
    conn = client()
    srv = server()
    sid = request(conn, b"{}")
    srv.receive_data(conn.data_to_send())
    conn.receive_data(srv.data_to_send())
    conn.close_connection()  # what the JS SDK does once an answer's headers arrived
    events = srv.receive_data(conn.data_to_send())
    assert any(isinstance(e, PeerClosing) for e in events)
    srv.send_answer(sid, 200, [("content-type", "application/json")], b'{"ok": 1}')
    assert srv.answer_sent(sid)
    # h2 would have refused to send after the GOAWAY (and dropped what it had queued).
    assert b'{"ok": 1}' in srv.data_to_send()


def test_a_frame_over_the_frame_size_is_refused_from_its_header() -> None:
    srv = server()
    conn = client()
    srv.receive_data(conn.data_to_send())
    header = (16_385).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    try:
        srv.receive_data(header)  # the header alone: no payload needed to refuse it
    except H2ProtocolError as exc:
        assert exc.error_code == 0x6  # FRAME_SIZE_ERROR
    else:
        raise AssertionError("not refused")
    assert srv.closed and srv.data_to_send()  # GOAWAY queued


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_any_bytes_after_the_preface_give_events_or_our_protocol_error(
    garbage: bytes, piece: int
) -> None:
    conn = client()
    data = conn.data_to_send() + garbage
    srv = server()
    try:
        for at in range(0, len(data), piece):
            srv.receive_data(data[at : at + piece])
    except H2ProtocolError:
        assert srv.closed
