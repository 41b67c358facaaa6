"""The control-state interface: keys with revisions, leases, prefix watches, transactions.

Two back ends implement it with the same semantics: :mod:`gcs._embedded`
(in-process, for a single machine) and :mod:`gcs._etcd` (a real etcd server,
for clusters). Every component reads and writes control state only through
:class:`ControlStore`.

Semantics (etcd's): every change bumps one store-wide revision; each key keeps
its ``create_revision``, ``mod_revision`` and ``version``; a key attached to a
lease is deleted when the lease expires or is revoked, and watchers see that
as a DELETE event; watches deliver every event from ``start_revision``
(inclusive, as in etcd) in revision order.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Compare",
    "ControlStore",
    "ControlStoreError",
    "ControlStoreUnavailableError",
    "DeleteOp",
    "EventType",
    "GetOp",
    "KeyValue",
    "LeaseExpiredError",
    "PutOp",
    "RevisionCompactedError",
    "TxnResult",
    "Watch",
    "WatchEvent",
]


class ControlStoreError(Exception):
    """Base class of control-state errors."""


class ControlStoreUnavailableError(ControlStoreError, ConnectionError):
    """Raised when the back end cannot be reached (etcd down); retry later."""


class LeaseExpiredError(ControlStoreError):
    """Raised when putting a key under a lease that no longer exists."""


class RevisionCompactedError(ControlStoreError):
    """Raised when a watch asks to start at a revision already compacted away."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: bytes
    revision: int
    kv: KeyValue | None  # the new value for PUT; None for DELETE
    prev_kv: KeyValue | None  # the value before the event, when known


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction, on a single key.

    ``target`` is what is compared: ``"value"``, ``"version"`` (0 when the key
    is absent), ``"create"`` (create_revision), ``"mod"`` (mod_revision) or
    ``"lease"``.
    """

    key: bytes
    target: Literal["value", "version", "create", "mod", "lease"]
    op: Literal["==", "!=", "<", ">"]
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class PutOp:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class GetOp:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded`` tells which branch ran; ``responses`` holds one entry per op:
    the revision for a put, the number deleted for a delete, a list of KeyValue
    for a get."""

    succeeded: bool
    revision: int
    responses: list[object] = field(default_factory=list)


class Watch(abc.ABC):
    """An open prefix watch: iterate it for events; close it to stop."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the watch; idempotent. A pending iteration ends (StopAsyncIteration)."""

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ControlStore(abc.ABC):
    """Control state: what must survive any single process."""

    @abc.abstractmethod
    async def get(self, key: bytes) -> KeyValue | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted by key) and the store revision read at."""

    @abc.abstractmethod
    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; returns the new revision. Raises LeaseExpiredError for a dead lease."""

    @abc.abstractmethod
    async def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if it existed."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: bytes) -> int:
        """Remove every key under ``prefix``; returns how many."""

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``."""

    async def put_if_absent(self, key: bytes, value: bytes, *, lease: int = 0) -> bool:
        """Create ``key`` only if it does not exist (compare-and-swap); True if created."""
        result = await self.txn([Compare(key, "version", "==", 0)], [PutOp(key, value, lease)])
        return result.succeeded

    async def compare_and_put(
        self, key: bytes, value: bytes, *, expect_mod_revision: int, lease: int = 0
    ) -> bool:
        """Set ``key`` only if it was last modified at ``expect_mod_revision``."""
        result = await self.txn(
            [Compare(key, "mod", "==", expect_mod_revision)], [PutOp(key, value, lease)]
        )
        return result.succeeded

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> int:
        """A new lease id that expires ``ttl`` seconds after its last refresh."""

    @abc.abstractmethod
    async def refresh_lease(self, lease_id: int) -> float:
        """Keep a lease alive; returns the remaining TTL, <= 0 if it had expired."""

    @abc.abstractmethod
    async def revoke_lease(self, lease_id: int) -> None:
        """End a lease now; its keys are deleted (watchers see DELETE events)."""

    @abc.abstractmethod
    def watch_prefix(self, prefix: bytes, *, start_revision: int | None = None) -> Watch:
        """Events for keys under ``prefix`` at or after ``start_revision`` (default: from now)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections, timers and watches; idempotent."""

    async def __aenter__(self) -> ControlStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
