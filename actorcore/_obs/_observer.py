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
        self.version = 0  # grows on every change worth pushing to browsers
        self._exec = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ac-sampler")
        self._sampler = _Sampler()

    # --- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the metrics and dashboard ports and start sampling (on the daemon's loop)."""
        loop = asyncio.get_running_loop()
        cfg = self.daemon.config
        if cfg.metrics_export_port >= 0:
            sock = bind(self.daemon.address[0], cfg.metrics_export_port)
            srv = LazyHttpServer(sock, self._metrics_app, "metrics")
            self.metrics_port = srv.port
            self.servers.append(srv)
        if cfg.include_dashboard and cfg.dashboard_port >= 0:
            sock = bind(cfg.dashboard_host, cfg.dashboard_port)
            srv = LazyHttpServer(sock, self._dashboard_app, "dashboard")
            self.dashboard_url = f"http://{srv.host}:{srv.port}"
            self.servers.append(srv)
        for srv in self.servers:
            srv.start(loop)
        self.daemon.spawn(self._sample_forever())

    async def aclose(self) -> None:
        for srv in self.servers:
            await srv.aclose()
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

    def add_logs(self, pid: int | None, lines: list[Any]) -> None:
        self.logs.add(lines, pid)
        self.version += 1

    # --- output -----------------------------------------------------------------------------

    def rows(self, kind: str, filters: Any = None, limit: int = 0, options: Any = None) -> Any:
        """This node's rows of ``kind`` (see :func:`._query.node_rows`)."""
        return node_rows(self.daemon, kind, filters, limit, options)

    async def query(
        self, kind: str, filters: Any = None, limit: int = 0, options: Any = None
    ) -> list[dict[str, Any]]:
        """Rows of ``kind`` for the dashboard and for ``STATE_QUERY`` without a scope.

        This node's rows now. A cluster replaces this with a fan-out: ask each
        node with ``options["scope"] = "node"`` (which always answers with that
        node's own rows) and combine the answers with :func:`._query.merge_rows`.
        """
        return self.rows(kind, filters, limit, options)

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

    @handles(P.Tag.STATE_QUERY)
    def on_state_query(self, peer: RpcPeer, msg: P.StateQueryMsg, _b: list[bytes]) -> Any:
        options = dict(msg.options or {})
        if options.get("scope") == "node":
            return self.obs.rows(msg.kind, msg.filters, int(msg.limit), options)
        return self.obs.query(msg.kind, msg.filters, int(msg.limit), options)
