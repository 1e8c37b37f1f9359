"""streamd client library (anyio: works from asyncio and trio programs).

    async with connect("127.0.0.1:7070") as client:
        await client.create_stream("events", shard_count=4)
        async with client.producer("events") as producer:
            pending = await producer.put(b"hello", partition_key="user-1")
        print(await pending.result())
        async for record in client.reader("events", "shardId-000000000000"):
            print(record)

``streamd_client.sync`` has the same API, blocking. Errors are in ``streamd_client.errors``.
"""

from . import errors, group_errors  # group_errors registers its wire codes
from .auth import Credentials
from .client import Client, connect
from .consumer import ShardReader
from .model import Position
from .producer import PendingPut, Producer, ProducerStats
from .results import (
    AppendResult,
    ChildShard,
    PutRecordsEntry,
    PutRecordsResult,
    PutResult,
    ReadResult,
    Record,
    RecordFailure,
    ReshardProgress,
    ShardDescription,
    SkippedRange,
    StreamDescription,
)
from .stream_reader import StreamReader

__all__ = [
    "AppendResult",
    "ChildShard",
    "Client",
    "Credentials",
    "PendingPut",
    "Position",
    "Producer",
    "ProducerStats",
    "PutRecordsEntry",
    "PutRecordsResult",
    "PutResult",
    "ReadResult",
    "Record",
    "RecordFailure",
    "ReshardProgress",
    "ShardDescription",
    "ShardReader",
    "SkippedRange",
    "StreamDescription",
    "StreamReader",
    "connect",
    "errors",
    "group_errors",
]
