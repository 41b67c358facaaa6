"""Placement groups across the nodes of a cluster: the node daemon's side.

:class:`ClusterGroups` wraps a cluster node daemon's placement-group handlers:

* ``CREATE_PLACEMENT_GROUP``: the group goes to the cluster's coordinator
  (:meth:`ClusterGroups.coordinator_id`: the node holding the elected global
  placer, the live node with the smallest id while none is; a node hands it
  on, again to the next one if that one dies), whose
  :class:`~actorcore._pg_coordinator.GroupCoordinator` places it in two
  phases (every chosen node prepares its bundles, then commits; any refusal,
  timeout or death releases what was prepared and the group is tried
  again). The coordinator writes its record (``/pgs/<id>``, see
  :mod:`actorcore._pg_records`) to etcd as it changes, so every node and
  driver sees it; a warning that it cannot be placed goes to the drivers of
  the node it was created through;
* ``WAIT_PLACEMENT_GROUP`` (``pg.ready()``/``pg.wait()``), from any node:
  answered True once the record says CREATED (False: removed);
* ``REMOVE_PLACEMENT_GROUP``: the coordinator releases every bundle on every
  node (the work holding them is stopped); a group whose coordinator died is
  released from here;
* ``GET_PLACEMENT_GROUP`` and ``LIST_STATE placement_groups``: from etcd;
* ``REQUEST_LEASE``/``CREATE_ACTOR`` of work scheduled into a group wait until
  its bundle is placed (:class:`~actorcore._pg_gate.GroupGate`, then routed to
  the bundle's node);
* ``PG_PREPARE``/``PG_COMMIT``/``PG_RELEASE``: this node as a participant
  (:class:`~actorcore._pg_participant.GroupParticipant`).

When a node leaves, the bundles it held are placed again by their
coordinators (:meth:`ClusterGroups.reschedule_bundles_of`, callable by the
node-failure handling too), and what it prepared here but never committed is
released. The coordinator removes the groups of the dead node's drivers (not
``lifetime="detached"``), as when a driver exits, and takes over the groups
the dead node coordinated (bundles on live nodes stay; the rest are placed
again). The cluster node sets :attr:`ClusterGroups.placer_node` to the
election's holder; the coordinator there is its own GroupCoordinator (a
Placer of its own beside the placer host's, fed the same nodes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from actorcore.gcs import Compare, DeleteOp
from actorcore.scheduler import _resources as R
from actorcore.scheduler import placer_msgs as M

from . import _protocol as P
from ._peers import Joined, Left
from ._pg_coordinator import GroupCoordinator, Outcomes
from ._pg_gate import GroupGate
from ._pg_known import REMEMBER_REMOVED, KnownGroups
from ._pg_participant import GroupParticipant
from ._pg_records import (
    GroupRecord,
    RecordState,
    name_key,
    record_key,
)
from ._rpc import RpcPeer, next_rid

__all__ = ["ClusterGroups"]

logger = logging.getLogger(__name__)

Handler = Callable[[RpcPeer, Any, list[bytes]], Any]
_PUMP_S = 0.1  # how often pending groups see the nodes' loads
FORWARD_FOR_S = 60.0  # how long a node keeps handing a new group to a coordinator
_RETRY_S = 0.5  # pacing of retries after etcd errors, not synchronization


class ClusterGroups:
    """Placement groups of a cluster node daemon (see the module doc)."""

    def __init__(self, daemon: Any, membership: Any) -> None:
        self.daemon = daemon
        self.membership = membership
        self.store = membership.store
        self.node_id: bytes = daemon.node_id
        self._tasks: set[asyncio.Task[Any]] = set()
        self.known = KnownGroups(self.store, self.node_id, self._own)
        self.records = self.known.records  # (the same dict)
        self.gate = GroupGate(daemon, membership, self.known)  # work into a group
        self.participant = GroupParticipant(daemon, membership, self.known)
        self.coordinator: GroupCoordinator | None = None
        self._orig: dict[int, Handler] = {}
        self._owned: dict[bytes, set[bytes]] = {}  # driver of this node -> its groups
        self._forwards: dict[bytes, asyncio.Task[Any]] = {}  # groups handed to a coordinator
        self._via: dict[bytes, bytes] = {}  # groups coordinated here -> the node they came from
        # the elected placer's node, once the cluster has one (see coordinator_id)
        self.placer_node: Callable[[], bytes | None] | None = None

    # --- life ------------------------------------------------------------------------

    def install(self, handlers: dict[int, Handler]) -> None:
        """Wrap the daemon's handlers in ``handlers`` (changed in place); call it after
        ClusterWork's, so work into a group waits before it is routed."""
        for tag, fn in (
            (P.Tag.CREATE_PLACEMENT_GROUP, self.on_create),
            (P.Tag.WAIT_PLACEMENT_GROUP, self.on_wait),
            (P.Tag.REMOVE_PLACEMENT_GROUP, self.on_remove),
            (P.Tag.GET_PLACEMENT_GROUP, self.on_get),
            (P.Tag.LIST_STATE, self.on_list_state),
        ):
            self._orig[int(tag)] = handlers[int(tag)]
            handlers[int(tag)] = fn
        self.gate.install(handlers)
        self.participant.install(handlers)

    async def start(self) -> None:
        """Load the groups' records, watch them, and follow the cluster's nodes
        (call it once this node is registered)."""
        self.coordinator = GroupCoordinator(
            self.node_id,
            self._loads,
            self._call,
            Outcomes(self._placed, self._lost, self._warn),
        )
        _listen(self.membership, self._nodes_changed)
        for node_id, rec in list(self.membership.table.live.items()):
            self.coordinator.node_joined(node_id, rec["resources"])
        revision = await self.known.load()
        self._own(self.known.watch(revision + 1))
        self._own(self._pump())

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.coordinator is not None:
            await self.coordinator.aclose()
        self.known.close()

    def _own(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("placement-group task failed", exc_info=task.exception())

    def _local(self, tag: P.Tag, peer: Any, msg: Any, b: list[bytes]) -> Any:
        return self._orig[int(tag)](peer, msg, b)

    # --- the hook for node failures ----------------------------------------------------

    def reschedule_bundles_of(self, node_id: bytes) -> None:
        """``node_id`` is dead: the groups this node coordinates place the bundles it
        held on other nodes (their records say RESCHEDULING meanwhile), attempts
        that asked it are aborted, and what it prepared here is released.
        Idempotent; also run when the membership sees the node leave."""
        if self.coordinator is not None:
            self.coordinator.reschedule_bundles_of(node_id)
        if node_id != self.node_id:
            self.participant.coordinator_gone(node_id)

    def _nodes_changed(self, changes: list[Joined | Left]) -> None:
        assert self.coordinator is not None
        for ch in changes:
            if isinstance(ch, Joined):
                self.coordinator.node_joined(ch.node_id, ch.record["resources"])
            elif ch.node_id != self.node_id:  # (this node's key vanished: it registers again)
                self.reschedule_bundles_of(ch.node_id)
                self._adopt_orphans(ch.node_id)

    def _adopt_orphans(self, dead: bytes) -> None:
        """The groups of a driver on ``dead`` end; those ``dead`` coordinated are taken
        over by the coordinator now (:meth:`coordinator_id`)."""
        assert self.coordinator is not None
        if self.coordinator_id() != self.node_id:
            return
        for rec in list(self.records.values()):
            if rec.owner and rec.owner_node == dead:  # its driver went with the node
                self._remove_now(rec.pg_id)
                continue
            if rec.coordinator != dead:
                continue
            logger.info(
                "placement group %s: coordinating it (node %s died)", rec.pg_id.hex(), dead.hex()
            )
            new = rec.coordinated_by(self.node_id)
            self.known.learn(new)
            self.known.write(rec.pg_id, new)
            nodes = rec.nodes or (None,) * len(rec.bundles)
            self.coordinator.adopt(rec.pg_id, list(rec.bundles), rec.strategy, nodes)

    # --- creation and the coordinator's outcomes ---------------------------------------

    def on_create(self, peer: RpcPeer, msg: P.CreatePlacementGroupMsg, b: list[bytes]) -> Any:
        bundles = [R.normalize({str(k): v for k, v in dict(x).items()}) for x in msg.bundles]
        if msg.strategy not in M.PG_STRATEGIES or not bundles or not all(bundles):
            raise ValueError(
                f"a placement group needs bundles that each ask for some resource and a "
                f"strategy of {', '.join(M.PG_STRATEGIES)}; got {msg.strategy!r}, {msg.bundles!r}"
            )
        creator = peer.conn.peer_id if peer.conn is not None else b""
        forwarded = creator in self.membership.table.live  # a peer daemon sent it here
        if forwarded:
            owner, owner_node = bytes(msg.owner), bytes(msg.owner_node)
        elif msg.lifetime != "detached" and creator in self.daemon.drivers:
            owner, owner_node = creator, self.node_id
        else:
            owner, owner_node = b"", b""
        rec = GroupRecord(
            msg.pg_id,
            tuple(bundles),
            msg.strategy,
            msg.name,
            nodes=(None,) * len(bundles),
            coordinator=self.coordinator_id(),
            owner=owner,
            owner_node=owner_node,
        )
        if forwarded:
            self._via[msg.pg_id] = creator
        if msg.name and not forwarded:
            return self._create_named(rec)
        self._route_create(rec)
        return True

    def coordinator_id(self) -> bytes:
        """The node that coordinates new groups: the elected placer's when
        :attr:`placer_node` names a live one, else the live node with the smallest
        id (every node computes the same one)."""
        live = self.membership.table.live
        holder = self.placer_node() if self.placer_node is not None else None
        if holder is not None and (holder == self.node_id or holder in live):
            return holder
        return min([self.node_id, *live])

    async def _create_named(self, rec: GroupRecord) -> Any:
        if not await self.store.put_if_absent(name_key(rec.name), rec.pg_id):
            raise ValueError(f"a placement group named {rec.name!r} exists already")
        self._route_create(rec)
        return True

    def _route_create(self, rec: GroupRecord) -> None:
        if rec.owner and rec.owner_node == self.node_id:
            self._owned.setdefault(rec.owner, set()).add(rec.pg_id)
        if rec.coordinator == self.node_id:
            self._create(rec)
            return
        self.known.learn(rec)  # PENDING here until the coordinator's record says more
        self._forwards[rec.pg_id] = self._own(self._forward_create(rec))
        if len(self._forwards) > REMEMBER_REMOVED:  # (its record is long in etcd by then)
            self._forwards.pop(next(iter(self._forwards)))

    async def _forward_create(self, rec: GroupRecord) -> bytes | None:
        """Hand a group to the coordinator; when it died meanwhile, to the next one.
        Returns the node that took it (None: none did)."""
        lifetime = "" if rec.owner else "detached"
        msg = P.CreatePlacementGroupMsg(
            next_rid(),
            rec.pg_id,
            list(rec.bundles),
            rec.strategy,
            rec.name,
            lifetime,
            rec.owner,
            rec.owner_node,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_FOR_S
        while rec.pg_id not in self.known.removed:
            target = self.coordinator_id()
            if target == self.node_id:
                self._create(rec.coordinated_by(target))
                return target
            try:
                await self.membership.call_node(target, msg._replace(rid=next_rid()))
                return target
            except (OSError, ConnectionError, TimeoutError, LookupError) as e:
                if loop.time() > deadline:
                    logger.error("placement group %s not created: %r", rec.pg_id.hex(), e)
                    return None
                logger.info("placement group %s: coordinator: %r", rec.pg_id.hex(), e)
                await asyncio.sleep(_RETRY_S)  # pacing: the membership sees a death meanwhile
        return None

    def _create(self, rec: GroupRecord) -> None:
        assert self.coordinator is not None
        self.known.learn(rec)
        self.known.write(rec.pg_id, rec)
        self._feed_loads()
        self.coordinator.request(rec.pg_id, list(rec.bundles), rec.strategy)

    def _placed(self, pg_id: bytes, placement: tuple[bytes, ...]) -> None:
        rec = self.records.get(pg_id)
        if rec is None:
            return
        new = rec.placed(tuple(placement), RecordState.CREATED)
        self.known.learn(new)
        self.known.write(pg_id, new)
        via = self._via.get(pg_id)
        if via is not None and via in self.membership.table.live:
            self._own(self._tell_node(via, P.PgRecordMsg(new.to_bytes())))

    def _lost(self, pg_id: bytes, node_id: bytes, indexes: tuple[int, ...]) -> None:
        rec = self.records.get(pg_id)
        if rec is None:
            return
        nodes = list(rec.nodes or (None,) * len(rec.bundles))
        for i in indexes:
            nodes[i] = None
        logger.warning(
            "placement group %s lost bundles %s with node %s: placing them again",
            pg_id.hex(),
            list(indexes),
            node_id.hex(),
        )
        new = rec.placed(tuple(nodes), RecordState.RESCHEDULING)
        self.known.learn(new)
        self.known.write(pg_id, new)

    def _warn(self, key: Any, missing: Mapping[str, float], offer: Mapping[str, float]) -> None:
        rec = self.records.get(key) if isinstance(key, bytes) else None
        what = f"{rec.strategy} group of {len(rec.bundles)} bundles" if rec else "group"
        need = dict(missing)
        lacks = (
            f"it needs {need.pop('nodes'):g} more node(s) with room for a bundle"
            if "nodes" in need
            else f"no node has {need}"
        )
        text = (
            f"placement group {key.hex() if isinstance(key, bytes) else key} ({what}) cannot "
            f"be placed on the cluster's nodes: {lacks}; the largest node offers "
            f"{dict(offer)}; it stays PENDING until a node that fits joins"
        )
        self.daemon._warn_drivers(text)
        # the drivers of its driver's node (of every node when it has no driver) see it too
        to = {rec.owner_node} if rec is not None and rec.owner_node else set(self._peers())
        lines = P.LogBatchMsg([["err", "scheduler", "Warning: " + text]])
        for node_id in to - {self.node_id}:
            self._own(self._tell_node(node_id, lines))

    def _peers(self) -> list[bytes]:
        return [n for n in self.membership.table.live if n != self.node_id]

    async def _tell_node(self, node_id: bytes, msg: Any) -> None:
        try:
            peer = await self.membership._link(node_id)
            peer.send(msg)
        except (OSError, ConnectionError, TimeoutError, LookupError) as e:
            logger.info("warning to node %s not sent: %r", node_id.hex(), e)

    def _loads(self) -> dict[bytes, Mapping[str, float]]:
        loads: dict[bytes, Mapping[str, float]] = dict(self.membership.loads)
        loads[self.node_id] = self.daemon.sched.available
        return loads

    def _feed_loads(self) -> None:
        assert self.coordinator is not None
        self.coordinator.refresh_loads()

    async def _pump(self) -> None:
        """While a group waits for room, the coordinator sees the loads as they change."""
        assert self.coordinator is not None
        while True:
            await asyncio.sleep(_PUMP_S)  # pacing, as the load reports themselves
            if self.coordinator.pending():
                self._feed_loads()

    # --- the coordinator's calls to nodes ------------------------------------------------

    async def _call(self, node_id: bytes, msg: Any) -> Any:
        if node_id != self.node_id:
            return await self.membership.call_node(node_id, msg)
        return await self.participant.call_here(msg)

    # --- readiness ------------------------------------------------------------------------

    def on_wait(self, peer: RpcPeer, msg: P.WaitPlacementGroupMsg, b: list[bytes]) -> Any:
        rec = self.records.get(msg.pg_id)
        if rec is not None and rec.state is RecordState.CREATED:
            return True
        return self.known.wait_created(msg.pg_id)

    # --- removal -------------------------------------------------------------------------

    def owner_gone(self, process_id: bytes) -> None:
        """A driver of this node ended: the groups it made (not detached) go with it."""
        for pg_id in sorted(self._owned.pop(process_id, ())):
            self._remove_now(pg_id)

    def _remove_now(self, pg_id: bytes) -> None:
        result = self.on_remove(None, P.RemovePlacementGroupMsg(0, pg_id), [])
        if asyncio.iscoroutine(result):
            self._own(result)

    def on_remove(
        self, peer: RpcPeer | None, msg: P.RemovePlacementGroupMsg, b: list[bytes]
    ) -> Any:
        assert self.coordinator is not None
        rec = self.records.pop(msg.pg_id, None)
        if rec is not None and rec.owner:
            self._owned.get(rec.owner, set()).discard(msg.pg_id)
        self.known.mark_removed(msg.pg_id)
        self.known.wake(msg.pg_id, False)
        if self.coordinator.remove(msg.pg_id):  # ours: the coordinator releases every bundle
            self._forget(msg.pg_id, rec)
            return True
        forward = self._forwards.pop(msg.pg_id, None)
        if forward is not None:
            return self._remove_forwarded(msg.pg_id, forward, rec)
        return self._remove_elsewhere(msg.pg_id, rec)

    async def _remove_forwarded(
        self, pg_id: bytes, forward: asyncio.Task[Any], rec: GroupRecord | None
    ) -> Any:
        """Remove a group this node handed to a coordinator, there, once it has it
        (its record may not be in etcd yet)."""
        await asyncio.wait({forward})
        target = None if forward.cancelled() or forward.exception() else forward.result()
        if target is None:
            return True  # never created
        if target == self.node_id:
            assert self.coordinator is not None
            if self.coordinator.remove(pg_id):
                self._forget(pg_id, rec)
            return True
        try:
            return await self.membership.call_node(
                target, P.RemovePlacementGroupMsg(next_rid(), pg_id)
            )
        except (OSError, ConnectionError, TimeoutError, LookupError):
            return await self._remove_elsewhere(pg_id, None)  # it died: its successor

    async def _remove_elsewhere(self, pg_id: bytes, rec: GroupRecord | None) -> Any:
        if rec is None:
            kv = await self.store.get(record_key(pg_id))
            if kv is None:
                return True  # removed already (or never created)
            rec = GroupRecord.from_bytes(kv.value)
        live = self.membership.table.live
        if rec.coordinator == self.node_id and self.coordinator is not None:
            if self.coordinator.remove(pg_id):  # (adopted or created here meanwhile)
                self._forget(pg_id, rec)
                return True
        if rec.coordinator != self.node_id and rec.coordinator in live:
            return await self.membership.call_node(
                rec.coordinator, P.RemovePlacementGroupMsg(next_rid(), pg_id)
            )
        # its coordinator is gone: release the bundles from here
        msg = P.PgReleaseMsg(next_rid(), pg_id, [])
        nodes = {n for n in rec.nodes if n is not None and n in live}
        results = await asyncio.gather(*(self._call(n, msg) for n in nodes), return_exceptions=True)
        for n, r in zip(nodes, results, strict=True):
            if isinstance(r, BaseException):
                logger.info("release of group %s on %s: %r", pg_id.hex(), n.hex(), r)
        self._forget(pg_id, rec)
        return True

    def _forget(self, pg_id: bytes, rec: GroupRecord | None) -> None:
        self._via.pop(pg_id, None)
        self.known.write(pg_id, None)
        if rec is not None and rec.name:
            key = name_key(rec.name)
            cond = [Compare(key, "value", "==", pg_id)]
            self._own(self.store.txn(cond, [DeleteOp(key)]))

    # --- lookups ---------------------------------------------------------------------------

    async def on_get(self, peer: RpcPeer, msg: P.GetPlacementGroupMsg, b: list[bytes]) -> Any:
        kv = await self.store.get(name_key(msg.name))
        rec = self.records.get(kv.value) if kv is not None else None  # (known before etcd)
        if kv is not None and rec is None:
            rec_kv = await self.store.get(record_key(kv.value))
            rec = GroupRecord.from_bytes(rec_kv.value) if rec_kv is not None else None
        if rec is None or rec.pg_id in self.known.removed:
            raise ValueError(f"no placement group named {msg.name!r}")
        return {"pg_id": rec.pg_id, "bundles": list(rec.bundles), "strategy": rec.strategy}

    def on_list_state(self, peer: RpcPeer, msg: P.ListStateMsg, b: list[bytes]) -> Any:
        if msg.kind != "placement_groups":
            return self._local(P.Tag.LIST_STATE, peer, msg, b)
        return self.known.table()

    def rows(self) -> list[dict[str, Any]]:
        """The groups this node knows of now (no etcd read)."""
        return self.known.rows()


def _listen(membership: Any, fn: Callable[[list[Joined | Left]], None]) -> None:
    """Be told of the membership's joins and leaves, after whoever listens already."""
    before = membership._on_change

    def both(changes: list[Joined | Left]) -> None:
        if before is not None:
            before(changes)
        fn(changes)

    membership._on_change = both
