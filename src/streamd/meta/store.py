"""The metadata-store interface, shaped after etcd's KV API so both backends fit it.

Keys are strings, values bytes. Every key carries a ``mod_revision``: the store-wide revision of
its last change (a store-wide counter that only grows). ``txn`` applies puts and deletes
atomically only if every ``Compare`` holds, which is how the catalog does compare-and-swap:
read a value and its revision, compute the new value, commit only if nobody changed it meanwhile.
A ``Compare`` with ``mod_revision == 0`` means "the key must not exist".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    mod_revision: int  # 0: the key must be absent


class MetaStore(Protocol):
    async def get(self, key: str) -> KeyValue | None:
        """The key's value and revision, or None."""
        ...

    async def range(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, sorted by key."""
        ...

    async def txn(
        self,
        compares: list[Compare],
        puts: list[tuple[str, bytes]] | None = None,
        deletes: list[str] | None = None,
    ) -> bool:
        """Apply ``puts`` and ``deletes`` atomically and durably iff every compare holds.

        Returns False (and changes nothing) when a compare fails.
        """
        ...

    async def aclose(self) -> None: ...
