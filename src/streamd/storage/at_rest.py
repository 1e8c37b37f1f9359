"""Encryption at rest: a stored batch sealed with AES-256-GCM, and opened again for readers.

A sealed batch keeps the 64-byte batch header (docs/storage-format.md, "Encrypted batches"),
with the codec byte's high bit set (``CODEC_ENCRYPTED``) and the length and payload CRC of
what follows it, which is:

    off  size  field
    64   1     key id length K (1..255)
    65   K     key id (UTF-8, its keyring name)
    65+K 4     key version (1-based, big-endian)
    69+K 12    nonce (random per batch)
    81+K n+16  AES-256-GCM ciphertext of the plaintext batch's payload, then the 16-byte tag

The payload CRC covers all of it, so a torn or flipped byte is found by the CRC check that
recovery and reads already make; a batch forged with a matching CRC fails the GCM tag. The
associated data are the header fields nothing rewrites after the batch is stored (magic,
version, codec, length, record count, producer id and sequence, uncompressed length): the
server-stamped fields (base offset, epoch, arrival times) are left out because replicated
shards restamp stored headers (cluster/replicated.py) and a sealed batch must stay valid
through that. The key id and version in each batch are what keep old batches readable after
a rotation, or after encryption is stopped.

The cipher is ``cryptography``'s AESGCM; nothing here is hand-rolled crypto.
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

import crc32c
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError

CODEC_ENCRYPTED = batchfmt.CODEC_ENCRYPTED
NONCE_BYTES = 12
TAG_BYTES = 16
_U32 = struct.Struct(">I")
_H = batchfmt.HEADER_BYTES


class KeySource(Protocol):
    def current(self, key_id: str) -> tuple[str, int, bytes]: ...
    def version(self, name: str, version: int) -> bytes: ...


class KeyUnavailableError(CorruptDataError):
    """A sealed batch names a key (or version) the keyring does not hold."""


def is_sealed(batch: bytes | bytearray | memoryview) -> bool:
    return len(batch) > 3 and bool(batch[3] & CODEC_ENCRYPTED)


def _aad(header: bytes | bytearray | memoryview) -> bytes:
    h = bytes(header[:_H])
    return h[0:8] + h[16:20] + h[40:56]


def seal(batch: bytes, keys: KeySource, key_id: str) -> bytes:
    """The stored form of a plaintext batch under ``key_id``'s current version.
    Raises UnknownKeyError (from the keyring)."""
    assert not is_sealed(batch)
    name, version, key = keys.current(key_id)
    encoded = name.encode()
    nonce = os.urandom(NONCE_BYTES)
    header = bytearray(batch[:_H])
    header[3] |= CODEC_ENCRYPTED
    length = _H + 1 + len(encoded) + 4 + NONCE_BYTES + (len(batch) - _H) + TAG_BYTES
    _U32.pack_into(header, 4, length)
    sealed = AESGCM(key).encrypt(nonce, bytes(memoryview(batch)[_H:]), _aad(header))
    body = bytes([len(encoded)]) + encoded + _U32.pack(version) + nonce + sealed
    assert _H + len(body) == length
    _U32.pack_into(header, 56, crc32c.crc32c(body))
    return batchfmt.seal_header(header) + body


def unseal(batch: bytes, keys: KeySource) -> bytes:
    """The plaintext batch of a sealed one (its header as stored, less the encryption).
    Raises CorruptDataError (a bad CRC, a bad tag, a key the keyring lacks), with the batch's
    base_offset and next_offset in its details."""
    header = batchfmt.parse_header(batch)
    batchfmt.verify_payload(batch, header)
    details = {"base_offset": header.base_offset, "next_offset": header.next_offset}
    view = memoryview(batch)
    size = view[_H]
    at = _H + 1 + size
    if size == 0 or at + 4 + NONCE_BYTES + TAG_BYTES > header.length:
        raise CorruptDataError("sealed batch envelope is malformed", **details)
    try:
        name = bytes(view[_H + 1 : at]).decode()
        key = keys.version(name, _U32.unpack_from(view, at)[0])
    except (UnicodeDecodeError, LookupError) as exc:
        raise KeyUnavailableError(f"sealed batch cannot be opened: {exc}", **details) from None
    nonce = bytes(view[at + 4 : at + 4 + NONCE_BYTES])
    try:
        payload = AESGCM(key).decrypt(nonce, bytes(view[at + 4 + NONCE_BYTES :]), _aad(view))
    except InvalidTag:
        raise CorruptDataError("sealed batch fails its GCM tag (altered)", **details) from None
    plain = bytearray(view[:_H])
    plain[3] &= ~CODEC_ENCRYPTED & 0xFF
    _U32.pack_into(plain, 4, _H + len(payload))
    _U32.pack_into(plain, 56, crc32c.crc32c(payload))
    return batchfmt.seal_header(plain) + payload


def unseal_all(batches: list[bytes], keys: KeySource) -> list[bytes]:
    """Readers always get plaintext: open the sealed ones, pass the others as they are."""
    if not any(map(is_sealed, batches)):
        return batches
    return [unseal(b, keys) if is_sealed(b) else b for b in batches]
