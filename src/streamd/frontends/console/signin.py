"""Who is looking: sign-in with an access key, and what each page and form needs (policy).

When the node has credentials (``--credentials FILE``, or the gateway's key pairs: the Guard is
enabled), every console page but ``/login`` and ``/static`` needs a signed-in session. The
sign-in form takes an access key id and its secret, checks them against the Guard's table in
force (constant-time compare; a failure reads the same whatever was wrong, and is audited), and
binds the principal to a *new* session id (so a session id planted before sign-in is worth
nothing). A sign-in lasts ``SIGNED_IN_TTL_S``; at most ``SIGNED_IN_MAX`` are held (the oldest
goes first). Each request is then authorized with the Guard's rules in force (a SIGHUP reload
that narrows a policy applies at once), with the same actions as the native and Kinesis
operations (``required``): reading a stream's records needs ``stream:read`` on it, a split
``stream:reshard``, and so on. Without credentials (the embedded default, on loopback)
everyone is anonymous and allowed everything, as on the other listeners.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from ...security.guard import Guard, audit
from ...security.principals import Principal

SIGNED_IN_TTL_S: Final = 8 * 3600.0
SIGNED_IN_MAX: Final = 1024
POST_ACTIONS: Final = {
    "delete": "stream:delete",
    "split": "stream:reshard",
    "merge": "stream:reshard",
    "resize": "stream:reshard",
    "retention": "stream:configure",
}


def required(method: str, segments: list[str], form_name: str = "") -> tuple[str, str] | None:
    """(action, stream) a request needs; None for what anyone may ask (sign-in, static
    files, and paths that are 404 anyway)."""
    match segments:
        case [""] | ["streams-fragment"] | ["events", "overview"]:
            return ("stream:list", "*")
        case ["streams"] if method == "POST":
            return ("stream:create", form_name or "*")
        case ["streams", name, action] if method == "POST" and action in POST_ACTIONS:
            return (POST_ACTIONS[action], name)
        case ["streams", name] | ["events", "streams", name]:
            return ("stream:describe", name)
        case ["streams", name, "shards", _, "records"]:
            return ("stream:read", name)
        case ["events", "streams", name, "shards", _, "tail"]:
            return ("stream:read", name)
        case ["streams", name, "groups", _] | ["events", "streams", name, "groups", _]:
            return ("group:consume", name)  # what group_describe needs
    return None


class SignIns:
    def __init__(self, guard: Guard | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = guard
        self.clock = clock
        self._held: OrderedDict[str, tuple[str, float]] = OrderedDict()  # session -> name, until

    @property
    def required(self) -> bool:
        return self.guard is not None and self.guard.enabled

    def check(self, key_id: str, secret: str, peer: str) -> Principal | None:
        """The principal of that key pair, or None (audited as a denied sign-in)."""
        assert self.guard is not None
        found = self.guard.principals.lookup(key_id)
        given, expected = secret.encode(), (found[1] if found else "\0" * 40).encode()
        if found is None or not hmac.compare_digest(given, expected):
            audit(key_id[:128] or "-", "console:sign-in", "*", "denied", protocol="console",
                  peer=peer)  # fmt: skip
            return None
        audit(found[0].name, "console:sign-in", "*", "ok", protocol="console", peer=peer)
        return found[0]

    def sign_in(self, session: str, principal: Principal) -> None:
        self._held[session] = (principal.name, self.clock() + SIGNED_IN_TTL_S)
        self._held.move_to_end(session)
        while len(self._held) > SIGNED_IN_MAX:
            self._held.popitem(last=False)

    def sign_out(self, session: str | None) -> None:
        if session is not None:
            self._held.pop(session, None)

    def principal_of(self, session: str | None) -> Principal | None:
        """The signed-in principal of that session, as the table in force has it."""
        if session is None or self.guard is None:
            return None
        held = self._held.get(session)
        if held is None:
            return None
        name, until = held
        if self.clock() > until:
            del self._held[session]
            return None
        return self.guard.principal_of_name(name)
