"""Connection admission for a listener, shared by the native server and the Kinesis gateway.

What it guarantees (invariant 8, and "one client must never hurt the others"):

- **Bounds.** At most ``connections_max`` connections at once, and at most
  ``connections_per_address_max`` from one client address, so that a single client (or a leak in
  one) cannot take every slot: 2,000 idle sockets from one host leave room for everyone else.
- **A typed refusal.** A connection over a bound is not just dropped: it gets the listener's
  refusal bytes (native: an error frame with request id 0 and code LIMIT_EXCEEDED; gateway: a 503
  with a Kinesis error body), then a FIN, then a short bounded linger that reads and discards what
  the client already sent, so the close is not a reset that could destroy the refusal before the
  client reads it. At most ``refusals_in_flight_max`` refusals linger at once (each holds an fd);
  past that the refusal is sent and the socket closed at once.
- **TLS** (``tls``: a ``security.tls.ServerTls``): after admission, and before the protocol
  sees a byte, the connection is secured (plaintext refused, handshake bounded); ``run`` gets
  the TLS stream. Admission comes first, so an over-limit client costs no handshake.
- **Containment.** One connection's failure is logged and never takes the listener down; the
  open-connections gauge stays right and the socket is always closed.
- **Accept under fd exhaustion.** ``serve_listeners`` accepts in our own loop: EMFILE, ENFILE,
  ENOBUFS and ENOMEM from accept() are logged (``<events>.accept_failed``) and counted, and the
  loop backs off exponentially (10 ms to 1 s) instead of spinning; ``<events>.accept_resumed``
  says when it accepts again. Connections wait in the kernel's backlog meanwhile.

Logs of refusals are rate-limited (one line per second per reason, with the count suppressed),
so a flood of refused connections cannot flood the log.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog
import trio
from prometheus_client import Gauge

from .. import metrics
from ..config import ServerConfig

if TYPE_CHECKING:
    from ..security.tls import ServerTls

log = structlog.get_logger(__name__)

_CLOSE_TIMEOUT_S: Final = 1.0
_REFUSAL_LOG_INTERVAL_S: Final = 1.0
_DRAIN_BYTES: Final = 64 * 1024
ACCEPT_BACKOFF_S_MIN: Final = 0.01
ACCEPT_BACKOFF_S_MAX: Final = 1.0
# accept() failing for lack of resources (fds, buffers, memory): wait and try again.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    connections_max: int = 1024
    connections_per_address_max: int = 256
    refusals_in_flight_max: int = 256
    refusal_linger_s: float = 0.5

    def __post_init__(self) -> None:
        assert self.connections_max >= 1 and self.connections_per_address_max >= 1
        assert self.refusals_in_flight_max >= 0 and self.refusal_linger_s >= 0


def per_address_default(connections_max: int) -> int:
    """The per-address bound when none is configured: a quarter of the global one (so it takes
    at least four client hosts to fill a listener), at least 1."""
    return max(1, connections_max // 4)


def admission_limits(config: ServerConfig) -> AdmissionLimits:
    per_address = config.connections_per_address_max
    return AdmissionLimits(
        connections_max=config.connections_max,
        connections_per_address_max=(
            per_address_default(config.connections_max) if per_address is None else per_address
        ),
    )


class ConnectionSlots:
    """Admission for one listener. ``events`` prefixes the log events
    (``<events>.opened|refused|failed|closed``); ``listener`` labels the metrics;
    ``refusal(reason, message)`` gives the bytes a refused client is sent."""

    def __init__(
        self,
        limits: AdmissionLimits,
        gauge: Gauge,
        events: str,
        listener: str,
        refusal: Callable[[str, str], bytes],
        tls: ServerTls | None = None,
    ) -> None:
        self.limits = limits
        self.tls = tls
        self.gauge = gauge
        self.events = events
        self.listener = listener
        self.refusal = refusal
        self.open = 0
        self.per_address: dict[str, int] = {}  # Invariant: values >= 1, sum == self.open
        self.refusing = 0
        self._refusal_logged_at: dict[str, float] = {}
        self._refusals_unlogged: dict[str, int] = {}

    async def serve(
        self,
        stream: trio.SocketStream,
        run: Callable[[str, trio.abc.Stream], Awaitable[None]],
    ) -> None:
        """``await run(peer, stream)`` for this connection (the TLS stream over it when the
        listener has TLS), or refuse it when over a bound."""
        try:
            address, port = stream.socket.getpeername()[:2]
        except OSError:  # gone before we looked
            await stream.aclose()
            return
        host = str(address)
        peer = f"{host}:{port}"
        reason = self._over_limit(host)
        if reason is not None:
            await self._refuse(stream, host, peer, reason)
            return
        self.open += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        self.gauge.inc()
        log.debug(f"{self.events}.opened", peer=peer)
        secured: trio.abc.Stream | None = stream
        try:
            if self.tls is not None:
                secured = await self.tls.secure(stream, peer)
            if secured is not None:
                await run(peer, secured)
        except Exception:  # one connection's bug must never take the listener down
            log.exception(f"{self.events}.failed", peer=peer)
        finally:
            self.open -= 1
            left = self.per_address[host] - 1
            if left:
                self.per_address[host] = left
            else:
                del self.per_address[host]
            self.gauge.dec()
            with trio.move_on_after(_CLOSE_TIMEOUT_S) as cleanup:
                cleanup.shield = True
                try:
                    await (stream if secured is None else secured).aclose()
                except (trio.BrokenResourceError, trio.BusyResourceError, OSError):
                    pass  # a TLS close_notify to a peer already gone
            if secured is not stream:
                await trio.aclose_forcefully(stream)  # the socket, whatever TLS managed
            log.debug(f"{self.events}.closed", peer=peer)

    def _over_limit(self, host: str) -> str | None:
        if self.open >= self.limits.connections_max:
            return "connections_max"
        if self.per_address.get(host, 0) >= self.limits.connections_per_address_max:
            return "connections_per_address_max"
        return None

    async def _refuse(self, stream: trio.SocketStream, host: str, peer: str, reason: str) -> None:
        metrics.CONNECTIONS_REFUSED.labels(self.listener, reason).inc()
        self._log_refusal(peer, reason)
        limit = getattr(self.limits, reason)
        scope = "open connections" if reason == "connections_max" else f"connections from {host}"
        data = self.refusal(reason, f"too many {scope} (server {reason} is {limit})")
        linger = self.refusing < self.limits.refusals_in_flight_max
        self.refusing += linger
        try:
            with trio.move_on_after(self.limits.refusal_linger_s + _CLOSE_TIMEOUT_S):
                await stream.send_all(data)  # a small write to a fresh socket: it never waits
                if linger:
                    await self._linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.refusing -= linger
            with trio.move_on_after(_CLOSE_TIMEOUT_S) as cleanup:
                cleanup.shield = True
                await stream.aclose()

    async def _linger(self, stream: trio.SocketStream) -> None:
        """FIN after the refusal, then discard what the client sent until it closes or the
        linger ends: closing with unread bytes would send a reset instead."""
        await stream.send_eof()
        with trio.move_on_after(self.limits.refusal_linger_s):
            while await stream.receive_some(_DRAIN_BYTES):
                pass

    def _log_refusal(self, peer: str, reason: str) -> None:
        now = trio.current_time()
        last = self._refusal_logged_at.get(reason)
        if last is not None and now - last < _REFUSAL_LOG_INTERVAL_S:
            self._refusals_unlogged[reason] = self._refusals_unlogged.get(reason, 0) + 1
            return
        self._refusal_logged_at[reason] = now
        suppressed = self._refusals_unlogged.pop(reason, 0)
        log.warning(f"{self.events}.refused", peer=peer, reason=reason, suppressed=suppressed)


async def serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
    events: str,
    listener: str,
) -> None:
    """Accept on every listener until cancelled, one ``handler`` task per connection in
    ``handler_nursery``; resource errors from accept() back off instead of spinning."""
    async with trio.open_nursery() as nursery:
        for one in listeners:
            nursery.start_soon(_accept_loop, handler, one, handler_nursery, events, listener)


async def _accept_loop(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listener_socket: trio.SocketListener,
    handler_nursery: trio.Nursery,
    events: str,
    listener: str,
) -> None:
    backoff_s = ACCEPT_BACKOFF_S_MIN
    failures = 0
    async with listener_socket:
        while True:
            try:
                stream = await listener_socket.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                failures += 1
                metrics.ACCEPT_ERRORS.labels(listener, name).inc()
                log.warning(
                    f"{events}.accept_failed",
                    errno=name,
                    error=exc.strerror,
                    retry_in_s=backoff_s,
                    failures=failures,
                )
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, ACCEPT_BACKOFF_S_MAX)
                continue
            if failures:
                log.info(f"{events}.accept_resumed", failures=failures)
                failures, backoff_s = 0, ACCEPT_BACKOFF_S_MIN
            handler_nursery.start_soon(handler, stream)
