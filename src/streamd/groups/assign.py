"""The balanced, sticky assignment of shards to members: one pure function.

Balanced: with ``n`` assignable shards and ``m`` members every member gets ``n // m`` or
``n // m + 1`` shards, so nobody holds more than ``ceil(n / m)``. Sticky: a shard stays with the
member that has it (its previous target, else its current owner) unless that member is gone or
holds more than its quota. The quota's ``+ 1`` slots go to the members that already hold the most,
which maximises the shards that stay put: the number of moves is the least that balance allows.

Why a function of (members, shards, previous target, owners) and not of history: the coordinator
can recompute it at any time (after a restart too) and get the same answer for the same inputs.
Everything is sorted, so the result is deterministic; the cost is O(n log m).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence


def quotas(members: Sequence[str], holding: Mapping[str, int], shard_count: int) -> dict[str, int]:
    """Each member's quota: ``n // m``, plus one for the ``n % m`` members holding the most."""
    if not members:
        return {}
    base, extra = divmod(shard_count, len(members))
    order = sorted(members, key=lambda member: (-holding.get(member, 0), member))
    return {member: base + (1 if i < extra else 0) for i, member in enumerate(order)}


def balanced_sticky(
    members: Sequence[str],
    shards: Sequence[str],
    previous: Mapping[str, str],
    owners: Mapping[str, str],
) -> dict[str, str]:
    """Map every shard in ``shards`` to a member (empty when there are no members).

    ``previous`` is the last target (shard -> member), ``owners`` who holds each lease now; a
    shard's current holder is its previous target if that member is still here, else its owner.
    """
    live = set(members)
    if not live:
        return {}
    holding: dict[str, list[str]] = {member: [] for member in members}
    for shard in sorted(shards):
        holder = previous.get(shard)
        if holder not in live:
            holder = owners.get(shard)
        if holder is not None and holder in live:
            holding[holder].append(shard)
    caps = quotas(members, {m: len(h) for m, h in holding.items()}, len(shards))
    target: dict[str, str] = {}
    for member, held in holding.items():
        # Keep the shards the member really owns before those only promised to it: a promised
        # one may still be in revocation from someone else, so giving it up costs nothing.
        held.sort(key=lambda shard: (owners.get(shard) != member, shard))
        for shard in held[: caps[member]]:
            target[shard] = member
    free = sorted(shard for shard in shards if shard not in target)
    heap = [(len(held[: caps[m]]), m) for m, held in holding.items() if len(held) < caps[m]]
    heapq.heapify(heap)
    for shard in free:
        count, member = heapq.heappop(heap)
        target[shard] = member
        if count + 1 < caps[member]:
            heapq.heappush(heap, (count + 1, member))
    assert len(target) == len(set(shards))
    return target
