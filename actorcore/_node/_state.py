"""The node state: one sans-IO coordinator over the node's state machines.

:class:`NodeState` composes the local scheduler
(:class:`~actorcore.scheduler.LocalScheduler`), the actor lifecycle
(:class:`~actorcore._node.ActorLifecycle`) and the object store's accounting
(:class:`~actorcore.store.StoreState`). ``handle(event)`` applies one event and
returns only what the daemon must carry out (grant a lease, start or stop a
worker, host or drop an actor, answer a waiter, persist a record, wake
readers ...). What the machines ask of each other (the lifecycle asks the
scheduler to place an actor; the scheduler says where it went; an actor left
its worker) is routed here, in order, without re-entering anyone.

It also keeps the callers waiting for an actor's address or for a placement
group, and the node table behind ``ac.nodes()``: this node (alive while its
daemon serves) and whatever a cluster registry reports through
:class:`NodesChanged`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from actorcore import scheduler as S
from actorcore.gcs import ActorRecord
from actorcore.scheduler import _resources as R
from actorcore.store import ClientGone, StoreState

from . import _events as E
from . import _lifecycle as L

__all__ = ["NODE_AFFINITY_PREFIX", "UNKNOWN_ACTOR_WAIT_S", "NodeState"]

logger = logging.getLogger(__name__)

# How long a caller may wait for an actor the node has not heard of yet.
UNKNOWN_ACTOR_WAIT_S = 30.0
# A resource key ``node:<node id hex>`` pins work to that node (hard node affinity).
NODE_AFFINITY_PREFIX = S.NODE_AFFINITY_PREFIX

_Handler = Callable[[Any], list[Any]]


class NodeState:
    """Scheduler, actor lifecycle and store accounting of one node, as one machine."""

    def __init__(
        self,
        me: E.NodeInfo,
        *,
        capacity: int,
        max_shared_workers: int = 1,
        actors_per_shared_worker: int = 2000,
        warm: int = 1,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self.me = me
        self.total = dict(me.resources)
        self.sched = S.LocalScheduler(
            self.total,
            max_shared_workers=max_shared_workers,
            actors_per_shared_worker=actors_per_shared_worker,
        )
        self.actors = L.ActorLifecycle()
        self.store = StoreState(capacity)
        self.warm = warm
        self.idle_timeout_s = idle_timeout_s
        self.others: dict[bytes, E.NodeInfo] = {}
        self.actor_waiters: dict[bytes, list[tuple[Any, int]]] = {}
        self.group_waiters: dict[bytes, list[Any]] = {}
        self._events: dict[type, _Handler] = self._event_table()
        self._inner: dict[type, _Handler] = {
            S.HostActor: lambda i: self.actors.placed(i.actor_id, i.worker_id),
            L.Place: lambda i: self.sched.place_actor(i.actor_id, i.shape),
            L.Removed: lambda i: self.sched.actor_removed(i.actor_id),
            L.Host: self._host,
            L.Unhost: self._unhost,
            L.Notify: lambda i: self._notify(i.actor_id),
            S.PlacementGroupReady: lambda i: self._group_answer(i.pg_id, True),
            S.Infeasible: self._infeasible,
        }

    def _event_table(self) -> dict[type, _Handler]:
        store = self.store.handle
        return {
            E.NodeStarted: self._started,
            E.NodeStopping: self._stopping,
            E.NodesChanged: self._nodes_changed,
            E.Tick: self._tick,
            E.WorkerStarted: lambda e: self.sched.worker_started(e.worker_id, e.now, e.env),
            E.WorkerStartFailed: lambda e: self.sched.worker_start_failed(e.env),
            E.WorkerDied: self._worker_died,
            E.LeaseRequested: self._lease_requested,
            E.LeaseWithdrawn: lambda ev: self.sched.cancel_lease_request(ev.key),
            E.LeaseReturned: self._lease_returned,
            E.GrantFailed: lambda e: self.sched.return_lease(e.worker_id, e.now),
            E.WorkerBlocked: lambda e: self.sched.worker_blocked(e.worker_id, e.blocked),
            E.ProcessGone: self._process_gone,
            E.ActorCreated: self._actor_created,
            E.ActorConstructed: lambda e: self.actors.constructed(
                e.actor_id, e.worker_id, e.address
            ),
            E.ActorConstructionFailed: lambda e: self.actors.construction_failed(
                e.actor_id, e.worker_id, e.cause
            ),
            E.ActorKilled: lambda e: self.actors.kill(e.actor_id, e.no_restart),
            E.ActorWaited: self._actor_waited,
            E.UnknownActorExpired: self._unknown_actor_expired,
            E.GroupCreated: self._group_created,
            E.GroupWaited: self._group_waited,
            E.GroupRemoved: self._group_removed,
            E.BundlesPrepared: self._bundles_prepared,
            E.BundlesCommitted: self._bundles_committed,
            E.BundlesReleased: self._bundles_released,
            E.Seal: store,
            E.Abort: store,
            E.Free: store,
            E.RestoreDone: store,
            ClientGone: store,
        }

    # --- the one entry point ------------------------------------------------------------

    def handle(self, event: E.NodeEvent) -> list[E.NodeInstruction]:
        """Apply ``event``; returns the instructions for the daemon, in order.

        Raises:
            ValueError, TypeError: for bad input (nothing was changed).
        """
        handler = self._events.get(type(event))
        if handler is None:
            raise TypeError(f"the node state takes no {type(event).__name__}")
        return self._route(handler(event))

    def _route(self, instrs: list[Any]) -> list[E.NodeInstruction]:
        """Feed the machines' instructions to each other (depth first, in order)."""
        out: list[E.NodeInstruction] = []
        inner = self._inner
        stack = [iter(instrs)]
        while stack:
            ins = next(stack[-1], None)
            if ins is None:
                stack.pop()
                continue
            route = inner.get(type(ins))
            if route is None:
                out.append(ins)
            else:
                stack.append(iter(route(ins)))
        return out

    # --- the node ------------------------------------------------------------------------

    def _started(self, ev: E.NodeStarted) -> list[Any]:
        self.me = _with_alive(self.me, True)
        return self.sched.keep_warm(self.warm)

    def _stopping(self, ev: E.NodeStopping) -> list[Any]:
        self.me = _with_alive(self.me, False)
        return []

    def _nodes_changed(self, ev: E.NodesChanged) -> list[Any]:
        self.others = {n.node_id: n for n in ev.nodes if n.node_id != self.me.node_id}
        return []

    def _tick(self, ev: E.Tick) -> list[Any]:
        # idle workers past the timeout go, down to the warm ones (none on a single
        # machine's node by default): an idle node goes back to a fresh one's memory
        out = self.sched.reap_idle(ev.now, self.idle_timeout_s, self.warm)
        out += self.sched.keep_warm(self.warm)
        self.actors.forget_dead()
        return out

    def _infeasible(self, ins: S.Infeasible) -> list[Any]:
        totals = {k: v for k, v in self.total.items() if k not in ("memory", "object_store_memory")}
        return [
            E.Warn(
                f"work waits for resources no node of this cluster has: it needs "
                f"{ins.missing} more than the node's total {totals}"
            )
        ]

    # --- workers and leases -------------------------------------------------------------

    def _worker_died(self, ev: E.WorkerDied) -> list[Any]:
        actor_ids, out = self.sched.worker_died(ev.worker_id)
        out += self.sched.keep_warm(self.warm)
        return out + self.actors.worker_died(actor_ids, ev.why)

    def _lease_requested(self, ev: E.LeaseRequested) -> list[Any]:
        shape = self._local_shape(S.normalize_shape(ev.shape))
        return self.sched.request_lease(ev.key, shape, ev.owner)

    def _lease_returned(self, ev: E.LeaseReturned) -> list[Any]:
        w = self.sched.workers.get(ev.worker_id)
        if w is None or w.owner != ev.owner:
            return []  # not theirs (any more)
        if ev.kill:
            return [S.StopWorker(ev.worker_id)]  # its death, which follows, frees it
        return self.sched.return_lease(ev.worker_id, ev.now)

    def _process_gone(self, ev: E.ProcessGone) -> list[Any]:
        pid = ev.process_id
        out = self.sched.owner_gone(pid)
        out += self.actors.owner_gone(pid)
        return out + self.store.handle(ClientGone(pid))

    def _local_shape(self, shape: dict[str, float]) -> dict[str, float]:
        """Check hard node affinity: this node is dropped from the shape; an unknown
        node is refused; another live node stays (the work waits for it)."""
        shape = R.strip_hints(shape)  # soft affinity, SPREAD: the cluster's business
        pinned = [k for k in shape if k.startswith(NODE_AFFINITY_PREFIX)]
        if not pinned:
            return shape
        shape = dict(shape)
        for key in pinned:
            hex_id = key[len(NODE_AFFINITY_PREFIX) :]
            if hex_id == self.me.node_id.hex():
                del shape[key]
                continue
            other = next((n for n in self.others.values() if n.node_id.hex() == hex_id), None)
            if other is None or not other.alive:
                known = [
                    self.me.node_id.hex(),
                    *(n.node_id.hex() for n in self.others.values() if n.alive),
                ]
                state = "is dead" if other is not None else "is not a node of this cluster"
                raise ValueError(
                    f"NodeAffinitySchedulingStrategy(node_id={hex_id!r}, soft=False): that node "
                    f"{state} (alive nodes: {', '.join(known)}); pass soft=True to run "
                    f"elsewhere when it is not available"
                )
        return shape

    # --- actors ------------------------------------------------------------------------

    def _actor_created(self, ev: E.ActorCreated) -> list[Any]:
        info = ev.info
        if info.actor_id in self.actors.actors:
            raise ValueError(f"actor {info.actor_id.hex()} exists already")
        info.shape = self._local_shape(S.normalize_shape(info.shape))
        out = self.actors.created(info)
        # callers that asked before it existed keep waiting for ALIVE
        return [*out, L.Notify(info.actor_id)]

    def _host(self, ins: L.Host) -> list[Any]:
        a = self.actors.actors.get(ins.actor_id)
        if a is None:
            return []
        return [E.StartActor(ins.actor_id, ins.worker_id, a.spec, a.epoch)]

    def _unhost(self, ins: L.Unhost) -> list[Any]:
        w = self.sched.workers.get(ins.worker_id)
        if w is not None and w.role is S.WorkerRole.DEDICATED:
            return []  # the scheduler stops the worker itself (Removed follows)
        return [E.DropActor(ins.actor_id, ins.worker_id, ins.reason)]

    def _actor_waited(self, ev: E.ActorWaited) -> list[Any]:
        out: list[Any] = []
        if ev.actor_id not in self.actors.actors:
            # its creation may still be on its way (another connection): wait for it
            out.append(E.Later(UNKNOWN_ACTOR_WAIT_S, E.UnknownActorExpired(ev.actor_id)))
        else:
            answer = self.actors.where(ev.actor_id, ev.min_epoch)
            if answer is not None:
                return [E.Reply(ev.waiter, answer)]
        self.actor_waiters.setdefault(ev.actor_id, []).append((ev.waiter, ev.min_epoch))
        return out

    def _unknown_actor_expired(self, ev: E.UnknownActorExpired) -> list[Any]:
        if ev.actor_id in self.actors.actors:
            return []
        answer = ["DEAD", None, 0, "no such actor on this node"]
        return [E.Reply(w, answer) for w, _epoch in self.actor_waiters.pop(ev.actor_id, [])]

    def _notify(self, actor_id: bytes) -> list[Any]:
        waiters = self.actor_waiters.pop(actor_id, None)
        if not waiters or actor_id not in self.actors.actors:
            if waiters:
                self.actor_waiters[actor_id] = waiters
            return []
        out: list[Any] = []
        keep = []
        for waiter, min_epoch in waiters:
            answer = self.actors.where(actor_id, min_epoch)
            if answer is None:
                keep.append((waiter, min_epoch))
            else:
                out.append(E.Reply(waiter, answer))
        if keep:
            self.actor_waiters[actor_id] = keep
        return out

    # --- placement groups -----------------------------------------------------------------

    def _group_created(self, ev: E.GroupCreated) -> list[Any]:
        if ev.name and self.sched.placement.by_name(ev.name) is not None:
            raise ValueError(f"a placement group named {ev.name!r} exists already")
        bundles = [{str(k): float(v) for k, v in dict(b).items()} for b in ev.bundles]
        return self.sched.create_placement_group(ev.pg_id, bundles, ev.strategy, ev.name)

    def _group_waited(self, ev: E.GroupWaited) -> list[Any]:
        state = self.sched.placement.state(ev.pg_id)
        if state is None or state is S.GroupState.REMOVED:
            return [E.Reply(ev.waiter, False)]
        if state is S.GroupState.CREATED:
            return [E.Reply(ev.waiter, True)]
        self.group_waiters.setdefault(ev.pg_id, []).append(ev.waiter)
        return []

    def _group_removed(self, ev: E.GroupRemoved) -> list[Any]:
        return self.sched.remove_placement_group(ev.pg_id) + self._group_answer(ev.pg_id, False)

    def _group_answer(self, pg_id: bytes, ready: bool) -> list[Any]:
        return [E.Reply(w, ready) for w in self.group_waiters.pop(pg_id, [])]

    # --- bundles of cluster-wide groups (two-phase) ----------------------------------------

    def _bundles_prepared(self, ev: E.BundlesPrepared) -> list[Any]:
        bundles = [(int(i), {str(k): float(v) for k, v in dict(b).items()}) for i, b in ev.bundles]
        ok, out = self.sched.prepare_bundles(ev.pg_id, ev.attempt, bundles, ev.coordinator)
        return [E.Reply(ev.waiter, [ok, dict(self.sched.available)]), *out]

    def _bundles_committed(self, ev: E.BundlesCommitted) -> list[Any]:
        ok, out = self.sched.commit_bundles(ev.pg_id, ev.attempt)
        return [E.Reply(ev.waiter, [ok, dict(self.sched.available)]), *out]

    def _bundles_released(self, ev: E.BundlesReleased) -> list[Any]:
        if ev.coordinator is not None:
            return self.sched.release_bundles(ev.pg_id, coordinator=ev.coordinator)
        return self.sched.release_bundles(ev.pg_id, list(ev.indexes))

    # --- views ----------------------------------------------------------------------------

    def nodes(self) -> list[E.NodeInfo]:
        """This node and the others a cluster registry reported."""
        return [self.me, *self.others.values()]

    def actor_record(self, actor_id: bytes) -> ActorRecord | None:
        """The control-state record of an actor, as it is now."""
        a = self.actors.actors.get(actor_id)
        if a is None:
            return None
        return ActorRecord(
            actor_id=a.actor_id,
            name=a.name,
            namespace=a.namespace,
            state=a.phase.value,
            node_id=self.me.node_id,
            address=a.address,
            epoch=a.epoch,
            owner=[a.owner],
            detached=a.detached,
            class_name=a.class_name,
            death_cause=a.death_cause,
            restarts=a.restarts,
            max_restarts=a.max_restarts,
            home=_home(a.spec),
        )

    def worker_view(self, worker_id: bytes) -> tuple[str, int]:
        """``(role, number of actors)`` of a worker the scheduler knows, else ``("?", 0)``."""
        w = self.sched.workers.get(worker_id)
        return (w.role.value, len(w.actors)) if w is not None else ("?", 0)

    def validate(self) -> None:
        """Check the invariants of every machine (tests switch this on)."""
        self.sched.validate()
        self.store.validate()
        for actor_id, wid in self.sched.actor_worker.items():
            a = self.actors.actors.get(actor_id)
            if a is not None and a.worker_id is not None:
                assert a.worker_id == wid, (actor_id, a.worker_id, wid)


def _with_alive(info: E.NodeInfo, alive: bool) -> E.NodeInfo:
    return E.NodeInfo(info.node_id, info.host, info.port, info.resources, info.pid, alive)


def _home(spec: dict[str, Any]) -> bytes | None:
    """The node that sent an actor here (it restarts it elsewhere if this node dies)."""
    sent = spec.get("forwarded_from")
    return bytes(sent[0]) if sent else None
