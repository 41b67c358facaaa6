"""The node daemon's actors and placement groups: requests in, lifecycle out.

Carries out what :class:`actorcore._lifecycle.ActorLifecycle` decides (host,
unhost, notify callers, persist records, release names) and answers actor and
placement-group requests. A mixin of :class:`actorcore._node.NodeDaemon`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from actorcore.gcs import ActorRecord
from actorcore.scheduler import GroupState
from actorcore.scheduler import _local as S
from actorcore.scheduler import _resources as R

from . import _lifecycle as L
from . import _protocol as P
from ._cluster_work import split_affinity
from ._rpc import DEFERRED, RpcPeer, handles, next_rid

__all__ = ["NodeActorsMixin"]

# How long a caller may wait for an actor the daemon has not heard of yet.
UNKNOWN_ACTOR_WAIT_S = 30.0


class NodeActorsMixin:
    actors: L.ActorLifecycle
    sched: S.LocalScheduler
    workers: dict[bytes, Any]
    names: Any
    actor_table: Any
    actor_waiters: dict[bytes, list[tuple[RpcPeer, int, int]]]
    pg_waiters: dict[bytes, list[tuple[RpcPeer, int]]]
    node_id: bytes
    _dirty_actors: set[bytes]

    if TYPE_CHECKING:  # provided by NodeDaemon / Service

        def spawn(self, coro: Any) -> Any: ...

        def _run(self, instrs: list[Any]) -> None: ...

    # --- actor instructions ------------------------------------------------------------

    def _run_actor(self, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, L.Place):
                self._run(self.sched.place_actor(ins.actor_id, ins.shape))
            elif isinstance(ins, L.Host):
                self._host(ins.actor_id, ins.worker_id)
            elif isinstance(ins, L.Unhost):
                self._unhost(ins)
            elif isinstance(ins, L.Removed):
                self._run(self.sched.actor_removed(ins.actor_id))
            elif isinstance(ins, L.Persist):
                self._persist(ins.actor_id)
            elif isinstance(ins, L.Notify):
                self._notify(ins.actor_id)
            elif isinstance(ins, L.ReleaseName):
                self.spawn(self.names.release(ins.namespace, ins.name, ins.actor_id))

    def _host(self, actor_id: bytes, worker_id: bytes) -> None:
        rec = self.workers.get(worker_id)
        info = self.actors.actors.get(actor_id)
        if rec is None or info is None:
            return

        def done(reply: Any) -> None:
            if isinstance(reply, BaseException):
                return  # the worker died: its death restarts or ends the actor
            if reply.TAG == P.Tag.ERROR_REPLY:
                self._run_actor(self.actors.construction_failed(actor_id, worker_id, reply.message))
            else:
                self._run_actor(self.actors.constructed(actor_id, worker_id, rec.address))

        try:
            rec.peer.request(P.HostActorMsg(next_rid(), actor_id, info.spec), done)
        except ConnectionError:
            pass

    def _unhost(self, ins: L.Unhost) -> None:
        rec = self.workers.get(ins.worker_id)
        w = self.sched.workers.get(ins.worker_id)
        if rec is None:
            return
        if w is not None and w.role is S.WorkerRole.DEDICATED:
            return  # the scheduler stops the worker itself
        try:
            rec.peer.send(P.DropActorMsg(ins.actor_id, ins.reason))
        except ConnectionError:
            pass

    def _persist(self, actor_id: bytes) -> None:
        """Write the actor's record to control state (batched: one task per loop tick)."""
        if not self._dirty_actors:
            asyncio.get_running_loop().call_soon(self._flush_records)
        self._dirty_actors.add(actor_id)

    def _flush_records(self) -> None:
        dirty, self._dirty_actors = self._dirty_actors, set()
        records = [r for r in map(self._record, dirty) if r is not None]
        if records:
            self.spawn(self._write_records(records))

    async def _write_records(self, records: list[ActorRecord]) -> None:
        for rec in records:
            await self.actor_table.put(rec)

    def _record(self, actor_id: bytes) -> ActorRecord | None:
        a = self.actors.actors.get(actor_id)
        if a is None:
            return None
        return ActorRecord(
            actor_id=a.actor_id,
            name=a.name,
            namespace=a.namespace,
            state=a.phase.value,
            node_id=self.node_id,
            address=a.address,
            epoch=a.epoch,
            owner=[a.owner],
            detached=a.detached,
            class_name=a.class_name,
            death_cause=a.death_cause,
        )

    def _notify(self, actor_id: bytes) -> None:
        waiters = self.actor_waiters.pop(actor_id, [])
        keep = []
        for peer, rid, min_epoch in waiters:
            answer = self.actors.where(actor_id, min_epoch)
            if answer is None:
                keep.append((peer, rid, min_epoch))
            else:
                peer.reply(rid, answer)
        if keep:
            self.actor_waiters[actor_id] = keep

    # --- actors ------------------------------------------------------------------------------

    @handles(P.Tag.CREATE_ACTOR)
    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        spec = dict(msg.spec)
        shape = R.normalize(dict(spec.get("shape") or {}))  # refuse bad shapes first
        spec["shape"] = split_affinity(shape)[0]
        owner = peer.conn.peer_id
        if spec.get("forwarded_from"):  # [node, owner process]: a peer daemon sent it here
            owner = bytes(spec["forwarded_from"][1])
        if spec.get("name"):
            return self._create_named(owner, msg, spec)
        return self._create(owner, msg, spec)

    async def _create_named(self, owner: bytes, msg: P.CreateActorMsg, spec: dict[str, Any]) -> Any:
        name = spec["name"]
        namespace = spec.get("namespace") or "default"
        if not await self.names.claim(namespace, name, msg.actor_id):
            existing = await self.names.lookup(namespace, name)
            if spec.get("get_if_exists") and existing is not None:
                return [existing]
            raise ValueError(
                f"the actor name {name!r} is already taken in namespace {namespace!r}; "
                f"pick another name, or pass get_if_exists=True to reuse that actor"
            )
        return self._create(owner, msg, spec)

    def _create(self, owner: bytes, msg: P.CreateActorMsg, spec: dict[str, Any]) -> Any:
        name = spec.get("name")
        namespace = spec.get("namespace") or "default"
        info = L.ActorInfo(
            actor_id=msg.actor_id,
            class_name=spec.get("class_name", "Actor"),
            spec=spec,
            owner=owner,
            shape={str(k): float(v) for k, v in dict(spec.get("shape") or {}).items()},
            name=name,
            namespace=namespace,
            detached=bool(spec.get("detached")),
            max_restarts=int(spec.get("max_restarts") or 0),
        )
        self._run_actor(self.actors.created(info))
        self._notify(msg.actor_id)  # callers that asked before it existed keep waiting for ALIVE
        return [msg.actor_id]

    @handles(P.Tag.WAIT_ACTOR)
    def on_wait_actor(self, peer: RpcPeer, msg: P.WaitActorMsg, _b: list[bytes]) -> Any:
        if msg.actor_id not in self.actors.actors:
            # its creation may still be on its way (another connection): wait for it
            asyncio.get_running_loop().call_later(
                UNKNOWN_ACTOR_WAIT_S, self._unknown_actor_expired, msg.actor_id
            )
        else:
            answer = self.actors.where(msg.actor_id, msg.min_epoch)
            if answer is not None:
                return answer
        self.actor_waiters.setdefault(msg.actor_id, []).append((peer, msg.rid, msg.min_epoch))
        return DEFERRED

    def _unknown_actor_expired(self, actor_id: bytes) -> None:
        if actor_id not in self.actors.actors:
            for peer, rid, _epoch in self.actor_waiters.pop(actor_id, []):
                peer.reply(rid, ["DEAD", None, 0, "no such actor on this node"])

    @handles(P.Tag.KILL_ACTOR)
    def on_kill_actor(self, peer: RpcPeer, msg: P.KillActorMsg, _b: list[bytes]) -> Any:
        self._run_actor(self.actors.kill(msg.actor_id, bool(msg.no_restart)))
        return True

    @handles(P.Tag.GET_NAMED_ACTOR)
    async def on_get_named_actor(
        self, peer: RpcPeer, msg: P.GetNamedActorMsg, _b: list[bytes]
    ) -> Any:
        actor_id = await self.names.lookup(msg.namespace or "default", msg.name)
        a = self.actors.actors.get(actor_id) if actor_id else None
        if a is None or a.phase is L.ActorPhase.DEAD:
            raise ValueError(f"no actor named {msg.name!r} in namespace {msg.namespace!r}")
        return {
            "actor_id": a.actor_id,
            "class_name": a.class_name,
            "methods": a.spec.get("methods", {}),
            "max_task_retries": a.spec.get("max_task_retries", 0),
            "owner": list(a.spec.get("owner_address") or []),
        }

    # --- placement groups ----------------------------------------------------------------------

    @handles(P.Tag.CREATE_PLACEMENT_GROUP)
    def on_create_pg(self, peer: RpcPeer, msg: P.CreatePlacementGroupMsg, _b: list[bytes]) -> Any:
        if msg.name and self.sched.placement.by_name(msg.name) is not None:
            raise ValueError(f"a placement group named {msg.name!r} exists already")
        bundles = [{str(k): float(v) for k, v in dict(b).items()} for b in msg.bundles]
        self._run(self.sched.create_placement_group(msg.pg_id, bundles, msg.strategy, msg.name))
        return True

    @handles(P.Tag.WAIT_PLACEMENT_GROUP)
    def on_wait_pg(self, peer: RpcPeer, msg: P.WaitPlacementGroupMsg, _b: list[bytes]) -> Any:
        state = self.sched.placement.state(msg.pg_id)
        if state is None or state is GroupState.REMOVED:
            return False
        if state is GroupState.CREATED:
            return True
        self.pg_waiters.setdefault(msg.pg_id, []).append((peer, msg.rid))
        return DEFERRED

    @handles(P.Tag.REMOVE_PLACEMENT_GROUP)
    def on_remove_pg(self, peer: RpcPeer, msg: P.RemovePlacementGroupMsg, _b: list[bytes]) -> Any:
        stopped = self.sched.remove_placement_group(msg.pg_id)
        self._run(stopped)
        for p, rid in self.pg_waiters.pop(msg.pg_id, []):
            p.reply(rid, False)
        return True

    @handles(P.Tag.GET_PLACEMENT_GROUP)
    def on_get_pg(self, peer: RpcPeer, msg: P.GetPlacementGroupMsg, _b: list[bytes]) -> Any:
        g = self.sched.placement.by_name(msg.name)
        if g is None:
            raise ValueError(f"no placement group named {msg.name!r}")
        return {"pg_id": g.pg_id, "bundles": g.bundles, "strategy": g.strategy}
