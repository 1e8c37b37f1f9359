"""The keyring: the keys encryption at rest uses, from a local file (``serve --keyring FILE``).

Format (JSON; docs/security.md, "Encryption at rest"): one object, key id -> list of key
versions, each 32 bytes (AES-256) in base64. The last version is the current one: new batches
are sealed with it; older versions stay to open batches sealed before a rotation. Rotate by
appending a version and sending the server SIGHUP; never remove a version still in use.

    {"alias/orders": ["q2Vb...=", "Zx8k...="], "1234abcd-12ab-34cd-56ef-1234567890ab": ["..."]}

A key id is what a KMS KeyId names: an alias (``alias/NAME``), a key id, or an ARN of either
(``arn:aws:kms:REGION:ACCOUNT:key/ID`` or ``...:alias/NAME``); an ARN is looked up by its key id
or alias part. Like the credentials file, a keyring another user may read is refused, and a key's
bytes never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
import threading
from pathlib import Path
from typing import Final

KEY_BYTES: Final = 32
KEY_IDS_MAX: Final = 10_000
VERSIONS_MAX: Final = 1_000  # per key id
KEY_ID_CHARS_MAX: Final = 255  # a key id is stored in each sealed batch behind a 1-byte length


class KeyringError(ValueError):
    """The keyring file is unreadable, malformed or unsafe; the message says where."""


class UnknownKeyError(LookupError):
    """The keyring holds no such key id (or no such version of it)."""


def normalize_key_id(key_id: str) -> str:
    """The keyring name of a KMS KeyId: an ARN's ``key/ID`` gives ``ID``, ``alias/NAME`` stays."""
    if key_id.startswith("arn:"):
        resource = key_id.split(":", 5)[-1]
        if resource.startswith("key/"):
            return resource[len("key/") :]
        return resource
    return key_id


class Keyring:
    """Key versions by key id; ``reload`` swaps in a re-read file whole (or keeps the old one)."""

    def __init__(self, keys: dict[str, tuple[bytes, ...]], path: Path | None = None) -> None:
        self._keys = keys
        self.path = path
        self._lock = threading.Lock()  # lanes seal and readers open in worker threads

    @staticmethod
    def empty() -> Keyring:
        return Keyring({})

    @staticmethod
    def load(path: Path) -> Keyring:
        """Raises KeyringError."""
        return Keyring(load_keys(path), path)

    def reload(self) -> None:
        """Re-read the file. Raises KeyringError (the keys in use stay)."""
        if self.path is None:
            return
        keys = load_keys(self.path)
        with self._lock:
            self._keys = keys

    def has(self, key_id: str) -> bool:
        with self._lock:
            return normalize_key_id(key_id) in self._keys

    def current(self, key_id: str) -> tuple[str, int, bytes]:
        """(keyring name, version, key) of the version new batches use. Raises UnknownKeyError."""
        name = normalize_key_id(key_id)
        with self._lock:
            versions = self._keys.get(name)
        if not versions:
            raise UnknownKeyError(f"the keyring holds no key {key_id!r}")
        return name, len(versions), versions[-1]

    def version(self, name: str, version: int) -> bytes:
        """Key ``version`` (1-based) of ``name``. Raises UnknownKeyError."""
        with self._lock:
            versions = self._keys.get(name, ())
        if not 1 <= version <= len(versions):
            raise UnknownKeyError(f"the keyring holds no version {version} of key {name!r}")
        return versions[version - 1]


def load_keys(path: Path) -> dict[str, tuple[bytes, ...]]:
    """Raises KeyringError."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringError(f"cannot read keyring {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(
            f"keyring {path} is readable by other users (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise KeyringError(f"keyring {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or len(doc) > KEY_IDS_MAX:
        raise KeyringError(f"keyring {path}: expected an object of at most {KEY_IDS_MAX} key ids")
    return {name: _versions(path, name, value) for name, value in doc.items()}


def _versions(path: Path, name: str, value: object) -> tuple[bytes, ...]:
    if not 1 <= len(name.encode()) <= KEY_ID_CHARS_MAX or name != normalize_key_id(name):
        raise KeyringError(f"keyring {path}: key id {name!r} is empty, too long or an ARN")
    if not isinstance(value, list) or not 1 <= len(value) <= VERSIONS_MAX:
        raise KeyringError(f"keyring {path}: key {name!r} needs a list of 1..{VERSIONS_MAX} keys")
    versions = []
    for i, text in enumerate(value, 1):
        try:
            key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except binascii.Error:
            key = b""
        if len(key) != KEY_BYTES:
            raise KeyringError(
                f"keyring {path}: key {name!r} version {i} is not {KEY_BYTES} bytes in base64"
            )
        versions.append(key)
    return tuple(versions)
