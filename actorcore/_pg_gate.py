"""Work scheduled into a placement group waits for its group, then goes to its bundle.

A ``REQUEST_LEASE`` or ``CREATE_ACTOR`` whose shape carries a group's marker
(:func:`~actorcore._pg_records.marker_of`) waits here until the group's record
says CREATED (it fails once the group is removed); then
:class:`~actorcore._cluster_work.ClusterWork` sends it to the node of its
bundle (:meth:`GroupGate.node_for_shape` is ClusterWork's ``group_target``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from . import _protocol as P
from ._pg_known import KnownGroups
from ._pg_records import RecordState, marker_of, node_for
from ._rpc import RpcPeer

__all__ = ["GroupGate"]

Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


class GroupGate:
    """Holds work scheduled into a group until the group is placed (see the module doc)."""

    def __init__(self, daemon: Any, membership: Any, known: KnownGroups) -> None:
        self.daemon = daemon
        self.membership = membership
        self.known = known
        self.records = known.records  # (the same dict)
        self.node_id: bytes = daemon.node_id
        self._orig: dict[int, Handler] = {}

    def install(self, handlers: dict[int, Handler]) -> None:
        """Wrap the lease and actor-creation handlers in ``handlers`` (changed in
        place); call it after ClusterWork's, so work into a group waits here before
        it is routed."""
        for tag, fn in (
            (P.Tag.REQUEST_LEASE, self.on_request_lease),
            (P.Tag.CREATE_ACTOR, self.on_create_actor),
        ):
            self._orig[int(tag)] = handlers[int(tag)]
            handlers[int(tag)] = fn

    def _local(self, tag: P.Tag, peer: Any, msg: Any, b: list[bytes]) -> Any:
        return self._orig[int(tag)](peer, msg, b)

    def node_for_shape(self, shape: Mapping[str, float]) -> bytes | None:
        """The node for work of ``shape`` scheduled into a placed group (None: not
        such work, or its bundle is not placed); ClusterWork's ``group_target``."""
        m = marker_of(shape)
        if m is None:
            return None
        rec = self.records.get(m[0])
        if rec is None:
            return None
        avail = dict(self.membership.loads)
        avail[self.node_id] = self.daemon.sched.available
        node = node_for(rec, m[1], shape, self.node_id, avail)
        if node is None or (node != self.node_id and node not in self.membership.table.live):
            return None
        return node

    def _routable(self, shape: Mapping[str, Any]) -> bytes | None:
        """The group to wait for before work of ``shape`` can be routed (None: go on)."""
        m = marker_of({str(k): v for k, v in shape.items()})
        if m is None:
            return None
        rec = self.records.get(m[0])
        if rec is None or rec.state is not RecordState.CREATED:
            return m[0]
        return None

    def on_request_lease(self, peer: RpcPeer, msg: P.RequestLeaseMsg, b: list[bytes]) -> Any:
        pg_id = self._routable(dict(msg.shape))
        if pg_id is None:
            return self._local(P.Tag.REQUEST_LEASE, peer, msg, b)
        return self._after_ready(pg_id, P.Tag.REQUEST_LEASE, peer, msg, b)

    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, b: list[bytes]) -> Any:
        spec = dict(msg.spec)
        pg_id = None if spec.get("forwarded_from") else self._routable(spec.get("shape") or {})
        if pg_id is None:
            return self._local(P.Tag.CREATE_ACTOR, peer, msg, b)
        return self._after_ready(pg_id, P.Tag.CREATE_ACTOR, peer, msg, b)

    async def _after_ready(
        self, pg_id: bytes, tag: P.Tag, peer: RpcPeer, msg: Any, b: list[bytes]
    ) -> Any:
        if not await self.known.wait_created(pg_id):
            raise ValueError(
                f"placement group {pg_id.hex()} was removed or does not exist: "
                f"work scheduled into it cannot run"
            )
        result = self._local(tag, peer, msg, b)
        return await result if asyncio.iscoroutine(result) else result
