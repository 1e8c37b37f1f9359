"""EtcdClient against a real etcd (the session's ``etcd`` fixture): what the gateway really sends
for each call, lease life and death, watch streams, and failover past a dead endpoint."""

from __future__ import annotations

import uuid

import pytest
import trio

from streamd.meta import etcd_codec as codec
from streamd.meta.errors import CompactedError, EtcdRequestError, LeaseNotFoundError
from streamd.meta.etcd_client import EtcdClient
from streamd.testing.etcd import EtcdProcess


def _prefix() -> bytes:
    return f"test-client/{uuid.uuid4().hex}/".encode()


async def test_version_kv_and_txn(etcd: EtcdProcess) -> None:
    p = _prefix()
    async with EtcdClient([etcd.endpoint]) as client:
        assert await client.version() >= (3, 4)
        revision = await client.put(p + b"a", b"1")
        assert not (await client.txn([codec.EtcdCompare(p + b"a", "MOD", 0)], [])).succeeded
        answer = await client.txn(
            [codec.EtcdCompare(p + b"a", "MOD", revision)],
            [codec.EtcdPut(p + b"a", b""), codec.EtcdPut(p + b"b", b"2")],
        )
        assert answer.succeeded and answer.revision == revision + 1
        listed = await client.range(p, codec.prefix_range_end(p), limit=1)
        assert listed.more and listed.count == 2
        assert listed.kvs[0].value == b"" and listed.kvs[0].create_revision == revision
        deleted = await client.delete_range(p, codec.prefix_range_end(p))
        assert deleted.deleted == 2
        with pytest.raises(EtcdRequestError, match="too many operations"):
            await client.txn([], [codec.EtcdPut(p + b"%d" % i, b"") for i in range(129)])


async def test_lease_keepalive_then_revoke_deletes_its_keys(etcd: EtcdProcess) -> None:
    p = _prefix()
    async with EtcdClient([etcd.endpoint]) as client:
        lease = await client.lease_grant(2)
        assert lease.ttl_s >= 2
        await client.put(p + b"node", b"up", lease=lease.lease_id)
        assert await client.lease_keepalive(lease.lease_id) >= 2
        await client.lease_revoke(lease.lease_id)
        assert (await client.range(p + b"node")).kvs == ()
        with pytest.raises(LeaseNotFoundError):
            await client.lease_keepalive(lease.lease_id)
        with pytest.raises(LeaseNotFoundError):
            await client.put(p + b"node", b"up", lease=lease.lease_id)


async def test_watch_streams_events_and_reports_compaction(etcd: EtcdProcess) -> None:
    p = _prefix()
    async with EtcdClient([etcd.endpoint]) as client:
        first = await client.put(p + b"a", b"1")
        await client.delete_range(p + b"a")
        async with client.watch(p, codec.prefix_range_end(p), first) as watch:
            seen: list[codec.EtcdEvent] = []
            while len(seen) < 2:
                seen.extend((await watch.next(5.0)).events)
        assert [(e.type, e.kv.mod_revision) for e in seen] == [
            ("put", first),
            ("delete", first + 1),
        ]
        await client.compact(first + 1)
        with pytest.raises(CompactedError) as info:
            async with client.watch(p, codec.prefix_range_end(p), first) as watch:
                await watch.next(5.0)
        assert info.value.compact_revision == first + 1


async def test_a_dead_endpoint_in_the_list_is_skipped(etcd: EtcdProcess) -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: refused
        async with EtcdClient([dead, etcd.endpoint]) as client:
            assert (await client.range(b"nothing-here")).kvs == ()


@pytest.mark.anyio
async def test_the_client_runs_on_asyncio_and_trio(etcd: EtcdProcess, anyio_backend: str) -> None:
    p = _prefix()
    async with EtcdClient([etcd.endpoint]) as client:
        revision = await client.put(p + b"k", anyio_backend.encode())
        async with client.watch(p, codec.prefix_range_end(p), revision) as watch:
            message = await watch.next(5.0)
        assert [e.kv.value for e in message.events] == [anyio_backend.encode()]
        lease = await client.lease_grant(2)
        assert await client.lease_keepalive(lease.lease_id) >= 2
        await client.lease_revoke(lease.lease_id)
