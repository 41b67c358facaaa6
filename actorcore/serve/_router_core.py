"""Which replica takes the next request: power of two choices on requests in flight.

:class:`RouterCore` is a plain state machine (no I/O, no threads, no clock):
the shell tells it what happened (a request wants a replica, a request
finished, the set of replicas changed) and gets back :class:`Grant`\\ s, each
saying "this waiting request may now go to that replica". A replica never
holds more than ``max_ongoing_requests`` requests from one router; when all
are full, requests wait in FIFO order and are granted as requests finish.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Grant", "RouterCore"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Send the request of ``waiter`` to replica ``replica``; its slot is already counted."""

    waiter: Any
    replica: str


class RouterCore:
    """In-flight counts per replica and the queue of requests waiting for room."""

    def __init__(self, max_ongoing: int, rng: random.Random | None = None) -> None:
        self.max_ongoing = max_ongoing
        self.in_flight: dict[str, int] = {}
        self.queue: deque[Any] = deque()
        self._rng = rng or random.Random()

    def _pick(self) -> str | None:
        """Two random replicas with room; the one with fewer requests in flight."""
        room = [r for r, n in self.in_flight.items() if n < self.max_ongoing]
        if not room:
            return None
        if len(room) == 1:
            return room[0]
        a, b = self._rng.sample(room, 2)
        return a if self.in_flight[a] <= self.in_flight[b] else b

    def try_acquire(self) -> str | None:
        """A replica for a request now, or None when it must wait (full, or others wait first)."""
        if self.queue:
            return None
        rid = self._pick()
        if rid is not None:
            self.in_flight[rid] += 1
        return rid

    def enqueue(self, waiter: Any) -> list[Grant]:
        """Queue ``waiter``; it may be granted at once if there is room."""
        self.queue.append(waiter)
        return self._grant()

    def cancel(self, waiter: Any) -> bool:
        """Take a waiter out of the queue; False if it was granted already (release its slot)."""
        try:
            self.queue.remove(waiter)
        except ValueError:
            return False
        return True

    def release(self, rid: str) -> list[Grant]:
        """A request sent to ``rid`` finished (any outcome)."""
        n = self.in_flight.get(rid)
        if n is not None and n > 0:
            self.in_flight[rid] = n - 1
        return self._grant()

    def set_replicas(self, rids: list[str]) -> list[Grant]:
        """The replicas to route to now; counts of those that stay are kept."""
        self.in_flight = {r: self.in_flight.get(r, 0) for r in rids}
        return self._grant()

    def remove(self, rid: str) -> list[Grant]:
        """Stop routing to ``rid`` (it died) until the next ``set_replicas`` names it."""
        self.in_flight.pop(rid, None)
        return self._grant()

    def _grant(self) -> list[Grant]:
        out: list[Grant] = []
        while self.queue:
            rid = self._pick()
            if rid is None:
                break
            self.in_flight[rid] += 1
            out.append(Grant(self.queue.popleft(), rid))
        return out

    def validate(self) -> None:
        """Check the invariants (tests call this)."""
        assert all(0 <= n <= self.max_ongoing for n in self.in_flight.values()), self.in_flight
        assert not self.queue or all(n >= self.max_ongoing for n in self.in_flight.values())
