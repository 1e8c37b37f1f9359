"""Membership's lease arithmetic on virtual time (trio's autojump clock) with a scripted store:
when a node counts its lease valid, when it declares itself lost, and that a slow renewal is
counted from when it was sent, never from when it was answered."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from streamd.controller.errors import NodeLostError
from streamd.controller.membership import DETACHED_S_MAX_DEFAULT, MembershipConfig, join_cluster
from streamd.meta import Lease, TxnResult
from streamd.meta.errors import LeaseNotFoundError
from streamd_client.errors import MetadataUnavailableError

TTL_S = 2
MARGIN_S = 0.5


class ScriptedStore:
    """Just enough MetaStore for join_cluster; ``renew`` decides what each keepalive does."""

    def __init__(self, renew: Callable[[int], object]) -> None:
        self.renew = renew
        self.keepalives: list[float] = []
        self.revoked: list[int] = []
        self.kv: dict[str, bytes] = {}

    async def get(self, key: str) -> None:
        return None

    async def txn(self, compares: object, puts: list[tuple[str, bytes]], **_: object) -> TxnResult:
        self.kv.update(puts)
        return TxnResult(True, 1)

    async def grant_lease(self, ttl_s: int) -> Lease:
        return Lease(7, ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        self.keepalives.append(trio.current_time())
        outcome = self.renew(len(self.keepalives))
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, float):
            await trio.sleep(outcome)
        return TTL_S

    async def revoke_lease(self, lease_id: int) -> None:
        self.revoked.append(lease_id)


def config() -> MembershipConfig:
    return MembershipConfig("n1", "h:1", lease_ttl_s=TTL_S, lease_margin_s=MARGIN_S)


async def test_renewals_every_third_of_the_ttl_keep_the_node_a_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ScriptedStore(lambda n: None)
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        start = trio.current_time()
        await trio.sleep(60)
        assert member.lease_valid()
    gaps = [b - a for a, b in zip(store.keepalives, store.keepalives[1:], strict=False)]
    assert len(store.keepalives) >= 60 / (TTL_S / 3) - 1
    assert max(gaps) <= TTL_S / 3 + 1e-6
    assert store.keepalives[0] - start <= TTL_S / 3 + 1e-6
    assert store.revoked == [7]  # a clean stop revokes


async def test_a_hanging_renewal_lapses_the_lease_at_its_own_bound_then_loses_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ScriptedStore(lambda n: 3600.0 if n >= 3 else None)  # the 3rd on never answers
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await member.lapsed.wait()
        lapsed_at = trio.current_time()
        last_good_sent = store.keepalives[1]
        assert lapsed_at == last_good_sent + TTL_S - MARGIN_S  # before etcd could expire it
        assert not member.lease_valid() and not member.lost.is_set()
        with pytest.raises(NodeLostError):
            member.check()
        await member.lost.wait()  # renewals went on, each bounded by the TTL, none answered
        assert trio.current_time() >= lapsed_at + DETACHED_S_MAX_DEFAULT
        assert len(store.keepalives) > 3
        assert store.revoked == [7]  # told etcd at once
        renewals = len(store.keepalives)
        await trio.sleep(10)
        assert len(store.keepalives) == renewals  # no renewal after lost


async def test_a_lapsed_lease_that_etcd_still_holds_is_valid_again_after_a_renewal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """etcd away for 10 s (killed and restarted: it extends leases): the node lapses, keeps
    renewing, and is a member again when a renewal succeeds; never lost."""

    def renew(n: int) -> object:
        return MetadataUnavailableError("etcd down") if 3 <= n <= 100 else None

    store = ScriptedStore(renew)
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await member.lapsed.wait()
        assert not member.lease_valid()
        await trio.sleep(30)  # 98 refused renewals 0.1 s apart, then they succeed again
        assert member.lease_valid() and not member.lost.is_set()
        assert len(store.keepalives) > 100


async def test_a_slow_answer_counts_from_when_the_renewal_was_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ScriptedStore(lambda n: 0.5 if n == 1 else 3600.0)  # answers 0.5 s late, then hangs
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await member.lapsed.wait()
        assert trio.current_time() == store.keepalives[0] + TTL_S - MARGIN_S


async def test_etcd_unavailable_for_a_moment_is_retried_and_survived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def renew(n: int) -> object:
        return MetadataUnavailableError("blip") if n in (2, 3, 4) else None

    store = ScriptedStore(renew)
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await trio.sleep(10)
        assert member.lease_valid()
    assert store.keepalives[4] - store.keepalives[1] < 0.5  # retried at once, not at TTL/3


async def test_a_lease_etcd_no_longer_knows_is_lost_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ScriptedStore(lambda n: LeaseNotFoundError(7) if n == 2 else None)
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await member.lost.wait()
        assert trio.current_time() == store.keepalives[1]


async def test_a_renewal_that_would_answer_after_the_bound_does_not_save_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ScriptedStore(lambda n: 1.0 if n == 1 else None)  # sent at TTL/3, answer too late
    async with join_cluster(store, config()) as member:  # type: ignore[arg-type]
        await member.lapsed.wait()
        assert trio.current_time() == TTL_S - MARGIN_S  # the grant's bound; the answer is moot
