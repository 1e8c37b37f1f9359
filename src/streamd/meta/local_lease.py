"""Leases for the embedded store: an in-memory table of deadlines (no background task).

In the embedded mode the process that holds a lease is the process that runs the store, so a
lease cannot outlive it: the table lives in memory, and at open the store deletes every key a
lease of an earlier life held. Expiry is lazy but prompt: every store operation first expires
the leases whose deadline passed, and a waiting watcher wakes at the earliest deadline to do it
(that is how watchers see a lapsed lease's keys go without anyone polling).

Thread-safe (one lock): the store checks a put's lease inside its worker thread, atomically with
the write, so a put can never attach a key to a lease whose expiry has begun. Times are
``time.monotonic()`` seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Final

from .errors import LeaseNotFoundError

LEASES_MAX: Final = 10_000
TTL_S_MAX: Final = 9_000_000_000  # etcd's MaxLeaseTTL


class LocalLeases:
    def __init__(self, leases_max: int = LEASES_MAX) -> None:
        self.leases_max = leases_max
        self._lock = threading.Lock()
        self._ttl_s: dict[int, int] = {}
        self._deadline_s: dict[int, float] = {}

    def grant(self, ttl_s: int) -> int:
        if not 1 <= ttl_s <= TTL_S_MAX:
            raise ValueError(f"lease TTL must be 1..{TTL_S_MAX} s, not {ttl_s}")
        with self._lock:
            if len(self._ttl_s) >= self.leases_max:
                raise ValueError(f"at most {self.leases_max} leases at once")
            lease_id = secrets.randbits(63) or 1
            while lease_id in self._ttl_s:
                lease_id = secrets.randbits(63) or 1
            self._ttl_s[lease_id] = ttl_s
            self._deadline_s[lease_id] = time.monotonic() + ttl_s
            return lease_id

    def refresh(self, lease_id: int) -> int:
        """Restart the lease's TTL; returns it. Raises LeaseNotFoundError if it is gone or due."""
        with self._lock:
            if not self._alive(lease_id):
                raise LeaseNotFoundError(lease_id)
            self._deadline_s[lease_id] = time.monotonic() + self._ttl_s[lease_id]
            return self._ttl_s[lease_id]

    def check_alive(self, lease_id: int) -> None:
        with self._lock:
            if not self._alive(lease_id):
                raise LeaseNotFoundError(lease_id)

    def remove(self, lease_id: int) -> bool:
        """Forget the lease (from now on it is gone); False if it already was."""
        with self._lock:
            self._deadline_s.pop(lease_id, None)
            return self._ttl_s.pop(lease_id, None) is not None

    def take_due(self) -> list[int]:
        """Remove and return the leases whose deadline has passed."""
        now = time.monotonic()
        with self._lock:
            due = [lease for lease, deadline in self._deadline_s.items() if deadline <= now]
            for lease_id in due:
                del self._deadline_s[lease_id], self._ttl_s[lease_id]
            return due

    def seconds_to_next_deadline(self) -> float | None:
        with self._lock:
            if not self._deadline_s:
                return None
            return max(0.0, min(self._deadline_s.values()) - time.monotonic())

    def _alive(self, lease_id: int) -> bool:
        deadline = self._deadline_s.get(lease_id)
        return deadline is not None and deadline > time.monotonic()
