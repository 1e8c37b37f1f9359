"""An in-test streamd server double: the wire protocol over real loopback TCP, an in-memory log.

It speaks docs/protocol.md with the shared codecs (wire, batch, model), so the client is tested
over real sockets, framing and all, on whichever anyio backend the test runs. It is small and
trusting (one process, no fsync, no retention) but keeps the contract the client relies on:
offsets assigned by header rewrite, idempotent-producer dedup over the last five batches,
OUT_OF_ORDER_SEQUENCE on a skipped sequence, long-poll reads, shard splits.

Faults are injected per operation with ``inject(op, kind, ...)``: ``error`` (answer a typed
error), ``drop`` (close the connection without executing), ``drop_after`` (execute, then close
without answering: the lost-ack case), ``stall`` (never answer), ``delay`` (answer late).
The real server's integration tests live elsewhere; this is a unit-test double.

Cluster mode (``fake_cluster``): several such servers ("nodes") share one ``FakeCluster``, its
streams (as if every node held a replica) and a map of each shard's leader. A node answers
append_batch and read only for the shards it leads; for the others NOT_LEADER (with the
leader's ``address``, unless ``redirect_with_address`` is off) or SHARD_UNAVAILABLE (no
leader). describe_stream names each shard's ``leader``/``leader_address`` when
``describe_leaders`` is on, as a cluster node does.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from streamd_client import batch, errors, model, wire
from streamd_client.model import Position

_DEDUP_WINDOW_BATCHES = 5
_CONNECTION_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class _Drop(Exception):
    """Close the connection without answering."""


@dataclass
class Fault:
    op: str
    kind: str  # error | drop | drop_after | stall | delay
    times: int = 1
    error: errors.StreamdError | None = None
    delay_s: float = 0.0


@dataclass
class FakeShard:
    shard_id: str
    hash_start: int
    hash_end: int
    parent_shard_id: str | None = None
    adjacent_parent_shard_id: str | None = None
    ending_sequence: str | None = None
    batches: list[bytes] = field(default_factory=list)
    next_offset: int = 0
    producers: dict[int, deque[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    committed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def index(self) -> int:
        return model.shard_index_of(self.shard_id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "hash_key_start": self.hash_start,
            "hash_key_end": self.hash_end,
            "starting_sequence": model.make_sequence(self.index, 0),
            "ending_sequence": self.ending_sequence,
            "parent_shard_id": self.parent_shard_id,
            "adjacent_parent_shard_id": self.adjacent_parent_shard_id,
        }

    def store(self, blob: bytes, header: batch.BatchHeader) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        stamped = batch.restamp(
            blob,
            base_offset=self.next_offset,
            leader_epoch=1,
            first_arrival_ms=now_ms,
            last_arrival_ms=now_ms,
        )
        self.batches.append(stamped)
        base = self.next_offset
        self.next_offset += header.record_count
        self.committed.set()
        self.committed = anyio.Event()
        return {
            "shard_id": self.shard_id,
            "base_offset": base,
            "base_sequence": model.make_sequence(self.index, base),
            "record_count": header.record_count,
            "duplicate": False,
        }


@dataclass
class FakeStream:
    name: str
    retention_hours: int
    shards: list[FakeShard]
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def shard(self, shard_id: Any) -> FakeShard:
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard
        raise errors.ShardNotFoundError(f"no shard {shard_id!r} in {self.name}")

    def route(self, hash_key: int) -> FakeShard:
        for shard in self.shards:
            if shard.ending_sequence is None and shard.hash_start <= hash_key <= shard.hash_end:
                return shard
        raise AssertionError("open shards must cover the hash space")


@dataclass
class FakeCluster:
    """What the nodes of a fake cluster share; tests move leaders by editing ``leaders``."""

    streams: dict[str, FakeStream] = field(default_factory=dict)
    leaders: dict[tuple[str, str], str | None] = field(default_factory=dict)  # -> endpoint
    node_ids: dict[str, str] = field(default_factory=dict)  # endpoint -> node id
    describe_leaders: bool = True
    redirect_with_address: bool = True
    leader_of_new_shards: str | None = None  # endpoint; set by fake_cluster to node 0

    def check_leader(self, endpoint: str, stream: str, shard_id: Any) -> None:
        """Raise what a node that is not the shard's leader answers."""
        key = (stream, str(shard_id))
        if key not in self.leaders:  # a shard created meanwhile
            self.leaders[key] = self.leader_of_new_shards
        leader = self.leaders[key]
        if leader is None:
            raise errors.ShardUnavailableError(
                f"no live node holds {shard_id}", stream=stream, shard_id=shard_id
            )
        if leader != endpoint:
            details: dict[str, Any] = {"stream": stream, "shard_id": shard_id}
            details["leader"] = self.node_ids.get(leader)
            if self.redirect_with_address:
                details["address"] = leader
            raise errors.NotLeaderError(f"{endpoint} does not lead {shard_id}", **details)

    def describe_shard(self, stream: str, shard: FakeShard) -> dict[str, Any]:
        body = shard.to_wire()
        if self.describe_leaders:
            leader = self.leaders.get((stream, shard.shard_id), self.leader_of_new_shards)
            body["leader"] = None if leader is None else self.node_ids.get(leader)
            body["leader_address"] = leader
        return body


class _Connection:
    def __init__(self, stream: anyio.abc.SocketStream, task_group: anyio.abc.TaskGroup) -> None:
        self.stream = stream
        self.task_group = task_group
        self.send_lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.stream.send(wire.encode_message(message))

    async def close(self) -> None:
        self.task_group.cancel_scope.cancel()
        await self.stream.aclose()


class FakeServer:
    def __init__(self, frame_bytes_max: int, cluster: FakeCluster | None = None) -> None:
        self.frame_bytes_max = frame_bytes_max
        self.endpoint = ""
        self.cluster = cluster
        self.streams: dict[str, FakeStream] = {} if cluster is None else cluster.streams
        self.requests: list[tuple[str, dict[str, Any]]] = []  # every request, in arrival order
        self.connections_accepted = 0
        self._faults: list[Fault] = []
        self._connections: set[_Connection] = set()
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            wire.OP_CREATE_STREAM: self._create_stream,
            wire.OP_DELETE_STREAM: self._delete_stream,
            wire.OP_LIST_STREAMS: self._list_streams,
            wire.OP_DESCRIBE_STREAM: self._describe_stream,
            wire.OP_UPDATE_RETENTION: self._update_retention,
            wire.OP_PUT_RECORDS: self._put_records,
            wire.OP_APPEND_BATCH: self._append_batch,
            wire.OP_READ: self._read,
        }

    # -- test controls -------------------------------------------------------------------------

    def inject(
        self,
        op: str,
        kind: str,
        *,
        times: int = 1,
        error: errors.StreamdError | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Apply a fault to the next ``times`` requests of ``op`` (faults apply in order)."""
        assert kind in ("error", "drop", "drop_after", "stall", "delay")
        assert (kind == "error") == (error is not None)
        self._faults.append(Fault(op, kind, times, error, delay_s))

    def clear_faults(self) -> None:
        """Drop every fault not applied yet."""
        self._faults.clear()

    def ops(self, op: str) -> list[dict[str, Any]]:
        """The args of every request of ``op`` received so far."""
        return [args for name, args in self.requests if name == op]

    async def drop_connections(self) -> None:
        for connection in list(self._connections):
            await connection.close()

    def split_shard(self, stream: str, shard_id: str) -> tuple[str, str]:
        """Close a shard and open two children that split its range; returns their ids."""
        fake = self.streams[stream]
        parent = fake.shard(shard_id)
        assert parent.ending_sequence is None
        parent.ending_sequence = model.make_sequence(parent.index, max(parent.next_offset, 1) - 1)
        middle = (parent.hash_start + parent.hash_end) // 2
        first = len(fake.shards)
        children = [
            FakeShard(model.shard_id_of(first), parent.hash_start, middle, parent.shard_id),
            FakeShard(model.shard_id_of(first + 1), middle + 1, parent.hash_end, parent.shard_id),
        ]
        fake.shards.extend(children)
        return children[0].shard_id, children[1].shard_id

    def corrupt(self, stream: str, shard_id: str, batch_index: int, byte_at: int) -> None:
        """Flip one byte of a stored batch (as a bad disk would)."""
        shard = self.streams[stream].shard(shard_id)
        blob = bytearray(shard.batches[batch_index])
        blob[byte_at] ^= 0xFF
        shard.batches[batch_index] = bytes(blob)

    def records(self, stream: str, shard_id: str) -> list[tuple[str, bytes]]:
        """(partition key, data) of every stored record of a shard, in offset order."""
        out: list[tuple[str, bytes]] = []
        for blob in self.streams[stream].shard(shard_id).batches:
            header = batch.parse_header(blob)
            keys, _, datas = batch.decode_records(blob, header)
            out.extend(zip(keys, datas, strict=True))
        return out

    # -- connections ---------------------------------------------------------------------------

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections_accepted += 1
        async with stream, anyio.create_task_group() as task_group:
            connection = _Connection(stream, task_group)
            self._connections.add(connection)
            try:
                await self._read_requests(connection)
            finally:
                self._connections.discard(connection)
                task_group.cancel_scope.cancel()

    async def _read_requests(self, connection: _Connection) -> None:
        decoder = wire.FrameDecoder(self.frame_bytes_max)
        greeted = False
        try:
            while True:
                decoder.receive_data(await connection.stream.receive())
                while isinstance(message := decoder.next_message(), dict):
                    request_id, op, args = wire.check_request(message)
                    if not greeted:
                        greeted = await self._hello(connection, request_id, op, args)
                        continue
                    self.requests.append((op, args))
                    connection.task_group.start_soon(self._serve, connection, request_id, op, args)
        except errors.ProtocolError as exc:
            error = wire.error_response(0, exc.to_wire())
            await connection.send(error)
        except (_Drop, *_CONNECTION_ERRORS):
            pass

    async def _hello(
        self, connection: _Connection, request_id: int, op: str, args: dict[str, Any]
    ) -> bool:
        if op != wire.OP_HELLO:
            raise errors.ProtocolError("the first request must be hello")
        if wire.PROTOCOL_VERSION not in args.get("versions", []):
            error = errors.UnsupportedVersionError("no common protocol version")
            await connection.send(wire.error_response(request_id, error.to_wire()))
            raise _Drop
        result = {"version": 1, "server": "fake/0.1", "frame_bytes_max": self.frame_bytes_max}
        await connection.send(wire.response(request_id, result))
        return True

    async def _serve(
        self, connection: _Connection, request_id: int, op: str, args: dict[str, Any]
    ) -> None:
        fault = self._take_fault(op)
        try:
            message = await self._answer(fault, request_id, op, args)
            await connection.send(message)
        except _Drop:
            await connection.close()
        except _CONNECTION_ERRORS:
            pass

    async def _answer(
        self, fault: Fault | None, request_id: int, op: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        kind = fault.kind if fault is not None else None
        if kind == "drop":
            raise _Drop
        if kind == "stall":
            await anyio.sleep_forever()
        if fault is not None and kind == "delay":
            await anyio.sleep(fault.delay_s)
        try:
            if fault is not None and fault.error is not None:
                raise fault.error
            handler = self._ops.get(op)
            if handler is None:
                raise errors.UnknownOperationError(f"unknown operation {op!r}")
            result = await handler(args)
        except errors.StreamdError as exc:
            return wire.error_response(request_id, exc.to_wire())
        if kind == "drop_after":
            raise _Drop
        return wire.response(request_id, result)

    def _take_fault(self, op: str) -> Fault | None:
        for fault in self._faults:
            if fault.op == op and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    # -- operations ----------------------------------------------------------------------------

    def _stream(self, args: dict[str, Any]) -> FakeStream:
        name = model.check_stream_name(args.get("stream"))
        if name not in self.streams:
            raise errors.StreamNotFoundError(f"no stream {name!r}")
        return self.streams[name]

    async def _create_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        name = model.check_stream_name(args.get("stream"))
        count = model.check_shard_count(args.get("shard_count"))
        hours = model.check_retention_hours(args.get("retention_hours", 24))
        if name in self.streams:
            raise errors.StreamExistsError(f"stream {name!r} exists")
        shards = [
            FakeShard(model.shard_id_of(i), low, high)
            for i, (low, high) in enumerate(model.even_hash_ranges(count))
        ]
        self.streams[name] = FakeStream(name, hours, shards)
        return {}

    async def _delete_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        del self.streams[self._stream(args).name]
        return {}

    async def _list_streams(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"streams": sorted(self.streams)}

    async def _describe_stream(self, args: dict[str, Any]) -> dict[str, Any]:
        fake = self._stream(args)
        return {
            "stream": {
                "name": fake.name,
                "status": "ACTIVE",
                "retention_hours": fake.retention_hours,
                "created_ms": fake.created_ms,
                "shards": [
                    shard.to_wire()
                    if self.cluster is None
                    else self.cluster.describe_shard(fake.name, shard)
                    for shard in fake.shards
                ],
            }
        }

    async def _update_retention(self, args: dict[str, Any]) -> dict[str, Any]:
        fake = self._stream(args)
        fake.retention_hours = model.check_retention_hours(args.get("retention_hours"))
        return {}

    async def _put_records(self, args: dict[str, Any]) -> dict[str, Any]:
        fake = self._stream(args)
        results: list[dict[str, Any]] = []
        for record in args.get("records", []):
            try:
                results.append(self._put_one(fake, record))
            except errors.StreamdError as exc:
                results.append({"code": exc.code, "message": exc.message})
        failed = sum("code" in r for r in results)
        return {"failed": failed, "results": results}

    def _put_one(self, fake: FakeStream, record: dict[str, Any]) -> dict[str, Any]:
        key = model.check_partition_key(record.get("k"))
        data = model.check_record_data(record.get("d"))
        hash_key = record.get("h")
        hash_key = model.hash_key_of(key) if hash_key is None else hash_key
        hash_key = model.parse_explicit_hash_key(hash_key)
        shard = fake.route(hash_key)
        blob = batch.encode_batch([key], [hash_key.to_bytes(16, "big")], [data])
        answer = shard.store(blob, batch.parse_header(blob))
        return {"shard_id": shard.shard_id, "sequence": answer["base_sequence"]}

    async def _append_batch(self, args: dict[str, Any]) -> dict[str, Any]:
        fake = self._stream(args)
        if self.cluster is not None:
            self.cluster.check_leader(self.endpoint, fake.name, args.get("shard_id"))
        shard = fake.shard(args.get("shard_id"))
        if shard.ending_sequence is not None:
            raise errors.ShardClosedError(f"{shard.shard_id} is closed")
        blob = args.get("batch")
        if not isinstance(blob, bytes):
            raise errors.InvalidBatchError("batch must be bytes")
        header, records = _checked_batch(blob)
        batch.check_records(
            records, shard.hash_start.to_bytes(16, "big"), shard.hash_end.to_bytes(16, "big")
        )
        duplicate = _find_duplicate(shard, header)
        if duplicate is not None:
            return {**duplicate, "duplicate": True}
        answer = shard.store(blob, header)
        if header.producer_id:
            window = shard.producers.setdefault(
                header.producer_id, deque(maxlen=_DEDUP_WINDOW_BATCHES)
            )
            window.append((header.producer_seq, answer))
        return answer

    async def _read(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.cluster is not None:
            self.cluster.check_leader(self.endpoint, self._stream(args).name, args.get("shard_id"))
        shard = self._stream(args).shard(args.get("shard_id"))
        start = _resolve(shard, Position.from_wire(args.get("from")))
        wait_ms = args.get("wait_ms", 0)
        with anyio.move_on_after(wait_ms / 1000):
            while start >= shard.next_offset and wait_ms > 0:
                await shard.committed.wait()
        chosen: list[bytes] = []
        size = 0
        end = start
        for blob in shard.batches:
            header = batch.parse_header(blob)  # a corrupt header here is a test bug
            if header.next_offset <= start:
                continue
            if chosen and size + len(blob) > args.get("max_bytes", 1 << 20):
                break
            chosen.append(blob)
            size += len(blob)
            end = header.next_offset
        return {
            "batches": chosen,
            "start_offset": start,
            "next_offset": end,
            "high_watermark": shard.next_offset,
            "millis_behind": 0,
        }


def _checked_batch(blob: bytes) -> tuple[batch.BatchHeader, batch.Records]:
    try:
        header = batch.parse_header(blob)
        batch.verify_payload(blob, header)
        return header, batch.decode_records(blob, header)
    except errors.CorruptDataError as exc:
        raise errors.InvalidBatchError(f"batch fails its checks: {exc.message}") from None


def _find_duplicate(shard: FakeShard, header: batch.BatchHeader) -> dict[str, Any] | None:
    window = shard.producers.get(header.producer_id)
    if not header.producer_id or not window:
        return None
    for seq, answer in window:
        if seq == header.producer_seq:
            return answer
    if header.producer_seq != window[-1][0] + 1:
        raise errors.OutOfOrderSequenceError(
            f"expected producer sequence {window[-1][0] + 1}, got {header.producer_seq}"
        )
    return None


def _resolve(shard: FakeShard, position: Position) -> int:
    if position.kind == "trim_horizon":
        return 0
    if position.kind == "latest":
        return shard.next_offset
    if position.kind == "at_offset":
        assert position.offset is not None
        return min(position.offset, shard.next_offset)
    if position.kind in ("at_sequence", "after_sequence"):
        _, offset = model.parse_sequence(position.sequence)
        return offset + (position.kind == "after_sequence")
    assert position.timestamp_ms is not None
    for blob in shard.batches:
        header = batch.parse_header(blob)
        if header.last_arrival_ms >= position.timestamp_ms:
            return header.base_offset
    return shard.next_offset


@asynccontextmanager
async def fake_server(
    *, frame_bytes_max: int = wire.FRAME_BYTES_MAX_DEFAULT, cluster: FakeCluster | None = None
) -> AsyncIterator[FakeServer]:
    """Serve on a fresh loopback port until the block ends; yields the server."""
    server = FakeServer(frame_bytes_max, cluster)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.endpoint = f"127.0.0.1:{listener.extra(SocketAttribute.local_port)}"
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            task_group.cancel_scope.cancel()


@asynccontextmanager
async def fake_cluster(nodes: int) -> AsyncIterator[tuple[FakeCluster, list[FakeServer]]]:
    """``nodes`` fake nodes sharing one FakeCluster; new shards are led by node 0."""
    cluster = FakeCluster()
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(fake_server(cluster=cluster)) for _ in range(nodes)
        ]
        for number, server in enumerate(servers):
            cluster.node_ids[server.endpoint] = f"node-{number}"
        cluster.leader_of_new_shards = servers[0].endpoint
        yield cluster, servers


def dead_endpoint() -> str:
    """A loopback address nothing listens on (connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# -- pytest glue shared by the client test modules ----------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both backends (tests/conftest.py keeps
    pytest-trio's trio_mode off them; test_client_connection checks it with sniffio)."""
    return str(request.param)
