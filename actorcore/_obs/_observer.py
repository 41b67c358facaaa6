"""The node daemon's observability: history, samples, ``/metrics`` and the dashboard.

:class:`NodeObserver` belongs to a node daemon (``daemon.obs``). It folds the
task-event batches processes send, samples CPU and memory off the loop every
few seconds, and serves Prometheus metrics and the dashboard on their own
ports (lazily: see :mod:`._http`). :class:`ObservabilityMixin` adds the
daemon's message handlers; the daemon's own code only creates, starts and
closes the observer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import hmac
import logging
import time
from typing import Any

import psutil

from .. import _protocol as P
from .._rpc import DEFERRED, RpcPeer, handles
from ._history import LogRing, TaskHistory
from ._http import LazyHttpServer, bind
from ._metrics import UserMetrics, render
from ._query import node_rows

__all__ = ["NodeObserver", "ObservabilityMixin", "dashboard_token"]

logger = logging.getLogger(__name__)

SAMPLE_EVERY_S = 2.0


def dashboard_token(cluster_token: bytes) -> str:
    """The dashboard's login token: derived from the cluster token, useless on the wire."""
    return hmac.new(cluster_token, b"actorcore-dashboard", hashlib.sha256).hexdigest()[:32]


class _Sampler:
    """CPU and memory of the machine and of processes (runs on its own thread only)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)

    def sample(self, pids: list[int]) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        out: dict[str, Any] = {
            "cpu_percent": psutil.cpu_percent(None),
            "mem_used": vm.total - vm.available,
            "mem_total": vm.total,
            "workers": {},
            "at": time.time(),
        }
        for pid in list(self.procs):
            if pid not in pids:
                del self.procs[pid]
        for pid in pids:
            try:
                p = self.procs.get(pid)
                if p is None:
                    p = self.procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)
                with p.oneshot():
                    out["workers"][pid] = {
                        "cpu_percent": p.cpu_percent(None),
                        "rss": p.memory_info().rss,
                    }
            except psutil.Error:
                self.procs.pop(pid, None)
        return out


class NodeObserver:
    """History, samples and web servers of one node daemon."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        cfg = daemon.config
        self.history = TaskHistory(daemon.node_id.hex(), cfg.task_history_size)
        self.logs = LogRing()
        self.users = UserMetrics()
        self.counters: collections.Counter[str] = collections.Counter()  # filled by the cluster
        self.sample: dict[str, Any] = {}
        self.token = dashboard_token(daemon.token)
        self.metrics_port: int | None = None
        self.dashboard_url: str | None = None
        self.servers: list[LazyHttpServer] = []
        self.dashboard: LazyHttpServer | None = None
        self.version = 0  # grows on every change worth pushing to browsers
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ac-sampler")
        self._sampler = _Sampler()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        if cfg.metrics_export_port >= 0:  # bound now: its port goes into the node's record
            sock = bind(daemon.address[0], cfg.metrics_export_port)
            srv = LazyHttpServer(sock, self._metrics_app, "metrics")
            self.metrics_port = srv.port
            self.servers.append(srv)
        self.cluster: Any = None  # the cluster part (a node of a cluster only)
        if getattr(daemon, "cluster", None) is not None:
            from ._cluster import ClusterObserver

            self.cluster = ClusterObserver(self, daemon.cluster)
            self.cluster.prepare_record(self.metrics_port, self.offers_dashboard)

    # --- life --------------------------------------------------------------------------

    @property
    def offers_dashboard(self) -> bool:
        cfg = self.daemon.config
        return bool(cfg.include_dashboard and cfg.dashboard_port >= 0)

    def start(self) -> None:
        """Serve metrics (and the dashboard) and start sampling (on the daemon's loop).

        A single node serves its dashboard itself; in a cluster one node serves
        it for all (see :class:`._cluster.ClusterObserver`).
        """
        self._loop = loop = asyncio.get_running_loop()
        for srv in self.servers:
            srv.start(loop)
        if self.cluster is not None:
            self.cluster.start()
        else:
            self.start_dashboard()
        self.daemon.spawn(self._sample_forever())

    def start_dashboard(self) -> bool:
        """Serve the dashboard (on the daemon's loop); False: this node offers none."""
        if self.dashboard is not None:
            return True
        if not self.offers_dashboard or self._loop is None or self._closed:
            return False
        cfg = self.daemon.config
        try:
            sock = bind(cfg.dashboard_host, cfg.dashboard_port)
        except OSError as e:
            logger.error("cannot serve the dashboard on %s: %s", cfg.dashboard_host, e)
            return False
        srv = LazyHttpServer(sock, self._dashboard_app, "dashboard")
        srv.start(self._loop)
        self.dashboard = srv
        self.dashboard_url = f"http://{srv.host}:{srv.port}"
        return True

    async def stop_dashboard(self) -> None:
        srv, self.dashboard = self.dashboard, None
        self.dashboard_url = None
        if srv is not None:
            await srv.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for srv in self.servers:
            await srv.aclose()
        await self.stop_dashboard()
        self._exec.shutdown(wait=False, cancel_futures=True)

    def ready_info(self) -> dict[str, Any]:
        """What the node reports about these services (node.json, ``init()``)."""
        return {
            "metrics_export_port": self.metrics_port,
            "dashboard_url": self.dashboard_url,
            "dashboard_token": self.token if self.dashboard_url else None,
        }

    def node_fields(self) -> dict[str, Any]:
        """Extra fields of this node's ``ac.nodes()`` entry (Ray's names)."""
        return {"MetricsExportPort": self.metrics_port, "DashboardURL": self.dashboard_url}

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pids = [rec.pid for rec in self.daemon.workers.values()]
            try:
                self.sample = await loop.run_in_executor(self._exec, self._sampler.sample, pids)
            except RuntimeError:  # the executor is shut down: the daemon is closing
                return
            self.version += 1
            await asyncio.sleep(SAMPLE_EVERY_S)

    # --- input ------------------------------------------------------------------------------

    def ingest(self, worker_id: bytes | None, pid: int | None, msg: P.TaskEventsMsg) -> None:
        if msg.counts[0]:
            self.history.ingest_packed(msg.events, list(msg.counts), worker_id, pid)
        if msg.samples:
            self.users.ingest(list(msg.samples))
        self.version += 1

    def drivers_changed(self) -> None:
        """The node got its first driver or lost its last one."""
        if self.cluster is not None:
            self.cluster.drivers_changed()

    def add_logs(self, pid: int | None, lines: list[Any], conn_id: bytes | None = None) -> None:
        """Lines a process sent (``conn_id``: its connection's id); a peer node's
        forwarded lines are for this node's drivers only (kept on their node)."""
        if self.cluster is not None:
            if self.cluster.is_peer(conn_id):
                return
            self.cluster.forward_logs(lines)
        self.logs.add(lines, pid)
        self.version += 1

    # --- output -----------------------------------------------------------------------------

    def rows(self, kind: str, filters: Any = None, limit: int = 0, options: Any = None) -> Any:
        """This node's rows of ``kind`` (see :func:`._query.node_rows`)."""
        return node_rows(self.daemon, kind, filters, limit, options)

    async def query(
        self, kind: str, filters: Any = None, limit: int = 0, options: Any = None
    ) -> Any:
        """Rows of ``kind`` for the dashboard and for ``STATE_QUERY`` without a scope.

        This node's rows; in a cluster, every live node's (a fan-out: each node
        is asked with ``options["scope"] = "node"`` and answers with its own
        rows; see :meth:`._cluster.ClusterObserver.query`).
        """
        if kind == "dashboard":
            return [await self.dashboard_info()]
        if self.cluster is not None:
            return await self.cluster.query(kind, filters, limit, options)
        if dict(options or {}).get("partial"):
            return {"rows": self.rows(kind, filters, limit, options), "unreachable": []}
        return self.rows(kind, filters, limit, options)

    async def dashboard_info(self) -> dict[str, Any]:
        """Where this node's (or its cluster's) dashboard is."""
        if self.cluster is not None:
            try:
                return await self.cluster.dashboard()
            except Exception as e:  # etcd away: say so, not fail
                logger.info("cannot read the dashboard's address: %s", e)
        url = self.dashboard_url
        return {"dashboard_url": url, "dashboard_token": self.token if url else None}

    def snapshot(self) -> dict[str, Any]:
        """The numbers ``/metrics`` shows, taken on the loop."""
        d = self.daemon
        h = self.history
        actors: collections.Counter[str] = collections.Counter(
            a.phase.value for a in d.actors.actors.values()
        )
        return {
            "node_id": d.node_id.hex(),
            "tasks_by_state": h.counts_by_state(),  # folds first: totals below are current
            "finished": h.finished_total,
            "failed": h.failed_total,
            "actors_by_state": dict(actors),
            "workers_by_role": d.sched.counts(),
            "worker_count": len(d.workers),
            "procs": dict(self.sample.get("workers", {})),
            "cpu_percent": self.sample.get("cpu_percent", 0.0),
            "mem_used": self.sample.get("mem_used", 0),
            "store": d.store.stats(),
            "counters": self._counters(),
            "queues": {"leases": len(d.sched.leases), "actors": len(d.sched.actor_queue)},
            "events_total": h.events_total,
            "latency": h.latency_seconds,
            "run": h.run_seconds,
        }

    def _counters(self) -> dict[str, int]:
        out = dict(self.counters)
        transfer = getattr(self.daemon, "transfer", None)  # peer-to-peer pulls (cluster)
        if transfer is not None:
            st = transfer.stats
            out["bytes_pulled"] = st.bytes_received
            out["bytes_pushed"] = st.bytes_sent
            out["pulls_done"] = st.pulls_done
            out["pulls_failed"] = st.pulls_failed
        cluster = getattr(self.daemon, "cluster", None)
        if cluster is not None:  # process-ended notices to and from peer daemons
            out["owner_gone_sent"] = cluster.work.owner_gone_sent
            out["owner_gone_received"] = cluster.work.owner_gone_received
        return out

    def metrics_text(self) -> bytes:
        return render(self.snapshot(), self.users)

    def _metrics_app(self) -> Any:
        from ._web import metrics_app

        return metrics_app(self)

    def _dashboard_app(self) -> Any:
        from ._dashboard import dashboard_app

        return dashboard_app(self)


class ObservabilityMixin:
    """The node daemon's handlers for task events and state queries."""

    obs: NodeObserver
    workers: dict[bytes, Any]

    @handles(P.Tag.TASK_EVENTS)
    def on_task_events(self, peer: RpcPeer, msg: P.TaskEventsMsg, _b: list[bytes]) -> Any:
        assert peer.conn is not None
        pid_ = peer.conn.peer_id
        rec = self.workers.get(pid_)
        self.obs.ingest(pid_ if rec is not None else None, rec.pid if rec else None, msg)
        return DEFERRED

    @handles(P.Tag.LOG_SUBSCRIBE)
    def on_log_subscribe(self, peer: RpcPeer, msg: P.LogSubscribeMsg, _b: list[bytes]) -> Any:
        if self.obs.cluster is not None and peer.conn is not None:
            self.obs.cluster.on_log_subscribe(peer.conn.peer_id, bool(msg.wanted))
        return DEFERRED

    @handles(P.Tag.STATE_QUERY)
    def on_state_query(self, peer: RpcPeer, msg: P.StateQueryMsg, _b: list[bytes]) -> Any:
        options = dict(msg.options or {})
        if options.get("scope") == "node":
            return self.obs.rows(msg.kind, msg.filters, int(msg.limit), options)
        return self.obs.query(msg.kind, msg.filters, int(msg.limit), options)
