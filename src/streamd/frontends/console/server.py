"""The console's listener: admission, one HTTP connection task per client, the ready line.

``open_console`` binds ``--console-listen`` (before any stream opens, like the other
listeners: a taken port is said at once) and builds the ``Console``. Connections are admitted
by the same ``ConnectionSlots`` as the other listeners, with the console's own, smaller bounds
(a browser opens a few connections; ``CONSOLE_CONNECTIONS_MAX`` in all).
"""

from __future__ import annotations

from typing import Final

import trio
from prometheus_client import Gauge

from ...config import ServerConfig, is_wildcard_host, parse_host_port
from ...engine import Engine
from ...security.guard import Guard
from ..admission import AdmissionLimits, ConnectionSlots
from ..native.api import BoundHandler
from .app import Console
from .http import ConsoleConnection, ConsoleHttpLimits, Response, encode_response

CONSOLE_PORT_DEFAULT: Final = 8080
CONSOLE_CONNECTIONS_MAX: Final = 128
CONSOLE_CONNECTIONS_PER_ADDRESS_MAX: Final = 64
CONNECTIONS = Gauge("streamd_console_connections", "Open console (browser) HTTP connections")


def _refusal(reason: str, message: str) -> bytes:
    body = f"the console is busy ({message}); retry".encode()
    response = Response(503, body, "text/plain; charset=utf-8", [("retry-after", "2")])
    return encode_response(response, close=True)


class ConsoleServer:
    def __init__(self, console: Console, limits: ConsoleHttpLimits | None = None) -> None:
        self.console = console
        self.limits = limits or ConsoleHttpLimits()
        self.slots = ConnectionSlots(
            AdmissionLimits(CONSOLE_CONNECTIONS_MAX, CONSOLE_CONNECTIONS_PER_ADDRESS_MAX),
            CONNECTIONS,
            "console.connection",
            "console",
            _refusal,
        )

    async def handle(self, stream: trio.SocketStream) -> None:
        async def run(peer: str, secured: trio.abc.Stream) -> None:
            await ConsoleConnection(secured, self.console.answer, self.limits, peer).run()

        await self.slots.serve(stream, run)


async def open_console(
    config: ServerConfig,
    engine: Engine,
    handlers: dict[str, BoundHandler],
    guard: Guard | None = None,
) -> tuple[ConsoleServer, list[trio.SocketListener]]:
    """Bind ``config.console_listen`` and build the console; with an enabled ``guard`` it asks
    for a sign-in (signin.py). Raises OSError (address in use)."""
    assert config.console_listen is not None
    host, port = parse_host_port(config.console_listen, CONSOLE_PORT_DEFAULT)
    allowed = frozenset() if is_wildcard_host(host) else frozenset({host.strip("[]")})
    console = Console(
        engine, handlers, read_only=config.console_read_only, allowed_hosts=allowed, guard=guard
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    return ConsoleServer(console), listeners
