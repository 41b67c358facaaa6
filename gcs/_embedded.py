"""In-process control store with etcd's semantics, for a single machine.

Two layers:

* :class:`EmbeddedState` is the sans-IO core: keys with revisions, leases,
  transactions and a bounded event history. It never awaits and never reads a
  clock; callers pass ``now`` (seconds, monotonic) to the lease methods. Every
  mutating call returns the :class:`~gcs._interface.WatchEvent` list it
  produced, in revision order.
* :class:`EmbeddedControlStore` is the thin async shell: it owns the lease
  timer task and hands the core's events to open watches.

The rules follow etcd 3.4: one store-wide revision starting at 1; all writes
of one transaction share a revision; a value compare on a missing key fails;
a transaction holds at most 128 operations per branch and never writes the
same key twice; a lease's keys are deleted together, in key order, when it
expires or is revoked. Watches start at ``start_revision`` inclusive.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._interface import (
    Compare,
    ControlStore,
    ControlStoreError,
    DeleteOp,
    EventType,
    GetOp,
    KeyValue,
    LeaseExpiredError,
    PutOp,
    RevisionCompactedError,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = ["MAX_TXN_OPS", "EmbeddedControlStore", "EmbeddedState", "check_txn"]

logger = logging.getLogger(__name__)

MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``: operations per transaction branch."""

_COMPARE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_COMPARE_FIELDS = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "lease": "lease",
}
_TIMER_SLACK = 0.001  # uvloop's timers have 1 ms resolution: never wake just before a deadline

Op = PutOp | DeleteOp | GetOp


@dataclass(slots=True)
class _Lease:
    id: int
    ttl: float
    deadline: float
    keys: set[bytes] = field(default_factory=set)


def _in_range(key: bytes, op: DeleteOp | GetOp) -> bool:
    return key.startswith(op.key) if op.prefix else key == op.key


def check_txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """Reject what etcd rejects before running a transaction.

    Raises:
        ValueError: more than :data:`MAX_TXN_OPS` compares or operations in a
            branch, an empty key, or a branch writing one key twice.
        TypeError: a compare operand of the wrong type for its target.
    """
    for what, items in (("compares", compares), ("success", success), ("failure", failure)):
        if len(items) > MAX_TXN_OPS:
            raise ValueError(
                f"a transaction holds at most {MAX_TXN_OPS} {what}, got {len(items)}: split it"
            )
    for c in compares:
        _check_compare(c)
    for branch in (success, failure):
        _check_branch(branch)


def _check_compare(c: Compare) -> None:
    if c.op not in _COMPARE_OPS:
        raise ValueError(f"unknown compare op {c.op!r}")
    if c.target == "value":
        if not isinstance(c.operand, bytes):
            raise TypeError(f"a value compare needs a bytes operand, not {c.operand!r}")
    elif c.target in _COMPARE_FIELDS:
        if not isinstance(c.operand, int) or isinstance(c.operand, bool):
            raise TypeError(f"a {c.target} compare needs an int operand, not {c.operand!r}")
    else:
        raise ValueError(f"unknown compare target {c.target!r}")


def _check_branch(branch: Sequence[Op]) -> None:
    puts = [op for op in branch if isinstance(op, PutOp)]
    deletes = [op for op in branch if isinstance(op, DeleteOp)]
    for op in branch:
        if not op.key and not (isinstance(op, GetOp | DeleteOp) and op.prefix):
            raise ValueError("empty key")
    if len({op.key for op in puts}) != len(puts):
        raise ValueError("duplicate key given in txn request: a branch puts one key twice")
    for put in puts:
        if any(_in_range(put.key, d) for d in deletes):
            raise ValueError(f"duplicate key given in txn request: {put.key!r} is put and deleted")


class EmbeddedState:
    """The sans-IO core: a revisioned key space with leases and an event history.

    Args:
        history_size: how many recent events are kept so that a watch can
            start at a past revision; older revisions count as compacted.
    """

    def __init__(self, *, history_size: int = 20_000) -> None:
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        self.revision = 1
        self.compacted_revision = 0  # a watch must start after this revision
        self._history_size = history_size
        self._kvs: dict[bytes, KeyValue] = {}
        self._sorted: list[bytes] | None = []  # keys in order, rebuilt lazily for ranges
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._history: deque[WatchEvent] = deque()

    # --- reads -------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        return self._kvs.get(key)

    def range(self, key: bytes, *, prefix: bool = False) -> list[KeyValue]:
        """The keys equal to ``key`` (or under it, with ``prefix``), sorted."""
        if not prefix:
            kv = self._kvs.get(key)
            return [] if kv is None else [kv]
        keys = self._sorted_keys()
        start = bisect.bisect_left(keys, key)
        out = []
        for k in itertools.islice(keys, start, None):
            if not k.startswith(key):
                break
            out.append(self._kvs[k])
        return out

    # --- writes ------------------------------------------------------------

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> tuple[TxnResult, list[WatchEvent]]:
        """Run a transaction atomically.

        Raises:
            ValueError, TypeError: see :func:`check_txn`; nothing is changed.
            LeaseExpiredError: the branch taken puts under an unknown lease;
                nothing is changed.
        """
        check_txn(compares, success, failure)
        succeeded = all(self._holds(c) for c in compares)
        ops = success if succeeded else failure
        for op in ops:
            if isinstance(op, PutOp) and op.lease and op.lease not in self._leases:
                raise LeaseExpiredError(f"lease {op.lease:x} not found (expired or revoked)")
        rev = self.revision + 1
        events: list[WatchEvent] = []
        responses: list[object] = []
        for op in ops:
            responses.append(self._apply(op, rev, events))
        if events:
            self.revision = rev
            self._record(events)
        return TxnResult(succeeded, self.revision, responses), events

    def put(self, key: bytes, value: bytes, lease: int = 0) -> tuple[int, list[WatchEvent]]:
        result, events = self.txn([], [PutOp(key, value, lease)])
        return result.revision, events

    def delete(self, key: bytes, *, prefix: bool = False) -> tuple[int, list[WatchEvent]]:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        result, events = self.txn([], [DeleteOp(key, prefix)])
        deleted = result.responses[0]
        assert isinstance(deleted, int)
        return deleted, events

    def _holds(self, c: Compare) -> bool:
        kv = self._kvs.get(c.key)
        if c.target == "value":
            # etcd: a value compare on a missing key always fails
            return kv is not None and _COMPARE_OPS[c.op](kv.value, c.operand)
        actual = 0 if kv is None else getattr(kv, _COMPARE_FIELDS[c.target])
        return _COMPARE_OPS[c.op](actual, c.operand)

    def _apply(self, op: Op, rev: int, events: list[WatchEvent]) -> object:
        if isinstance(op, GetOp):
            return self.range(op.key, prefix=op.prefix)
        if isinstance(op, PutOp):
            events.append(self._put_kv(op, rev))
            return rev
        doomed = [kv.key for kv in self.range(op.key, prefix=op.prefix)]
        events.extend(self._delete_kv(k, rev) for k in doomed)
        return len(doomed)

    def _sorted_keys(self) -> list[bytes]:
        """Keys in order; sorted again only after keys came or went (writes stay O(1))."""
        if self._sorted is None:
            self._sorted = sorted(self._kvs)
        return self._sorted

    def _put_kv(self, op: PutOp, rev: int) -> WatchEvent:
        old = self._kvs.get(op.key)
        if old is None:
            self._sorted = None  # a new key: re-sort on the next range read
            kv = KeyValue(op.key, op.value, rev, rev, 1, op.lease)
        else:
            self._detach(old)
            kv = KeyValue(op.key, op.value, old.create_revision, rev, old.version + 1, op.lease)
        self._kvs[op.key] = kv
        if op.lease:
            self._leases[op.lease].keys.add(op.key)
        return WatchEvent(EventType.PUT, op.key, rev, kv, old)

    def _delete_kv(self, key: bytes, rev: int) -> WatchEvent:
        old = self._kvs.pop(key)
        self._sorted = None
        self._detach(old)
        return WatchEvent(EventType.DELETE, key, rev, None, old)

    def _detach(self, kv: KeyValue) -> None:
        lease = self._leases.get(kv.lease) if kv.lease else None
        if lease is not None:
            lease.keys.discard(kv.key)

    # --- leases ------------------------------------------------------------

    def grant(self, ttl: float, now: float) -> int:
        """A new lease that expires ``ttl`` seconds after ``now`` unless refreshed."""
        if not ttl > 0:
            raise ValueError(f"a lease TTL must be > 0, not {ttl!r}")
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _Lease(lease_id, float(ttl), now + ttl)
        return lease_id

    def refresh(self, lease_id: int, now: float) -> float:
        """Push the lease's deadline to ``now + ttl``; 0.0 if it is gone or overdue."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.deadline <= now:
            return 0.0  # an overdue lease is reaped by the next expire(), as in etcd
        lease.deadline = now + lease.ttl
        return lease.ttl

    def revoke(self, lease_id: int) -> list[WatchEvent]:
        """End a lease and delete its keys in one revision; unknown ids are ignored."""
        lease = self._leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return []
        rev = self.revision + 1
        events = [self._delete_kv(k, rev) for k in sorted(lease.keys)]
        self.revision = rev
        self._record(events)
        return events

    def expire(self, now: float) -> list[WatchEvent]:
        """Revoke every lease whose deadline is at or before ``now``."""
        due = sorted(
            (lease for lease in self._leases.values() if lease.deadline <= now),
            key=lambda lease: (lease.deadline, lease.id),
        )
        events: list[WatchEvent] = []
        for lease in due:
            logger.debug("lease %x expired with %d keys", lease.id, len(lease.keys))
            events.extend(self.revoke(lease.id))
        return events

    def next_deadline(self) -> float | None:
        """When the next lease expires, if any lease exists."""
        return min((lease.deadline for lease in self._leases.values()), default=None)

    def lease_ids(self) -> list[int]:
        return sorted(self._leases)

    # --- history -----------------------------------------------------------

    def events_since(self, prefix: bytes, start_revision: int) -> list[WatchEvent]:
        """Recorded events under ``prefix`` at or after ``start_revision``.

        Raises:
            RevisionCompactedError: ``start_revision`` is older than the history.
        """
        if start_revision <= self.compacted_revision:
            raise RevisionCompactedError(
                f"revision {start_revision} is compacted: history starts after "
                f"revision {self.compacted_revision}"
            )
        return [
            e for e in self._history if e.revision >= start_revision and e.key.startswith(prefix)
        ]

    def compact(self, revision: int) -> None:
        """Forget events before ``revision`` (etcd's compact): watches must start at or after it."""
        if revision > self.revision:
            raise ValueError(f"cannot compact revision {revision} beyond {self.revision}")
        while self._history and self._history[0].revision < revision:
            self._history.popleft()
        self.compacted_revision = max(self.compacted_revision, revision - 1)

    def _record(self, events: Iterable[WatchEvent]) -> None:
        self._history.extend(events)
        while len(self._history) > self._history_size:
            dropped = self._history.popleft()
            # other events of the same revision may remain: that revision is now incomplete
            self.compacted_revision = max(self.compacted_revision, dropped.revision)

    def validate(self) -> None:
        """Check the core's invariants; raises AssertionError on a bug."""
        assert self._sorted_keys() == sorted(self._kvs), "key index out of sync"
        for kv in self._kvs.values():
            assert kv.create_revision <= kv.mod_revision <= self.revision, kv
            assert kv.version >= 1, kv
            if kv.lease:
                assert kv.key in self._leases[kv.lease].keys, kv
        for lease in self._leases.values():
            for k in lease.keys:
                assert self._kvs[k].lease == lease.id, (lease.id, k)
        revisions = [e.revision for e in self._history]
        assert revisions == sorted(revisions), "history out of order"


class _EmbeddedWatch(Watch):
    """A watch fed by :class:`EmbeddedControlStore`; bounded by ``max_pending``.

    A consumer that falls ``max_pending`` events behind stops being fed and
    later catches up from the store's history (or gets RevisionCompactedError
    if the history moved past it), so a slow consumer never grows memory.
    """

    def __init__(
        self, store: EmbeddedControlStore, prefix: bytes, start_revision: int, max_pending: int
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._min_revision = start_revision
        self._max_pending = max_pending
        self._pending: deque[WatchEvent] = deque()
        # events before the store's next revision come from the history, not the feed
        current = store._state.revision
        self._catch_up_from: int | None = start_revision if start_revision <= current else None
        self._wakeup = asyncio.Event()
        self._closed = False

    def __aiter__(self) -> _EmbeddedWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popleft()
            if self._catch_up_from is not None:
                self._catch_up(self._catch_up_from)
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def _catch_up(self, start: int) -> None:
        try:
            events = self._store._state.events_since(self._prefix, start)
        except RevisionCompactedError:
            self._close_now()
            raise
        self._pending.extend(events)
        self._catch_up_from = None

    def _offer(self, events: Sequence[WatchEvent]) -> None:
        if self._closed or self._catch_up_from is not None:
            return
        mine = [
            e for e in events if e.revision >= self._min_revision and e.key.startswith(self._prefix)
        ]
        if not mine:
            return
        if len(self._pending) + len(mine) > self._max_pending:
            logger.warning("watch on %r fell %d events behind", self._prefix, len(self._pending))
            self._catch_up_from = mine[0].revision
        else:
            self._pending.extend(mine)
        self._wakeup.set()

    def _close_now(self) -> None:
        self._closed = True
        self._pending.clear()
        self._wakeup.set()
        self._store._watches.discard(self)

    async def aclose(self) -> None:
        self._close_now()


class EmbeddedControlStore(ControlStore):
    """:class:`~gcs._interface.ControlStore` kept in this process.

    Use it from one event loop. The lease timer task starts with the first
    lease and is cancelled by :meth:`aclose`.

    Args:
        history_size: events kept for watches that start in the past.
        max_pending: events a watch may buffer before it falls back to
            catching up from the history.
        clock: monotonic seconds; tests may substitute their own.
    """

    def __init__(
        self,
        *,
        history_size: int = 20_000,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = EmbeddedState(history_size=history_size)
        self._max_pending = max_pending
        self._clock = clock
        self._watches: set[_EmbeddedWatch] = set()
        self._timer: asyncio.Task[None] | None = None
        self._timer_wakeup = asyncio.Event()
        self._closed = False

    @property
    def revision(self) -> int:
        """The current store revision."""
        return self._state.revision

    def _ready(self) -> None:
        """Check the store is open and reap overdue leases before any operation."""
        if self._closed:
            raise ControlStoreError("the control store is closed")
        self._dispatch(self._state.expire(self._clock()))

    def _dispatch(self, events: Sequence[WatchEvent]) -> None:
        if events:
            for watch in list(self._watches):
                watch._offer(events)

    async def get(self, key: bytes) -> KeyValue | None:
        self._ready()
        return self._state.get(key)

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        self._ready()
        return self._state.range(prefix, prefix=True), self._state.revision

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self._ready()
        revision, events = self._state.put(key, value, lease)
        self._dispatch(events)
        return revision

    async def delete(self, key: bytes) -> bool:
        self._ready()
        deleted, events = self._state.delete(key)
        self._dispatch(events)
        return deleted > 0

    async def delete_prefix(self, prefix: bytes) -> int:
        self._ready()
        deleted, events = self._state.delete(prefix, prefix=True)
        self._dispatch(events)
        return deleted

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResult:
        self._ready()
        result, events = self._state.txn(compares, success, failure)
        self._dispatch(events)
        return result

    async def grant_lease(self, ttl: float) -> int:
        self._ready()
        lease_id = self._state.grant(ttl, self._clock())
        self._ensure_timer()
        self._timer_wakeup.set()
        return lease_id

    async def refresh_lease(self, lease_id: int) -> float:
        self._ready()
        return self._state.refresh(lease_id, self._clock())

    async def revoke_lease(self, lease_id: int) -> None:
        self._ready()
        self._dispatch(self._state.revoke(lease_id))

    def watch_prefix(self, prefix: bytes, *, start_revision: int | None = None) -> Watch:
        """Events under ``prefix`` at or after ``start_revision`` (default: the next revision).

        The watch is registered before this returns, so nothing written after
        the call is missed. A start revision older than the history makes the
        iteration raise RevisionCompactedError.
        """
        if self._closed:
            raise ControlStoreError("the control store is closed")
        if start_revision is None or start_revision <= 0:
            start_revision = self._state.revision + 1
        watch = _EmbeddedWatch(self, prefix, start_revision, self._max_pending)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """Forget watch history before ``revision``, like etcd's compaction."""
        self._ready()
        self._state.compact(revision)

    def _ensure_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(
                self._expire_leases(), name="gcs-embedded-lease-timer"
            )

    async def _expire_leases(self) -> None:
        while True:
            self._dispatch(self._state.expire(self._clock()))
            deadline = self._state.next_deadline()
            delay = None if deadline is None else max(0.0, deadline - self._clock()) + _TIMER_SLACK
            self._timer_wakeup.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._timer_wakeup.wait()
            except TimeoutError:
                pass  # a lease is due

    async def aclose(self) -> None:
        """Close every watch and stop the lease timer; idempotent."""
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            watch._close_now()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            try:
                await timer
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
