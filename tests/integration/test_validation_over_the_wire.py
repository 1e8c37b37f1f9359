"""Every validation error, over the wire, from a real server, with its typed exception.

Two layers are checked separately, because the client validates arguments itself before
sending (so a bad call fails fast): ``client.call(op, args)`` sends raw requests past the
client's checks and proves the *server* refuses them with the right code; the typed API proves
the client raises the same class. After each refusal the connection must still work and
nothing may have been stored. Every test runs on asyncio and on trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streamd.testing import ServerProcess
from streamd_client import PutRecordsEntry, connect, errors
from streamd_client import batch as batchfmt
from streamd_client.model import (
    HASH_KEY_MAX,
    PUT_RECORDS_BYTES_MAX,
    RECORD_DATA_BYTES_MAX,
    hash_bytes_of,
    make_sequence,
)
from streamd_client.sync import connect as sync_connect

pytestmark = pytest.mark.anyio

SHARD_0 = "shardId-000000000000"
SHARD_1 = "shardId-000000000001"


@pytest.fixture(scope="module")
def valid_stream(server: ServerProcess) -> Iterator[str]:
    """A two-shard stream the refused requests aim at; it must stay empty."""
    with sync_connect(server.endpoint) as client:
        client.create_stream("validation-target", 2)
        yield "validation-target"


def record(key: Any = "k", data: Any = b"x", hash_key: Any = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"k": key, "d": data}
    if hash_key is not None:
        raw["h"] = hash_key
    return raw


def put(stream: str, *records: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "put_records", {"stream": stream, "records": list(records)}


ONE_MIB = 1024 * 1024
STREAM = "validation-target"

RAW_REFUSALS: list[tuple[str, tuple[str, dict[str, Any]], type[errors.StreamdError]]] = [
    (
        "record 1 MiB + 1",
        put(STREAM, record(data=b"x" * (RECORD_DATA_BYTES_MAX + 1))),
        errors.RecordTooLargeError,
    ),
    ("partition key empty", put(STREAM, record(key="")), errors.InvalidPartitionKeyError),
    (
        "partition key 257 chars",
        put(STREAM, record(key="k" * 257)),
        errors.InvalidPartitionKeyError,
    ),
    ("partition key not text", put(STREAM, record(key=b"k")), errors.InvalidPartitionKeyError),
    ("hash key negative", put(STREAM, record(hash_key="-1")), errors.InvalidHashKeyError),
    ("hash key not decimal", put(STREAM, record(hash_key="0x10")), errors.InvalidHashKeyError),
    (
        "hash key 2**128",
        put(STREAM, record(hash_key=str(HASH_KEY_MAX + 1))),
        errors.InvalidHashKeyError,
    ),
    (
        "hash key 2**128 as int",
        put(STREAM, record(hash_key=HASH_KEY_MAX + 1)),
        errors.InvalidHashKeyError,
    ),
    ("501 records", put(STREAM, *[record() for _ in range(501)]), errors.RequestTooLargeError),
    ("zero records", put(STREAM), errors.RequestTooLargeError),
    (
        "more than 5 MiB",
        put(STREAM, *[record(data=b"x" * (ONE_MIB - 10)) for _ in range(6)]),
        errors.RequestTooLargeError,
    ),
    (
        "one bad record refuses the whole request",
        put(STREAM, record(), record(key=""), record()),
        errors.InvalidPartitionKeyError,
    ),
    (
        "records not a list",
        ("put_records", {"stream": STREAM, "records": {}}),
        errors.InvalidArgumentError,
    ),
    (
        "stream name empty",
        ("create_stream", {"stream": "", "shard_count": 1}),
        errors.InvalidStreamNameError,
    ),
    (
        "stream name 129 chars",
        ("create_stream", {"stream": "s" * 129, "shard_count": 1}),
        errors.InvalidStreamNameError,
    ),
    (
        "stream name with a space",
        ("create_stream", {"stream": "a b", "shard_count": 1}),
        errors.InvalidStreamNameError,
    ),
    (
        "stream name with a slash",
        ("create_stream", {"stream": "../etc", "shard_count": 1}),
        errors.InvalidStreamNameError,
    ),
    (
        "stream name not ASCII",
        ("create_stream", {"stream": "strëam", "shard_count": 1}),
        errors.InvalidStreamNameError,
    ),
    (
        "duplicate stream",
        ("create_stream", {"stream": STREAM, "shard_count": 1}),
        errors.StreamExistsError,
    ),
    (
        "shard count 0",
        ("create_stream", {"stream": "sc0", "shard_count": 0}),
        errors.InvalidArgumentError,
    ),
    (
        "retention 23 h",
        ("create_stream", {"stream": "r", "shard_count": 1, "retention_hours": 23}),
        errors.InvalidArgumentError,
    ),
    (
        "retention 8761 h",
        ("create_stream", {"stream": "r", "shard_count": 1, "retention_hours": 8761}),
        errors.InvalidArgumentError,
    ),
    (
        "update retention 23 h",
        ("update_retention", {"stream": STREAM, "retention_hours": 23}),
        errors.InvalidArgumentError,
    ),
    (
        "update retention not int",
        ("update_retention", {"stream": STREAM, "retention_hours": "48"}),
        errors.InvalidArgumentError,
    ),
    (
        "unknown stream: describe",
        ("describe_stream", {"stream": "no-such"}),
        errors.StreamNotFoundError,
    ),
    ("unknown stream: put", put("no-such", record()), errors.StreamNotFoundError),
    (
        "unknown stream: delete",
        ("delete_stream", {"stream": "no-such"}),
        errors.StreamNotFoundError,
    ),
    (
        "unknown stream: retention",
        ("update_retention", {"stream": "no-such", "retention_hours": 48}),
        errors.StreamNotFoundError,
    ),
    (
        "unknown stream: read",
        ("read", {"stream": "no-such", "shard_id": SHARD_0, "from": {"type": "trim_horizon"}}),
        errors.StreamNotFoundError,
    ),
    (
        "unknown shard: read",
        (
            "read",
            {
                "stream": STREAM,
                "shard_id": "shardId-000000000099",
                "from": {"type": "trim_horizon"},
            },
        ),
        errors.ShardNotFoundError,
    ),
    (
        "sequence of another shard",
        (
            "read",
            {
                "stream": STREAM,
                "shard_id": SHARD_0,
                "from": {"type": "at_sequence", "sequence": make_sequence(1, 0)},
            },
        ),
        errors.InvalidSequenceNumberError,
    ),
    (
        "malformed sequence",
        (
            "read",
            {
                "stream": STREAM,
                "shard_id": SHARD_0,
                "from": {"type": "at_sequence", "sequence": "12"},
            },
        ),
        errors.InvalidSequenceNumberError,
    ),
    (
        "unknown position type",
        ("read", {"stream": STREAM, "shard_id": SHARD_0, "from": {"type": "oldest"}}),
        errors.InvalidArgumentError,
    ),
    (
        "read wait too long",
        (
            "read",
            {"stream": STREAM, "shard_id": SHARD_0, "from": {"type": "latest"}, "wait_ms": 10**6},
        ),
        errors.InvalidArgumentError,
    ),
    ("unknown operation", ("frobnicate", {}), errors.UnknownOperationError),
]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [pytest.param(r, e, id=name) for name, r, e in RAW_REFUSALS]
    + [
        pytest.param(
            put("a b", record()),
            errors.InvalidStreamNameError,
            id="bad stream name on put",
        ),
    ],
)
async def test_server_refuses_with_typed_error(
    endpoint: str,
    valid_stream: str,
    request_: tuple[str, dict[str, Any]],
    expected: type[errors.StreamdError],
) -> None:
    op, args = request_
    async with connect(endpoint) as client:
        with pytest.raises(expected) as raised:
            await client.call(op, args)
        assert type(raised.value) is expected  # the exact class, not just a parent
        assert raised.value.code == expected.code
        # The framing was intact, so the same connection still serves requests.
        assert valid_stream in await client.list_streams()
        # Nothing was stored by the refused request.
        for shard_id in (SHARD_0, SHARD_1):
            result = await client.read(valid_stream, shard_id, _trim_horizon())
            assert result.records == [] and result.high_watermark == 0


def _trim_horizon() -> Any:
    from streamd_client import Position

    return Position.trim_horizon()


def _bad_batch(flip_at: int) -> bytes:
    data = bytearray(batchfmt.encode_batch(["k"], [hash_bytes_of("k")], [b"payload"]))
    data[flip_at] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        pytest.param(b"short", errors.InvalidBatchError, id="not a batch"),
        pytest.param(_bad_batch(10), errors.InvalidBatchError, id="header byte flipped"),
        pytest.param(_bad_batch(-1), errors.InvalidBatchError, id="payload byte flipped"),
    ],
)
async def test_server_refuses_corrupt_client_batch(
    endpoint: str, valid_stream: str, batch: bytes, expected: type[errors.StreamdError]
) -> None:
    async with connect(endpoint) as client:
        with pytest.raises(expected):
            await client.append_batch(valid_stream, SHARD_0, batch)
        result = await client.read(valid_stream, SHARD_0, _trim_horizon())
        assert result.high_watermark == 0


async def test_server_refuses_batch_for_the_wrong_shard(endpoint: str, valid_stream: str) -> None:
    low_key = "0"  # explicit hash 0 lives in shard 0; send it to shard 1
    batch = batchfmt.encode_batch(["k"], [int(low_key).to_bytes(16, "big")], [b"x"])
    async with connect(endpoint) as client:
        with pytest.raises((errors.WrongShardError, errors.InvalidBatchError)):
            await client.append_batch(valid_stream, SHARD_1, batch)


async def test_limits_are_inclusive(endpoint: str, stream_name: str) -> None:
    """The largest valid values pass: 1 MiB of data, 256-character keys (not bytes), hash key
    2**128-1, 500 records, 5 MiB in total, retention 8760 h."""
    async with connect(endpoint) as client:
        await client.create_stream(stream_name, 2, retention_hours=8760)
        await client.put_record(stream_name, b"x" * RECORD_DATA_BYTES_MAX, "k")
        await client.put_record(stream_name, b"x", "é" * 256)
        put_result = await client.put_record(stream_name, b"x", "k", explicit_hash_key=HASH_KEY_MAX)
        assert put_result.shard_id == SHARD_1
        many = await client.put_records(stream_name, [(b"r", f"k{i}") for i in range(500)])
        assert many.failed_count == 0
        key = "k"
        data_bytes = (PUT_RECORDS_BYTES_MAX - 5 * len(key)) // 5
        big = await client.put_records(stream_name, [(b"y" * data_bytes, key)] * 5)
        assert big.failed_count == 0
        await client.delete_stream(stream_name)


CLIENT_REFUSALS: list[tuple[str, str, tuple[Any, ...], type[errors.StreamdError]]] = [
    (
        "record too large",
        "put_record",
        (STREAM, b"x" * (RECORD_DATA_BYTES_MAX + 1), "k"),
        errors.RecordTooLargeError,
    ),
    ("empty key", "put_record", (STREAM, b"x", ""), errors.InvalidPartitionKeyError),
    ("257-char key", "put_record", (STREAM, b"x", "k" * 257), errors.InvalidPartitionKeyError),
    ("bad hash key", "put_record", (STREAM, b"x", "k", "abc"), errors.InvalidHashKeyError),
    ("501 records", "put_records", (STREAM, [(b"x", "k")] * 501), errors.RequestTooLargeError),
    (
        "> 5 MiB",
        "put_records",
        (STREAM, [(b"x" * (ONE_MIB - 10), "k")] * 6),
        errors.RequestTooLargeError,
    ),
    ("bad name", "create_stream", ("a b", 1), errors.InvalidStreamNameError),
    ("duplicate", "create_stream", (STREAM, 1), errors.StreamExistsError),
    ("bad retention", "update_retention", (STREAM, 8761), errors.InvalidArgumentError),
    ("unknown stream", "describe_stream", ("no-such",), errors.StreamNotFoundError),
    (
        "unknown stream put",
        "put_records",
        ("no-such", [PutRecordsEntry(b"x", "k")]),
        errors.StreamNotFoundError,
    ),
]


@pytest.mark.parametrize(
    ("method", "call_args", "expected"),
    [pytest.param(m, a, e, id=name) for name, m, a, e in CLIENT_REFUSALS],
)
async def test_typed_api_raises_the_same_class(
    endpoint: str,
    valid_stream: str,
    method: str,
    call_args: tuple[Any, ...],
    expected: type[errors.StreamdError],
) -> None:
    async with connect(endpoint) as client:
        with pytest.raises(expected):
            await getattr(client, method)(*call_args)
