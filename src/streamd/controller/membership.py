"""A node's membership: register under a lease, keep it alive, know when it may have lapsed.

``join_cluster(store, config)`` is an async context manager. On entry it checks the cluster id
(``cluster/id``: created if absent, refused if another), grants a lease (TTL 2 s by default) and
puts ``nodes/<node_id>`` only if absent, bound to that lease; a live node with the same id, a
foreign cluster id or an unreachable store refuse the join with a typed error before anything
else happens. Inside, a task renews the lease every TTL/3. On exit it revokes the lease, so
the registration goes at once rather than a TTL later.

Safety of what a node does never rests on this timing (epochs and etcd compares do that), but
the node must not act as a member longer than etcd counts it as one. So the node keeps its own
bound, on the local monotonic clock: the lease is valid until *send time of the last renewal
that succeeded + granted TTL - margin*. A renewal is measured from when it was sent, never from
when it was answered, so the bound is never later than etcd's. When the bound passes without a
renewal, the lease has *lapsed* here: ``lease_valid()`` is False and ``check()`` raises
NodeLostError, so the node stops acting as a member (no controller work, no RF 1 shard, no group
coordinator), but it keeps trying to renew: when etcd was only away (killed and restarted: etcd
extends every lease when it comes back), a renewal succeeds and the lease is valid again, with
nothing having changed in the cluster. The node is *lost* when etcd says the lease is gone, or
after ``detached_s_max`` without a renewal: ``lost`` is set, and it makes no further renewal (it
registers again only by joining again). Replicated shards keep being served meanwhile: their
safety is the replication core's epochs and quorum, never this lease (docs/cluster.md).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import structlog
import trio

from streamd import __version__
from streamd_client.errors import MetadataUnavailableError

from ..clock import WallClock
from ..meta.errors import LeaseNotFoundError
from ..meta.keys import CLUSTER_ID_KEY, ClusterId, KeyFormatError, NodeRegistration, node_key
from ..meta.store import Compare, MetaStore
from .errors import ClusterIdMismatchError, DuplicateNodeIdError, NodeLostError
from .metrics import LEASE_RENEWALS, NODE_LOST
from .tasks import bounded, open_nursery

LEASE_TTL_S_DEFAULT: Final = 2  # etcd's minimum
LEASE_MARGIN_S_DEFAULT: Final = 0.5
REQUEST_TIMEOUT_S_DEFAULT: Final = 2.0
DETACHED_S_MAX_DEFAULT: Final = 60.0
_RETRY_S: Final = 0.1
_REVOKE_TIMEOUT_S: Final = 1.0

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    node_id: str
    native_address: str
    kinesis_address: str = ""
    cluster_id: str | None = None  # None: adopt the cluster's (or found one, if none yet)
    lease_ttl_s: int = LEASE_TTL_S_DEFAULT
    lease_margin_s: float = LEASE_MARGIN_S_DEFAULT  # Invariant: < lease_ttl_s / 3
    request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT  # each store call while joining
    # How long a lapsed lease is renewed before the node counts itself lost (etcd away longer).
    detached_s_max: float = DETACHED_S_MAX_DEFAULT


class Membership:
    """This node's registration while it is a member. Built by ``join_cluster``."""

    def __init__(
        self, store: MetaStore, config: MembershipConfig, cluster_id: str, lease_id: int
    ) -> None:
        self.store = store
        self.config = config
        self.cluster_id = cluster_id
        self.lease_id = lease_id
        self.ttl_s = config.lease_ttl_s
        self.lost = trio.Event()
        self.lapsed = trio.Event()  # set (then replaced) each time the lease lapses here
        self.valid_until = 0.0  # trio.current_time() bound; see the module docstring

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def lease_valid(self) -> bool:
        return not self.lost.is_set() and trio.current_time() < self.valid_until

    def check(self) -> None:
        """Raise NodeLostError unless the lease is surely still alive."""
        if not self.lease_valid():
            raise NodeLostError(f"node {self.node_id}'s lease {self.lease_id:x} may have lapsed")

    def _renewed(self, sent_at: float, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self.valid_until = max(self.valid_until, sent_at + ttl_s - self.config.lease_margin_s)

    async def keep_alive(self) -> None:
        """Renew every TTL/3 until cancelled or lost (then it returns, ``lost`` set); past the
        bound (lapsed), keep trying every ``_RETRY_S`` for ``detached_s_max``."""
        next_at = trio.current_time() + self.ttl_s / 3
        lapsed = False
        while not self.lost.is_set():
            if lapsed:
                await trio.sleep_until(next_at)
            else:
                await trio.sleep_until(min(next_at, self.valid_until))
            now = trio.current_time()
            if now >= self.valid_until and not lapsed:
                lapsed = True
                self._lapse()
            if lapsed and now >= self.valid_until + self.config.detached_s_max:
                await self._declare_lost(
                    f"no renewal succeeded for {self.config.detached_s_max:g} s past the bound"
                )
                return
            sent_at = now
            # Valid: a renewal answered after the bound is moot. Lapsed: bounded by the TTL.
            deadline = sent_at + self.ttl_s if lapsed else self.valid_until
            next_at = trio.current_time() + _RETRY_S  # unless it succeeds
            with trio.move_on_at(deadline):
                try:
                    ttl_s = await self.store.keepalive(self.lease_id)
                except LeaseNotFoundError:
                    await self._declare_lost("etcd says the lease is gone")
                    return
                except MetadataUnavailableError as exc:
                    LEASE_RENEWALS.labels("unavailable").inc()
                    log.warning("cluster.lease_renew_failed", lease=self.lease_id, error=str(exc))
                    continue
                LEASE_RENEWALS.labels("ok").inc()
                self._renewed(sent_at, ttl_s)
                next_at = sent_at + self.ttl_s / 3
                if lapsed:
                    lapsed = False
                    log.warning("cluster.lease_regained", node=self.node_id, lease=self.lease_id)

    def _lapse(self) -> None:
        LEASE_RENEWALS.labels("lapsed").inc()
        log.error(
            "cluster.lease_lapsed",
            node=self.node_id,
            lease=self.lease_id,
            detached_s_max=self.config.detached_s_max,
        )
        self.lapsed.set()
        self.lapsed = trio.Event()

    async def _declare_lost(self, reason: str) -> None:
        LEASE_RENEWALS.labels("lost").inc()
        NODE_LOST.inc()
        log.error("cluster.node_lost", node=self.node_id, lease=self.lease_id, reason=reason)
        self.lost.set()
        # etcd may still count the lease alive (we measure conservatively): end it so that the
        # cluster sees what this node already believes. Best effort; the TTL does it anyway.
        with trio.move_on_after(_REVOKE_TIMEOUT_S):
            try:
                await self.store.revoke_lease(self.lease_id)
            except MetadataUnavailableError:
                pass

    async def deregister(self) -> None:
        """Revoke the lease (the registration goes with it). Best effort, bounded, shielded."""
        with trio.move_on_after(_REVOKE_TIMEOUT_S) as scope:
            scope.shield = True
            try:
                await self.store.revoke_lease(self.lease_id)
                log.info("cluster.node_left", node=self.node_id)
            except MetadataUnavailableError as exc:
                log.warning("cluster.deregister_failed", node=self.node_id, error=str(exc))
        self.lost.set()


async def _check_cluster_id(store: MetaStore, config: MembershipConfig) -> str:
    timeout_s = config.request_timeout_s
    kv = await bounded("the cluster id read", timeout_s, store.get(CLUSTER_ID_KEY))
    if kv is None:
        wanted = config.cluster_id or secrets.token_hex(8)
        founded = await bounded(
            "the cluster id write",
            timeout_s,
            store.txn(
                [Compare(CLUSTER_ID_KEY, 0)], puts=[(CLUSTER_ID_KEY, ClusterId(wanted).encode())]
            ),
        )
        if founded:
            log.info("cluster.founded", cluster_id=wanted)
            return wanted
        kv = await bounded("the cluster id read", timeout_s, store.get(CLUSTER_ID_KEY))
        assert kv is not None, "cluster/id is never deleted"
    found = ClusterId.decode(kv.value).cluster_id
    if config.cluster_id is not None and found != config.cluster_id:
        raise ClusterIdMismatchError(config.cluster_id, found)
    return found


async def _register(store: MetaStore, config: MembershipConfig, cluster_id: str) -> Membership:
    timeout_s = config.request_timeout_s
    key = node_key(config.node_id)
    asked_at = trio.current_time()
    lease = await bounded("the lease grant", timeout_s, store.grant_lease(config.lease_ttl_s))
    membership = Membership(store, config, cluster_id, lease.lease_id)
    membership._renewed(asked_at, lease.ttl_s)
    registration = NodeRegistration(
        config.node_id,
        config.native_address,
        config.kinesis_address,
        WallClock().now_ms(),
        __version__,
    )
    try:
        put = await bounded(
            "the node registration",
            timeout_s,
            store.txn([Compare(key, 0)], puts=[(key, registration.encode())], lease=lease.lease_id),
        )
        if not put:
            holder = await bounded("the node registration read", timeout_s, store.get(key))
            raise DuplicateNodeIdError(config.node_id, _describe(holder.value if holder else b""))
    except BaseException:
        await membership.deregister()
        raise
    log.info(
        "cluster.node_joined",
        node=config.node_id,
        cluster_id=cluster_id,
        lease=lease.lease_id,
        ttl_s=lease.ttl_s,
    )
    return membership


def _describe(raw: bytes) -> str:
    try:
        holder = NodeRegistration.decode(raw)
    except (KeyFormatError, ValueError):
        return "registration unreadable"
    return f"native {holder.native_address}, started at {holder.started_ms} ms"


@asynccontextmanager
async def join_cluster(store: MetaStore, config: MembershipConfig) -> AsyncIterator[Membership]:
    """Join (see the module docstring), stay a member inside, leave cleanly on exit.

    Raises at entry: ClusterIdMismatchError, DuplicateNodeIdError, MetadataUnavailableError.
    """
    if not 0 <= config.lease_margin_s < config.lease_ttl_s / 3:
        raise ValueError("lease_margin_s must be under a third of the lease TTL")
    cluster_id = await _check_cluster_id(store, config)
    membership = await _register(store, config, cluster_id)
    try:
        async with open_nursery() as nursery:
            nursery.start_soon(membership.keep_alive)
            yield membership
            nursery.cancel_scope.cancel()
    finally:
        await membership.deregister()
