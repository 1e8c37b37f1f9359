"""The blocking facade, from plain synchronous code; the fake server runs in its own thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal
from fake_server import FakeServer, dead_endpoint, fake_server

from streamd_client import Position, PutRecordsEntry, PutResult, errors
from streamd_client.sync import SyncClient
from streamd_client.sync import connect as sync_connect

SHARD0 = "shardId-000000000000"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop the facade's portal runs (the server's thread runs the other one)."""
    return str(request.param)


@pytest.fixture
def server(backend: str) -> Iterator[FakeServer]:
    other = "trio" if backend == "asyncio" else "asyncio"
    with (
        start_blocking_portal(other) as portal,
        portal.wrap_async_context_manager(fake_server()) as running,
    ):
        yield running


@pytest.fixture
def client(server: FakeServer, backend: str) -> Iterator[SyncClient]:
    with sync_connect(server.endpoint, backend=backend) as sync_client:
        yield sync_client


def test_admin_and_simple_puts(client: SyncClient) -> None:
    client.create_stream("s", 2)
    assert client.list_streams() == ["s"]
    assert len(client.describe_stream("s").shards) == 2
    client.update_retention("s", 48)
    result = client.put_record("s", b"one", "k", explicit_hash_key=0)
    assert result.shard_id == SHARD0
    answer = client.put_records("s", [PutRecordsEntry(b"two", "k", 1), (b"three", "k", 2)])
    assert answer.failed_count == 0
    page = client.read("s", SHARD0, Position.trim_horizon(), limit=2)
    assert [r.data for r in page.records] == [b"one", b"two"]
    with pytest.raises(errors.StreamExistsError):
        client.create_stream("s", 1)
    client.delete_stream("s")
    assert client.list_streams() == []


def test_producer_and_iter_records(client: SyncClient) -> None:
    client.create_stream("s", 1)
    with client.producer("s", linger_ms=1, batch_records_max=50) as producer:
        pendings = [producer.put(b"%d" % i, "k") for i in range(300)]
        producer.flush()
        assert all(p.done() for p in pendings)
    assert isinstance(pendings[-1].result(), PutResult)
    assert producer.stats.acked_records == 300
    records = list(client.iter_records("s", SHARD0, max_bytes=2000))
    assert [r.data for r in records] == [b"%d" % i for i in range(300)]
    tail = list(client.iter_records("s", SHARD0, Position.at_offset(298)))
    assert [r.offset for r in tail] == [298, 299]


def test_producer_close_flushes(client: SyncClient) -> None:
    client.create_stream("s", 1)
    producer = client.producer("s", linger_ms=60_000)
    pending = producer.put(b"x", "k")
    producer.close()
    producer.close()
    assert pending.done()
    assert pending.result().shard_id == SHARD0


def test_errors_cross_the_thread_boundary_typed(client: SyncClient) -> None:
    with pytest.raises(errors.StreamNotFoundError):
        client.describe_stream("missing")
    with pytest.raises(errors.InvalidPartitionKeyError):
        client.put_record("missing", b"x", "")


def test_the_facade_takes_a_bootstrap_list(server: FakeServer, backend: str) -> None:
    with sync_connect(f"{dead_endpoint()},{server.endpoint}", backend=backend) as client:
        client.create_stream("s", 1)
        assert client.list_streams() == ["s"]
    assert server.connections_accepted == 1
