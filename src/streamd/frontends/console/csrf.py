"""Sessions, CSRF tokens, and the Host and Origin checks of the console (pure functions).

Every page sets a session cookie (``streamd_console``: 32 random bytes, HttpOnly,
SameSite=Strict) when the browser has none. Every form carries a token derived from it
(HMAC-SHA256 of the session under a key made at start, so nothing per session is stored and a
restart invalidates old forms). A POST is accepted only when all of these hold:

1. the Host header names the console itself (an IP literal, ``localhost``, or the host it was
   told it is reached at): a DNS-rebinding page, whose Host is its own name, is refused;
2. the Origin header is present and is ``http://<that Host>``: another site's form is refused
   even before its token is looked at;
3. the token in the form (or the ``x-csrf-token`` header htmx sends) matches the cookie's.

Refusals are 403 with a page that says which check failed and that reloading fixes a stale form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from typing import Final

COOKIE_NAME: Final = "streamd_console"
_SESSION_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_HOST_RE: Final = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class CsrfRefused(Exception):
    """A state-changing request failed a check; ``reason`` says which (shown to the user)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sessions:
    def __init__(self, key: bytes | None = None, allowed_hosts: frozenset[str] = frozenset()):
        self.key = key or secrets.token_bytes(32)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    @staticmethod
    def new_session() -> str:
        return secrets.token_hex(32)

    def token_for(self, session: str) -> str:
        return hmac.new(self.key, session.encode(), hashlib.sha256).hexdigest()

    def check_host(self, host: str | None) -> str:
        """The Host header if it names this console; raises CsrfRefused."""
        if host is None or not _HOST_RE.match(host):
            raise CsrfRefused("the request has no valid Host header")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name == "localhost" or name in self.allowed_hosts or _is_ip(name):
            return host
        raise CsrfRefused(
            f"the console is not served under the name {name!r} (an IP address, localhost "
            "or --console-listen's host)"
        )

    def check_post(
        self, host: str | None, origin: str | None, session: str | None, token: str | None
    ) -> None:
        """Raises CsrfRefused unless the request passes the three checks (module docstring)."""
        host = self.check_host(host)
        if origin is None:
            raise CsrfRefused("the request has no Origin header (a browser form always sends it)")
        if origin.lower() != f"http://{host}".lower():
            raise CsrfRefused(f"the request comes from another origin ({origin[:100]})")
        if session is None or not _SESSION_RE.match(session):
            raise CsrfRefused("no console session (cookies off?): reload the page")
        if token is None or not hmac.compare_digest(token, self.token_for(session)):
            raise CsrfRefused("the form's token is stale or missing: reload the page")


def session_of(cookie_header: str | None) -> str | None:
    """The console's session id from a Cookie header, if it has a well-formed one."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME and _SESSION_RE.match(value):
            return value
    return None


def session_cookie(session: str) -> str:
    return f"{COOKIE_NAME}={session}; Path=/; HttpOnly; SameSite=Strict"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
