"""The gateway's large-body machinery in isolation: per-operation body bounds, the head handed
out before a body is read, the byte budget (first come first served, timeouts, cancellation),
and the body decoder (worker processes, the bound on members, the decode timeout)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio

from streamd.frontends.kinesis import cbor
from streamd.frontends.kinesis.body_limits import body_bytes_max, too_large
from streamd.frontends.kinesis.codec import CodecError, Protocol, decode_request
from streamd.frontends.kinesis.decoding import ITEMS_MAX, BodyDecoder, decode_bounded
from streamd.frontends.kinesis.http_wire import ParsedRequest, RequestParser
from streamd.frontends.kinesis.inflight import ByteBudget

MIB = 1024 * 1024


def test_body_bounds_follow_kinesis_limits_per_protocol() -> None:
    # The largest any stream takes (10 MiB records and PutRecords, UpdateMaxRecordSize): the
    # stream's own limits come after decoding.
    assert 10 * MIB < body_bytes_max("PutRecords", Protocol.CBOR) < 11 * MIB
    assert 10 * MIB * 4 // 3 < body_bytes_max("PutRecords", Protocol.JSON) < 14 * MIB
    assert 10 * MIB < body_bytes_max("PutRecord", Protocol.CBOR) < 10.1 * MIB
    assert 10 * MIB * 4 // 3 < body_bytes_max("PutRecord", Protocol.JSON) < 13.5 * MIB
    assert body_bytes_max("ListStreams", Protocol.JSON) == MIB
    assert body_bytes_max(None, Protocol.JSON) == MIB
    assert too_large("PutRecords", 9 * MIB, 7 * MIB)[0] == "InvalidArgumentException"
    assert too_large("PutRecord", 9 * MIB, 2 * MIB)[0] == "ValidationException"


def head(length: int) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


def test_the_head_of_a_request_whose_body_is_still_to_come_is_handed_out_once() -> None:
    parser = RequestParser(16 * 1024, 10 * MIB)
    parser.receive_data(head(2) + b"{}")  # whole in one feed: no head to admit
    assert parser.take_head() is None
    assert isinstance(parser.next_event(), ParsedRequest) and parser.completed == 1
    parser.receive_data(head(1000) + b"x" * 10)
    taken = parser.take_head()
    assert taken is not None and taken.content_length == 1000
    assert parser.take_head() is None
    parser.receive_data(b"x" * 990)
    assert isinstance(parser.next_event(), ParsedRequest) and parser.completed == 2


def test_limit_body_bounds_a_chunked_body_as_it_arrives() -> None:
    parser = RequestParser(16 * 1024, 10 * MIB)
    parser.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    taken = parser.take_head()
    assert taken is not None and taken.content_length is None
    parser.limit_body(100)
    parser.receive_data(b"64\r\n" + b"x" * 100 + b"\r\n1\r\nx\r\n")
    with pytest.raises(Exception) as exc:
        parser.next_event()
    assert getattr(exc.value, "status", None) == 413


async def test_budget_grants_in_arrival_order_and_times_out(autojump_clock: Any) -> None:
    budget = ByteBudget(100)
    assert budget.try_acquire(60)
    order: list[str] = []

    async def take(name: str, size: int, timeout_s: float) -> None:
        if await budget.acquire(size, timeout_s):
            order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "big", 80, 10.0)
        await trio.sleep(0.01)
        nursery.start_soon(take, "small", 10, 10.0)  # would fit now, but waits behind "big"
        nursery.start_soon(take, "late", 90, 1.0)  # times out
        await trio.sleep(2)
        assert order == [] and budget.waiting == 2
        budget.release(60)
    assert sorted(order) == ["big", "small"]  # both granted by that one release
    assert budget.used == 90 and budget.waiting == 0


async def test_budget_waiter_cancelled_gives_nothing_away(autojump_clock: Any) -> None:
    budget = ByteBudget(10)
    assert budget.try_acquire(10)
    with trio.move_on_after(1):
        await budget.acquire(5, 100.0)
    assert budget.waiting == 0
    budget.release(10)
    assert budget.used == 0


def cbor_put_records(count: int, size: int) -> bytes:
    records = [{"Data": os.urandom(size), "PartitionKey": f"k{i}"} for i in range(count)]
    return cbor.dumps({"StreamName": "s", "Records": records})


async def test_large_bodies_decode_in_a_worker_as_they_would_inline() -> None:
    body = cbor_put_records(50, 2000)
    json_body = json.dumps(
        {"StreamName": "s", "Records": [{"Data": "eA==", "PartitionKey": "k"}] * 900}
    )
    async with BodyDecoder(workers=1) as decoder:
        assert await decoder.decode(Protocol.CBOR, body) == decode_request(Protocol.CBOR, body)
        decoded = await decoder.decode(Protocol.JSON, json_body.encode())
        assert decoded["Records"][0]["Data"] == b"x" and len(decoded["Records"]) == 900
        with pytest.raises(CodecError):
            await decoder.decode(Protocol.JSON, b"{" * 20_000)


def test_a_document_with_too_many_members_is_refused() -> None:
    body = json.dumps({"StreamName": "s", "Records": [0] * (ITEMS_MAX + 1)}).encode()
    with pytest.raises(CodecError, match="members"):
        decode_bounded(Protocol.JSON, body)
    assert decode_bounded(Protocol.JSON, json.dumps({"Records": [0] * 1000}).encode())


async def test_a_decode_that_takes_too_long_is_killed() -> None:
    body = json.dumps({"StreamName": "s", "Records": [{"Data": "", "PartitionKey": "k"}] * 60_000})
    async with BodyDecoder(workers=1, timeout_s=0.001) as decoder:
        with pytest.raises(CodecError, match="longer than"):
            await decoder.decode(Protocol.JSON, body.encode())


async def test_a_large_cbor_body_of_few_items_decodes_inline_one_of_many_items_does_not() -> None:
    """Outside ``async with`` the decoder has no workers: what it decodes anyway was inline."""
    decoder = BodyDecoder(workers=1)
    few_large = cbor_put_records(400, 10_000)  # 4 MB, about 2,000 items
    decoded = await decoder.decode(Protocol.CBOR, few_large)
    assert len(decoded["Records"]) == 400
    many_small = cbor.dumps({"StreamName": "s", "Records": [{"Data": b"x"}] * 5000})
    with pytest.raises(RuntimeError, match="outside"):
        await decoder.decode(Protocol.CBOR, many_small)
    with pytest.raises(RuntimeError, match="outside"):
        await decoder.decode(Protocol.JSON, json.dumps({"Records": [0] * 10_000}).encode())


def test_admission_per_address_default_is_a_quarter_of_the_global_bound() -> None:
    from streamd.config import ServerConfig
    from streamd.frontends.admission import admission_limits, per_address_default

    assert per_address_default(1024) == 256 and per_address_default(3) == 1
    assert admission_limits(ServerConfig()).connections_per_address_max == 256
    limits = admission_limits(ServerConfig(connections_max=100, connections_per_address_max=7))
    assert (limits.connections_max, limits.connections_per_address_max) == (100, 7)
