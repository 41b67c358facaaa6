"""What a node daemon does when a peer node dies (its lease expired or it left).

:class:`NodeFailover` is fed the membership's :class:`~actorcore._peers.Left`
changes; for each dead node it

* tells every process of this node (drivers and workers, ``NODE_DIED``): their
  leases and actor connections there are lost at once (tasks retried, actor
  calls retried or failed), and objects whose every copy was there are rebuilt
  from lineage or fail (:mod:`actorcore._owner._recovery`), even when no
  connection broke (a node cut off rather than killed);
* restarts elsewhere the actors this node sent there
  (:attr:`ClusterWork.placed`), while ``max_restarts`` allows: the actor is
  created again, same id, on a node that fits it (this one if it fits here),
  with its epoch and restart count one higher, so its record in etcd moves to
  the new node and callers waiting for the next epoch (``WAIT_ACTOR``) find
  it; ``__init__`` runs again. An actor out of restarts, or pinned to the dead
  node, gets a DEAD record naming the node;
* reschedules placement-group bundles if the placement-group part offers the
  hook (``reschedule_bundles_of(node_id)``).

Who restarts whom: the node an actor's creation went through (its *home*,
the owner's node; kept in the record) is the one that restarts it, so one
node acts per actor without an election. When the home node is gone too, a
non-detached actor goes with its owner (who lived there); a detached one
whose spec is kept in etcd (``spec_saved``: restartable, spec under 256 KiB)
is restarted by the live node with the smallest id, which claims it with a
compare-and-swap on its record and becomes its new home.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import msgpack

from actorcore.gcs import ActorRecord, Compare, GetOp, PutOp

from . import _protocol as P
from ._cluster_route import LOCAL, split_affinity
from ._peers import Joined, Left
from ._rpc import next_rid

__all__ = ["NodeFailover"]

logger = logging.getLogger(__name__)


class NodeFailover:
    """A node daemon's reactions to the death of other nodes."""

    def __init__(self, daemon: Any, cluster: Any) -> None:
        self.daemon = daemon
        self.cluster = cluster  # the ClusterNode: membership, work, actor table
        self.deaths_seen = 0
        self.actors_restarted = 0

    def statistics(self) -> dict[str, int]:
        """Deaths this node saw and actors it restarted (``CLUSTER_INFO failover``)."""
        return {"deaths_seen": self.deaths_seen, "actors_restarted": self.actors_restarted}

    @property
    def membership(self) -> Any:
        return self.cluster.membership

    def on_change(self, changes: list[Joined | Left]) -> None:
        for ch in changes:
            if isinstance(ch, Left) and ch.node_id != self.daemon.node_id:
                try:
                    self.node_left(ch.node_id)
                except Exception:  # the membership's watch must go on whatever happens here
                    logger.exception("recovering from the death of %s failed", ch.node_id.hex())

    def node_left(self, node_id: bytes) -> None:
        self.deaths_seen += 1
        logger.warning("node %s is gone: recovering its work", node_id.hex())
        self.tell_processes(node_id)
        work = self.cluster.work
        for actor_id, (spec, where) in list(work.placed.items()):
            if where == node_id:
                self.daemon.spawn(self._restart(actor_id, spec, node_id))
        live = self.membership.table.live
        if live and min(live) == self.daemon.node_id:  # one node looks for orphans
            self.daemon.spawn(self._restart_orphans(node_id))
        groups = getattr(self.cluster, "groups", None)  # placement groups (issue 9), if built
        hook = getattr(groups, "reschedule_bundles_of", None)
        if hook is not None:
            try:
                hook(node_id)
            except Exception:
                logger.exception("rescheduling the bundles of node %s failed", node_id.hex())

    def tell_processes(self, node_id: bytes) -> None:
        """Send ``NODE_DIED`` to every driver and worker of this node, on the connection
        each registered with (never on a process's blocking store connection)."""
        msg = P.NodeDiedMsg(node_id)
        peers = list(self.daemon.drivers.values()) + [w.peer for w in self.daemon.workers.values()]
        for peer in peers:
            if peer.conn is None or peer.conn.closed:
                continue
            try:
                peer.send(msg)
            except ConnectionError:
                continue

    # --- actors -------------------------------------------------------------------------

    async def _restart(self, actor_id: bytes, spec: dict[str, Any], dead: bytes) -> None:
        try:
            await self._restart_once(actor_id, spec, dead)
        except Exception as e:
            logger.exception(
                "restarting actor %s after node %s died failed", actor_id.hex(), dead.hex()
            )
            await self._declare_dead(actor_id, dead, f"its restart failed: {e}")

    async def _restart_once(
        self, actor_id: bytes, spec: dict[str, Any], dead: bytes, claimed: ActorRecord | None = None
    ) -> None:
        table = self.cluster.actor_table
        rec = claimed or await table.get(actor_id)
        if rec is None or rec.state == "DEAD" or (claimed is None and rec.node_id != dead):
            return  # killed meanwhile, or it moved already
        _, pinned, soft = split_affinity(dict(spec.get("shape") or {}))
        if not rec.restartable() or (pinned == dead and not soft):
            why = "no restarts left" if not rec.restartable() else "it was pinned to that node"
            await self._declare_dead(actor_id, dead, why, rec)
            return
        new = dict(spec)
        new["epoch"] = rec.epoch + 1
        new["restarts"] = rec.restarts + 1
        shape = dict(new.get("shape") or {})
        if pinned == dead:  # a soft affinity to the dead node: anywhere now
            shape = {k: v for k, v in shape.items() if dead.hex() not in k}
            new["shape"] = shape
        work = self.cluster.work
        target = await self._target(shape)
        logger.warning(
            "restarting actor %s (%s) of dead node %s on node %s (restart %d)",
            actor_id.hex(),
            rec.class_name,
            dead.hex(),
            (target or self.daemon.node_id).hex(),
            new["restarts"],
        )
        self.actors_restarted += 1
        if target is None:  # it fits here
            work.placed.pop(actor_id, None)
            owner = bytes(new["forwarded_from"][1])
            svc = self.daemon.actor_service
            if new.get("name"):
                result = svc._create_named(owner, actor_id, new)
                await result
            else:
                svc._create(owner, actor_id, new)
            return
        work.placed[actor_id] = (spec, target)
        owner_id = work._owner_of.get(actor_id, b"")
        owners = work.forwarded.get(owner_id, {})
        if actor_id in owners:
            owners[actor_id] = target
            work.reach.sent_to(owner_id, target)  # (OWNER_GONE goes there too)
        await self.membership.call_node(target, P.CreateActorMsg(next_rid(), actor_id, new))

    async def _target(self, shape: dict[str, Any]) -> bytes | None:
        """Where a restarted actor of ``shape`` goes (None: this node), as a new one would."""
        work = self.cluster.work
        where = work._route(shape)
        if where == LOCAL or work.placer is None:
            return None
        if isinstance(where, bytes):
            return where
        node: bytes = await work.place(*where, {})
        return None if node == self.daemon.node_id else node

    async def _restart_orphans(self, dead: bytes) -> None:
        """Restart the detached actors of ``dead`` whose home node is gone too, from the
        creation spec kept in etcd; a compare-and-swap on the record claims each one, so
        one node restarts it even if several look."""
        table = self.cluster.actor_table
        try:
            kvs, _ = await self.cluster.store.get_prefix(table.prefix)
        except Exception:
            logger.exception("listing the actors of dead node %s failed", dead.hex())
            return
        live = self.membership.table.live
        for kv in kvs:
            rec = ActorRecord.from_bytes(kv.value)
            if rec.node_id != dead or rec.state == "DEAD" or (rec.home in live):
                continue
            if not (rec.detached and rec.spec_saved and rec.restartable()):
                continue  # its owner died with its home node: it goes with it
            try:
                await self._restart_orphan(rec, kv.mod_revision, dead)
            except Exception as e:
                logger.exception("restarting orphan actor %s failed", rec.actor_id.hex())
                await self._declare_dead(rec.actor_id, dead, f"its restart failed: {e}")

    async def _restart_orphan(self, rec: ActorRecord, revision: int, dead: bytes) -> None:
        table, store = self.cluster.actor_table, self.cluster.store
        key, spec_key = table.key(rec.actor_id), table.spec_key(rec.actor_id)
        me = self.daemon.node_id
        claimed = dataclasses.replace(rec, state="RESTARTING", node_id=me, address=None, home=me)
        result = await store.txn(
            [Compare(key, "mod", "==", revision)],
            [PutOp(key, claimed.to_bytes()), GetOp(spec_key)],
        )
        if not result.succeeded:
            return  # another node claimed it, or it changed meanwhile
        got = result.responses[1]
        if not got:
            await self._declare_dead(rec.actor_id, dead, "its creation spec is gone")
            return
        spec = dict(msgpack.unpackb(got[0].value, raw=False))
        sent = spec.get("forwarded_from")
        owner = bytes(sent[1]) if sent else bytes(rec.owner[0]) if rec.owner else b""
        spec["forwarded_from"] = [me, owner]
        self.cluster.work.placed[rec.actor_id] = (spec, dead)  # as if sent there from here
        await self._restart_once(rec.actor_id, spec, dead, claimed)

    async def _declare_dead(
        self, actor_id: bytes, dead: bytes, why: str, rec: ActorRecord | None = None
    ) -> None:
        table = self.cluster.actor_table
        rec = rec or await table.get(actor_id)
        self.cluster.work.forget(actor_id)
        if rec is None or rec.state == "DEAD":
            return
        cause = f"its node {dead.hex()} died ({why})"
        logger.warning("actor %s is dead: %s", actor_id.hex(), cause)
        dead_rec = dataclasses.replace(rec, state="DEAD", address=None, death_cause=cause)
        await table.put(dead_rec)
        if rec.spec_saved:
            await self.cluster.store.delete(table.spec_key(actor_id))
        if rec.name:
            await self.cluster.names.release(rec.namespace or "default", rec.name, actor_id)
