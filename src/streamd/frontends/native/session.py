"""Who is on a native connection, and whether they may do what they ask.

One ``Session`` per connection, driven by the server (server.py):

1. ``hello_fields()``: what the hello answer adds when the server requires authentication
   (the scheme and a fresh nonce, kept for this connection only).
2. ``admit(request_id, op, args)`` for every later request, before it runs: until the session
   is authenticated, only one ``authenticate`` is accepted; anything else, or a signature that
   does not match, raises ``Refused`` carrying the UNAUTHENTICATED answer, and the server sends
   it and closes the connection. The nonce is spent on the first attempt (no second try, no
   replay on this connection; another connection has another nonce).
3. ``authorize(op, args)`` right before a request's handler runs: AccessDeniedError (audited)
   unless the principal's rules allow it, so a refused request changes nothing.
4. ``done(op, args, code)``: one audit event per admin action, with its outcome.

Without a guard (a server built in code) or without a credentials file (``--credentials``),
steps 1-3 do nothing and every native connection is anonymous and allowed everything, as
before; the gateway's own key pairs (``--kinesis-credentials``) never apply here.
"""

from __future__ import annotations

from typing import Any

import structlog

from streamd_client import auth, wire
from streamd_client.errors import InvalidArgumentError, UnauthenticatedError

from ...security.actions import UNAUDITED_NATIVE_OPS, native_action
from ...security.guard import ANONYMOUS, Guard, audit, is_admin
from ...security.principals import Principal

log = structlog.get_logger(__name__)
PROTOCOL = "native"


class Refused(Exception):
    """The connection must close after this answer (an UNAUTHENTICATED error frame)."""

    def __init__(self, request_id: int, error: UnauthenticatedError) -> None:
        super().__init__(error.message)
        self.request_id = request_id
        self.error = error


class Session:
    def __init__(self, guard: Guard | None, peer: str) -> None:
        self.guard = guard
        self.peer = peer
        self.required = guard is not None and guard.native_required
        self.nonce = auth.new_nonce() if self.required else b""
        self.principal: Principal | None = None
        self.attempted = False

    @property
    def name(self) -> str:
        return ANONYMOUS if self.principal is None else self.principal.name

    def hello_fields(self) -> dict[str, Any]:
        if not self.required:
            return {}
        return {"auth": auth.AUTH_SCHEME, "nonce": self.nonce}

    def admit(self, request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """None: run the request. A map: the answer to ``authenticate`` (already handled).
        Raises Refused (send its error, close) or InvalidArgumentError."""
        if op == wire.OP_AUTHENTICATE:
            return self._authenticate(request_id, args)
        if self.required and self.principal is None:
            self._refuse(
                request_id,
                op,
                "this server requires authentication: connect with credentials (an access "
                "key id and its secret; docs/protocol.md, Authentication)",
            )
        return None

    def _authenticate(self, request_id: int, args: dict[str, Any]) -> dict[str, Any]:
        if not self.required:
            raise InvalidArgumentError("this server does not ask for authentication")
        if self.attempted:
            self._refuse(request_id, wire.OP_AUTHENTICATE, "one authenticate per connection")
        self.attempted = True
        assert self.guard is not None
        key_id = args.get("access_key_id")
        try:
            self.principal = self.guard.authenticate_native(
                key_id, self.nonce, args.get("signature")
            )
        except UnauthenticatedError as exc:
            shown = key_id if isinstance(key_id, str) and len(key_id) <= 128 else "?"
            audit(
                f"key:{shown}", "authenticate", "*", "unauthenticated",
                protocol=PROTOCOL, peer=self.peer,
            )  # fmt: skip
            raise Refused(request_id, exc) from None
        self.nonce = b""  # spent
        log.info("connection.authenticated", peer=self.peer, principal=self.principal.name)
        return {"principal": self.principal.name}

    def _refuse(self, request_id: int, op: str, message: str) -> None:
        action, resource = (
            ("authenticate", "*") if op == wire.OP_AUTHENTICATE else native_action(op, {})
        )
        audit(self.name, action, resource, "unauthenticated", protocol=PROTOCOL, peer=self.peer)
        raise Refused(request_id, UnauthenticatedError(message))

    def authorize(self, op: str, args: dict[str, Any]) -> tuple[str, str]:
        """The request's (action, resource). Raises AccessDeniedError (audited) unless
        allowed."""
        action, resource = native_action(op, args)
        if self.guard is not None and self.required:
            self.guard.authorize(
                self.principal, action, resource, protocol=PROTOCOL, peer=self.peer
            )
        return action, resource

    def done(self, op: str, action: str, resource: str, code: str) -> None:
        """Audit an admin action's outcome (``code``: OK or the error code)."""
        if is_admin(action) and op not in UNAUDITED_NATIVE_OPS:
            audit(self.name, action, resource, code.lower(), protocol=PROTOCOL, peer=self.peer)
