"""The node daemon: one per machine, owning workers, scheduling, store and actors.

It answers drivers and workers over authenticated connections: leases for
tasks, actor creation and lookup, the object store's control calls, cluster
information, and worker output for the drivers. The decisions are made by
sans-IO state machines (:class:`scheduler.LocalScheduler`,
:class:`ActorLifecycle`, :class:`store.StoreState`); this class carries out
their instructions. A bad request gets an error reply; it never ends the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from gcs import ActorRecord, ActorTable, EmbeddedControlStore, NameRegistry
from scheduler import _local as S
from store._arena import Arena
from store._session import SessionDirs
from store._state import StoreState

from . import _lifecycle as L
from . import _protocol as P
from ._config import Config
from ._pool import WorkerPool
from ._rpc import DEFERRED, RpcPeer, Service, handles, next_rid
from ._store_service import StoreService
from ._transport import Listener
from .errors import ProtocolError

__all__ = ["NodeDaemon"]

logger = logging.getLogger(__name__)

# How long a caller may wait for an actor the daemon has not heard of yet.
UNKNOWN_ACTOR_WAIT_S = 30.0


@dataclass(slots=True)
class WorkerRec:
    worker_id: bytes
    pid: int
    peer: RpcPeer
    address: list[Any]


class NodeDaemon(Service):
    def __init__(
        self,
        *,
        config: Config,
        token: bytes,
        node_id: bytes,
        dirs: SessionDirs,
        arena: Arena,
        capacity: int,
        listen_sock: Any,
        zygote: tuple[Any, int],
        owner_pid: int | None,
        sys_path: list[str],
        unix_name: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.token = token
        self.node_id = node_id
        self.dirs = dirs
        self.owner_pid = owner_pid
        self.sys_path = sys_path
        self._listen_sock = listen_sock
        self._zygote = zygote
        ncpu = config.num_cpus or float(os.cpu_count() or 1)
        total = {"CPU": ncpu, **({"GPU": config.num_gpus} if config.num_gpus else {}), **config.resources}
        total["memory"] = float(psutil.virtual_memory().total)
        total["object_store_memory"] = float(capacity)
        self.total = total
        self.sched = S.LocalScheduler(
            total,
            max_shared_workers=max(1, int(ncpu)),
            actors_per_shared_worker=config.actors_per_shared_worker,
        )
        self.actors = L.ActorLifecycle()
        self.store = StoreService(StoreState(capacity), arena, dirs)
        self.control = EmbeddedControlStore()
        self.actor_table = ActorTable(self.control)
        self.names = NameRegistry(self.control)
        self.workers: dict[bytes, WorkerRec] = {}
        self.worker_pids: dict[int, bytes] = {}
        self.conns: dict[bytes, set[RpcPeer]] = {}
        self.drivers: dict[bytes, RpcPeer] = {}
        self.embedded_driver: bytes | None = None
        self.lease_waiters: dict[Any, tuple[RpcPeer, int]] = {}
        self.actor_waiters: dict[bytes, list[tuple[RpcPeer, int, int]]] = {}
        self.pg_waiters: dict[bytes, list[tuple[RpcPeer, int]]] = {}
        self._dirty_actors: set[bytes] = set()
        self.stopping: asyncio.Future[None] | None = None
        self.pool: WorkerPool | None = None
        self.warm = 1  # idle workers kept ready
        self.listener: Listener | None = None
        self.address: tuple[str, int] = listen_sock.getsockname()[:2]
        self.unix_name = unix_name or ""
        self.started_at = time.time()

    # --- life ---------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        self.listener = Listener(
            loop,
            token=self.token,
            role="daemon",
            my_id=self.node_id,
            make_receiver=lambda: RpcPeer(self, self._handlers),
            on_connection=self._on_connection,
            max_header_bytes=self.config.max_header_bytes,
            max_frame_bytes=self.config.max_frame_bytes,
            sock=self._listen_sock,
            unix_name=self.unix_name or None,
        )
        self._handlers = self.bound_handlers()
        self.listener.start()
        self.unix_name = self.listener.unix_name
        zsock, zpid = self._zygote
        self.pool = WorkerPool(loop, zsock, zpid, self._on_worker_exit)
        prestart = self.config.prestart_workers
        if prestart < 0:
            prestart = max(1, int(self.total["CPU"]))
        self.warm = prestart
        self._run(self.sched.keep_warm(self.warm))
        self.spawn(self._housekeeping())

    async def wait_stopped(self) -> None:
        assert self.stopping is not None
        await self.stopping

    def stop(self, why: str) -> None:
        if self.stopping is not None and not self.stopping.done():
            logger.info("node daemon stopping: %s", why)
            self.stopping.set_result(None)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.pool is not None:
            self.pool.close()
        for peers in list(self.conns.values()):
            for peer in list(peers):
                if peer.conn is not None:
                    peer.conn.close()
        await self.cancel_tasks()
        await self.control.aclose()

    async def _housekeeping(self) -> None:
        keep = max(1, int(self.total["CPU"]))
        while True:
            await asyncio.sleep(1.0)
            if self.owner_pid is not None and not psutil.pid_exists(self.owner_pid):
                self.stop("the driver that started this node exited")
            self._run(self.sched.reap_idle(time.monotonic(), self.config.worker_idle_timeout_s, keep))
            self._run(self.sched.keep_warm(self.warm))
            self.actors.forget_dead()

    # --- connections ---------------------------------------------------------------

    def _on_connection(self, conn: Any) -> None:
        peer: RpcPeer = conn.receiver
        peer.conn = conn
        self.conns.setdefault(conn.peer_id, set()).add(peer)

    def on_peer_closed(self, peer: RpcPeer, exc: BaseException) -> None:
        conn = peer.conn
        if conn is None:
            return
        pid = conn.peer_id
        peers = self.conns.get(pid)
        if peers is not None:
            peers.discard(peer)
        rec = self.workers.get(pid)
        if rec is not None and rec.peer is peer:
            self._worker_gone(rec, f"its worker process (pid {rec.pid}) died")
        if not peers:
            self.conns.pop(pid, None)
            self._process_gone(pid)

    def _process_gone(self, pid: bytes) -> None:
        """Every connection of a process is gone: it ended."""
        self.store.client_gone(pid)
        for key in [k for k in self.lease_waiters if k[0] == pid]:
            self.lease_waiters.pop(key, None)
            self._run(self.sched.cancel_lease_request(key))
        self._run(self.sched.owner_gone(pid))
        self._run_actor(self.actors.owner_gone(pid))
        if self.drivers.pop(pid, None) is not None and pid == self.embedded_driver:
            self.stop("the driver that started this node exited")

    def _worker_gone(self, rec: WorkerRec, why: str) -> None:
        self.workers.pop(rec.worker_id, None)
        self.worker_pids.pop(rec.pid, None)
        assert self.pool is not None
        self.pool.kill(rec.pid)
        actor_ids, instrs = self.sched.worker_died(rec.worker_id)
        self._run(instrs)
        self._run(self.sched.keep_warm(self.warm))
        self._run_actor(self.actors.worker_died(actor_ids, why))

    def _on_worker_exit(self, pid: int, code: int) -> None:
        wid = self.worker_pids.get(pid)
        if wid is None:
            # it died before registering
            self._run(self.sched.worker_start_failed())
            return
        rec = self.workers.get(wid)
        if rec is not None:
            self._worker_gone(rec, f"its worker process (pid {pid}) exited with code {code}")

    # --- instructions ----------------------------------------------------------------

    def _run(self, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, S.GrantLease):
                self._grant(ins)
            elif isinstance(ins, S.StartWorker):
                assert self.pool is not None
                self.pool.start(ins.count)
            elif isinstance(ins, S.HostActor):
                self._run_actor(self.actors.placed(ins.actor_id, ins.worker_id))
            elif isinstance(ins, S.RevokeLease):
                self._send_to(ins.owner, P.RevokeLeaseMsg(ins.worker_id))
            elif isinstance(ins, S.StopWorker):
                rec = self.workers.get(ins.worker_id)
                if rec is not None and self.pool is not None:
                    self.pool.kill(rec.pid)
            elif isinstance(ins, S.PlacementGroupReady):
                for peer, rid in self.pg_waiters.pop(ins.pg_id, []):
                    peer.reply(rid, True)
            elif isinstance(ins, S.Infeasible):
                self._warn_drivers(
                    f"work waits for resources no node of this cluster has: it needs "
                    f"{ins.missing} more than the node's total {self._totals()}"
                )

    def _totals(self) -> dict[str, float]:
        return {k: v for k, v in self.total.items() if k not in ("memory", "object_store_memory")}

    def _grant(self, ins: S.GrantLease) -> None:
        waiter = self.lease_waiters.pop(ins.key, None)
        rec = self.workers.get(ins.worker_id)
        if waiter is None or rec is None or waiter[0].conn is None or waiter[0].conn.closed:
            self._run(self.sched.return_lease(ins.worker_id, time.monotonic()))
            return
        peer, rid = waiter
        peer.reply(rid, [ins.worker_id, rec.address])

    def _send_to(self, process_id: bytes, msg: Any) -> None:
        for peer in self.conns.get(process_id, ()):
            if peer.conn is not None and not peer.conn.closed:
                try:
                    peer.send(msg)
                    return
                except ConnectionError:
                    continue

    def _warn_drivers(self, text: str) -> None:
        logger.warning("%s", text)
        self._broadcast_logs([["err", "scheduler", "Warning: " + text]])

    def _broadcast_logs(self, lines: list[Any]) -> None:
        msg = P.LogBatchMsg(lines)
        for peer in list(self.drivers.values()):
            try:
                peer.send(msg)
            except ConnectionError:
                pass

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

    # --- registration -----------------------------------------------------------------

    @handles(P.Tag.REGISTER_WORKER)
    def on_register_worker(self, peer: RpcPeer, msg: P.RegisterWorkerMsg, _b: list[bytes]) -> Any:
        assert self.pool is not None
        if msg.pid not in self.pool.pids:
            raise ProtocolError(f"pid {msg.pid} is not a worker this daemon started")
        rec = WorkerRec(msg.worker_id, msg.pid, peer, list(msg.address))
        self.workers[msg.worker_id] = rec
        self.worker_pids[msg.pid] = msg.worker_id
        self._run(self.sched.worker_started(msg.worker_id, time.monotonic()))
        return {"sys_path": self.sys_path}

    @handles(P.Tag.REGISTER_DRIVER)
    def on_register_driver(self, peer: RpcPeer, msg: P.RegisterDriverMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.drivers[peer.conn.peer_id] = peer
        if msg.embedded:
            self.embedded_driver = peer.conn.peer_id
        for path in msg.sys_path:
            if path not in self.sys_path:
                self.sys_path.append(path)
        return {"node_id": self.node_id, "job_id": msg.driver_id}

    # --- leases ----------------------------------------------------------------------------

    @handles(P.Tag.REQUEST_LEASE)
    def on_request_lease(self, peer: RpcPeer, msg: P.RequestLeaseMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        shape = {str(k): float(v) for k, v in dict(msg.shape).items()}
        key = (peer.conn.peer_id, msg.rid)
        self.lease_waiters[key] = (peer, msg.rid)
        self._run(self.sched.request_lease(key, shape, peer.conn.peer_id))
        return DEFERRED

    @handles(P.Tag.CANCEL_LEASE_REQUEST)
    def on_cancel_lease_request(self, peer: RpcPeer, msg: P.CancelLeaseRequestMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        key = (peer.conn.peer_id, msg.request_rid)
        self.lease_waiters.pop(key, None)
        self._run(self.sched.cancel_lease_request(key))
        return DEFERRED

    @handles(P.Tag.RETURN_LEASE)
    def on_return_lease(self, peer: RpcPeer, msg: P.ReturnLeaseMsg, _b: list[bytes]) -> Any:
        w = self.sched.workers.get(msg.worker_id)
        if w is None or peer.conn is None or w.owner != peer.conn.peer_id:
            return DEFERRED  # not theirs (any more)
        if msg.kill:
            rec = self.workers.get(msg.worker_id)
            if rec is not None and self.pool is not None:
                self.pool.kill(rec.pid)
            return DEFERRED
        self._run(self.sched.return_lease(msg.worker_id, time.monotonic()))
        return DEFERRED

    @handles(P.Tag.WORKER_BLOCKED)
    def on_worker_blocked(self, peer: RpcPeer, msg: P.WorkerBlockedMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self._run(self.sched.worker_blocked(peer.conn.peer_id, bool(msg.blocked)))
        return DEFERRED

    # --- actors ------------------------------------------------------------------------------

    @handles(P.Tag.CREATE_ACTOR)
    def on_create_actor(self, peer: RpcPeer, msg: P.CreateActorMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        spec = dict(msg.spec)
        if spec.get("name"):
            return self._create_named(peer.conn.peer_id, msg, spec)
        return self._create(peer.conn.peer_id, msg, spec)

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
    async def on_get_named_actor(self, peer: RpcPeer, msg: P.GetNamedActorMsg, _b: list[bytes]) -> Any:
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
        if state is None or state is S.GroupState.REMOVED:
            return False
        if state is S.GroupState.CREATED:
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

    # --- information ------------------------------------------------------------------------

    @handles(P.Tag.CLUSTER_INFO)
    def on_cluster_info(self, peer: RpcPeer, msg: P.ClusterInfoMsg, _b: list[bytes]) -> Any:
        if msg.what == "available":
            return dict(self.sched.available)
        if msg.what == "total":
            return dict(self.total)
        if msg.what == "nodes":
            return [
                {
                    "NodeID": self.node_id.hex(),
                    "Alive": True,
                    "NodeManagerAddress": self.address[0],
                    "NodeManagerPort": self.address[1],
                    "Resources": dict(self.total),
                    "Pid": os.getpid(),
                }
            ]
        raise ValueError(f"unknown cluster information {msg.what!r}")

    @handles(P.Tag.LIST_STATE)
    def on_list_state(self, peer: RpcPeer, msg: P.ListStateMsg, _b: list[bytes]) -> Any:
        if msg.kind == "actors":
            return [
                {
                    "actor_id": a.actor_id.hex(),
                    "class_name": a.class_name,
                    "state": a.phase.value,
                    "name": a.name,
                    "namespace": a.namespace,
                    "restarts": a.restarts,
                    "pid": self.workers[a.worker_id].pid if a.worker_id in self.workers else None,
                    "death_cause": a.death_cause,
                }
                for a in self.actors.actors.values()
            ]
        if msg.kind == "workers":
            return [
                {
                    "worker_id": wid.hex(),
                    "pid": rec.pid,
                    "role": self.sched.workers[wid].role.value if wid in self.sched.workers else "?",
                    "actors": len(self.sched.workers[wid].actors) if wid in self.sched.workers else 0,
                }
                for wid, rec in self.workers.items()
            ]
        if msg.kind == "objects":
            return self.store.listing()
        if msg.kind == "placement_groups":
            return self.sched.placement.table()
        if msg.kind == "store":
            return self.store.stats()
        if msg.kind == "node":
            return {
                "node_id": self.node_id.hex(),
                "address": list(self.address),
                "pid": os.getpid(),
                "session": self.dirs.session,
                "uptime_s": time.time() - self.started_at,
                "resources_total": dict(self.total),
                "resources_available": dict(self.sched.available),
                "workers": self.sched.counts(),
                "drivers": len(self.drivers),
            }
        raise ValueError(f"unknown state kind {msg.kind!r}")

    @handles(P.Tag.LOG_BATCH)
    def on_log_batch(self, peer: RpcPeer, msg: P.LogBatchMsg, _b: list[bytes]) -> Any:
        self._broadcast_logs(list(msg.lines))
        return DEFERRED

    @handles(P.Tag.SHUTDOWN_NODE)
    def on_shutdown(self, peer: RpcPeer, msg: P.ShutdownNodeMsg, _b: list[bytes]) -> Any:
        asyncio.get_running_loop().call_soon(self.stop, "asked to shut down")
        return True

    # --- object store -----------------------------------------------------------------------

    @handles(P.Tag.CREATE_OBJECT)
    def on_create_object(self, peer: RpcPeer, msg: P.CreateObjectMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        if msg.size < 0:
            raise ValueError(f"object size must be >= 0, not {msg.size}")
        owner = msg.owner[0] if msg.owner else peer.conn.peer_id
        return self.store.create(msg.oid, msg.size, peer.conn.peer_id, owner)

    @handles(P.Tag.SEAL_OBJECT)
    def on_seal_object(self, peer: RpcPeer, msg: P.SealObjectMsg, _b: list[bytes]) -> Any:
        self.store.seal(msg.oid, msg.meta)
        return DEFERRED

    @handles(P.Tag.ABORT_OBJECT)
    def on_abort_object(self, peer: RpcPeer, msg: P.AbortObjectMsg, _b: list[bytes]) -> Any:
        self.store.abort(msg.oid)
        return DEFERRED

    @handles(P.Tag.OPEN_OBJECTS)
    def on_open_objects(self, peer: RpcPeer, msg: P.OpenObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        return self.store.open_many(list(msg.oids), peer.conn.peer_id)

    @handles(P.Tag.RELEASE_OBJECTS)
    def on_release_objects(self, peer: RpcPeer, msg: P.ReleaseObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.store.release(list(msg.oids), peer.conn.peer_id)
        return DEFERRED

    @handles(P.Tag.FREE_OBJECTS)
    def on_free_objects(self, peer: RpcPeer, msg: P.FreeObjectsMsg, _b: list[bytes]) -> Any:
        self.store.free(list(msg.oids))
        return DEFERRED

    @handles(P.Tag.STORE_STATS)
    def on_store_stats(self, peer: RpcPeer, msg: P.StoreStatsMsg, _b: list[bytes]) -> Any:
        return self.store.stats()

