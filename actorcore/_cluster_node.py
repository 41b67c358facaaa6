"""A node daemon in a cluster: membership plus cluster-wide answers.

:func:`join_cluster` gives a :class:`NodeDaemon` its cluster part: control
state in etcd (so names are claimed once across the cluster and actor
records are seen by every node), a :class:`~actorcore._membership.Membership`,
and wrappers of four handlers that answer for the whole cluster when the
local node alone cannot:

* ``CLUSTER_INFO``: ``nodes``/``total`` from the peer table, ``available``
  summed over the peer daemons' load reports (``LOAD_REPORT``, pushed node to
  node when a node's availability changes; ``*_local`` asks this node alone);
* ``GET_NAMED_ACTOR``: an actor named on another node, from its record;
* ``WAIT_ACTOR``: where an actor hosted by another node is (callers then talk
  to its worker directly), waiting on its record's watch until it is ALIVE;
* ``KILL_ACTOR``: forwarded to the node hosting the actor.

It also runs the cluster's global placer election (``actorcore._placer_service``)
and, while this node holds it, the placer (``SPILL_WORK``, ``PLACER_REPORT``);
``CLUSTER_INFO "placer"`` says which node holds it. To run something on the
placer's node only (e.g. a cluster-wide dashboard), subscribe to the election:
``daemon.cluster.election.subscribe(on_elected=..., on_lost=...)`` (plain
callbacks on the daemon's loop; ``on_elected`` runs at once if this node holds
the placer already). Placement groups across nodes enter the placer through
``daemon.cluster.placer_host`` (None unless this node holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack

from actorcore.gcs import (
    ActorRecord,
    ActorTable,
    Compare,
    ControlStore,
    DeleteOp,
    NameRegistry,
    PutOp,
    RetryingControlStore,
)
from actorcore.gcs._retry import NotVouchedError

from . import _protocol as P
from ._cluster_failover import NodeFailover
from ._cluster_pg import ClusterGroups
from ._cluster_work import REQUEUE_S, ClusterWork
from ._fencing import wait_to_rejoin
from ._membership import Membership
from ._peers import NODES, ClusterSpec, Joined, Left, node_record
from ._placer_client import PlacerClient
from ._placer_service import PlacerElection, PlacerHost, PlacerMovedError, strategy_from_wire
from ._rpc import DEFERRED, RpcPeer, next_rid

__all__ = ["ClusterNode", "join_cluster"]

logger = logging.getLogger(__name__)

JOIN_WAIT_S = 45.0  # how long a new node waits for etcd (its starter waits 60 s for it)
WARM_UP_S = 5.0  # the etcd connection opened while the first worker starts (bounded)
_BATCH = 100  # operations per etcd transaction (etcd allows 128)
_BATCH_BYTES = 1 << 20  # a transaction stays under etcd's request limit (~1.5 MiB)
SPECS = b"/actor_specs/"
ORPHAN_WAIT_S = 30.0  # an actor whose node and home died waits this long for a restart
MAX_SAVED_SPEC = 256 * 1024  # bytes (etcd takes ~1.5 MiB per request, a batch included)
Handler = Callable[[RpcPeer, Any, list[bytes]], Any]


def join_cluster(daemon: Any, cluster: dict[str, Any] | None) -> ClusterNode | None:
    """Give ``daemon`` its cluster part (None: a single machine, nothing changes).

    Replaces the daemon's ``control``, ``actor_table`` and ``names`` with
    etcd-backed ones; call it at the end of the daemon's constructor.
    """
    if not cluster:
        return None
    node = ClusterNode(daemon, ClusterSpec.from_dict(cluster))
    node.rejoining = bool(cluster.get("rejoin"))  # a fenced daemon, back as a new node
    daemon.control = node.store
    daemon.actor_table = node.actor_table
    daemon.names = node.names
    return node


class BatchedActorTable(ActorTable):
    """Actor records written to etcd in batches (one transaction per loop turn),
    each carrying what a process on another node needs to make a handle.

    The creation spec of a restartable detached actor is written too, once
    (``/actor_specs/<id>``, deleted with the actor): if its node and the node
    its creation went through both die, any node can restart it from there
    (:mod:`actorcore._cluster_failover`).

    Fenced in etcd: each batch is written only while this node's key is there
    under its lease (``lease()``; 0: unguarded, see ``Membership.fencing_lease``). A node
    declared dead (its key expired) that resumes writes nothing more: never
    an old incarnation's record over the one its restart elsewhere wrote.
    """

    def __init__(
        self, store: ControlStore, daemon: Any, lease: Callable[[], int] = lambda: 0
    ) -> None:
        super().__init__(store)
        self._daemon = daemon
        self._lease = lease
        self._node_key = NODES + daemon.node_id.hex().encode()
        self._pending: dict[bytes, tuple[ActorRecord, asyncio.Future[int]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._specs: dict[bytes, bytes] = {}  # actor -> its packed spec, not yet written
        self._saved: set[bytes] = set()  # actors whose spec is in etcd

    def spec_key(self, actor_id: bytes) -> bytes:
        return SPECS + actor_id.hex().encode()

    async def put(self, record: ActorRecord) -> int:
        info = self._daemon.actors.actors.get(record.actor_id)
        if info is not None and record.handle is None:
            spec = info.spec
            handle = {
                "methods": spec.get("methods", {}),
                "max_task_retries": spec.get("max_task_retries", 0),
                "owner": list(spec.get("owner_address") or []),
            }
            record = dataclasses.replace(record, handle=handle)
        if info is not None and record.state != "DEAD":
            saved = record.actor_id in self._saved or self._save_spec(record, info.spec)
            if saved:
                record = dataclasses.replace(record, spec_saved=True)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        old = self._pending.get(record.actor_id)
        self._pending[record.actor_id] = (record, fut)
        if old is not None:  # a newer record replaces one not yet written
            fut.add_done_callback(functools.partial(_copy, dst=old[1]))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return await fut

    def _save_spec(self, record: ActorRecord, spec: dict[str, Any]) -> bool:
        """Queue the spec of a restartable detached actor for writing; True if queued."""
        if not record.detached or record.max_restarts == 0:
            return False
        packed = bytes(msgpack.packb(spec, use_bin_type=True))
        if len(packed) > MAX_SAVED_SPEC:
            logger.warning(
                "actor %s: its creation spec (%d bytes) is too large for control state; it "
                "restarts elsewhere only while the node it was created through lives",
                record.actor_id.hex(),
                len(packed),
            )
            return False
        self._specs[record.actor_id] = packed
        self._saved.add(record.actor_id)
        return True

    def _ops(self, record: ActorRecord) -> list[Any]:
        ops: list[Any] = [PutOp(self.key(record.actor_id), record.to_bytes())]
        packed = self._specs.pop(record.actor_id, None)
        if packed is not None:
            ops.append(PutOp(self.spec_key(record.actor_id), packed))
        if record.state == "DEAD" and record.actor_id in self._saved:
            self._saved.discard(record.actor_id)
            ops.append(DeleteOp(self.spec_key(record.actor_id)))
        return ops

    async def _write(self) -> None:
        while self._pending:
            batch: list[tuple[ActorRecord, asyncio.Future[int]]] = []
            ops: list[Any] = []
            size = 0
            while self._pending and len(ops) < _BATCH - 2 and size < _BATCH_BYTES:
                record, fut = self._pending.pop(next(iter(self._pending)))
                batch.append((record, fut))
                mine = self._ops(record)
                ops += mine
                size += sum(len(op.value) for op in mine if isinstance(op, PutOp))
            lease = self._lease()
            guard = [Compare(self._node_key, "lease", "==", lease)] if lease else []
            try:
                result = await self.store.txn(guard, ops)
                if not result.succeeded:
                    raise NotVouchedError(
                        "this node is no longer in etcd (declared dead): "
                        f"{len(batch)} actor record(s) not written"
                    )
            except Exception as e:  # every waiter learns it
                for op in ops:  # specs not written: with the actor's next record
                    if isinstance(op, PutOp) and op.key.startswith(SPECS):
                        self._specs[bytes.fromhex(op.key[len(SPECS) :].decode())] = op.value
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(result.revision)


class FencedNameRegistry(NameRegistry):
    """Actor names; this node frees one only while its key is in etcd under its lease
    (``lease()``; 0: unguarded), as :class:`BatchedActorTable` writes records: a node
    declared dead that resumes never frees the name of its actor restarted elsewhere."""

    def __init__(self, store: ControlStore, node_id: bytes, lease: Callable[[], int]) -> None:
        super().__init__(store)
        self._lease = lease
        self._node_key = NODES + node_id.hex().encode()

    async def release(self, namespace: str, name: str, actor_id: bytes) -> bool:
        lease = self._lease()
        if not lease:
            return await super().release(namespace, name, actor_id)
        key = self.key(namespace, name)
        result = await self.store.txn(
            [Compare(key, "value", "==", actor_id), Compare(self._node_key, "lease", "==", lease)],
            [DeleteOp(key)],
        )
        return result.succeeded


def _copy(src: asyncio.Future[int], dst: asyncio.Future[int]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        dst.set_result(src.result())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _where(rec: ActorRecord, min_epoch: int) -> list[Any] | None:
    if rec.state == "DEAD":
        return ["DEAD", None, rec.epoch, rec.death_cause]
    if rec.state == "ALIVE" and rec.epoch >= min_epoch and rec.address:
        return ["ALIVE", rec.address, rec.epoch, None, rec.node_id]  # (its node: the owner's)
    return None


class ClusterNode:
    """The cluster part of one node daemon."""

    def __init__(self, daemon: Any, spec: ClusterSpec) -> None:
        self.daemon = daemon
        self.node_id: bytes = daemon.node_id
        record = node_record(daemon.node_id, spec, int(daemon.address[1]), daemon.total)
        limits = (daemon.config.max_header_bytes, daemon.config.max_frame_bytes)
        self.membership = Membership(
            spec,
            daemon.node_id,
            record,
            daemon.token,
            limits,
            local_load=lambda: dict(daemon.sched.available),
            on_change=self._membership_changed,
            on_fence=getattr(daemon, "fence", None),
        )
        # control changes wait out an etcd outage (membership's lease calls do not);
        # none is written while this node may have lost its lease (actorcore._fencing),
        # and actor records and name releases only while etcd still holds its key
        # under its lease (checked by etcd itself: a write sent just before a freeze)
        self.store = RetryingControlStore(self.membership.store, may_write=self.vouched)
        self.actor_table = BatchedActorTable(self.store, daemon, self.membership.fencing_lease)
        self.names = FencedNameRegistry(self.store, daemon.node_id, self.membership.fencing_lease)
        self._orig: dict[int, Handler] = {}
        self.rejoining = False
        self.work = ClusterWork(daemon, self.membership)  # leases, actors, pulls, frees
        self.groups = ClusterGroups(daemon, self.membership)  # placement groups
        self.work.group_target = self.groups.gate.node_for_shape
        self.failover = NodeFailover(daemon, self)  # when a peer node dies
        self._orphan_waits: set[asyncio.Future[None]] = set()
        # the global placer: elected among the nodes; runs here while this node holds it
        self.election = PlacerElection(self.membership, tuple(daemon.address))
        self.placer_host: PlacerHost | None = None
        self.placer = PlacerClient(
            self.election, self.membership, self.work.load_sample, lambda: self.placer_host
        )
        self.work.placer = self.placer
        self._requeue: asyncio.Task[None] | None = None
        self.election.subscribe(self._placer_elected, self._placer_lost)
        self.election.watch(lambda _holder: self.placer.poke())  # a full report to a new one
        self.groups.placer_node = lambda: self.election.holder  # coordinates new groups

    async def start(self, handlers: dict[int, Handler]) -> None:
        """Answer for the cluster through ``handlers`` (changed in place), then join."""
        for tag, fn in (
            (P.Tag.CLUSTER_INFO, self.on_cluster_info),
            (P.Tag.GET_NAMED_ACTOR, self.on_get_named_actor),
            (P.Tag.WAIT_ACTOR, self.on_wait_actor),
            (P.Tag.KILL_ACTOR, self.on_kill_actor),
        ):
            self._orig[int(tag)] = handlers[int(tag)]
            handlers[int(tag)] = fn
        handlers[int(P.Tag.LOAD_REPORT)] = self.on_load_report
        handlers[int(P.Tag.PLACER_REPORT)] = self.on_placer_report
        handlers[int(P.Tag.SPILL_WORK)] = self.on_spill_work
        self.work.install(handlers)
        self.groups.install(handlers)  # after work's: group work waits, then is routed
        transfer = getattr(self.daemon, "transfer", None)
        if transfer is not None and transfer.listener is not None:
            # where peers pull objects from this node (data connections)
            self.membership.record["transfer_address"] = list(transfer.address)
        # a join waits out an etcd outage; a fenced node back as a new one may still be
        # cut off: it waits as long as it takes (actorcore._fencing)
        await wait_to_rejoin(self.membership.start, None if self.rejoining else JOIN_WAIT_S)
        await self.groups.start()
        self.election.start()
        self.placer.start()
        self._requeue = asyncio.get_running_loop().create_task(self._requeue_loop())

    async def warm_up(self) -> None:
        """Open the connection to etcd (registering nothing): the daemon does it while
        its first worker starts, before :meth:`start` registers it."""
        try:
            await asyncio.wait_for(self.membership.store.ping(), WARM_UP_S)
        except Exception as e:  # the join says why, and waits for etcd
            logger.debug("etcd not reached before joining: %r", e)

    async def _requeue_loop(self) -> None:
        while True:
            await asyncio.sleep(REQUEUE_S)  # a periodic look at this node's queue
            try:
                self.work.requeue(time.monotonic())
            except Exception:
                logger.exception("re-spilling queued work failed")

    async def leave(self) -> None:
        await self.groups.aclose()
        if self._requeue is not None:
            self._requeue.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._requeue
        try:
            await self.election.resign()
            await self.placer.aclose()
            await self.election.aclose()
            await self.membership.leave()
        except Exception:  # the daemon's close goes on whatever happens here
            logger.exception("leaving the cluster failed")

    def _local(self, tag: P.Tag, peer: RpcPeer, msg: Any, b: list[bytes]) -> Any:
        return self._orig[int(tag)](peer, msg, b)

    def vouched(self) -> bool:
        """Whether this node may still write control state: not fenced, and its
        lease confirmed (or an etcd outage confirmed by its peers) recently enough
        that etcd cannot have expired it (:meth:`FenceMonitor.vouch_remaining`).
        A node thawed after a pause past the TTL fails this before its fencer's
        next tick: it writes none of its stale view over the cluster's."""
        return not self.daemon.fenced and self.membership.fencer.vouch_remaining() > 0

    # --- cluster information ------------------------------------------------------------

    def on_cluster_info(self, peer: RpcPeer, msg: P.ClusterInfoMsg, b: list[bytes]) -> Any:
        what = msg.what
        if what.endswith("_local"):
            return self._local(P.Tag.CLUSTER_INFO, peer, msg._replace(what=what[:-6]), b)
        if what == "etcd_reach":  # a peer suspects it is cut off (actorcore._fencing)
            return self.membership.fencer.reach_answer()
        if what == "vouch":  # a worker of this node: how long it may keep serving
            return self.membership.fencer.vouch_remaining()
        if what == "nodes":
            return self.membership.table.nodes()
        if what == "total":
            return self.membership.table.total()
        if what == "frees_received":  # (tests: frees go only to nodes holding copies)
            return self.work.frees_received
        if what == "startup":  # (tests: it joined only once it could start workers)
            return dict(self.daemon.started)
        if what == "owner_gone":  # (tests: OWNER_GONE goes only to nodes holding something)
            return {"sent": self.work.owner_gone_sent, "received": self.work.owner_gone_received}
        if what == "failover":  # this node's recovery counters (chaos runs report them)
            return self.failover.statistics()
        if what == "available":
            local = self._local(P.Tag.CLUSTER_INFO, peer, msg, b)
            return self.membership.available(local)
        if what == "placer":
            return self.placer_info()
        return self._local(P.Tag.CLUSTER_INFO, peer, msg, b)

    def on_load_report(self, peer: RpcPeer, msg: P.LoadReportMsg, b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.membership.on_load_report(peer.conn.peer_id, msg)
        return DEFERRED

    # --- the global placer (actorcore._placer_service) ----------------------------------

    def placer_info(self) -> dict[str, Any]:
        """Which node holds the placer (``node_id`` None: an election is under way)."""
        holder = self.election.holder
        rec = self.membership.table.live.get(holder) if holder else None
        out: dict[str, Any] = {
            "node_id": holder.hex() if holder else None,
            "address": [rec["address"], rec["port"]] if rec else None,
            "spills_from_here": self.placer.spills,
        }
        if self.placer_host is not None:
            out.update(self.placer_host.statistics())
        return out

    def _placer_elected(self) -> None:
        logger.info("this node (%s) now runs the cluster's placer", self.node_id.hex())
        self.placer_host = PlacerHost(dict(self.membership.table.live))
        self.placer_host.start()
        self.placer.poke()

    def _placer_lost(self) -> None:
        logger.info("this node (%s) no longer runs the cluster's placer", self.node_id.hex())
        host, self.placer_host = self.placer_host, None
        if host is not None:
            host.close()

    def _membership_changed(self, changes: list[Joined | Left]) -> None:
        self.failover.on_change(changes)  # a dead peer's processes, actors (issue 10)
        host = self.placer_host
        if host is None:
            return
        for ch in changes:
            if isinstance(ch, Joined):
                host.node_joined(ch.node_id, ch.record)
            else:
                host.node_left(ch.node_id)

    def on_placer_report(self, peer: RpcPeer, msg: P.PlacerReportMsg, b: list[bytes]) -> Any:
        assert peer.conn is not None
        host = self.placer_host
        if host is not None and bytes(msg.node_id) == peer.conn.peer_id:
            host.report(msg)  # (only a node may report for itself)
        return DEFERRED

    async def on_spill_work(self, peer: RpcPeer, msg: P.SpillWorkMsg, b: list[bytes]) -> Any:
        host = self.placer_host
        if host is None:
            raise PlacerMovedError(f"node {self.node_id.hex()} does not hold the placer")
        assert peer.conn is not None
        origin = peer.conn.peer_id
        if msg.report is not None and bytes(msg.report[0]) == origin:
            host.report(P.PlacerReportMsg(*msg.report))
        shape = {str(k): float(v) for k, v in dict(msg.shape).items()}
        args = {bytes(k): int(v) for k, v in dict(msg.args or {}).items()}
        strategy = strategy_from_wire(msg.strategy)
        return await host.place(bytes(msg.work_id), shape, strategy, args, origin)

    # --- actors on other nodes ----------------------------------------------------------

    async def on_get_named_actor(
        self, peer: RpcPeer, msg: P.GetNamedActorMsg, b: list[bytes]
    ) -> Any:
        try:
            return await self._local(P.Tag.GET_NAMED_ACTOR, peer, msg, b)
        except ValueError:
            actor_id = await self.names.lookup(msg.namespace or "default", msg.name)
            rec = await self.actor_table.get(actor_id) if actor_id else None
            if rec is None or rec.state == "DEAD" or rec.handle is None or self._node_dead(rec):
                raise
            return {"actor_id": rec.actor_id, "class_name": rec.class_name, **rec.handle}

    def on_wait_actor(self, peer: RpcPeer, msg: P.WaitActorMsg, b: list[bytes]) -> Any:
        if msg.actor_id in self.daemon.actors.actors:
            return self._local(P.Tag.WAIT_ACTOR, peer, msg, b)
        return self._located(peer, self._wait_remote(peer, msg, b))

    async def _located(self, peer: RpcPeer, answer: Any) -> Any:
        """The caller's calls go to the actor's node, their results stored there: it may
        hold something for the caller (``OWNER_GONE`` goes there when it ends)."""
        out = await answer
        if isinstance(out, list) and len(out) > 4 and out[0] == "ALIVE" and out[4]:
            self.work.sent_to(peer, bytes(out[4]))
        return out

    async def _wait_remote(self, peer: RpcPeer, msg: P.WaitActorMsg, b: list[bytes]) -> Any:
        key = self.actor_table.key(msg.actor_id)
        kv = await self.store.get(key)
        rec = None if kv is None else ActorRecord.from_bytes(kv.value)
        if kv is None or rec is None or rec.node_id == self.node_id:
            # not known anywhere (yet), or ours: the local path waits for its creation
            result = self._local(P.Tag.WAIT_ACTOR, peer, msg, b)
            return await result if asyncio.iscoroutine(result) else result
        answer = _where(rec, msg.min_epoch) or self._node_dead(rec)
        if answer is not None:
            return answer
        gone = self._when_gone(rec)
        nxt: asyncio.Future[Any] | None = None
        try:
            async with self.store.watch_prefix(key, start_revision=kv.mod_revision + 1) as watch:
                events = aiter(watch)
                nxt = asyncio.ensure_future(anext(events))
                while True:
                    await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if gone.done() and not nxt.done():
                        if gone in self._orphan_waits:
                            nxt.cancel()
                            return ["DEAD", None, rec.epoch, "no node restarted it in time"]
                        answer = self._node_dead(rec)
                        if answer is not None:
                            nxt.cancel()
                            return answer
                        # its node died and another node restarts it: wait for that
                        self._drop_wait(gone)
                        gone = self._when_gone(rec)
                        continue
                    try:
                        event = nxt.result()
                    except StopAsyncIteration:
                        return DEFERRED  # the node is closing
                    if event.kv is None:
                        return ["DEAD", None, rec.epoch, "its record was removed"]
                    rec = ActorRecord.from_bytes(event.kv.value)
                    answer = _where(rec, msg.min_epoch)
                    if answer is not None:
                        return answer
                    self._drop_wait(gone)
                    gone = self._when_gone(rec)
                    nxt = asyncio.ensure_future(anext(events))
        finally:
            self._drop_wait(gone)
            if nxt is not None:
                nxt.cancel()

    def _node_dead(self, rec: ActorRecord) -> list[Any] | None:
        """The answer for an actor whose node is gone (None while it lives, or while
        its home node lives to restart it elsewhere)."""
        live = self.membership.table.live
        if rec.node_id in live:
            return None
        if rec.state != "DEAD" and rec.restartable():
            if rec.home is not None and rec.home in live:
                return None  # its home node restarts it (actorcore._cluster_failover)
            if rec.detached and rec.spec_saved and live:
                return None  # a live node restarts it from its saved spec
        return ["DEAD", None, rec.epoch, f"its node {rec.node_id.hex()} died"]

    def _drop_wait(self, gone: asyncio.Future[None]) -> None:
        gone.cancel()
        self._orphan_waits.discard(gone)

    def _when_gone(self, rec: ActorRecord) -> asyncio.Future[None]:
        """Resolved when a wait for ``rec``'s actor must look again: its node died, or
        once that died, the home node restarting it; an orphan restarted by another
        node has ``ORPHAN_WAIT_S`` to show up in its record."""
        live = self.membership.table.live
        if rec.node_id in live:
            return self.membership.when_gone(rec.node_id)
        if rec.home is not None and rec.home in live:
            return self.membership.when_gone(rec.home)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(ORPHAN_WAIT_S, _resolve, fut)
        fut.add_done_callback(lambda _f: timer.cancel())
        self._orphan_waits.add(fut)
        return fut

    def on_kill_actor(self, peer: RpcPeer, msg: P.KillActorMsg, b: list[bytes]) -> Any:
        if msg.actor_id in self.daemon.actors.actors:
            return self._local(P.Tag.KILL_ACTOR, peer, msg, b)
        return self._kill_remote(peer, msg, b)

    async def _kill_remote(self, peer: RpcPeer, msg: P.KillActorMsg, b: list[bytes]) -> Any:
        if msg.no_restart:
            self.work.forget(msg.actor_id)
        rec = await self.actor_table.get(msg.actor_id)
        if rec is None or rec.node_id == self.node_id:
            return self._local(P.Tag.KILL_ACTOR, peer, msg, b)
        forward = P.KillActorMsg(next_rid(), msg.actor_id, msg.no_restart)
        return await self.membership.call_node(rec.node_id, forward)
