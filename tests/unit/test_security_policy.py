"""The credentials-and-policy file and the action tables (pure): what loads, what is refused
(and that no refusal message shows a secret), how rules match, that every native and Kinesis
operation needs a named action, and the native handshake's signature arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.frontends.kinesis.operations import OPERATIONS
from streamd.frontends.native.api import HANDLERS
from streamd.frontends.native.api_groups import GROUP_HANDLERS
from streamd.replication.transport import OP_REPLICA_MESSAGES
from streamd.security.actions import KINESIS_ACTIONS, NATIVE_ACTIONS, native_action
from streamd.security.guard import Guard
from streamd.security.principals import (
    ACTIONS,
    PolicyFileError,
    load_principals,
    parse_principals,
)
from streamd_client import auth
from streamd_client.errors import AccessDeniedError, UnauthenticatedError

SECRET = "s3cr3t-value-0123456789"
FILE = f"""
[[principal]]
name = "alice"
keys = [{{ access_key_id = "AKALICE", secret_access_key = "{SECRET}" }}]
allow = [
  {{ actions = ["stream:put", "stream:read"], streams = ["orders", "orders-*"] }},
  {{ actions = ["group:*"], streams = ["*"] }},
]
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_rules_match_actions_families_and_patterns(tmp_path: Path) -> None:
    principals = load_principals(write(tmp_path, FILE))
    found = principals.lookup("AKALICE")
    assert found is not None and found[1] == SECRET
    alice = found[0]
    assert alice.allows("stream:put", "orders") and alice.allows("stream:read", "orders-eu")
    assert not alice.allows("stream:put", "ordersx") and not alice.allows("stream:delete", "orders")
    assert alice.allows("group:admin", "anything") and alice.allows("group:consume", "x")
    assert SECRET not in repr(principals)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "no [[principal]]"),
        ("[[principal]]\nname = 'a'\n", "needs keys"),
        (FILE.replace("stream:put", "stream:write"), "unknown action 'stream:write'"),
        (FILE.replace(SECRET, "short"), "16+ characters"),
        (FILE + FILE.replace('"alice"', '"bob"'), "access key id 'AKALICE' appears twice"),
        (FILE.replace("allow", "alow"), "unknown keys"),
        ("not toml [", "not TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_problem_never_the_secret(
    tmp_path: Path, text: str, said: str
) -> None:
    with pytest.raises(PolicyFileError) as refused:
        load_principals(write(tmp_path, text))
    assert said in str(refused.value)
    assert SECRET not in str(refused.value) and "short" not in str(refused.value)


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match=r"readable by other users.*chmod 600"):
        load_principals(write(tmp_path, FILE, 0o644))


def test_every_operation_of_both_protocols_names_its_action() -> None:
    assert set(HANDLERS) | set(GROUP_HANDLERS) | {OP_REPLICA_MESSAGES} <= set(NATIVE_ACTIONS)
    assert set(OPERATIONS) <= set(KINESIS_ACTIONS)
    assert set(NATIVE_ACTIONS.values()) | set(KINESIS_ACTIONS.values()) <= ACTIONS
    assert native_action("no_such_op", {}) == ("cluster:admin", "*")  # fail closed
    assert native_action("read", {"stream": 7}) == ("stream:read", "*")


def test_guard_authenticates_signatures_and_authorizes_by_the_rules_in_force(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, FILE)
    guard = Guard(path)
    nonce = auth.new_nonce()
    alice = guard.authenticate_native("AKALICE", nonce, auth.sign(SECRET, nonce, "AKALICE"))
    assert alice.name == "alice"
    for key_id, signature in (
        ("AKALICE", auth.sign(SECRET, auth.new_nonce(), "AKALICE")),  # another nonce: replay
        ("AKALICE", auth.sign("wrong-secret-0123456789", nonce, "AKALICE")),
        ("AKNOBODY", auth.sign(SECRET, nonce, "AKNOBODY")),
    ):
        with pytest.raises(UnauthenticatedError):
            guard.authenticate_native(key_id, nonce, signature)
    guard.authorize(alice, "stream:put", "orders", protocol="native", peer="p")
    with pytest.raises(AccessDeniedError, match="not allowed stream:delete on stream orders"):
        guard.authorize(alice, "stream:delete", "orders", protocol="native", peer="p")
    # A reload that narrows the policy applies to a principal already authenticated.
    path.write_text(FILE.replace('"stream:put", ', ""))
    assert guard.reload()
    with pytest.raises(AccessDeniedError):
        guard.authorize(alice, "stream:put", "orders", protocol="native", peer="p")
    # A broken edit keeps the last good table.
    path.write_text("broken [")
    assert not guard.reload()
    guard.authorize(alice, "stream:read", "orders", protocol="native", peer="p")


def test_a_guard_without_credentials_allows_everyone() -> None:
    guard = Guard(None)
    assert not guard.enabled and not guard.native_required
    guard.authorize(None, "stream:delete", "x", protocol="native", peer="p")


def test_the_signed_message_binds_nonce_and_key_id() -> None:
    nonce = bytes(range(32))
    assert auth.sign("k" * 16, nonce, "AB") != auth.sign("k" * 16, nonce, "ABC")
    assert auth.signing_message(nonce, "A") != auth.signing_message(nonce + b"A", "")
    assert len(auth.sign("k" * 16, nonce, "AB")) == auth.SIGNATURE_BYTES
    assert "k" * 16 not in repr(auth.Credentials("AB", "k" * 16))


def test_parse_principals_refuses_a_principal_twice() -> None:
    entry = {"name": "a", "keys": [{"access_key_id": "K1", "secret_access_key": "x" * 16}]}
    other = {"name": "a", "keys": [{"access_key_id": "K2", "secret_access_key": "y" * 16}]}
    with pytest.raises(PolicyFileError, match="appears twice"):
        parse_principals({"principal": [entry, other]})
