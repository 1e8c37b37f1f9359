"""The at-rest cipher (storage/at_rest.py) and the keyring file (security/keyring.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import crc32c
import pytest

from streamd.security.keyring import Keyring, KeyringError, UnknownKeyError, normalize_key_id
from streamd.storage import at_rest
from streamd_client import batch as batchfmt
from streamd_client.errors import CorruptDataError

KEY_1, KEY_2 = b"\x01" * 32, b"\x02" * 32
SECRET = b"the plaintext nobody may find on disk " * 8


def plain_batch() -> bytes:
    return batchfmt.encode_batch(
        ["k1", "k2"], [b"\0" * 16, b"\1" * 16], [SECRET, b"two"], base_offset=7, leader_epoch=3
    )


def test_sealed_batch_holds_no_plaintext_and_opens_to_the_same_bytes() -> None:
    keys = Keyring({"alias/a": (KEY_1,)})
    plain = plain_batch()
    sealed = at_rest.seal(plain, keys, "alias/a")
    assert at_rest.is_sealed(sealed) and not at_rest.is_sealed(plain)
    assert b"plaintext nobody" not in sealed and b"two" not in sealed[64:]
    header = batchfmt.parse_header(sealed)
    batchfmt.verify_payload(sealed, header)  # the CRC covers the ciphertext
    assert header.base_offset == 7 and header.record_count == 2
    assert at_rest.unseal(sealed, keys) == plain
    with pytest.raises(CorruptDataError):  # a client never decodes a sealed batch
        batchfmt.decode_records(sealed, header)


def test_two_seals_of_one_batch_differ_by_their_nonce() -> None:
    keys = Keyring({"alias/a": (KEY_1,)})
    assert at_rest.seal(plain_batch(), keys, "alias/a") != at_rest.seal(
        plain_batch(), keys, "alias/a"
    )


def test_a_forged_byte_with_a_matching_crc_fails_the_gcm_tag() -> None:
    keys = Keyring({"alias/a": (KEY_1,)})
    sealed = bytearray(at_rest.seal(plain_batch(), keys, "alias/a"))
    sealed[-20] ^= 0x40
    header = bytearray(sealed[:64])
    header[56:60] = crc32c.crc32c(bytes(sealed[64:])).to_bytes(4, "big")
    forged = batchfmt.seal_header(header) + bytes(sealed[64:])
    with pytest.raises(CorruptDataError, match="GCM") as caught:
        at_rest.unseal(forged, keys)
    assert caught.value.details["base_offset"] == 7 and caught.value.details["next_offset"] == 9


def test_a_flipped_byte_is_found_by_the_crc() -> None:
    keys = Keyring({"alias/a": (KEY_1,)})
    sealed = bytearray(at_rest.seal(plain_batch(), keys, "alias/a"))
    sealed[90] ^= 0x01
    with pytest.raises(CorruptDataError, match="CRC"):
        at_rest.unseal(bytes(sealed), keys)


def test_rotation_keeps_old_batches_readable_and_seals_new_ones_with_the_last_version() -> None:
    old = at_rest.seal(plain_batch(), Keyring({"alias/a": (KEY_1,)}), "alias/a")
    rotated = Keyring({"alias/a": (KEY_1, KEY_2)})
    new = at_rest.seal(plain_batch(), rotated, "alias/a")
    assert at_rest.unseal(old, rotated) == at_rest.unseal(new, rotated) == plain_batch()
    with pytest.raises(at_rest.KeyUnavailableError):  # version 2 is not in the old keyring
        at_rest.unseal(new, Keyring({"alias/a": (KEY_1,)}))


def test_restamped_sealed_batch_still_opens() -> None:
    """Replicated shards rewrite server-stamped header fields of stored batches."""
    keys = Keyring({"alias/a": (KEY_1,)})
    sealed = at_rest.seal(plain_batch(), keys, "alias/a")
    moved = batchfmt.restamp(
        sealed, base_offset=100, leader_epoch=9, first_arrival_ms=1, last_arrival_ms=2
    )
    assert batchfmt.parse_header(at_rest.unseal(moved, keys)).base_offset == 100


def test_kms_key_ids_name_keyring_entries() -> None:
    assert normalize_key_id("arn:aws:kms:us-east-1:123456789012:key/abcd-1") == "abcd-1"
    assert normalize_key_id("arn:aws:kms:us-east-1:123456789012:alias/orders") == "alias/orders"
    keys = Keyring({"abcd-1": (KEY_1,)})
    assert keys.current("arn:aws:kms:eu-west-1:1:key/abcd-1")[:2] == ("abcd-1", 1)
    with pytest.raises(UnknownKeyError):
        keys.current("alias/none")


def write(path: Path, doc: object, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(doc))
    os.chmod(path, mode)
    return path


def test_keyring_file_loads_checks_and_reloads(tmp_path: Path) -> None:
    b64 = base64.b64encode
    path = write(tmp_path / "k.json", {"alias/a": [b64(KEY_1).decode()]})
    keys = Keyring.load(path)
    assert keys.current("alias/a") == ("alias/a", 1, KEY_1)
    write(path, {"alias/a": [b64(KEY_1).decode(), b64(KEY_2).decode()]})
    keys.reload()
    assert keys.current("alias/a") == ("alias/a", 2, KEY_2)
    with pytest.raises(KeyringError, match="readable by other users"):
        Keyring.load(write(tmp_path / "open.json", {"alias/a": [b64(KEY_1).decode()]}, 0o644))
    with pytest.raises(KeyringError, match="not 32 bytes") as caught:
        Keyring.load(write(tmp_path / "short.json", {"alias/a": [b64(b"x" * 16).decode()]}))
    assert b64(b"x" * 16).decode() not in str(caught.value)
    write(path, {"alias/a": "nope"})
    with pytest.raises(KeyringError):
        keys.reload()
    assert keys.current("alias/a")[1] == 2  # a failed reload keeps the keys in use
