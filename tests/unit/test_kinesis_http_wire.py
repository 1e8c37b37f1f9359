"""The gateway's sans-I/O HTTP layer: requests parsed whole and split at every byte boundary,
pipelining, keep-alive, 100-continue, limits, garbage; answers pinned as golden bytes. As for h11:
any input parses or raises HttpParseError, nothing else (a hypothesis fuzz proves it)."""

from __future__ import annotations

import itertools

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamd.frontends.kinesis.http_wire import (
    CLOSED,
    NEED_DATA,
    HttpParseError,
    ParsedRequest,
    RequestParser,
    encode_answer,
    encode_chunk,
    encode_head,
)

HEADER_MAX = 1024
BODY_MAX = 4096

PUT_RECORD_BODY = b'{"StreamName": "s", "PartitionKey": "k", "Data": "ZGF0YQ=="}'
PUT_RECORD = (
    b"POST / HTTP/1.1\r\n"
    b"Host: 127.0.0.1:4567\r\n"
    b"Accept-Encoding: identity\r\n"
    b"X-Amz-Target: Kinesis_20131202.PutRecord\r\n"
    b"Content-Type: application/x-amz-json-1.1\r\n"
    b"User-Agent: Boto3/1.34\r\n"
    b"X-Amz-Date: 20261127T120000Z\r\n"
    b"Authorization: AWS4-HMAC-SHA256 Credential=x/20261127/us-east-1/kinesis/aws4_request\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n"
    b"%s"
) % (len(PUT_RECORD_BODY), PUT_RECORD_BODY)
CHUNKED = (
    b"POST /x?y=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: t\r\n\r\n"
)


def parser() -> RequestParser:
    return RequestParser(HEADER_MAX, BODY_MAX)


Parsed = tuple[list[object], HttpParseError | None]


def feed(data: bytes, splits: list[int] | None = None) -> Parsed:
    """Feed ``data`` cut at ``splits``, then the end of file: the requests parsed, in order, and
    the error if one was raised."""
    p = parser()
    cuts = [0, *sorted(splits or []), len(data)]
    pieces = [data[start:end] for start, end in itertools.pairwise(cuts)]
    requests: list[object] = []
    try:
        for piece in [*(piece for piece in pieces if piece), b""]:  # b"": the end of file
            p.receive_data(piece)
            while isinstance(event := p.next_event(), ParsedRequest):
                requests.append(event)
    except HttpParseError as exc:
        return requests, exc
    assert event is CLOSED
    return requests, None


def test_a_put_record_request_parses_whole() -> None:
    p = parser()
    p.receive_data(PUT_RECORD)
    request = p.next_event()
    assert isinstance(request, ParsedRequest)
    assert (request.method, request.target) == ("POST", "/")
    assert ("x-amz-target", "Kinesis_20131202.PutRecord") in request.headers
    assert ("content-type", "application/x-amz-json-1.1") in request.headers
    assert request.body == PUT_RECORD_BODY
    assert request.http_11 and request.keep_alive
    assert p.next_event() is NEED_DATA
    assert not p.request_started
    p.receive_data(b"")
    assert p.next_event() is CLOSED


@pytest.mark.parametrize("data", [PUT_RECORD, CHUNKED], ids=["content-length", "chunked"])
def test_split_at_every_byte_boundary_parses_the_same(data: bytes) -> None:
    whole, error = feed(data)
    assert error is None and len(whole) == 1
    for cut in range(1, len(data)):
        assert feed(data, [cut]) == (whole, None), cut


@pytest.mark.parametrize("data", [PUT_RECORD, CHUNKED], ids=["content-length", "chunked"])
def test_one_byte_at_a_time_parses_the_same(data: bytes) -> None:
    assert feed(data, list(range(1, len(data)))) == feed(data)


def test_chunked_body_is_joined_and_the_target_kept() -> None:
    [request], error = feed(CHUNKED)
    assert error is None
    assert isinstance(request, ParsedRequest)
    assert request.target == "/x?y=1" and request.body == b"hello, world"


def test_header_values_are_stripped_and_names_lowercased() -> None:
    [request], _ = feed(b"GET / HTTP/1.1\r\nHOST:   x  \r\nX-Empty:\r\n\r\n")
    assert isinstance(request, ParsedRequest)
    assert request.headers == [("host", "x"), ("x-empty", "")]


def test_pipelined_requests_come_out_in_order() -> None:
    data = PUT_RECORD + CHUNKED + PUT_RECORD.replace(b"PutRecord", b"ListStreams")
    requests, error = feed(data)
    assert error is None
    assert [r.body for r in requests if isinstance(r, ParsedRequest)] == [
        PUT_RECORD_BODY,
        b"hello, world",
        PUT_RECORD_BODY,
    ]
    assert feed(data, list(range(1, len(data)))) == (requests, None)


def test_keep_alive_rules() -> None:
    cases = {
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n": True,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": False,
        b"GET / HTTP/1.0\r\n\r\n": False,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": False,  # as h11: 1.0 closes
    }
    for data, keep_alive in cases.items():
        [request], error = feed(data)
        assert error is None and isinstance(request, ParsedRequest)
        assert request.keep_alive is keep_alive, data
        assert request.http_11 is data.startswith(b"GET / HTTP/1.1")


def test_bytes_after_connection_close_do_not_hide_the_request() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    [request], error = feed(data)
    assert isinstance(request, ParsedRequest) and not request.keep_alive
    assert error is not None and error.status == 400


def test_expect_100_continue_is_due_until_the_body_starts() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    p = parser()
    p.receive_data(head[:-1])
    assert not p.waiting_for_100_continue and p.request_started
    p.receive_data(head[-1:])
    assert p.waiting_for_100_continue and p.next_event() is NEED_DATA
    p.continue_sent()
    assert not p.waiting_for_100_continue
    p.receive_data(b"hello")
    request = p.next_event()
    assert isinstance(request, ParsedRequest) and request.body == b"hello"

    p = parser()  # the body arrives before the 100 was sent: no 100 any more
    p.receive_data(head + b"he")
    assert not p.waiting_for_100_continue
    p = parser()  # HTTP/1.0 clients never wait for a 100
    p.receive_data(head.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert not p.waiting_for_100_continue


def test_content_length_over_the_limit_is_413_before_the_body() -> None:
    p = parser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (BODY_MAX + 1))
    with pytest.raises(HttpParseError) as caught:
        p.next_event()
    assert caught.value.status == 413 and caught.value.reason == "too_large"


def test_content_length_at_the_limit_is_accepted() -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BODY_MAX
    [request], error = feed(data + b"a" * BODY_MAX)
    assert error is None and isinstance(request, ParsedRequest)
    assert len(request.body) == BODY_MAX


def test_chunked_body_over_the_limit_is_413_while_it_arrives() -> None:
    p = parser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = encode_chunk(b"a" * 1000)
    for _ in range(BODY_MAX // 1000):
        p.receive_data(chunk)
        assert p.next_event() is NEED_DATA
    p.receive_data(chunk)
    with pytest.raises(HttpParseError) as caught:
        p.next_event()
    assert caught.value.status == 413


@pytest.mark.parametrize("step", [1, 7, 100, 100_000])
def test_a_header_block_over_the_limit_is_400_however_it_arrives(step: int) -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (4 * HEADER_MAX) + b"\r\n\r\n"
    p = parser()
    fed = 0
    with pytest.raises(HttpParseError) as caught:
        while fed < len(data):
            p.receive_data(data[fed : fed + step])
            fed += step
            p.next_event()
    assert caught.value.status == 400 and "header block" in caught.value.message
    if step < HEADER_MAX:  # refused once the limit is passed, not at the end of the line
        assert fed <= HEADER_MAX + 2 * step


def test_a_long_url_counts_against_the_header_limit() -> None:
    _, error = feed(b"GET /" + b"a" * HEADER_MAX + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert error is not None and error.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",  # no Host
        b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nshort",  # then EOF
        b"POST / HTTP/1.1\r\nHost: x\r\n",  # then EOF
    ],
)
def test_malformed_requests_are_400(data: bytes) -> None:
    requests, error = feed(data)
    assert requests == []
    assert error is not None and error.status == 400 and error.reason == "malformed"


def test_requests_before_garbage_are_handed_out_first() -> None:
    requests, error = feed(PUT_RECORD + b"\x00\x01garbage\r\n\r\n")
    assert len(requests) == 1 and error is not None and error.status == 400


def test_bytes_after_an_error_are_ignored() -> None:
    p = parser()
    p.receive_data(b"\x00garbage")
    p.receive_data(PUT_RECORD)
    p.receive_data(b"")
    with pytest.raises(HttpParseError):
        p.next_event()


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_any_bytes_parse_or_raise_http_parse_error(data: bytes, cuts: list[int]) -> None:
    feed(data, [c for c in cuts if c <= len(data)])  # anything but HttpParseError fails


def _mutations() -> st.SearchStrategy[bytes]:
    base = PUT_RECORD + CHUNKED

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["flip", "drop", "insert"]))
            if op == "flip":
                data[at] = draw(st.integers(0, 255))
            elif op == "drop":
                del data[at]
            else:
                data[at:at] = draw(st.sampled_from([b"\r\n", b":", b" ", b"\x00", b"0", b";"]))
        return bytes(data)

    return mutate()


@settings(max_examples=400, deadline=None)
@given(data=_mutations(), cut=st.integers(0, 1000))
def test_mutated_requests_parse_or_raise_and_splitting_changes_nothing(
    data: bytes, cut: int
) -> None:
    whole = feed(data)
    split = feed(data, [min(cut, len(data))])
    assert split[0] == whole[0]
    assert (split[1] is None) == (whole[1] is None)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200),
    chunk_sizes=st.lists(st.integers(1, 50), max_size=10),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_chunked_bodies_round_trip(body: bytes, chunk_sizes: list[int], cuts: list[int]) -> None:
    chunks, rest = [], body
    for size in chunk_sizes:
        chunks.append(encode_chunk(rest[:size]))
        rest = rest[size:]
    chunks.append(encode_chunk(rest))
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(chunks)
        + b"0\r\n\r\n"
    )
    [request], error = feed(data, [c for c in cuts if c <= len(data)])
    assert error is None and isinstance(request, ParsedRequest) and request.body == body


# -- answers -----------------------------------------------------------------------------------


def test_answer_golden_bytes() -> None:
    headers = [("content-type", "application/x-amz-json-1.1"), ("x-amzn-requestid", "r")]
    assert encode_answer(200, headers, b"{}", close=False) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\n"
        b"x-amzn-requestid: r\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert encode_answer(413, [], b"x", close=True) == (
        b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"
    )
    assert encode_answer(405, [], b"body", close=False, head_only=True) == (
        b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 4\r\n\r\n"
    )
    assert encode_head(200, [("a", "b")], chunked=True, close=True) == (
        b"HTTP/1.1 200 OK\r\na: b\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert encode_head(200, [], close=True) == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert encode_head(299, [], content_length=0, close=False) == (
        b"HTTP/1.1 299 \r\ncontent-length: 0\r\n\r\n"
    )


def test_chunks_golden_bytes() -> None:
    assert encode_chunk(b"event-0") == b"7\r\nevent-0\r\n"
    assert encode_chunk(b"a" * 26) == b"1a\r\n" + b"a" * 26 + b"\r\n"
    assert encode_chunk(b"") == b""  # a zero-size chunk would end the body


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb"])
def test_cr_or_lf_in_an_answer_header_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        encode_answer(200, [("x-a", value)], b"", close=False)


def test_answers_parse_with_llhttp() -> None:
    """What the encoders write, a strict client parser reads back."""

    class Client:
        def __init__(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.body = b""
            self.done = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.done = True

    client = Client()
    response = httptools.HttpResponseParser(client)
    response.feed_data(
        encode_head(200, [("content-type", "x")], chunked=True, close=True)
        + encode_chunk(b"one")
        + encode_chunk(b"")
        + encode_chunk(b"two")
        + b"0\r\n\r\n"
    )
    assert client.done and client.body == b"onetwo" and response.get_status_code() == 200
