"""One active controller: elected by a put-if-absent on etcd, fenced by that put's revision.

``Elector.campaign()`` puts ``controller/active`` only if absent, bound to the elector's lease
(the node's membership lease: the controller dies with its node). The winner gets a
``Leadership`` whose ``token`` is the revision of that put. The key is never rewritten while
held, so its ``mod_revision`` stays the token; it changes only by being deleted (lease lapsed
or revoked, or a clean resignation) and put again by someone else, with a larger revision.

Fencing: every controller write goes through ``Leadership.txn``, which adds the compare
``controller/active mod_revision == token``. A deposed controller, whatever it believes and
however late its write arrives, has it refused by etcd: ``txn`` then raises NotControllerError.

A loser watches the key and tries again as soon as it is deleted; it also re-reads it every
``recheck_s`` seconds (a watch that silently missed the delete costs at most that much). The
holder watches it too (``watch_deposed``) so it stops within moments of being deposed. Every
wait is bounded: calls by ``request_timeout_s``, watch waits by ``recheck_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import structlog
import trio

from streamd_client.errors import MetadataUnavailableError

from ..clock import WallClock
from ..meta.errors import CompactedError
from ..meta.keys import CONTROLLER_KEY, ControllerRecord, KeyFormatError
from ..meta.store import Compare, KeyValue, MetaStore, TxnResult
from .errors import NotControllerError
from .membership import REQUEST_TIMEOUT_S_DEFAULT
from .metrics import CONTROLLER_ACTIVE, CONTROLLER_ELECTED
from .tasks import bounded

RECHECK_S_DEFAULT: Final = 2.0
_BACKOFF_S: Final = 0.2

log = structlog.get_logger(__name__)


class Leadership:
    """This node as the active controller, fenced by ``token``."""

    def __init__(
        self, store: MetaStore, node_id: str, token: int, request_timeout_s: float, recheck_s: float
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.token = token  # Invariant: the revision that created controller/active for us
        self.request_timeout_s = request_timeout_s
        self.recheck_s = recheck_s
        self.deposed = trio.Event()

    def fence(self) -> Compare:
        return Compare(CONTROLLER_KEY, self.token)

    async def txn(
        self,
        compares: Sequence[Compare],
        puts: list[tuple[str, bytes]] | None = None,
        deletes: list[str] | None = None,
    ) -> TxnResult:
        """A txn that applies only while this node is the controller.

        Returns the result (failed: another compare did not hold; nothing changed). Raises
        NotControllerError when it failed because the token no longer holds.
        """
        if self.deposed.is_set():
            raise NotControllerError(f"{self.node_id} was deposed (token {self.token})")
        result = await bounded(
            "a controller write",
            self.request_timeout_s,
            self.store.txn([self.fence(), *compares], puts, deletes),
        )
        if not result:
            await self.check()
        return result

    async def check(self) -> None:
        """Raise NotControllerError unless ``controller/active`` still carries the token."""
        kv = await bounded(
            "the controller read", self.request_timeout_s, self.store.get(CONTROLLER_KEY)
        )
        if kv is None or kv.mod_revision != self.token:
            self._deposed("the controller key changed")
            raise NotControllerError(f"{self.node_id} was deposed (token {self.token})")

    def _deposed(self, reason: str) -> None:
        if not self.deposed.is_set():
            CONTROLLER_ACTIVE.set(0)
            log.warning("controller.deposed", node=self.node_id, token=self.token, reason=reason)
            self.deposed.set()

    async def watch_deposed(self) -> None:
        """Return (``deposed`` set) once the key no longer carries the token."""
        while True:
            with trio.move_on_after(self.recheck_s):
                try:
                    async with self.store.watch(CONTROLLER_KEY, self.token + 1) as watch:
                        async for batch in watch:
                            if batch.events:
                                break
                except CompactedError:
                    pass  # re-read below
                except MetadataUnavailableError:
                    await trio.sleep(_BACKOFF_S)
            try:
                await self.check()
            except NotControllerError:
                return
            except MetadataUnavailableError:
                continue

    async def resign(self) -> None:
        """Delete the key if it is still ours (a clean stop). Bounded, shielded, best effort."""
        self._deposed("resigned")
        with trio.move_on_after(self.request_timeout_s) as scope:
            scope.shield = True
            try:
                await self.store.txn([self.fence()], deletes=[CONTROLLER_KEY])
            except MetadataUnavailableError:
                pass


class Elector:
    """Campaigns for ``controller/active`` on behalf of ``node_id``, bound to ``lease_id``."""

    def __init__(
        self,
        store: MetaStore,
        node_id: str,
        lease_id: int,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        recheck_s: float = RECHECK_S_DEFAULT,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.lease_id = lease_id
        self.request_timeout_s = request_timeout_s
        self.recheck_s = recheck_s

    def _leadership(self, token: int) -> Leadership:
        CONTROLLER_ELECTED.inc()
        CONTROLLER_ACTIVE.set(1)
        log.info("controller.elected", node=self.node_id, token=token)
        return Leadership(self.store, self.node_id, token, self.request_timeout_s, self.recheck_s)

    async def campaign(self) -> Leadership:
        """Wait until elected. Raises LeaseNotFoundError when the elector's lease is gone."""
        while True:
            try:
                holder = await self._try_once()
            except MetadataUnavailableError as exc:
                log.warning("controller.campaign_retry", node=self.node_id, error=str(exc))
                await trio.sleep(_BACKOFF_S)
                continue
            if isinstance(holder, int):
                return self._leadership(holder)
            if holder is not None:  # None: the holder just left; try again at once
                await self._wait_for_vacancy(holder)

    async def _try_once(self) -> int | KeyValue | None:
        """Our token if elected (or already ours), else the holder's key (None: vacant now)."""
        record = ControllerRecord(self.node_id, self.lease_id, WallClock().now_ms())
        timeout_s = self.request_timeout_s
        result = await bounded(
            "the controller election",
            timeout_s,
            self.store.txn(
                [Compare(CONTROLLER_KEY, 0)],
                puts=[(CONTROLLER_KEY, record.encode())],
                lease=self.lease_id,
            ),
        )
        if result:
            return result.revision
        kv = await bounded("the controller read", timeout_s, self.store.get(CONTROLLER_KEY))
        if kv is None:
            return None
        try:
            current = ControllerRecord.decode(kv.value)
        except KeyFormatError:
            return kv
        if current.node_id == self.node_id and current.lease_id == self.lease_id:
            return kv.mod_revision  # ours already: an earlier answer was lost on the way
        return kv

    async def _wait_for_vacancy(self, holder: KeyValue) -> None:
        """Until the holder's key is deleted, or ``recheck_s`` passes."""
        with trio.move_on_after(self.recheck_s):
            try:
                async with self.store.watch(CONTROLLER_KEY, holder.mod_revision + 1) as watch:
                    async for batch in watch:
                        if any(e.type == "delete" for e in batch.events):
                            return
            except CompactedError:
                pass  # the history we wanted is gone: re-read instead
            except MetadataUnavailableError:
                await trio.sleep(_BACKOFF_S)
