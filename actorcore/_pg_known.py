"""The placement groups' records as one node knows them: etcd reads, the watch,
batched writes, and the callers waiting for a group to be CREATED.

A record may reach a node three ways: its own writes (groups it coordinates,
known here first), a coordinator's ``PG_RECORD`` sent straight, and etcd (a
get or the watch). Each record carries a version its coordinator raises with
every change and etcd's copies a revision, so an older copy never replaces a
newer one; removed groups are remembered (the last ``REMEMBER_REMOVED``) so a
late copy does not bring one back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from actorcore.gcs import DeleteOp, EventType, PutOp, RevisionCompactedError

from ._pg_records import PGS, GroupRecord, RecordState, record_key

__all__ = ["REMEMBER_REMOVED", "UNKNOWN_GROUP_WAIT_S", "KnownGroups"]

logger = logging.getLogger(__name__)

UNKNOWN_GROUP_WAIT_S = 30.0  # how long a caller waits for a group no node has recorded yet
REMEMBER_REMOVED = 10_000  # removed groups whose waiters are answered False at once
_BATCH = 100  # records per etcd transaction
_RETRY_S = 0.5  # pacing of retries after etcd errors, not synchronization


class KnownGroups:
    """The records of the cluster's groups on one node (see the module doc).

    Args:
        store: the cluster's control store (etcd).
        node_id: this node (its own groups' records are known here first).
        own: runs a coroutine as a task its owner cancels on close.
    """

    def __init__(self, store: Any, node_id: bytes, own: Callable[[Any], asyncio.Task[Any]]) -> None:
        self.store = store
        self.node_id = node_id
        self._own = own
        self.records: dict[bytes, GroupRecord] = {}
        self.removed: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._revisions: dict[bytes, int] = {}  # etcd revision of each record known
        self._waiters: dict[bytes, list[asyncio.Future[bool]]] = {}
        self._writes: dict[bytes, GroupRecord | None] = {}
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> int:
        """Read every record; returns the revision to watch from, minus one."""
        kvs, revision = await self.store.get_prefix(PGS)
        for kv in kvs:
            self.from_etcd(kv)
        return int(revision)

    def close(self) -> None:
        for pg_id in list(self._waiters):
            self.wake(pg_id, False)

    def rows(self) -> list[dict[str, Any]]:
        """The groups this node knows of now (no etcd read)."""
        return [r.row() for r in sorted(self.records.values(), key=lambda r: r.created_at)]

    # --- waiting for a group -------------------------------------------------------------

    async def wait_created(self, pg_id: bytes) -> bool:
        """True once the group is CREATED; False if it is removed (or, never heard
        of, not recorded within ``UNKNOWN_GROUP_WAIT_S``)."""
        rec = self.records.get(pg_id)
        if rec is None and pg_id in self.removed:
            return False
        if rec is None:
            kv = await self.store.get(record_key(pg_id))
            if kv is not None:
                self.from_etcd(kv)  # (the watch may have brought a newer one meanwhile)
            rec = self.records.get(pg_id)
            if rec is None and pg_id in self.removed:
                return False
        if rec is not None and rec.state is RecordState.CREATED:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(pg_id, []).append(fut)
        if rec is None:
            return await _wait_or(fut, UNKNOWN_GROUP_WAIT_S, False)
        return await fut

    def wake(self, pg_id: bytes, ready: bool) -> None:
        for fut in self._waiters.pop(pg_id, []):
            if not fut.done():
                fut.set_result(ready)

    async def table(self) -> list[dict[str, Any]]:
        """Every group of the cluster, as etcd holds it; what this node knows newer
        (its own writes not done yet, a coordinator's record sent straight) wins."""
        kvs, _ = await self.store.get_prefix(PGS)
        recs = {r.pg_id: r for r in map(GroupRecord.from_bytes, (kv.value for kv in kvs))}
        for pg_id, rec in self.records.items():
            have = recs.get(pg_id)
            if have is None or have.version < rec.version:
                recs[pg_id] = rec
        for pg_id, w in self._writes.items():
            if w is None:
                recs.pop(pg_id, None)
        for pg_id in self.removed:
            recs.pop(pg_id, None)
        return [r.row() for r in sorted(recs.values(), key=lambda r: r.created_at)]

    # --- records: the local view, etcd writes, the watch ------------------------------------

    def learn(self, rec: GroupRecord) -> None:
        """Know ``rec`` (unless the record known is newer: etcd's copy may come after
        the coordinator's own, sent straight)."""
        old = self.records.get(rec.pg_id)
        if old is not None and old.version > rec.version:
            return
        self.records[rec.pg_id] = rec
        if rec.state is RecordState.CREATED:
            self.wake(rec.pg_id, True)

    def write(self, pg_id: bytes, rec: GroupRecord | None) -> None:
        """Write (None: delete) a record; one transaction per loop turn, latest wins."""
        self._writes[pg_id] = rec
        if self._writer is None or self._writer.done():
            self._writer = self._own(self._flush())

    async def _flush(self) -> None:
        while self._writes:
            keys = list(self._writes)[:_BATCH]
            batch = {k: self._writes[k] for k in keys}
            ops: list[Any] = [
                DeleteOp(record_key(k)) if r is None else PutOp(record_key(k), r.to_bytes())
                for k, r in batch.items()
            ]
            try:
                await self.store.txn([], ops)
            except Exception as e:  # etcd away: keep the records and try again
                logger.warning("placement-group records not written (%s): retrying", e)
                await asyncio.sleep(_RETRY_S)
                continue
            for k, r in batch.items():
                if self._writes.get(k, r) is r:
                    self._writes.pop(k, None)

    async def watch(self, revision: int) -> None:
        while True:
            try:
                async with self.store.watch_prefix(PGS, start_revision=revision) as watch:
                    async for event in watch:
                        revision = event.revision + 1
                        self._on_event(event)
                return
            except RevisionCompactedError:
                kvs, revision = await self.store.get_prefix(PGS)
                for kv in kvs:
                    self.from_etcd(kv)
                revision += 1
            except Exception as e:
                logger.warning("placement-group watch failed (%s): watching again", e)
                await asyncio.sleep(_RETRY_S)

    def _on_event(self, event: Any) -> None:
        if event.type is EventType.PUT and event.kv is not None:
            self.from_etcd(event.kv)
            return
        pg_id = bytes.fromhex(event.key[len(PGS) :].decode())
        rec = self.records.get(pg_id)
        if rec is not None and rec.coordinator == self.node_id:
            self._revisions.pop(pg_id, None)
            return  # this node's own groups are known here first
        self.records.pop(pg_id, None)
        self.mark_removed(pg_id)
        self.wake(pg_id, False)

    def from_etcd(self, kv: Any) -> None:
        """A record read from etcd (a get or the watch): learnt unless older than the
        one known, or about one of this node's own groups (known here first)."""
        rec = GroupRecord.from_bytes(kv.value)
        if kv.mod_revision <= self._revisions.get(rec.pg_id, 0):
            return
        self._revisions[rec.pg_id] = kv.mod_revision
        if rec.coordinator == self.node_id or rec.pg_id in self.removed:
            return
        self.learn(rec)

    def mark_removed(self, pg_id: bytes) -> None:
        self.removed[pg_id] = None
        self._revisions.pop(pg_id, None)
        if len(self.removed) > REMEMBER_REMOVED:
            self.removed.popitem(last=False)


async def _wait_or(fut: asyncio.Future[bool], timeout: float, default: bool) -> bool:
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        return default
