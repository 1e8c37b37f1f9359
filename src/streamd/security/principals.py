"""The credentials-and-policy file: who may connect, with which key, to do what (pure).

The file (``serve --credentials FILE``, TOML; docs/security.md has the format and examples)
lists principals, each with one or more access key pairs (the pairs SigV4 signs with on the
Kinesis gateway and the native handshake signs with) and ``allow`` rules: a list of actions
(``ACTIONS``, ``"*"`` for all, ``"stream:*"`` for a family) on stream-name patterns
(``fnmatch`` globs: ``"orders-*"``, ``"*"``). Anything not allowed is denied. There are no deny
rules, so the order of rules never matters.

Loading checks everything and raises ``PolicyFileError`` naming the principal and field; the
secret's value is never part of a message. A file that another user may read is refused (it
holds secrets), as ssh refuses a private key others can read.
"""

from __future__ import annotations

import fnmatch
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

# Every action a rule may name. The resource of each is a stream name ("*" for list ones).
ACTIONS: Final = frozenset(
    {
        "stream:create",
        "stream:delete",
        "stream:describe",
        "stream:list",
        "stream:put",
        "stream:read",
        "stream:reshard",
        "stream:configure",  # retention and tags
        "group:consume",  # join, heartbeat, leave, checkpoint, describe
        "group:admin",  # create, reset, delete, list
        "cluster:admin",  # quarantine, cluster nodes, seal/unseal (node-to-node)
    }
)
ADMIN_ACTIONS: Final = frozenset(
    {
        "stream:create",
        "stream:delete",
        "stream:reshard",
        "stream:configure",
        "group:admin",
        "cluster:admin",
    }
)
PRINCIPALS_MAX: Final = 10_000
RULES_MAX: Final = 1_000  # per principal
PATTERNS_MAX: Final = 1_000  # per rule
NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.@-]{1,128}")
KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class PolicyFileError(ValueError):
    """The credentials file is unreadable, malformed or unsafe; the message says where."""


@dataclass(frozen=True, slots=True)
class Rule:
    actions: frozenset[str]  # names from ACTIONS, or "*" / "family:*"
    streams: tuple[str, ...]  # fnmatch patterns

    def allows(self, action: str, resource: str) -> bool:
        family = action.split(":", 1)[0] + ":*"
        if not ({action, family, "*"} & self.actions):
            return False
        return any(fnmatch.fnmatchcase(resource, pattern) for pattern in self.streams)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    rules: tuple[Rule, ...]

    def allows(self, action: str, resource: str) -> bool:
        return any(rule.allows(action, resource) for rule in self.rules)


ALLOW_ALL: Final = (Rule(frozenset({"*"}), ("*",)),)


@dataclass(frozen=True, slots=True)
class Principals:
    """Key id -> (principal, secret). ``repr`` shows no secret."""

    by_key: Mapping[str, tuple[Principal, str]]
    by_name: Mapping[str, Principal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_name:
            names = {principal.name: principal for principal, _ in self.by_key.values()}
            object.__setattr__(self, "by_name", names)

    def __repr__(self) -> str:
        return f"Principals({len(self.by_key)} keys)"

    def secrets(self) -> dict[str, str]:
        return {key_id: secret for key_id, (_, secret) in self.by_key.items()}

    def lookup(self, key_id: str) -> tuple[Principal, str] | None:
        return self.by_key.get(key_id)


def load_principals(path: Path) -> Principals:
    """Read and check the file. Raises PolicyFileError."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"cannot read credentials file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PolicyFileError(
            f"credentials file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"it holds secrets: chmod 600 {path}"
        )
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"credentials file {path}: not TOML: {exc}") from None
    return parse_principals(document, str(path))


def parse_principals(document: dict[str, Any], where: str = "credentials") -> Principals:
    """Check a decoded document (module doc). Raises PolicyFileError."""
    unknown = set(document) - {"principal"}
    if unknown:
        raise PolicyFileError(f"{where}: unknown top-level keys {sorted(unknown)}")
    entries = document.get("principal")
    if not isinstance(entries, list) or not entries:
        raise PolicyFileError(f"{where}: no [[principal]] entries")
    if len(entries) > PRINCIPALS_MAX:
        raise PolicyFileError(f"{where}: more than {PRINCIPALS_MAX} principals")
    by_key: dict[str, tuple[Principal, str]] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        principal, keys = _principal(entry, f"{where}: principal #{index + 1}")
        if principal.name in names:
            raise PolicyFileError(f"{where}: principal {principal.name!r} appears twice")
        names.add(principal.name)
        for key_id, secret in keys:
            if key_id in by_key:
                raise PolicyFileError(f"{where}: access key id {key_id!r} appears twice")
            by_key[key_id] = (principal, secret)
    return Principals(by_key)


def _principal(entry: Any, where: str) -> tuple[Principal, list[tuple[str, str]]]:
    if not isinstance(entry, dict):
        raise PolicyFileError(f"{where}: must be a table")
    unknown = set(entry) - {"name", "keys", "allow"}
    if unknown:
        raise PolicyFileError(f"{where}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PolicyFileError(f"{where}: name must match [a-zA-Z0-9_.@-]{{1,128}}")
    where = f"{where} ({name})"
    keys = entry.get("keys")
    if not isinstance(keys, list) or not keys:
        raise PolicyFileError(f"{where}: needs keys = [{{ access_key_id, secret_access_key }}]")
    pairs = [_key(key, f"{where}: key #{i + 1}") for i, key in enumerate(keys)]
    rules_in = entry.get("allow", [])
    if not isinstance(rules_in, list) or len(rules_in) > RULES_MAX:
        raise PolicyFileError(f"{where}: allow must be a list of at most {RULES_MAX} rules")
    rules = tuple(_rule(rule, f"{where}: allow #{i + 1}") for i, rule in enumerate(rules_in))
    return Principal(name, rules), pairs


def _key(key: Any, where: str) -> tuple[str, str]:
    if not isinstance(key, dict) or set(key) != {"access_key_id", "secret_access_key"}:
        raise PolicyFileError(f"{where}: needs exactly access_key_id and secret_access_key")
    key_id, secret = key["access_key_id"], key["secret_access_key"]
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise PolicyFileError(f"{where}: access_key_id must match [A-Za-z0-9_.-]{{1,128}}")
    if not isinstance(secret, str) or len(secret) < 16:
        raise PolicyFileError(f"{where} ({key_id}): secret_access_key needs 16+ characters")
    return key_id, secret


def _rule(rule: Any, where: str) -> Rule:
    if not isinstance(rule, dict) or set(rule) != {"actions", "streams"}:
        raise PolicyFileError(f"{where}: needs exactly actions = [...] and streams = [...]")
    actions, streams = rule["actions"], rule["streams"]
    if not isinstance(actions, list) or not actions or not all(isinstance(a, str) for a in actions):
        raise PolicyFileError(f"{where}: actions must be a non-empty list of strings")
    families = {action.split(":", 1)[0] + ":*" for action in ACTIONS}
    for action in actions:
        if action not in ACTIONS and action not in families and action != "*":
            raise PolicyFileError(
                f"{where}: unknown action {action!r} (one of {', '.join(sorted(ACTIONS))}, "
                "a family such as stream:*, or *)"
            )
    if (
        not isinstance(streams, list)
        or not 1 <= len(streams) <= PATTERNS_MAX
        or not all(isinstance(p, str) and 1 <= len(p) <= 256 for p in streams)
    ):
        raise PolicyFileError(f"{where}: streams must be 1..{PATTERNS_MAX} name patterns")
    return Rule(frozenset(actions), tuple(streams))


def allow_all_principals(pairs: tuple[tuple[str, str], ...], name: str) -> dict[str, Any]:
    """Key pairs given without a policy (``--kinesis-credentials``, today's flags): each a
    principal allowed everything, as they were before policies existed."""
    return {key_id: (Principal(f"{name}:{key_id}", ALLOW_ALL), secret) for key_id, secret in pairs}
