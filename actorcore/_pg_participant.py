"""A cluster node as a participant in placing placement groups.

A group's coordinator (:mod:`actorcore._cluster_pg`) places it in two phases:
``PG_PREPARE`` holds bundles on a chosen node, ``PG_COMMIT`` makes them the
group's, ``PG_RELEASE`` gives them back (the work holding them is stopped). The
holds are :class:`~actorcore.scheduler._bundles.BundleHolds` in the node's
scheduler, changed through the node daemon's events. ``PG_RECORD`` is a
coordinator's record of a group created through this node, learnt before
etcd's copy arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import _protocol as P
from ._pg_known import KnownGroups
from ._pg_records import GroupRecord
from ._rpc import DEFERRED, RpcPeer

__all__ = ["GroupParticipant"]

Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


def _events() -> Any:
    """The node daemon's events (imported late: the daemon's package imports this one)."""
    from ._node import _events as E

    return E


class _Answer:
    """A waiter for this node's own participant: the reply resolves a future."""

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def reply(self, rid: int, value: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(value)


class GroupParticipant:
    """The ``PG_*`` handlers of a cluster node daemon (see the module doc)."""

    def __init__(self, daemon: Any, membership: Any, known: KnownGroups) -> None:
        self.daemon = daemon
        self.membership = membership
        self.known = known
        self.node_id: bytes = daemon.node_id

    def install(self, handlers: dict[int, Handler]) -> None:
        """Add the participant's handlers to ``handlers`` (changed in place)."""
        handlers[int(P.Tag.PG_PREPARE)] = self.on_prepare
        handlers[int(P.Tag.PG_COMMIT)] = self.on_commit
        handlers[int(P.Tag.PG_RELEASE)] = self.on_release
        handlers[int(P.Tag.PG_RECORD)] = self.on_record

    async def call_here(self, msg: Any) -> Any:
        """A coordinator on this node asks this node's own participant."""
        if isinstance(msg, P.PgReleaseMsg):
            return self.on_release(None, msg, [])
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._participate((_Answer(fut), msg.rid), msg)
        return await fut

    def coordinator_gone(self, node_id: bytes) -> None:
        """``node_id`` is dead: what it prepared here and never committed is released."""
        self.daemon.apply(_events().BundlesReleased(b"", coordinator=node_id))

    def on_prepare(self, peer: RpcPeer, msg: P.PgPrepareMsg, b: list[bytes]) -> Any:
        self._participate((peer, msg.rid), msg)
        return DEFERRED

    def on_commit(self, peer: RpcPeer, msg: P.PgCommitMsg, b: list[bytes]) -> Any:
        self._participate((peer, msg.rid), msg)
        return DEFERRED

    def _participate(self, waiter: Any, msg: Any) -> None:
        E = _events()
        if isinstance(msg, P.PgPrepareMsg):
            bundles = [(int(i), dict(s)) for i, s in msg.bundles]
            ev: Any = E.BundlesPrepared(waiter, msg.pg_id, msg.attempt, bundles, msg.coordinator)
        else:
            ev = E.BundlesCommitted(waiter, msg.pg_id, msg.attempt)
        self.daemon.apply(ev)  # bad input raises: the caller gets the error

    def on_record(self, peer: RpcPeer, msg: P.PgRecordMsg, b: list[bytes]) -> Any:
        """A coordinator's record of a group created through this node."""
        if peer.conn is not None and peer.conn.peer_id in self.membership.table.live:
            rec = GroupRecord.from_bytes(msg.record)
            if rec.coordinator != self.node_id and rec.pg_id not in self.known.removed:
                self.known.learn(rec)  # (etcd's copy, older or the same, may follow: it is learnt)
        return DEFERRED

    def on_release(self, peer: RpcPeer | None, msg: P.PgReleaseMsg, b: list[bytes]) -> Any:
        ev = _events().BundlesReleased(msg.pg_id, tuple(int(i) for i in msg.indexes))
        self.daemon.apply(ev)
        return dict(self.daemon.sched.available)
