"""Seals this node holds for reshards, each with a hold that ends it if nobody else does.

In cluster mode the node that runs a reshard step may not lead the parents: it asks each
parent's leader to seal it (native op ``seal_shard``), then switches the catalog. If that node
crashes between the two, nothing would ever unseal the parent, so every seal is *held*: it
comes with ``hold_s`` and a token, and when the hold expires without the seal having ended
(``drop``: the runner unsealed it, the catalog closed the shard, a newer seal replaced it),
``release`` is called. The engine's release decides on the catalog (cluster/reshard_fence.py:
closed -> stay sealed; otherwise fence the token, then unseal), so an expiry never contradicts
a switch. A release that cannot reach the catalog is tried again every ``retry_s`` and the
shard stays sealed meanwhile: unavailable for writes, never inconsistent.

One task per hold, in the engine's nursery; ``drop`` cancels it. Bounded: one hold per shard.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog
import trio

from streamd_client.errors import StreamdError

RETRY_S_DEFAULT: Final = 1.0

log = structlog.get_logger(__name__)

Release = Callable[[str, str, str], Awaitable[None]]  # (stream, shard_id, token)


@dataclass
class _Hold:
    token: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class SealHolds:
    def __init__(self, release: Release, *, retry_s: float = RETRY_S_DEFAULT) -> None:
        self._release = release
        self.retry_s = retry_s
        self._holds: dict[tuple[str, str], _Hold] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def token(self, stream: str, shard_id: str) -> str | None:
        hold = self._holds.get((stream, shard_id))
        return None if hold is None else hold.token

    def hold(
        self, nursery: trio.Nursery, stream: str, shard_id: str, token: str, hold_s: float
    ) -> None:
        """Start the hold of a seal just made (replacing an older hold of the shard)."""
        self.drop(stream, shard_id)
        hold = _Hold(token)
        self._holds[(stream, shard_id)] = hold
        nursery.start_soon(self._run, stream, shard_id, hold, hold_s)

    def drop(self, stream: str, shard_id: str, token: str | None = None) -> bool:
        """End the hold without a release (``token``: only if it is that seal's). Returns
        whether a hold ended."""
        hold = self._holds.get((stream, shard_id))
        if hold is None or (token is not None and hold.token != token):
            return False
        del self._holds[(stream, shard_id)]
        hold.scope.cancel()
        return True

    def drop_stream(self, stream: str) -> None:
        for name, shard_id in [key for key in self._holds if key[0] == stream]:
            self.drop(name, shard_id)

    async def _run(self, stream: str, shard_id: str, hold: _Hold, hold_s: float) -> None:
        with hold.scope:
            await trio.sleep(hold_s)
            log.warning("reshard.seal_hold_expired", stream=stream, shard_id=shard_id)
            while True:
                try:
                    await self._release(stream, shard_id, hold.token)
                    break
                except StreamdError as exc:  # the catalog is away: stay sealed, ask again
                    log.warning(
                        "reshard.seal_release_failed",
                        stream=stream,
                        shard_id=shard_id,
                        code=exc.code,
                        error=exc.message,
                    )
                    await trio.sleep(self.retry_s)
        if self._holds.get((stream, shard_id)) is hold:
            del self._holds[(stream, shard_id)]
