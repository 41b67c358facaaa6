"""A control store whose calls wait out an etcd outage (issue 10 item 5).

Control changes (an actor's record, a name claimed or looked up, a placement
group) must not fail because etcd is briefly away: :class:`RetryingControlStore`
retries a call that failed with :class:`ControlStoreUnavailableError`, with a
capped backoff, for up to ``max_wait_s`` (then the error goes to the caller).
Every call retried this way is idempotent by design: puts write the same value,
a name claim answers True to the actor already holding it, a compare-and-delete
whose first try went through answers False the second time. Lease calls are
*not* retried (a node's lease has its own clock: :mod:`actorcore._fencing`);
watches resume by themselves.

A node that may have lost its lease must not write: given ``may_write``, every
try of a write (put, delete, transaction) first asks it and fails with
:class:`NotVouchedError` when it says no, however long the write has waited.
A node thawed after a pause past its TTL would otherwise write its stale view
(an actor RESTARTING there, a name released) over what the rest of the
cluster decided meanwhile (the actor restarted elsewhere, under that name).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ._interface import (
    Compare,
    ControlStore,
    ControlStoreError,
    ControlStoreUnavailableError,
    DeleteOp,
    GetOp,
    KeyValue,
    PutOp,
    TxnResult,
    Watch,
)

__all__ = ["NotVouchedError", "RetryingControlStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_BACKOFF = (0.1, 1.0)  # first retry after 0.1 s, doubling to 1 s: pacing, not synchronization


class NotVouchedError(ControlStoreError):
    """A write refused because this node may have lost its lease (it fences and
    rejoins as a new node; what it would have written is the others' to decide)."""


class RetryingControlStore(ControlStore):
    """``inner`` with its data calls retried through an outage (see the module doc).

    Args:
        inner: the store (not closed here: its owner closes it).
        max_wait_s: how long one call may wait for etcd to come back.
        may_write: asked before every try of a write; False refuses it
            (:class:`NotVouchedError`). None: writes always go.
    """

    def __init__(
        self,
        inner: ControlStore,
        max_wait_s: float = 120.0,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.max_wait_s = max_wait_s
        self.may_write = may_write
        self.retried = 0  # calls that had to wait for etcd (observability, tests)
        self.refused = 0  # writes refused by may_write

    def _write(self, call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        may_write = self.may_write
        if may_write is None:
            return call

        async def checked() -> T:
            if not may_write():
                self.refused += 1
                raise NotVouchedError(
                    "this node may have lost its lease: it writes nothing to control "
                    "state until it rejoins as a new node"
                )
            return await call()

        return checked

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.max_wait_s
        delay, cap = _BACKOFF
        warned = False
        while True:
            try:
                result = await call()
            except ControlStoreUnavailableError as e:
                if time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    logger.warning("etcd unreachable (%s): %s waits for it", e, what)
                    warned = True
                    self.retried += 1
                await asyncio.sleep(delay)  # backoff between tries while etcd is away
                delay = min(cap, delay * 2)
                continue
            if warned:
                logger.info("etcd is back: %s went through", what)
            return result

    async def get(self, key: bytes) -> KeyValue | None:
        return await self._retry("a read", lambda: self.inner.get(key))

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        return await self._retry("a read", lambda: self.inner.get_prefix(prefix))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return await self._retry(
            "a write", self._write(lambda: self.inner.put(key, value, lease=lease))
        )

    async def delete(self, key: bytes) -> bool:
        return await self._retry("a delete", self._write(lambda: self.inner.delete(key)))

    async def delete_prefix(self, prefix: bytes) -> int:
        return await self._retry("a delete", self._write(lambda: self.inner.delete_prefix(prefix)))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[PutOp | DeleteOp | GetOp],
        failure: Sequence[PutOp | DeleteOp | GetOp] = (),
    ) -> TxnResult:
        return await self._retry(
            "a transaction", self._write(lambda: self.inner.txn(compares, success, failure))
        )

    async def grant_lease(self, ttl: float) -> int:
        return await self.inner.grant_lease(ttl)

    async def refresh_lease(self, lease_id: int) -> float:
        return await self.inner.refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    def watch_prefix(self, prefix: bytes, *, start_revision: int | None = None) -> Watch:
        return self.inner.watch_prefix(prefix, start_revision=start_revision)

    async def aclose(self) -> None:
        await self.inner.aclose()
