"""The replica's roles and every transition between them: the one table (as h11 keeps its own).

``HANDLERS`` names, for each role and each kind of input, the ``Replica`` method that handles
it; an input missing from a role's row is ignored in that role (listed in ``IGNORED`` so that
"ignored" is a decision, not an accident: ``test_every_input_has_a_decision`` checks that the
table covers every role and input kind). ``TRANSITIONS`` lists the roles each role may move to;
``Replica`` asserts every move against it.

Epochs are handled before the table: a message of an older epoch is answered ``Stale`` and
goes no further; a message of a newer epoch moves the replica to FOLLOWER of that epoch first
(after persisting it), then reaches the FOLLOWER row.

    FOLLOWER     accepts appends that extend its log at its epoch, answers fences and fetches
    FENCING      a new leader: epoch persisted, waiting for a whole majority of FenceAcks
    CATCHING_UP  fenced; fetching from the most up-to-date fenced log what it lacks
    LEADING      epoch-start batch written; takes writes, serves reads once it has committed
"""

from __future__ import annotations

import enum
from typing import Final

from . import messages as m


class Role(enum.Enum):
    FOLLOWER = "follower"
    FENCING = "fencing"
    CATCHING_UP = "catching_up"
    LEADING = "leading"


F, FN, C, L = Role.FOLLOWER, Role.FENCING, Role.CATCHING_UP, Role.LEADING

TRANSITIONS: Final[dict[Role, frozenset[Role]]] = {
    F: frozenset({FN}),  # Lead (a newer epoch seen while following stays FOLLOWER)
    FN: frozenset({F, C, L}),  # deposed | best log is another's | best log is ours
    C: frozenset({F, FN, L}),  # deposed | the source went silent: fence again | caught up
    L: frozenset({F}),  # deposed, or its own log is found damaged
}

Kind = type[m.Message] | type[m.Event]

_ANY_ROLE: Final[dict[Kind, str]] = {
    m.Fence: "on_fence",
    m.Stale: "on_stale",
    m.Lead: "on_lead",
    m.Durable: "on_durable",
    m.StorageFailed: "on_storage_failed",
    m.Damaged: "on_damaged",
    m.ClientRead: "on_client_read",
}

HANDLERS: Final[dict[Role, dict[Kind, str]]] = {
    F: {
        **_ANY_ROLE,
        m.Append: "on_append",
        m.Fetch: "on_fetch",
        m.ClientWrite: "refuse_write",
        m.Tick: "on_tick_follower",
    },
    FN: {
        **_ANY_ROLE,
        m.FenceAck: "on_fence_ack",
        m.ClientWrite: "refuse_write",
        m.Tick: "on_tick_fencing",
    },
    C: {
        **_ANY_ROLE,
        m.FetchReply: "on_fetch_reply",
        m.ClientWrite: "refuse_write",
        m.Tick: "on_tick_catching_up",
    },
    L: {
        **_ANY_ROLE,
        m.AppendAck: "on_append_ack",
        m.AppendNack: "on_append_nack",
        m.ClientWrite: "on_client_write",
        m.Tick: "on_tick_leading",
    },
}

# Inputs a role drops on purpose, and why.
IGNORED: Final[dict[Role, dict[Kind, str]]] = {
    F: {
        m.FenceAck: "acks of a fencing round this replica no longer runs",
        m.AppendAck: "acks to a leadership this replica no longer holds",
        m.AppendNack: "as AppendAck",
        m.FetchReply: "answer to a catch-up that is over",
    },
    FN: {
        m.Append: "same epoch, but this replica is its leader: no one else appends at it",
        m.AppendAck: "no appends sent yet",
        m.AppendNack: "no appends sent yet",
        m.Fetch: "only a catching-up leader fetches, and the leader is us",
        m.FetchReply: "no fetch sent yet",
    },
    C: {
        m.Append: "as FENCING",
        m.AppendAck: "no appends sent yet",
        m.AppendNack: "no appends sent yet",
        m.Fetch: "as FENCING",
        m.FenceAck: "the majority is already fenced; late acks add nothing",
    },
    L: {
        m.Append: "as FENCING",
        m.Fetch: "as FENCING",
        m.FetchReply: "catch-up is over",
        m.FenceAck: "late: the followers are fenced by our appends anyway",
    },
}

ALL_KINDS: Final[tuple[Kind, ...]] = (
    m.Fence,
    m.FenceAck,
    m.Append,
    m.AppendAck,
    m.AppendNack,
    m.Fetch,
    m.FetchReply,
    m.Stale,
    m.Tick,
    m.ClientWrite,
    m.ClientRead,
    m.Durable,
    m.StorageFailed,
    m.Damaged,
    m.Lead,
)


def handler_for(role: Role, kind: Kind) -> str | None:
    return HANDLERS[role].get(kind)
