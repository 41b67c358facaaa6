"""Work and objects across the nodes of a cluster: the node daemon's side.

:class:`ClusterWork` wraps a cluster node daemon's handlers so that

* a lease request the local node can never satisfy (a resource only another
  node has, or a hard node affinity naming another node) is answered with a
  redirect ``["redirect", node id, daemon address]``: the owner asks that
  node's daemon, gets a worker there, and gives the lease back there;
* an actor whose shape only another node satisfies is created there (the
  request is forwarded to that node's daemon; its record goes to etcd as
  every actor's does, so ``WAIT_ACTOR`` finds it);
* ``PULL_OBJECT`` accepts holders given as node ids (mapped to the nodes'
  transfer addresses from the peer table);
* ``FREE_OBJECTS`` from a local process is also sent to every peer daemon, so
  the copies pulled elsewhere are freed with the primary.

The choice of a node is :func:`pick_node` ("first feasible peer, most
available first"); the cluster's global placer replaces it.

A hard node affinity travels in a shape as the pseudo-resource
``node:<hex>`` (``scheduler.NODE_AFFINITY_PREFIX``; the node state drops it
on its own node and refuses a dead or unknown node); a soft one, when a
caller pins it, as ``node_affinity_soft:<hex>``. :func:`split_affinity`
reads both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from actorcore.scheduler import _resources as R
from actorcore.store._results import Free

from . import _protocol as P
from ._rpc import DEFERRED, RpcPeer, next_rid

__all__ = ["AFFINITY", "AFFINITY_SOFT", "ClusterWork", "pick_node", "split_affinity"]

logger = logging.getLogger(__name__)

AFFINITY = R.NODE_AFFINITY_PREFIX  # hard: the node state checks it names a live node
AFFINITY_SOFT = "node_affinity_soft:"
_IGNORED = ("memory", "object_store_memory")
Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


def split_affinity(shape: Mapping[str, float]) -> tuple[dict[str, float], bytes | None, bool]:
    """``(shape without the affinity, target node id or None, soft)``."""
    out: dict[str, float] = {}
    target: bytes | None = None
    soft = False
    for k, v in shape.items():
        if k.startswith(AFFINITY_SOFT):
            target, soft = bytes.fromhex(k[len(AFFINITY_SOFT) :]), True
        elif k.startswith(AFFINITY):
            target, soft = bytes.fromhex(k[len(AFFINITY) :]), False
        else:
            out[k] = v
    return out, target, soft


def _usable(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in dict(record.get("resources") or {}).items()}


def pick_node(
    shape: Mapping[str, float],
    live: Mapping[bytes, Mapping[str, Any]],
    loads: Mapping[bytes, Mapping[str, float]],
    exclude: bytes,
) -> bytes | None:
    """A live node other than ``exclude`` whose total fits ``shape``; those whose
    last reported availability fits it too come first."""
    want = {k: v for k, v in shape.items() if k not in _IGNORED}
    feasible = [n for n, rec in live.items() if n != exclude and not R.missing(_usable(rec), want)]
    for n in feasible:
        if n in loads and not R.missing(dict(loads[n]), want):
            return n
    return feasible[0] if feasible else None


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

    def _local(self, tag: P.Tag, peer: RpcPeer, msg: Any, b: list[bytes]) -> Any:
        return self._orig[int(tag)](peer, msg, b)

    # --- where work goes ---------------------------------------------------------------

    def target_for(self, shape: Mapping[str, float]) -> bytes | None:
        """The node that should take work of ``shape`` (None: this one, which also
        refuses a hard affinity to a node that is not alive)."""
        base, target, soft = split_affinity(R.normalize(dict(shape)))
        base, _env = R.split_runtime_env(base)  # any node can start a worker of an env
        live = self.membership.table.live
        if target is not None and target != self.node_id:
            fits = target in live and not R.missing(_usable(live[target]), base)
            if fits or (target in live and not soft):
                return target
            if not soft:
                return None  # a dead or unknown node: the local node refuses it, saying which
        if (target == self.node_id and not soft) or not R.missing(self.daemon.total, base):
            return None
        return pick_node(base, live, self.membership.loads, self.node_id)

    def _daemon_address(self, node_id: bytes) -> list[Any]:
        rec = self.membership.table.live[node_id]
        return [node_id, rec["address"], int(rec["port"])]

    def on_request_lease(self, peer: RpcPeer, msg: P.RequestLeaseMsg, b: list[bytes]) -> Any:
        target = self.target_for({str(k): v for k, v in dict(msg.shape).items()})
        if target is None:
            return self._local(P.Tag.REQUEST_LEASE, peer, msg, b)
        return ["redirect", target, self._daemon_address(target)]

    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, b: list[bytes]) -> Any:
        spec = dict(msg.spec)
        if spec.get("forwarded_from"):  # a peer daemon chose this node
            return self._create_here(peer, msg, b)
        target = self.target_for({str(k): v for k, v in dict(spec.get("shape") or {}).items()})
        if target is None:
            return self._local(P.Tag.CREATE_ACTOR, peer, msg, b)
        assert peer.conn is not None
        owner = peer.conn.peer_id
        spec["forwarded_from"] = [self.node_id, owner]
        if not spec.get("detached"):
            self.forwarded.setdefault(owner, {})[msg.actor_id] = target
            self._owner_of[msg.actor_id] = owner
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
        """A process of this node ended: its actors on other nodes end too."""
        for actor_id, node_id in self.forwarded.pop(owner, {}).items():
            self._owner_of.pop(actor_id, None)
            self.daemon.spawn(self._kill_on(node_id, actor_id))

    def forget(self, actor_id: bytes) -> None:
        """An actor created through this node was killed: nothing to end for its owner."""
        owner = self._owner_of.pop(actor_id, None)
        if owner is not None:
            mine = self.forwarded.get(owner, {})
            mine.pop(actor_id, None)
            if not mine:
                self.forwarded.pop(owner, None)

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
            self._free_copies(list(msg.oids))  # from a peer daemon: the copies here
            return DEFERRED
        self._local(P.Tag.FREE_OBJECTS, peer, msg, b)
        for node_id in list(self.membership.table.live):
            if node_id != self.node_id:
                self.daemon.spawn(self._free_on(node_id, msg))
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
