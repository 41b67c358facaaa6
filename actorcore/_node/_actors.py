"""The node daemon's actor service: actor and placement-group requests in,
actor instructions out.

Requests become events of :class:`~actorcore._node.NodeState`; the instructions
it returns about actors are carried out here: construct an actor on a worker
(and report how that went), drop it from a shared worker, write its record to
control state (batched: one write task per loop tick), release its name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from actorcore.gcs import ActorTable, NameRegistry
from actorcore.gcs._retry import NotVouchedError

from .. import _protocol as P
from .._rpc import DEFERRED, RpcPeer, Service, handles, next_rid
from . import _events as E
from ._lifecycle import ActorInfo, ActorPhase, Persist, ReleaseName
from ._state import NodeState
from ._workers import WorkerRegistry

__all__ = ["ActorService"]

logger = logging.getLogger(__name__)


class ActorService(Service):
    """Actor and placement-group requests of one node."""

    def __init__(
        self,
        state: NodeState,
        workers: WorkerRegistry,
        apply: Callable[[Any], None],
        actor_table: ActorTable,
        names: NameRegistry,
    ) -> None:
        super().__init__()
        self.state = state
        self.workers = workers
        self.apply = apply
        self.actor_table = actor_table
        self.names = names
        self._dirty: set[bytes] = set()
        self._writing = False  # a _write_records task is scheduled or running

    # --- instructions ------------------------------------------------------------------

    def start_actor(self, ins: E.StartActor) -> None:
        rec = self.workers.get(ins.worker_id)
        if rec is None:
            return  # the worker is gone: its death restarts or ends the actor
        actor_id, worker_id = ins.actor_id, ins.worker_id

        def done(reply: Any) -> None:
            if isinstance(reply, BaseException):
                return  # the worker died: its death restarts or ends the actor
            if reply.TAG == P.Tag.ERROR_REPLY:
                self.apply(E.ActorConstructionFailed(actor_id, worker_id, reply.message))
            else:
                self.apply(E.ActorConstructed(actor_id, worker_id, rec.address))

        try:
            rec.peer.request(P.HostActorMsg(next_rid(), actor_id, ins.spec), done)
        except ConnectionError:
            pass

    def drop_actor(self, ins: E.DropActor) -> None:
        rec = self.workers.get(ins.worker_id)
        if rec is None:
            return
        try:
            rec.peer.send(P.DropActorMsg(ins.actor_id, ins.reason))
        except ConnectionError:
            pass

    def persist(self, ins: Persist) -> None:
        self._dirty.add(ins.actor_id)
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().call_soon(self._flush_records)

    def release_name(self, ins: ReleaseName) -> None:
        self.spawn(self._release_name(ins))

    async def _release_name(self, ins: ReleaseName) -> None:
        try:
            await self.names.release(ins.namespace, ins.name, ins.actor_id)
        except NotVouchedError:  # fencing: the actor may live on elsewhere, under its name
            logger.info("name %r of actor %s kept: %s", ins.name, ins.actor_id.hex(), "fenced")

    def _flush_records(self) -> None:
        self.spawn(self._write_records())

    async def _write_records(self) -> None:
        """The one writer of this node's actor records: each record is read when it is
        written (its latest state), one put at a time. Two writers, or a snapshot
        taken before a put that waits on etcd, let an older state (PENDING) land
        after a newer one (ALIVE), and callers waiting on the record never found
        the actor."""
        try:
            while self._dirty:
                actor_id = self._dirty.pop()
                rec = self.state.actor_record(actor_id)
                if rec is None:
                    continue
                try:
                    await self.actor_table.put(rec)
                except NotVouchedError as e:  # fencing: the cluster decides for it now
                    logger.info("record of actor %s not written: %s", actor_id.hex(), e)
                except Exception:
                    logger.exception("writing the record of actor %s failed", actor_id.hex())
        finally:
            self._writing = False

    # --- actors ------------------------------------------------------------------------------

    @handles(P.Tag.CREATE_ACTOR)
    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        spec = dict(msg.spec)
        owner = peer.conn.peer_id
        if spec.get("forwarded_from"):  # [node, owner process]: a peer daemon sent it here
            owner = bytes(spec["forwarded_from"][1])
        if spec.get("name"):
            return self._create_named(owner, msg.actor_id, spec)
        return self._create(owner, msg.actor_id, spec)

    async def _create_named(self, owner: bytes, actor_id: bytes, spec: dict[str, Any]) -> Any:
        name = spec["name"]
        namespace = spec.get("namespace") or "default"
        if not await self.names.claim(namespace, name, actor_id):
            existing = await self.names.lookup(namespace, name)
            if spec.get("get_if_exists") and existing is not None:
                return [existing]
            raise ValueError(
                f"the actor name {name!r} is already taken in namespace {namespace!r}; "
                f"pick another name, or pass get_if_exists=True to reuse that actor"
            )
        try:
            return self._create(owner, actor_id, spec)
        except BaseException:
            self.spawn(self.names.release(namespace, name, actor_id))
            raise

    def _create(self, owner: bytes, actor_id: bytes, spec: dict[str, Any]) -> Any:
        shape = dict(spec.get("shape") or {})
        info = ActorInfo(
            actor_id=actor_id,
            class_name=spec.get("class_name", "Actor"),
            spec=spec,
            owner=owner,
            shape=shape,
            name=spec.get("name"),
            namespace=spec.get("namespace") or "default",
            detached=bool(spec.get("detached")),
            max_restarts=int(spec.get("max_restarts") or 0),
            # a restart on this node of an actor whose node died (actorcore._cluster_failover)
            restarts=int(spec.get("restarts") or 0),
            epoch=int(spec.get("epoch") or 0),
        )
        self.apply(E.ActorCreated(info))  # refuses bad shapes, unknown nodes
        return [actor_id]

    @handles(P.Tag.WAIT_ACTOR)
    def on_wait_actor(self, peer: RpcPeer, msg: P.WaitActorMsg, _b: list[bytes]) -> Any:
        self.apply(E.ActorWaited((peer, msg.rid), msg.actor_id, msg.min_epoch))
        return DEFERRED

    @handles(P.Tag.KILL_ACTOR)
    def on_kill_actor(self, peer: RpcPeer, msg: P.KillActorMsg, _b: list[bytes]) -> Any:
        self.apply(E.ActorKilled(msg.actor_id, bool(msg.no_restart)))
        return True

    @handles(P.Tag.GET_NAMED_ACTOR)
    async def on_get_named_actor(
        self, peer: RpcPeer, msg: P.GetNamedActorMsg, _b: list[bytes]
    ) -> Any:
        actor_id = await self.names.lookup(msg.namespace or "default", msg.name)
        a = self.state.actors.actors.get(actor_id) if actor_id else None
        if a is None or a.phase is ActorPhase.DEAD:
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
        self.apply(E.GroupCreated(msg.pg_id, list(msg.bundles), msg.strategy, msg.name))
        return True

    @handles(P.Tag.WAIT_PLACEMENT_GROUP)
    def on_wait_pg(self, peer: RpcPeer, msg: P.WaitPlacementGroupMsg, _b: list[bytes]) -> Any:
        self.apply(E.GroupWaited((peer, msg.rid), msg.pg_id))
        return DEFERRED

    @handles(P.Tag.REMOVE_PLACEMENT_GROUP)
    def on_remove_pg(self, peer: RpcPeer, msg: P.RemovePlacementGroupMsg, _b: list[bytes]) -> Any:
        self.apply(E.GroupRemoved(msg.pg_id))
        return True

    @handles(P.Tag.GET_PLACEMENT_GROUP)
    def on_get_pg(self, peer: RpcPeer, msg: P.GetPlacementGroupMsg, _b: list[bytes]) -> Any:
        g = self.state.sched.placement.by_name(msg.name)
        if g is None:
            raise ValueError(f"no placement group named {msg.name!r}")
        return {"pg_id": g.pg_id, "bundles": g.bundles, "strategy": g.strategy}


def actor_row(info: ActorInfo, pid: int | None) -> dict[str, Any]:
    """One actor as ``actorcore list actors`` shows it."""
    return {
        "actor_id": info.actor_id.hex(),
        "class_name": info.class_name,
        "state": info.phase.value,
        "name": info.name,
        "namespace": info.namespace,
        "restarts": info.restarts,
        "pid": pid,
        "death_cause": info.death_cause,
    }
