"""Work and objects across the nodes of a cluster: the node daemon's side.

:class:`ClusterWork` wraps a cluster node daemon's handlers so that

* a lease request or an actor creation goes where
  :func:`~actorcore._cluster_route.route` says (this node's queue, or a node the
  cluster's global placer chooses). A lease placed on another node is answered
  with a redirect ``["redirect", node id, daemon address]``: the owner asks that
  node's daemon (marking the request placed, so it is not sent on again), gets a
  worker there, and gives the lease back there. An actor placed elsewhere is
  created there (the request is forwarded to that node's daemon; its record goes
  to etcd as every actor's does, so ``WAIT_ACTOR`` finds it);
* ``PULL_OBJECT`` accepts holders given as node ids (mapped to the nodes'
  transfer addresses from the peer table);
* ``FREE_OBJECTS`` from a local process also goes to the daemons of the nodes
  its owner recorded as holding copies (and to no other), so the primary and
  every copy pulled elsewhere are freed together;
* when a process of this node ends, ``OWNER_GONE`` goes only to the nodes that
  may hold something for it (:class:`~actorcore._cluster_reach.OwnerReach`),
  never to every node.

Work no node can ever run waits at the placer (one warning to this node's
drivers per shape, naming what is missing and the largest node's offer) and is
placed when a fitting node joins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from actorcore.scheduler import LocalView, SpillConfig, SpillPolicy
from actorcore.scheduler import _resources as R
from actorcore.scheduler import placer_msgs as M
from actorcore.store._results import Free

from . import _protocol as P
from ._cluster_reach import OwnerReach, copies_elsewhere
from ._cluster_route import AFFINITY, IGNORED, LOCAL, Route, route, split_affinity, usable
from ._node import _events as NE
from ._rpc import DEFERRED, RpcPeer, next_rid

if TYPE_CHECKING:
    from ._placer_client import PlacerClient

__all__ = ["REQUEUE_S", "ClusterWork"]

logger = logging.getLogger(__name__)

REQUEUE_S = 0.05  # how often queued requests are looked at (and their least wait)
Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


class ClusterWork:
    """Lease, actor-creation, pull and free handlers of a cluster node daemon."""

    def __init__(self, daemon: Any, membership: Any) -> None:
        self.daemon = daemon
        self.membership = membership
        self.node_id: bytes = daemon.node_id
        self._orig: dict[int, Handler] = {}
        # owner process -> its (non-detached) actors created on other nodes through us
        self.forwarded: dict[bytes, dict[bytes, bytes]] = {}
        self._owner_of: dict[bytes, bytes] = {}  # actor -> its owner, for the above
        self.frees_received = 0  # FREE_OBJECTS from peer daemons (copies here freed)
        self.reach = OwnerReach(self.node_id)  # where OWNER_GONE goes
        self.owner_gone_sent = 0  # OWNER_GONE messages sent to peer daemons (and received)
        self.owner_gone_received = 0
        # work scheduled into a placement group: the node of its bundle (_cluster_pg)
        self.group_target: Callable[[Mapping[str, float]], bytes | None] | None = None
        # actor -> (its creation spec, the node hosting it): actors sent to other nodes
        # through us, restarted elsewhere by us if that node dies (_cluster_failover)
        self.placed: dict[bytes, tuple[dict[str, Any], bytes]] = {}
        cfg = getattr(daemon, "config", None)
        self.policy = SpillPolicy(
            SpillConfig(
                queue_per_cpu=float(getattr(cfg, "spill_queue_per_cpu", 0.0)),
                max_wait_s=float(getattr(cfg, "spill_max_wait_s", 0.0)),
            )
        )
        self.placer: PlacerClient | None = None  # set once the cluster node starts
        self._view = LocalView(self.node_id, {})
        self._queued_since: float | None = None
        self._warned: set[tuple[tuple[str, float], ...]] = set()
        # lease requests queued here by the policy: (peer, rid) -> what to spill them with
        self._queued: dict[tuple[Any, int], tuple[Any, list[bytes], Any, Any, float]] = {}

    def install(self, handlers: dict[int, Handler]) -> None:
        """Wrap the daemon's handlers in ``handlers`` (changed in place)."""
        for tag, fn in (
            (P.Tag.REQUEST_LEASE, self.on_request_lease),
            (P.Tag.CREATE_ACTOR, self.on_create_actor),
            (P.Tag.PULL_OBJECT, self.on_pull_object),
            (P.Tag.FREE_OBJECTS, self.on_free_objects),
        ):
            if int(tag) in handlers:
                self._orig[int(tag)] = handlers[int(tag)]
                handlers[int(tag)] = fn
        handlers[int(P.Tag.OWNER_GONE)] = self.on_owner_gone
        for tag in (P.Tag.REGISTER_WORKER, P.Tag.REGISTER_DRIVER):
            if int(tag) in handlers:
                handlers[int(tag)] = self._registers(handlers[int(tag)])
        # the processes registered before the node joined (its first workers: it joins
        # only once it can start them); a worker's id is its process id
        workers = getattr(getattr(self.daemon, "workers", None), "by_id", {})
        for process_id in [*workers, *getattr(self.daemon, "drivers", {})]:
            self.reach.registered(process_id)
        transfer = getattr(self.daemon, "transfer", None)
        if transfer is not None:
            transfer.on_served = self._served

    def _registers(self, fn: Handler) -> Handler:
        """``fn`` (a registration handler), noting the process as one of this node's."""

        def register(peer: RpcPeer, msg: Any, b: list[bytes]) -> Any:
            result = fn(peer, msg, b)
            if peer.conn is not None:
                self.reach.registered(peer.conn.peer_id)
            return result

        return register

    def _served(self, oid: bytes, node_id: bytes) -> None:
        """A peer pulled ``oid`` from here: it may hold a copy for the object's owner."""
        e = self.daemon.store.state.entries.get(oid)
        if e is not None and isinstance(e.owner, bytes) and not e.owner.startswith(b"transfer-"):
            self.reach.served(e.owner, node_id)

    def sent_to(self, peer: RpcPeer, node_id: bytes) -> None:
        """The process on ``peer`` has work, an actor or calls on ``node_id`` now."""
        if peer.conn is not None:
            self.reach.sent_to(peer.conn.peer_id, node_id)

    def _local(self, tag: P.Tag, peer: RpcPeer, msg: Any, b: list[bytes]) -> Any:
        return self._orig[int(tag)](peer, msg, b)

    # --- where work goes ---------------------------------------------------------------

    def local_view(self, now: float) -> LocalView:
        """This node's load for the spill policy (and the placer's reports)."""
        sched = self.daemon.sched
        qlen = len(sched.leases) + len(sched.actor_queue)
        if not qlen:
            self._queued_since = None
        elif self._queued_since is None:
            self._queued_since = now
        self._view.available = sched.available
        self._view.total = sched.total
        self._view.queue_len = qlen
        self._view.oldest_enqueued_at = now if self._queued_since is None else self._queued_since
        return self._view

    def load_sample(self) -> tuple[dict[str, float], dict[str, float], int, float]:
        now = time.monotonic()
        v = self.local_view(now)
        return dict(v.available), dict(v.total), v.queue_len, now - v.oldest_enqueued_at

    def _route(self, shape: Mapping[str, Any], args: Any = None) -> Route:
        norm = R.normalize({str(k): float(v) for k, v in dict(shape).items()})
        if self.group_target is not None and (node := self.group_target(norm)) is not None:
            return LOCAL if node == self.node_id else node  # a placement group's bundle
        where = {bytes(k): int(v) for k, v in dict(args or {}).items()}
        now = time.monotonic()
        live = self.membership.table.live
        return route(norm, self.local_view(now), live, self.policy, now, where)

    def _daemon_address(self, node_id: bytes) -> list[Any]:
        rec = self.membership.table.live[node_id]
        return [node_id, rec["address"], int(rec["port"])]

    async def place(
        self, shape: dict[str, float], strategy: M.Strategy, args: Mapping[bytes, int]
    ) -> bytes:
        """The node the placer chooses (waits while nothing fits or no placer is elected).

        Raises:
            ValueError: it can never be placed as asked.
        """
        assert self.placer is not None
        self._warn_if_infeasible(shape)
        while True:
            node = await self.placer.place(self.placer.new_work_id(), shape, strategy, dict(args))
            if node == self.node_id or node in self.membership.table.live:
                return node
            logger.info("the placer chose node %s, gone since: asking again", node.hex())

    def _warn_if_infeasible(self, shape: dict[str, float]) -> None:
        """One warning per shape that no live node can ever run (it waits for one)."""
        live = self.membership.table.live
        if any(not R.missing(usable(r), shape) for r in live.values()):
            return
        key = tuple(sorted(shape.items()))
        if key in self._warned:
            return
        self._warned.add(key)
        best: dict[str, float] = {}
        best_miss: dict[str, float] | None = None
        for r in live.values():
            miss = R.missing(usable(r), shape)
            if best_miss is None or sum(miss.values()) < sum(best_miss.values()):
                best, best_miss = usable(r), miss
        names = ", ".join(f"{k}: {v:g}" for k, v in (best_miss or shape).items())
        offer = {k: v for k, v in best.items() if k not in IGNORED}
        self.daemon._warn_drivers(
            f"work needing {shape} cannot run on any node of the cluster: it lacks "
            f"{names}; the largest node offers {offer}. It waits for a node that fits to join."
        )

    def on_request_lease(self, peer: RpcPeer, msg: P.RequestLeaseMsg, b: list[bytes]) -> Any:
        where = self._route(msg.shape, msg.args)
        if where == LOCAL or self.placer is None:
            result = self._local(P.Tag.REQUEST_LEASE, peer, msg, b)
            self._poke()
            if self.placer is not None:
                self._track(peer, msg, b)
            return result
        if isinstance(where, bytes):
            self.sent_to(peer, where)
            return ["redirect", where, self._daemon_address(where)]
        return self._spill_lease(peer, msg, b, *where)

    async def _spill_lease(
        self,
        peer: RpcPeer,
        msg: P.RequestLeaseMsg,
        b: list[bytes],
        shape: dict[str, float],
        strategy: M.Strategy,
    ) -> Any:
        node = await self.place(shape, strategy, dict(msg.args or {}))
        if node == self.node_id:
            result = self._local(P.Tag.REQUEST_LEASE, peer, msg, b)
            self._poke()
            return result
        self.sent_to(peer, node)
        return ["redirect", node, self._daemon_address(node)]

    def _track(self, peer: RpcPeer, msg: P.RequestLeaseMsg, b: list[bytes]) -> None:
        """Remember a request queued here by the spill policy (not one the placer or a
        hard affinity sent here): once it has waited ``max_wait_s`` it is spilled."""
        shape = {str(k): float(v) for k, v in dict(msg.shape).items()}
        if R.PLACED_KEY in shape or any(k.startswith(AFFINITY) for k in shape):
            return
        key = (peer, msg.rid)
        if any(r.key == key for r in self.daemon.sched.leases):
            base, target, _soft = split_affinity(R.normalize(shape))
            strategy: M.Strategy = M.NodeAffinity(target, True) if target else M.DEFAULT
            if R.SPREAD_KEY in base:
                strategy = M.SPREAD
            base, _env = R.split_runtime_env(base)
            want = {k: v for k, v in R.strip_hints(base).items() if k not in IGNORED}
            self._queued[key] = (msg, b, want, strategy, time.monotonic())

    def requeue(self, now: float) -> None:
        """Spill the tracked requests queued here for ``max_wait_s`` or more (their
        node stayed busy): the placer finds them a node with room, or holds them."""
        if not self._queued:
            return
        sched = self.daemon.sched
        waiting = {r.key for r in sched.leases}
        wait_s = max(self.policy.config.max_wait_s, REQUEUE_S)
        for key, (msg, b, want, strategy, since) in list(self._queued.items()):
            if key not in waiting:
                del self._queued[key]  # granted, or its owner went away
            elif now - since >= wait_s and not R.fits(sched.available, want):
                # (with its resources free here it only waits for a worker to start)
                del self._queued[key]
                self.daemon.apply(NE.LeaseWithdrawn(key))
                self.daemon.spawn(self._respill(key[0], msg, b, want, strategy))

    async def _respill(
        self,
        peer: RpcPeer,
        msg: P.RequestLeaseMsg,
        b: list[bytes],
        want: dict[str, float],
        strategy: M.Strategy,
    ) -> None:
        try:
            value = await self._spill_lease(peer, msg, b, want, strategy)
        except Exception as e:  # the owner learns it (e.g. no node can ever take it)
            peer.reply_error(msg.rid, e)
            return
        if value is not DEFERRED:
            peer.reply(msg.rid, value)

    def _poke(self) -> None:
        if self.placer is not None:
            self.placer.poke()

    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, b: list[bytes]) -> Any:
        spec = dict(msg.spec)
        if spec.get("forwarded_from"):  # a peer daemon chose this node
            return self._create_here(peer, msg, b)
        where = self._route(spec.get("shape") or {})
        if where == LOCAL or self.placer is None:
            return self._local(P.Tag.CREATE_ACTOR, peer, msg, b)
        if isinstance(where, bytes):
            return self._forward_actor(peer, msg, where)
        return self._spill_actor(peer, msg, b, *where)

    async def _spill_actor(
        self,
        peer: RpcPeer,
        msg: P.CreateActorMsg,
        b: list[bytes],
        shape: dict[str, float],
        strategy: M.Strategy,
    ) -> Any:
        node = await self.place(shape, strategy, {})
        if node == self.node_id:
            result = self._local(P.Tag.CREATE_ACTOR, peer, msg, b)
            return await result if asyncio.iscoroutine(result) else result
        return await self._forward_actor(peer, msg, node)

    def _forward_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, target: bytes) -> Any:
        spec = dict(msg.spec)
        assert peer.conn is not None
        owner = peer.conn.peer_id
        self.reach.sent_to(owner, target)
        spec["forwarded_from"] = [self.node_id, owner]
        if not spec.get("detached"):
            self.forwarded.setdefault(owner, {})[msg.actor_id] = target
            self._owner_of[msg.actor_id] = owner
        self.placed[msg.actor_id] = (spec, target)
        return self._forward_create(target, P.CreateActorMsg(next_rid(), msg.actor_id, spec))

    async def _create_here(self, peer: RpcPeer, msg: P.CreateActorMsg, b: list[bytes]) -> Any:
        """Create an actor a peer daemon sent here; reply once its record is in etcd
        (the peer's callers then find it through the record)."""
        result = self._local(P.Tag.CREATE_ACTOR, peer, msg, b)
        if asyncio.iscoroutine(result):
            result = await result
        record = self.daemon.state.actor_record(msg.actor_id)
        if record is not None:
            await self.daemon.actor_table.put(record)
        return result

    async def _forward_create(self, target: bytes, msg: P.CreateActorMsg) -> Any:
        logger.info("actor %s goes to node %s", msg.actor_id.hex(), target.hex())
        return await self.membership.call_node(target, msg)

    def owner_gone(self, owner: bytes) -> None:
        """A process of this node ended: its actors on other nodes end too, and the
        peer daemons that may hold something for it drop it (``OWNER_GONE``: leases,
        objects; :class:`OwnerReach` says which)."""
        if owner not in self.membership.table.members:  # (a peer daemon's link is no owner)
            self._tell_owner_gone(owner, *self.reach.ended(owner))
        for actor_id, node_id in self.forwarded.pop(owner, {}).items():
            self._owner_of.pop(actor_id, None)
            self.placed.pop(actor_id, None)
            self.daemon.spawn(self._kill_on(node_id, actor_id))

    def forget(self, actor_id: bytes) -> None:
        """An actor created through this node was killed: nothing to end for its owner."""
        self.placed.pop(actor_id, None)
        owner = self._owner_of.pop(actor_id, None)
        if owner is not None:
            mine = self.forwarded.get(owner, {})
            mine.pop(actor_id, None)
            if not mine:
                self.forwarded.pop(owner, None)

    def _tell_owner_gone(self, owner: bytes, nodes: list[bytes], seen: set[bytes]) -> None:
        """Send ``OWNER_GONE`` to the live ones of ``nodes``, naming every node told."""
        live = self.membership.table.live
        nodes = [n for n in nodes if n in live and n != self.node_id]
        if not nodes:
            return
        told = sorted(seen | set(nodes))
        for node_id in nodes:
            self.owner_gone_sent += 1
            self.daemon.spawn(self._send_owner_gone(node_id, P.OwnerGoneMsg(owner, told)))

    async def _send_owner_gone(self, node_id: bytes, msg: P.OwnerGoneMsg) -> None:
        try:
            peer = await self.membership._link(node_id)
            peer.send(msg)
        except (OSError, ConnectionError, TimeoutError, LookupError) as e:
            logger.debug("owner-gone notice to node %s not sent: %s", node_id.hex(), e)

    def on_owner_gone(self, peer: RpcPeer, msg: P.OwnerGoneMsg, b: list[bytes]) -> Any:
        """A peer daemon's process ended: what this node holds for it goes (only a
        peer daemon may say so, and never of a process connected here), and the
        nodes that pulled its copies from here are told in turn."""
        assert peer.conn is not None
        if peer.conn.peer_id not in self.membership.table.live:
            return DEFERRED
        self.owner_gone_received += 1
        owner = bytes(msg.owner)
        seen = {bytes(n) for n in msg.told or ()} | {peer.conn.peer_id, self.node_id}
        if owner in self.daemon.conns:  # still connected here: passed on when it ends
            self.reach.deferred[owner] = seen | self.reach.deferred.get(owner, set())
            return DEFERRED
        self.daemon.apply(NE.ProcessGone(owner))
        self._tell_owner_gone(owner, self.reach.told(owner, seen), seen)
        return DEFERRED

    async def _kill_on(self, node_id: bytes, actor_id: bytes) -> None:
        try:
            await self.membership.call_node(node_id, P.KillActorMsg(next_rid(), actor_id, True))
        except Exception as e:  # the node may be gone: its actors went with it
            logger.info("actor %s on node %s not killed: %s", actor_id.hex(), node_id.hex(), e)

    # --- objects -------------------------------------------------------------------------

    def on_pull_object(self, peer: RpcPeer, msg: P.PullObjectMsg, b: list[bytes]) -> Any:
        """Pull ``msg.oid`` here; holders may be node ids (none given: every peer).

        Replies 0 when the object is in this node's store already (maybe still
        being written: opening it waits for its seal), else its size once pulled.
        """
        e = self.daemon.store.state.entries.get(msg.oid)
        if e is not None and not e.freed:
            return 0
        live = self.membership.table.live
        given = [bytes(h) if isinstance(h, bytes | bytearray) else h for h in msg.holders]
        if not given:
            given = [n for n in live if n != self.node_id]
        holders = []
        for h in given:
            if isinstance(h, bytes):
                rec = live.get(h)
                if rec is not None and rec.get("transfer_address") and h != self.node_id:
                    holders.append(list(rec["transfer_address"]))
            else:
                holders.append(h)
        return self._local(P.Tag.PULL_OBJECT, peer, msg._replace(holders=holders), b)

    def on_free_objects(self, peer: RpcPeer, msg: P.FreeObjectsMsg, b: list[bytes]) -> Any:
        assert peer.conn is not None
        if peer.conn.peer_id in self.membership.table.live:
            self.frees_received += 1
            self._free_copies(list(msg.oids))  # from a peer daemon: the copies here
            return DEFERRED
        self._local(P.Tag.FREE_OBJECTS, peer, msg, b)
        live = self.membership.table.live
        for node_id, oids in copies_elsewhere(msg, self.node_id).items():
            if node_id in live:  # (a dead node's copies went with it)
                forward = P.FreeObjectsMsg(oids, None, peer.conn.peer_id)
                self.daemon.spawn(self._free_on(node_id, forward))
        return DEFERRED

    def _free_copies(self, oids: list[bytes]) -> None:
        """Free this node's copies of ``oids`` for their owner (whose node asked)."""
        entries = self.daemon.store.state.entries
        by_owner: dict[Any, list[bytes]] = {}
        for oid in oids:
            e = entries.get(oid)
            if e is not None:
                by_owner.setdefault(e.owner, []).append(oid)
        for owner, mine in by_owner.items():
            self.daemon.store.apply(Free(mine, owner))

    async def _free_on(self, node_id: bytes, msg: P.FreeObjectsMsg) -> None:
        try:
            peer = await self.membership._link(node_id)
            peer.send(msg)
        except (OSError, ConnectionError, TimeoutError, LookupError) as e:
            logger.debug("frees to node %s not sent: %s", node_id.hex(), e)
