"""The native protocol's authentication handshake, both sides' arithmetic (sans-I/O).

After ``hello``, a server with credentials configured answers ``auth: "hmac-sha256-v1"`` and a
fresh random ``nonce`` (NONCE_BYTES) that it keeps for that connection only. The client then
sends ``authenticate`` with its access key id and ``signature = HMAC-SHA256(secret, message)``,
where ``message`` (``signing_message``) binds a fixed context string, the server's nonce and the
key id. The secret never crosses the wire; a signature seen on one connection is worthless on
any other (another nonce), and the server accepts one ``authenticate`` per connection, so it
cannot be replayed on the same one either. docs/protocol.md, "Authentication", has the frames.

Only the standard library's ``hmac``/``hashlib``/``secrets``: no crypto of our own beyond
choosing what is signed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from .errors import InvalidArgumentError

AUTH_SCHEME: Final = "hmac-sha256-v1"
NONCE_BYTES: Final = 32
SIGNATURE_BYTES: Final = 32
KEY_ID_CHARS_MAX: Final = 128
_CONTEXT: Final = b"streamd-native-auth-v1\x00"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair. ``repr`` never shows the secret (it may end up in a traceback)."""

    access_key_id: str
    secret_access_key: str

    def __post_init__(self) -> None:
        if not isinstance(self.access_key_id, str) or not 1 <= len(self.access_key_id) <= (
            KEY_ID_CHARS_MAX
        ):
            raise InvalidArgumentError(f"access key id must be 1..{KEY_ID_CHARS_MAX} characters")
        if not isinstance(self.secret_access_key, str) or not self.secret_access_key:
            raise InvalidArgumentError("the secret access key must be a non-empty str")

    def __repr__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key='***')"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def signing_message(nonce: bytes, access_key_id: str) -> bytes:
    """What is signed: context, the server's nonce, the key id (length-prefixed, so no two
    (nonce, key id) pairs give the same bytes)."""
    key_id = access_key_id.encode("utf-8")
    return (
        _CONTEXT + len(nonce).to_bytes(2, "big") + nonce + len(key_id).to_bytes(2, "big") + key_id
    )


def sign(secret: str, nonce: bytes, access_key_id: str) -> bytes:
    return hmac.new(
        secret.encode("utf-8"), signing_message(nonce, access_key_id), hashlib.sha256
    ).digest()


def signature_matches(secret: str, nonce: bytes, access_key_id: str, signature: bytes) -> bool:
    """Constant-time comparison of ``signature`` with the expected one."""
    return hmac.compare_digest(sign(secret, nonce, access_key_id), signature)
