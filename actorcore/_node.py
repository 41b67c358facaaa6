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

from actorcore.gcs import ActorTable, EmbeddedControlStore, NameRegistry
from actorcore.scheduler import _local as S
from actorcore.scheduler import _resources as R
from actorcore.store._arena import Arena
from actorcore.store._session import SessionDirs
from actorcore.store._state import StoreState

from . import _lifecycle as L
from . import _protocol as P
from ._cluster_node import join_cluster
from ._cluster_work import split_affinity
from ._config import Config
from ._node_actors import NodeActorsMixin
from ._obs._observer import NodeObserver, ObservabilityMixin
from ._pool import WorkerPool
from ._rpc import DEFERRED, RpcPeer, Service, handles
from ._store_service import StoreService
from ._transfer import TransferConfig, TransferService
from ._transport import Listener
from .errors import ProtocolError

__all__ = ["NodeDaemon"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerRec:
    worker_id: bytes
    pid: int
    peer: RpcPeer
    address: list[Any]


class NodeDaemon(NodeActorsMixin, ObservabilityMixin, Service):
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
        cluster: dict[str, Any] | None = None,
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
        # a node a driver starts to join a cluster offers only what the driver asked for
        driver_node = (cluster or {}).get("started_by") == "driver"
        ncpu = config.num_cpus or (0.0 if driver_node else float(os.cpu_count() or 1))
        total = {
            "CPU": ncpu,
            **({"GPU": config.num_gpus} if config.num_gpus else {}),
            **config.resources,
        }
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
        self.transfer = TransferService(
            self.store,
            node_id=node_id,
            token=token,
            host=self.address[0],
            config=TransferConfig.from_config(config),
        )
        self.cluster = join_cluster(self, cluster)  # etcd-backed control state in a cluster
        self.obs = NodeObserver(self)  # observability hook (actorcore._obs)

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
        self._handlers.update(self.transfer.handlers())  # PULL_OBJECT, TRANSFER_STATS
        await self.transfer.start()
        self.listener.start()
        self.unix_name = self.listener.unix_name
        if self.cluster is not None:
            await self.cluster.start(self._handlers)  # registered in etcd from here on
        zsock, zpid = self._zygote
        self.pool = WorkerPool(loop, zsock, zpid, self._on_worker_exit)
        prestart = self.config.prestart_workers
        if prestart < 0:
            prestart = max(1, int(self.total["CPU"]))
        self.warm = prestart
        self._run(self.sched.keep_warm(self.warm))
        self.spawn(self._housekeeping())
        self.obs.start()  # observability hook: /metrics, dashboard, sampler

    async def wait_stopped(self) -> None:
        assert self.stopping is not None
        await self.stopping

    def stop(self, why: str) -> None:
        if self.stopping is not None and not self.stopping.done():
            logger.info("node daemon stopping: %s", why)
            self.stopping.set_result(None)

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.leave()  # first: peers see this node go at once
        if self.listener is not None:
            self.listener.close()
        await self.transfer.aclose()
        if self.pool is not None:
            self.pool.close()
        for peers in list(self.conns.values()):
            for peer in list(peers):
                if peer.conn is not None:
                    peer.conn.close()
        await self.obs.aclose()  # observability hook
        await self.cancel_tasks()
        await self.control.aclose()

    async def _housekeeping(self) -> None:
        keep = max(1, int(self.total["CPU"]))
        while True:
            await asyncio.sleep(1.0)
            if self.owner_pid is not None and not psutil.pid_exists(self.owner_pid):
                self.stop("the driver that started this node exited")
            self._run(
                self.sched.reap_idle(time.monotonic(), self.config.worker_idle_timeout_s, keep)
            )
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
        if self.cluster is not None:
            self.cluster.work.owner_gone(pid)  # its actors created on other nodes
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
        peer.reply(rid, [ins.worker_id, rec.address, self.node_id])

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
        shape = R.normalize({str(k): v for k, v in dict(msg.shape).items()})  # may refuse
        shape = split_affinity(shape)[0]  # a node affinity that reached its node is met
        key = (peer.conn.peer_id, msg.rid)
        self.lease_waiters[key] = (peer, msg.rid)
        self._run(self.sched.request_lease(key, shape, peer.conn.peer_id))
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
                    **self.obs.node_fields(),  # observability hook: MetricsExportPort
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
                    "role": self.sched.workers[wid].role.value
                    if wid in self.sched.workers
                    else "?",
                    "actors": len(self.sched.workers[wid].actors)
                    if wid in self.sched.workers
                    else 0,
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
                "transfer_address": list(self.transfer.address),
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
        rec = self.workers.get(peer.conn.peer_id) if peer.conn is not None else None
        self.obs.add_logs(rec.pid if rec is not None else None, msg.lines)  # observability hook
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
        oids = list(msg.oids)
        ready = self.store.open_now(oids, peer.conn.peer_id)
        if ready is not None:
            return ready
        return self.store.open_many(oids, peer.conn.peer_id)

    @handles(P.Tag.RELEASE_OBJECTS)
    def on_release_objects(self, peer: RpcPeer, msg: P.ReleaseObjectsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.store.release(list(msg.oids), peer.conn.peer_id)
        return DEFERRED

    @handles(P.Tag.FREE_OBJECTS)
    def on_free_objects(self, peer: RpcPeer, msg: P.FreeObjectsMsg, _b: list[bytes]) -> Any:
        self.store.free(list(msg.oids))
        return DEFERRED
