"""The live access-control state both front ends consult, and the audit log.

``Guard`` holds the principals (``principals.py``) read from ``--credentials FILE`` plus the key
pairs given without a policy (``--kinesis-credentials``, ``--kinesis-access-key``: each allowed
everything, as before policies existed). ``reload()`` (SIGHUP) re-reads the file and swaps the
table in only if it loads: a broken edit keeps the last good one (and says so in the log).
Connections already authenticated keep their principal's name; each request is checked against
the rules in force when it arrives, so a reload that narrows a policy applies at once.

``authorize`` raises AccessDeniedError (nothing has been done yet: callers check before the
operation runs) and writes one audit event per refusal; ``audited`` writes one per admin action
with its outcome. Audit events go to the ``streamd.audit`` logger as ``audit`` events with
principal, action, resource, outcome, protocol and peer; never a secret or a signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import structlog

from streamd_client import auth
from streamd_client.errors import AccessDeniedError

from .principals import (
    ADMIN_ACTIONS,
    PolicyFileError,
    Principal,
    Principals,
    allow_all_principals,
    load_principals,
)

audit_log = structlog.get_logger("streamd.audit")
log = structlog.get_logger(__name__)

ANONYMOUS: Final = "anonymous"  # the principal of a server without credentials


def audit(
    principal: str, action: str, resource: str, outcome: str, *, protocol: str, peer: str
) -> None:
    audit_log.info(
        "audit",
        principal=principal,
        action=action,
        resource=resource,
        outcome=outcome,
        protocol=protocol,
        peer=peer,
    )


class Guard:
    """Who may do what; ``enabled`` False: no credentials anywhere, everyone is anonymous and
    allowed everything (the embedded default on loopback)."""

    def __init__(
        self, path: Path | None, unrestricted_pairs: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.path = path
        self._unrestricted = allow_all_principals(unrestricted_pairs, "key")
        self.principals = self._load()  # Raises PolicyFileError at start
        self.reloads = 0

    @property
    def native_required(self) -> bool:
        """The native handshake must authenticate (a credentials file is configured)."""
        return self.path is not None

    @property
    def enabled(self) -> bool:
        return bool(self.principals.by_key)

    def _load(self) -> Principals:
        table = dict(self._unrestricted)
        if self.path is not None:
            table.update(load_principals(self.path).by_key)
        return Principals(table)

    def reload(self) -> bool:
        try:
            self.principals = self._load()
        except PolicyFileError as exc:
            log.error("security.reload_failed", error=str(exc))
            return False
        self.reloads += 1
        log.info("security.reloaded", keys=len(self.principals.by_key))
        return True

    def signing_secrets(self) -> dict[str, str]:
        """access key id -> secret, for SigV4 (the gateway)."""
        return self.principals.secrets()

    def principal_of_key(self, key_id: str) -> Principal | None:
        found = self.principals.lookup(key_id)
        return None if found is None else found[0]

    def authenticate_native(self, key_id: object, nonce: bytes, signature: object) -> Principal:
        """The principal whose key signed ``nonce``. Raises UnauthenticatedError; the message
        says which part failed without helping a guesser (unknown key and bad signature read
        the same)."""
        from streamd_client.errors import UnauthenticatedError

        if not isinstance(key_id, str) or not isinstance(signature, bytes):
            raise UnauthenticatedError("authenticate needs access_key_id (str), signature (bytes)")
        found = self.principals.lookup(key_id)
        if found is None or not auth.signature_matches(found[1], nonce, key_id, signature):
            raise UnauthenticatedError(
                "the access key id is unknown or the signature does not match its secret"
            )
        return found[0]

    def authorize(
        self,
        principal: Principal | None,
        action: str,
        resource: str,
        *,
        protocol: str,
        peer: str,
    ) -> None:
        """Raises AccessDeniedError (audited) unless ``principal``'s rules, as in force now,
        allow ``action`` on ``resource``. With the guard disabled, everything is allowed."""
        if not self.enabled:
            return
        current = None if principal is None else self.principal_of_name(principal.name)
        if current is not None and current.allows(action, resource):
            return
        name = ANONYMOUS if principal is None else principal.name
        audit(name, action, resource, "denied", protocol=protocol, peer=peer)
        raise AccessDeniedError(
            f"principal {name} is not allowed {action} on stream {resource}",
            action=action,
            resource=resource,
        )

    def principal_of_name(self, name: str) -> Principal | None:
        """The principal of that name in the table in force (a reload may have changed its
        rules, or removed it: then None, and everything is denied)."""
        return self.principals.by_name.get(name)


def is_admin(action: str) -> bool:
    return action in ADMIN_ACTIONS
