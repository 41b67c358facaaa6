"""The node daemon: one per machine, owning workers, scheduling, store and actors.

It answers drivers and workers over authenticated connections: leases for
tasks, actor creation and lookup, the object store's control calls, cluster
information, and worker output for the drivers. Every decision is made by one
sans-IO :class:`~actorcore._node.NodeState`; the daemon turns requests and
process events into its events (:meth:`NodeDaemon.apply`) and carries out the
instructions it returns. Services composed here (:class:`ActorService`,
:class:`StoreService`, :class:`InfoService`, and more to come, e.g. cluster
membership) each declare their handlers; the daemon merges their tables. A bad
request gets an error reply; it never ends the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import psutil

from actorcore.gcs import ActorTable, EmbeddedControlStore, NameRegistry
from actorcore.scheduler import LocalScheduler
from actorcore.store import Arena, SessionDirs

from .. import _protocol as P
from .._config import Config
from .._obs._observer import NodeObserver, ObservabilityMixin
from .._rpc import DEFERRED, RpcPeer, Service, handles
from .._tls import TlsContexts
from .._transfer import TransferConfig, TransferService
from .._transport import Listener
from ..errors import ProtocolError
from . import _events as E
from ._actors import ActorService
from ._info import InfoService
from ._lifecycle import ActorLifecycle
from ._packages import RuntimeEnvService
from ._pool import WorkerPool
from ._state import NodeState
from ._store import StoreService
from ._workers import WorkerRec, WorkerRegistry

__all__ = ["NodeDaemon"]

logger = logging.getLogger(__name__)

_PLACEMENTS = (E.LeaseRequested, E.ActorCreated)
WORKERS_READY_S = 30.0  # a cluster node joins once it can start workers, or after this


def _node_resources(config: Config, capacity: int, driver_node: bool) -> dict[str, float]:
    # a node a driver starts to join a cluster offers only what the driver asked for
    ncpu = config.num_cpus or (0.0 if driver_node else float(os.cpu_count() or 1))
    total = {
        "CPU": ncpu,
        **({"GPU": config.num_gpus} if config.num_gpus else {}),
        **config.resources,
    }
    total["memory"] = float(psutil.virtual_memory().total)
    total["object_store_memory"] = float(capacity)
    return total


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
        self.address: tuple[str, int] = listen_sock.getsockname()[:2]
        self.unix_name = unix_name or ""
        self.started_at = time.time()
        driver_node = (cluster or {}).get("started_by") == "driver"
        total = _node_resources(config, capacity, driver_node)
        me = E.NodeInfo(node_id, self.address[0], self.address[1], total, os.getpid())
        self.state = NodeState(
            me,
            capacity=capacity,
            max_shared_workers=max(1, int(total["CPU"])),
            actors_per_shared_worker=config.actors_per_shared_worker,
            idle_timeout_s=config.worker_idle_timeout_s,
        )
        self.workers = WorkerRegistry()
        self.store = StoreService(self.state.store, arena, dirs, self.apply, self._process_peer)
        self.tls = TlsContexts.load((cluster or {}).get("tls"))  # None: TLS off
        self.transfer = TransferService(
            self.store,
            node_id=node_id,
            token=token,
            host=self.address[0],
            config=TransferConfig.from_config(config),
            tls=self.tls,
        )
        self.control: Any = EmbeddedControlStore()
        self.actor_table = ActorTable(self.control)
        self.names = NameRegistry(self.control)
        self.cluster: Any = None
        if cluster:  # etcd-backed control state; the etcd client loads only in a cluster
            from .._cluster_node import join_cluster

            self.cluster = join_cluster(self, cluster)
        self.actor_service = ActorService(
            self.state, self.workers, self.apply, self.actor_table, self.names
        )
        self.runtime_env = RuntimeEnvService(
            os.path.join(dirs.disk_dir, "runtime_env"),
            daemon=self,
            max_bytes=config.runtime_env_max_bytes,
        )
        self.obs = NodeObserver(self)  # observability hook (actorcore._obs)
        self.info = InfoService(
            self.state, self.workers, self.store, self._facts, self.obs.node_fields
        )
        self.services: list[Service] = [
            self,
            self.store,
            self.actor_service,
            self.info,
            self.runtime_env,
            _ObservabilityService(self.obs, self.workers),
        ]
        self.conns: dict[bytes, set[RpcPeer]] = {}
        self.drivers: dict[bytes, RpcPeer] = {}
        self.embedded_driver: bytes | None = None
        self.stopping: asyncio.Future[None] | None = None
        self.fenced = ""  # why this node fenced itself (then it rejoins as a new node)
        self.pool: WorkerPool | None = None
        self.listener: Listener | None = None
        self._peers_seen: tuple[frozenset[bytes], frozenset[bytes]] | None = None
        self._exited: set[int] = set()  # workers whose death was handled before their exit
        self._a_worker: asyncio.Future[None] | None = None  # done once a worker registered
        # monotonic times of this daemon's start: "serving" (listening, workers asked
        # for), "workers_ready" (it can start work),
        # "joining" (its cluster registration began), "joined" (tests read the order)
        self.started: dict[str, float] = {}
        self._queue: collections.deque[Any] = collections.deque()
        self._applying = False
        self._carriers: dict[type, Callable[[Any], None]] = {
            E.StartWorker: self._start_workers,
            E.StopWorker: self._stop_worker,
            E.GrantLease: self._grant,
            E.RevokeLease: lambda i: self._send_to(i.owner, P.RevokeLeaseMsg(i.worker_id)),
            E.StartActor: self.actor_service.start_actor,
            E.DropActor: self.actor_service.drop_actor,
            E.Persist: self.actor_service.persist,
            E.ReleaseName: self.actor_service.release_name,
            E.Reply: self._reply,
            E.Warn: lambda i: self._warn_drivers(i.text),
            E.Later: self._later,
            E.WakeReaders: self.store.wake,
            E.DeleteFile: self.store.delete_file,
            E.RevokePins: self.store.revoke,
            E.Refused: self._refused,
        }

    # --- views for the cluster part (read-only) ------------------------------------

    @property
    def actors(self) -> ActorLifecycle:
        return self.state.actors

    @property
    def sched(self) -> LocalScheduler:
        return self.state.sched

    @property
    def total(self) -> dict[str, float]:
        return self.state.total

    # --- life ---------------------------------------------------------------------

    def handler_table(self) -> dict[int, Callable[..., Any]]:
        """Every composed service's handlers, merged (a tag handled twice is a bug)."""
        table: dict[int, Callable[..., Any]] = {}
        parts = [svc.bound_handlers() for svc in self.services]
        parts.append(self.transfer.handlers())  # PULL_OBJECT, TRANSFER_STATS
        for handlers in parts:
            for tag, fn in handlers.items():
                if tag in table:
                    raise RuntimeError(f"two node services handle {P.Tag(tag).name}")
                table[tag] = fn
        self.runtime_env.install(table)  # work naming a runtime env waits for its packages
        return table

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        handlers = self.handler_table()
        self.listener = Listener(
            loop,
            token=self.token,
            role="daemon",
            my_id=self.node_id,
            make_receiver=lambda: RpcPeer(self, handlers),
            on_connection=self._on_connection,
            sock=self._listen_sock,
            **self.config.wire_limits(),
            unix_name=self.unix_name or None,
            tls=self.tls,
        )
        await self.transfer.start()
        self.listener.start()
        self.unix_name = self.listener.unix_name
        zsock, zpid = self._zygote
        self.pool = WorkerPool(loop, zsock, zpid, self._on_worker_exit)
        prestart = self.config.prestart_workers
        if prestart == -2:  # the default: a warm worker where failures need one at once
            prestart = 0 if self.cluster is None else 1
        elif prestart < 0:
            prestart = max(1, int(self.state.total["CPU"]))
        self.state.warm = prestart
        self._a_worker = loop.create_future()
        self.apply(E.NodeStarted(time.monotonic()))
        if self.cluster is not None:
            # last: once registered, peers (and the placer) send work here at once, so
            # only once this node can start it (a fresh start, or back after fencing)
            self.spawn(self.cluster.warm_up())  # meanwhile: the etcd connection
            await self._workers_ready(WORKERS_READY_S)
            self.started["joining"] = time.monotonic()
            await self.cluster.start(handlers)  # registered in etcd from here on
            self.started["joined"] = time.monotonic()
            self._feed_peers()
        self.spawn(self._housekeeping())
        self.obs.start()  # observability hook: /metrics, dashboard, sampler

    async def _workers_ready(self, timeout: float) -> None:
        """Wait until this node can run work: its fork server has its modules imported
        and, with workers prestarted, the first one registered (work placed here then
        starts at once instead of waiting for a worker's boot). After ``timeout`` it
        goes on, saying so (a node that cannot start workers is no better off out)."""
        assert self.pool is not None and self._a_worker is not None
        self.started["serving"] = time.monotonic()
        waits: set[asyncio.Future[None]] = {self.pool.ready}
        if self.state.warm > 0:
            waits.add(self._a_worker)
        _done, pending = await asyncio.wait(waits, timeout=timeout)
        if pending:
            logger.error("no worker started within %.0f s: joining the cluster anyway", timeout)
        self.started["workers_ready"] = time.monotonic()

    async def wait_stopped(self) -> None:
        assert self.stopping is not None
        await self.stopping

    def fence(self, why: str) -> None:
        """This node may have lost its lease (:mod:`actorcore._fencing`): stop its
        actors and tasks now (kill every worker), then stop; the daemon process
        then rejoins as a new node (:func:`actorcore._daemon.main`)."""
        if self.fenced:
            return
        self.fenced = why
        logger.error("node %s fenced: %s", self.node_id.hex(), why)
        if self.pool is not None:
            self.pool.close()  # actors and tasks stop at once; no worker answers any more
        self.stop(f"fenced: {why}")

    def stop(self, why: str) -> None:
        if self.stopping is not None and not self.stopping.done():
            logger.info("node daemon stopping: %s", why)
            self.apply(E.NodeStopping())
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
        for svc in self.services:
            await svc.cancel_tasks()
        await self.control.aclose()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.owner_pid is not None and not psutil.pid_exists(self.owner_pid):
                self.stop("the driver that started this node exited")
            self.apply(E.Tick(time.monotonic()))
            if self.cluster is not None:
                self._feed_peers()

    def _feed_peers(self) -> None:
        """Tell the node state which other nodes the cluster registry knows (and which
        are alive), when that changed; hard node affinity is checked against it."""
        assert self.cluster is not None
        table = self.cluster.membership.table
        seen = (frozenset(table.members), frozenset(table.live))
        if seen == self._peers_seen:
            return
        self._peers_seen = seen
        nodes = tuple(
            E.NodeInfo(
                nid, r["address"], r["port"], dict(r["resources"]), r["pid"], nid in table.live
            )
            for nid, r in table.members.items()
        )
        self.apply(E.NodesChanged(nodes))

    def _facts(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id.hex(),
            "address": list(self.address),
            "transfer_address": list(self.transfer.address),
            "pid": os.getpid(),
            "session": self.dirs.session,
            "uptime_s": time.time() - self.started_at,
            "drivers": len(self.drivers),
            "runtime_env": self.runtime_env.statistics(),
        }

    # --- events in, instructions out ---------------------------------------------------

    def apply(self, event: Any) -> None:
        """Hand ``event`` to the node state and carry out what it returns.

        An event raised while instructions are being carried out (a grant that
        cannot be delivered) is queued and applied right after, never nested.

        Raises:
            ValueError, TypeError: the state refused ``event`` (bad input).
        """
        if self._applying:
            self._queue.append(event)
            return
        if self.cluster is not None and type(event) in _PLACEMENTS:
            self._feed_peers()  # node affinity is checked against the registry as it is now
        self._applying = True
        try:
            self._execute(self.state.handle(event))
            while self._queue:
                queued = self._queue.popleft()
                try:
                    self._execute(self.state.handle(queued))
                except Exception:
                    logger.exception("applying %s failed", type(queued).__name__)
        finally:
            self._applying = False

    def _execute(self, instrs: list[Any]) -> None:
        carriers = self._carriers
        for ins in instrs:
            carriers[type(ins)](ins)

    def _start_workers(self, ins: E.StartWorker) -> None:
        assert self.pool is not None
        if not ins.env:
            self.pool.start(ins.count)
            return
        env = self.runtime_env.worker_env(ins.env)
        if env is None:  # (never: work naming an env is let in once the env is ready)
            logger.error("no runtime env %s on this node: its workers are not started", ins.env)
            for _ in range(ins.count):
                self.apply(E.WorkerStartFailed(ins.env))
            return
        self.pool.start(ins.count, env.boot())

    def _stop_worker(self, ins: E.StopWorker) -> None:
        rec = self.workers.get(ins.worker_id)
        if rec is not None and self.pool is not None:
            self.pool.kill(rec.pid)

    def _grant(self, ins: E.GrantLease) -> None:
        peer, rid = ins.key
        rec = self.workers.get(ins.worker_id)
        if rec is None or peer.conn is None or peer.conn.closed:
            self.apply(E.GrantFailed(ins.worker_id, time.monotonic()))
            return
        peer.reply(rid, [ins.worker_id, rec.address, self.node_id])  # (the owner's: where)

    def _reply(self, ins: E.Reply) -> None:
        peer, rid = ins.waiter
        peer.reply(rid, ins.value)

    def _later(self, ins: E.Later) -> None:
        asyncio.get_running_loop().call_later(ins.delay_s, self.apply, ins.event)

    def _refused(self, ins: E.Refused) -> None:
        """An error about a one-way message: an error reply with request id 0."""
        logger.warning("refused a request of %s: %s", ins.client.hex(), ins.message)
        err = PermissionError(ins.message)
        self._send_to(
            ins.client, P.ErrorReplyMsg(0, "PermissionError", ins.message, pickle.dumps(err))
        )

    def _process_peer(self, process_id: bytes) -> RpcPeer | None:
        """The connection a driver or worker serves requests on (its runtime's own)."""
        peer = self.drivers.get(process_id)
        if peer is None:
            rec = self.workers.get(process_id)
            peer = rec.peer if rec is not None else None
        if peer is None or peer.conn is None or peer.conn.closed:
            return None
        return peer

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

    # --- connections and processes -------------------------------------------------------

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
            self.runtime_env.process_gone(pid)  # its unfinished uploads
            self.apply(E.ProcessGone(pid))
            if self.cluster is not None:
                self.cluster.work.owner_gone(pid)  # its actors created on other nodes
                self.cluster.groups.owner_gone(pid)  # its placement groups (not detached)
            if self.drivers.pop(pid, None) is not None:
                if not self.drivers:
                    self.obs.drivers_changed()  # (a cluster stops forwarding output here)
                if pid == self.embedded_driver:
                    self.stop("the driver that started this node exited")

    def _worker_gone(self, rec: WorkerRec, why: str) -> None:
        self.workers.remove(rec)
        assert self.pool is not None
        if rec.pid in self.pool.pids:
            self._exited.add(rec.pid)  # its exit notice is still to come
        self.pool.kill(rec.pid)
        self.apply(E.WorkerDied(rec.worker_id, why))

    def _on_worker_exit(self, pid: int, code: int) -> None:
        rec = self.workers.of_pid(pid)
        if rec is None:
            if pid in self._exited:
                self._exited.discard(pid)  # its connection closed first: handled
            else:  # it died before registering
                self.apply(E.WorkerStartFailed(self.pool.env_of.get(pid, "") if self.pool else ""))
            return
        self._exited.discard(pid)
        self._worker_gone(rec, f"its worker process (pid {pid}) exited with code {code}")

    # --- registration -----------------------------------------------------------------

    @handles(P.Tag.REGISTER_WORKER)
    def on_register_worker(self, peer: RpcPeer, msg: P.RegisterWorkerMsg, _b: list[bytes]) -> Any:
        assert self.pool is not None
        if msg.pid not in self.pool.pids:
            raise ProtocolError(f"pid {msg.pid} is not a worker this daemon started")
        self.workers.add(WorkerRec(msg.worker_id, msg.pid, peer, list(msg.address)))
        env = self.runtime_env.worker_env(self.pool.env_of.get(msg.pid, ""))
        self.apply(E.WorkerStarted(msg.worker_id, time.monotonic(), env.digest if env else ""))
        if self._a_worker is not None and not self._a_worker.done():
            self._a_worker.set_result(None)  # this node can run work (its cluster join waits)
        if self.cluster is not None:  # how long the worker may serve (actorcore._fencing)
            vouch = self.cluster.membership.fencer.vouch_remaining()
            return {"sys_path": self.sys_path, "vouch_s": vouch}
        return {"sys_path": self.sys_path}

    @handles(P.Tag.REGISTER_DRIVER)
    def on_register_driver(self, peer: RpcPeer, msg: P.RegisterDriverMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        first = not self.drivers
        self.drivers[peer.conn.peer_id] = peer
        if first:
            self.obs.drivers_changed()  # (a cluster forwards other nodes' output here)
        if msg.embedded:
            self.embedded_driver = peer.conn.peer_id
        for path in msg.sys_path:
            if path not in self.sys_path:
                self.sys_path.append(path)
        return {"node_id": self.node_id, "job_id": msg.driver_id}

    @handles(P.Tag.LOG_BATCH)
    def on_log_batch(self, peer: RpcPeer, msg: P.LogBatchMsg, _b: list[bytes]) -> Any:
        self._broadcast_logs(list(msg.lines))
        conn_id = peer.conn.peer_id if peer.conn is not None else None
        rec = self.workers.get(conn_id) if conn_id is not None else None
        # observability hook (in a cluster it forwards to the other nodes' drivers)
        self.obs.add_logs(rec.pid if rec is not None else None, msg.lines, conn_id)
        return DEFERRED

    @handles(P.Tag.SHUTDOWN_NODE)
    def on_shutdown(self, peer: RpcPeer, msg: P.ShutdownNodeMsg, _b: list[bytes]) -> Any:
        asyncio.get_running_loop().call_soon(self.stop, "asked to shut down")
        return True

    # --- leases ----------------------------------------------------------------------------

    @handles(P.Tag.REQUEST_LEASE)
    def on_request_lease(self, peer: RpcPeer, msg: P.RequestLeaseMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        shape = {str(k): v for k, v in dict(msg.shape).items()}
        self.apply(E.LeaseRequested((peer, msg.rid), shape, peer.conn.peer_id))
        return DEFERRED

    @handles(P.Tag.RETURN_LEASE)
    def on_return_lease(self, peer: RpcPeer, msg: P.ReturnLeaseMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        owner = peer.conn.peer_id
        self.apply(E.LeaseReturned(msg.worker_id, owner, bool(msg.kill), time.monotonic()))
        return DEFERRED

    @handles(P.Tag.WORKER_BLOCKED)
    def on_worker_blocked(self, peer: RpcPeer, msg: P.WorkerBlockedMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        self.apply(E.WorkerBlocked(peer.conn.peer_id, bool(msg.blocked)))
        return DEFERRED


class _ObservabilityService(ObservabilityMixin, Service):
    """Task events and state queries (the handlers of :mod:`actorcore._obs`)."""

    def __init__(self, obs: NodeObserver, workers: WorkerRegistry) -> None:
        super().__init__()
        self.obs = obs
        self.workers = workers  # type: ignore[assignment]
