"""Connection admission for a listener: a bound on open connections (invariant 8), one
connection's failure contained and logged, the open-connections gauge kept right, the socket
always closed. The native server and the Kinesis gateway both admit through it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

_CLOSE_TIMEOUT_S = 1.0


class ConnectionSlots:
    """At most ``limit`` connections at once; ``events`` prefixes the log events
    (``<events>.opened|refused|failed|closed``)."""

    def __init__(
        self,
        limit: int,
        gauge: Gauge,
        events: str,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.gauge = gauge
        self.events = events
        self.on_refused = on_refused
        self.open = 0

    async def serve(self, stream: trio.SocketStream, run: Callable[[str], Awaitable[None]]) -> None:
        """``await run(peer)`` for this connection, or refuse it when ``limit`` are open."""
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:  # gone before we looked
            await stream.aclose()
            return
        if self.open >= self.limit:
            log.warning(f"{self.events}.refused", peer=peer, reason="connections_max")
            if self.on_refused is not None:
                self.on_refused()
            await stream.aclose()
            return
        self.open += 1
        self.gauge.inc()
        log.debug(f"{self.events}.opened", peer=peer)
        try:
            await run(peer)
        except Exception:  # one connection's bug must never take the listener down
            log.exception(f"{self.events}.failed", peer=peer)
        finally:
            self.open -= 1
            self.gauge.dec()
            with trio.move_on_after(_CLOSE_TIMEOUT_S):
                await stream.aclose()
            log.debug(f"{self.events}.closed", peer=peer)
