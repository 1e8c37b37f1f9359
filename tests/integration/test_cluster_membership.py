"""Node membership against a real etcd: register under a lease, leave cleanly, declare itself
lost when renewals stall, and the refusals at start (duplicate id, other cluster, no etcd)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from streamd.controller.errors import ClusterIdMismatchError, DuplicateNodeIdError, NodeLostError
from streamd.controller.membership import MembershipConfig, join_cluster
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.meta.keys import CLUSTER_ID_KEY, NodeRegistration, node_key
from streamd.testing.etcd import EtcdProcess
from streamd_client.errors import MetadataUnavailableError


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdMetaStore]:
    store = EtcdMetaStore(
        EtcdClient([etcd.endpoint], request_timeout_s=2.0), namespace=f"member/{uuid.uuid4().hex}/"
    )
    yield store
    await store.aclose()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd of this test's own: it gets paused."""
    with EtcdProcess(tmp_path / "etcd") as process:
        yield process


def config(node_id: str = "n1", cluster_id: str | None = None) -> MembershipConfig:
    return MembershipConfig(node_id, "127.0.0.1:7071", "127.0.0.1:4571", cluster_id=cluster_id)


async def test_a_node_registers_under_its_lease_and_leaves_on_a_clean_stop(
    store: EtcdMetaStore,
) -> None:
    with trio.fail_after(10):
        async with join_cluster(store, config("n1", "c-1")) as member:
            kv = await store.get(node_key("n1"))
            assert kv is not None
            registration = NodeRegistration.decode(kv.value)
            assert registration.native_address == "127.0.0.1:7071"
            assert registration.kinesis_address == "127.0.0.1:4571"
            assert member.cluster_id == "c-1"
            await trio.sleep(3 * member.ttl_s)  # outlives its TTL: the renewals keep it
            assert member.lease_valid()
            assert await store.get(node_key("n1")) is not None
        assert await store.get(node_key("n1")) is None  # revoked, not left to expire
        assert not member.lease_valid()
        with pytest.raises(NodeLostError):
            member.check()


async def test_a_second_node_adopts_the_cluster_id_the_first_one_founded(
    store: EtcdMetaStore,
) -> None:
    with trio.fail_after(10):
        async with join_cluster(store, config("n1")) as first:
            async with join_cluster(store, config("n2")) as second:
                assert first.cluster_id == second.cluster_id
                assert len(first.cluster_id) == 16


async def test_a_duplicate_live_node_id_is_refused_and_leaves_the_holder_alone(
    store: EtcdMetaStore,
) -> None:
    with trio.fail_after(10):
        async with join_cluster(store, config("n1")) as holder:
            before = await store.get(node_key("n1"))
            with pytest.raises(DuplicateNodeIdError, match="'n1' is already registered"):
                async with join_cluster(store, config("n1")):
                    raise AssertionError("joined twice")
            assert await store.get(node_key("n1")) == before
            assert holder.lease_valid()


async def test_a_node_of_another_cluster_is_refused(store: EtcdMetaStore) -> None:
    with trio.fail_after(10):
        async with join_cluster(store, config("n1", "cluster-a")):
            pass
        with pytest.raises(
            ClusterIdMismatchError, match=r"'cluster-b' but etcd holds cluster 'cluster-a'"
        ):
            async with join_cluster(store, config("n2", "cluster-b")):
                raise AssertionError("joined a foreign cluster")
        assert await store.get(node_key("n2")) is None
        assert await store.get(CLUSTER_ID_KEY) is not None


async def test_an_unreachable_etcd_is_refused() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = EtcdMetaStore(EtcdClient([f"127.0.0.1:{port}"], request_timeout_s=1.0))
    try:
        with trio.fail_after(10), pytest.raises(MetadataUnavailableError):
            async with join_cluster(store, config("n1")):
                raise AssertionError("joined without etcd")
    finally:
        await store.aclose()


async def test_a_node_whose_renewals_stall_lapses_before_its_lease_expires_then_is_lost(
    own_etcd: EtcdProcess,
) -> None:
    """etcd frozen: the node stops acting as a member at its own bound (before etcd's expiry),
    keeps renewing, and once etcd answers that the lease expired meanwhile, it is lost."""
    store = EtcdMetaStore(EtcdClient([own_etcd.endpoint], request_timeout_s=1.0))
    try:
        with trio.fail_after(20):
            async with join_cluster(store, config("n1")) as member:
                await trio.sleep(1.0)
                bound = member.valid_until
                own_etcd.pause()  # renewals hang: nothing answers
                try:
                    await member.lapsed.wait()
                    lapsed_at = trio.current_time()
                    assert not member.lease_valid() and not member.lost.is_set()
                    await trio.sleep(member.ttl_s + 1.0)  # etcd's expiry passes while frozen
                finally:
                    own_etcd.resume()
                # Lapsed at the local bound: before etcd's own expiry (bound + margin) at latest.
                assert bound <= lapsed_at <= member.valid_until + 0.3
                with pytest.raises(NodeLostError):
                    member.check()
                await member.lost.wait()  # the next renewal hears the lease is gone
    finally:
        await store.aclose()
