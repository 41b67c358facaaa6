"""Observability of a node in a cluster: fan-out queries, the dashboard's home, log forwarding.

:class:`ClusterObserver` is the cluster part of a node's
:class:`~._observer.NodeObserver` (only on nodes that joined a cluster):

* :meth:`ClusterObserver.query` asks every live node the same state query
  (``scope=node``: each answers for itself), in parallel with a timeout, and
  merges the answers (:func:`merge_cluster`); a node that does not answer in
  time is reported (``unreachable``), never waited for longer;
* the dashboard is a service one node runs for the whole cluster: the node
  holding the global placer (``on_placer_elected``/``on_placer_lost``) or,
  while no placer election drives it, the oldest live node that offers a
  dashboard. Its address is published under ``/dashboard`` in etcd, attached
  to the node's lease (gone when the node is);
* worker output is forwarded to the drivers on other nodes, its prefix naming
  the node it came from. Only to nodes that have drivers: a node tells each
  peer when it gets its first driver and when its last one leaves
  (``LOG_SUBSCRIBE``, and again to nodes that join), so output costs one
  message per node with drivers, not one per node of the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

from .. import _protocol as P
from .._rpc import next_rid
from ._query import apply_filters, merge_rows, parse_filters

__all__ = [
    "DASHBOARD_KEY",
    "ClusterObserver",
    "driver_dashboard",
    "merge_cluster",
    "read_dashboard",
]

logger = logging.getLogger(__name__)

DASHBOARD_KEY = b"/dashboard"
FANOUT_TIMEOUT_S = 5.0
DUTY_EVERY_S = 1.0
_ONE = {"task": "task_id", "actor": "actor_id", "node": "node_id"}


def _after(options: dict[str, Any], node: str) -> int:
    """A node's log cursor: ``after`` is one number (one node) or ``{node_id: seq}``."""
    after = options.get("after", 0)
    if isinstance(after, dict):
        return int(after.get(node, 0))
    return int(after or 0)


def merge_cluster(
    kind: str,
    per_node: list[list[dict[str, Any]]],
    limit: int,
    options: dict[str, Any],
    absent: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The rows of several nodes' answers to one query, as one answer.

    ``absent`` are rows for nodes that gave none (dead or unreachable ones,
    for ``nodes`` and ``node``).

    Raises:
        ValueError: an id prefix that matches more than one row across nodes.
    """
    if kind == "logs":
        rows = sorted((r for rows in per_node for r in rows), key=lambda r: r["time"])
        tail = int(options.get("tail", 1000))
        return rows[-tail:] if tail > 0 else rows
    if kind in _ONE:
        rows = (
            merge_rows("tasks", per_node)
            if kind == "task"
            else [r for rows in per_node for r in rows]
        )
        if not rows and absent:
            want = str(options.get("id", "")).lower()
            rows = [r for r in absent if want and str(r.get(_ONE[kind], "")).startswith(want)]
        ids = {r.get(_ONE[kind]) for r in rows}
        if len(ids) > 1:
            given = options.get("id")
            raise ValueError(f"{len(ids)} {kind}s have ids starting with {given!r}: give more")
        return rows[:1]
    rows = _merge_objects(per_node) if kind == "objects" else merge_rows(kind, per_node)
    if absent:
        rows += absent
    return rows[:limit] if limit > 0 else rows


def _merge_objects(per_node: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per object: copies on several nodes (pulled ones) list every location."""
    by_id: dict[str, dict[str, Any]] = {}
    for rows in per_node:
        for r in rows:
            have = by_id.get(r["object_id"])
            if have is None:
                by_id[r["object_id"]] = {**r, "locations": list(r.get("locations") or [])}
                continue
            have["locations"] += [n for n in r.get("locations") or [] if n not in have["locations"]]
            have["spilled"] = bool(have.get("spilled")) and bool(r.get("spilled"))
            have["pins"] = (have.get("pins") or 0) + (r.get("pins") or 0)
    return list(by_id.values())


class ClusterObserver:
    """Fan-out, dashboard duty and log forwarding of one node of a cluster."""

    def __init__(self, obs: Any, cluster: Any) -> None:
        self.obs = obs
        self.cluster = cluster
        self.membership = cluster.membership
        self.me: bytes = cluster.node_id
        self.placer_driven = False  # a placer election says who serves the dashboard
        self._holder = False
        self._published: bytes | None = None
        self._logs: list[Any] = []
        self._flushing = False
        self._wanted_by: set[bytes] = set()  # peers with drivers: they get our output
        self._told: dict[bytes, bool] = {}  # what each peer last heard from us
        self._telling: set[bytes] = set()
        self._prefix = f", ip={self.membership.spec.node_ip}, node={self.me.hex()[:8]}"

    def prepare_record(self, metrics_port: int | None, offers_dashboard: bool) -> None:
        """What peers learn of this node's observability (before it registers)."""
        rec = self.membership.record
        rec["metrics_port"] = int(metrics_port or 0)
        rec["dashboard"] = bool(offers_dashboard)

    def start(self) -> None:
        election = getattr(self.cluster, "election", None)  # the global placer's (etcd)
        if election is not None and hasattr(election, "subscribe"):
            self.placer_driven = True
            election.subscribe(self.on_placer_elected, self.on_placer_lost)
        else:
            self._duty_step()  # the first node of a cluster serves at once
        self.obs.daemon.spawn(self._duty())

    # --- state queries -------------------------------------------------------------------

    async def query(
        self, kind: str, filters: Any = None, limit: int = 0, options: Any = None
    ) -> Any:
        """Rows of ``kind`` from every live node, merged.

        With ``options["partial"]`` the answer is ``{"rows": [...], "unreachable":
        [{"node_id", "error"}]}``, else the rows alone. ``options["timeout"]``
        bounds the wait for each node (default 5 s).
        """
        options = dict(options or {})
        partial = bool(options.pop("partial", False))
        timeout = min(float(options.pop("timeout", FANOUT_TIMEOUT_S)), 60.0)
        triples = [list(f) for f in parse_filters(filters)]
        sub_limit = 0 if kind in _ONE else int(limit)
        peers = [n for n in self.membership.table.live if n != self.me]

        def opts(node: bytes) -> dict[str, Any]:
            o = {**options, "scope": "node"}
            if kind == "logs":
                o["after"] = _after(options, node.hex())
            return o

        async def ask(node: bytes) -> Any:
            msg = P.StateQueryMsg(next_rid(), kind, triples, sub_limit, opts(node))
            return await asyncio.wait_for(self.membership.call_node(node, msg), timeout)

        pending = asyncio.gather(*(ask(n) for n in peers), return_exceptions=True)
        try:
            per_node = [self.obs.rows(kind, triples, sub_limit, opts(self.me))]
        finally:
            answers = await pending
        unreachable = []
        for node, answer in zip(peers, answers, strict=True):
            if isinstance(answer, ValueError):
                raise answer  # a bad filter or an ambiguous id: every node says the same
            if isinstance(answer, BaseException):
                why = f"{type(answer).__name__}: {answer}".rstrip(": ")
                unreachable.append({"node_id": node.hex(), "error": why})
                logger.info("node %s did not answer a state query: %s", node.hex(), why)
            else:
                per_node.append(list(answer))
        absent = None
        if kind in ("actors", "actor"):
            absent = await self._actors_of_dead_nodes(per_node, timeout)
            if kind == "actors":
                absent = apply_filters(absent, triples, 0)
        if kind in ("nodes", "node"):
            absent = self._absent_nodes({u["node_id"]: u["error"] for u in unreachable})
            if kind == "nodes":
                absent = apply_filters(absent, triples, 0)
        rows = merge_cluster(kind, per_node, int(limit), options, absent)
        return {"rows": rows, "unreachable": unreachable} if partial else rows

    async def _actors_of_dead_nodes(
        self, per_node: list[list[dict[str, Any]]], timeout: float
    ) -> list[dict[str, Any]]:
        """Actors whose node died (no live node answers for them), from their records in etcd.

        Read only when the cluster has lost a node: a healthy cluster pays nothing.
        """
        table = self.membership.table
        dead = set(table.members) - set(table.live)
        if not dead:
            return []
        try:
            records = await asyncio.wait_for(self.cluster.actor_table.list(), timeout)
        except Exception as e:  # etcd away: the live nodes' rows alone
            logger.info("cannot read the actor records: %s", e)
            return []
        known = {r.get("actor_id") for rows in per_node for r in rows}
        out = []
        for rec in records:
            aid = rec.actor_id.hex()
            if rec.node_id not in dead or aid in known:
                continue
            out.append(
                {
                    "actor_id": aid,
                    "class_name": rec.class_name,
                    "name": rec.name or "",
                    "namespace": rec.namespace,
                    "state": "DEAD",
                    "node_id": rec.node_id.hex(),
                    "pid": None,
                    "worker_id": None,
                    "num_restarts": rec.epoch,
                    "is_detached": rec.detached,
                    "death_cause": rec.death_cause or f"its node {rec.node_id.hex()} died",
                }
            )
        return out

    def _absent_nodes(self, unreachable: dict[str, str]) -> list[dict[str, Any]]:
        """Rows for nodes that gave no answer: dead ones, and live ones that did not answer."""
        out = []
        for n in self.membership.table.nodes():
            node_id = n["NodeID"]
            if n["Alive"] and node_id not in unreachable:
                continue
            out.append(
                {
                    "node_id": node_id,
                    "state": "UNREACHABLE" if n["Alive"] else "DEAD",
                    "node_ip": n["NodeManagerAddress"],
                    "node_manager_address": n["NodeManagerAddress"],
                    "node_manager_port": n["NodeManagerPort"],
                    "metrics_export_port": n.get("MetricsExportPort"),
                    "pid": n.get("Pid"),
                    "resources_total": dict(n.get("Resources") or {}),
                    "error": unreachable.get(node_id),
                }
            )
        return out

    # --- the dashboard -------------------------------------------------------------------

    def on_placer_elected(self) -> None:
        """This node holds the global placer: serve the cluster's dashboard."""
        self.placer_driven = True
        self._hold(True)

    def on_placer_lost(self) -> None:
        self.placer_driven = True
        self._hold(False)

    def _first_node(self) -> bool:
        """Whether this node is the oldest live node that offers a dashboard."""
        live = self.membership.table.live
        offering = [
            (r.get("start_time", 0.0), n) for n, r in live.items() if r.get("dashboard", True)
        ]
        return bool(offering) and min(offering)[1] == self.me

    def _duty_step(self) -> None:
        if not self.placer_driven:
            self._hold(self._first_node())

    def _hold(self, want: bool) -> None:
        if want and not self._holder:
            self._holder = self.obs.start_dashboard()
            if self._holder:
                logger.info(
                    "this node serves the cluster's dashboard at %s", self.obs.dashboard_url
                )
        elif not want and self._holder:
            self._holder = False
            self.obs.daemon.spawn(self.obs.stop_dashboard())
            self._published = None

    async def _duty(self) -> None:
        """Follow the oldest live node (without a placer election); keep the URL published."""
        checks = 0
        while True:
            self._duty_step()
            self._announce()  # nodes that joined since, and sends that failed
            try:
                if self._holder and (self._published is None or checks % 5 == 0):
                    await self._publish()
                elif not self._holder and self._published is not None:
                    self._published = None
            except Exception as e:  # etcd away: try again next time
                logger.info("could not publish the dashboard's address: %s", e)
                self._published = None
            checks += 1
            self.obs.version += 1  # other nodes change unseen: browsers get a fresh view
            await asyncio.sleep(DUTY_EVERY_S)  # the duty's pacing, not synchronization

    async def _publish(self) -> None:
        store = self.membership.store
        mine = {"url": self.obs.dashboard_url, "node_id": self.me.hex()}
        value = bytes(msgpack.packb(mine, use_bin_type=True))
        kv = await store.get(DASHBOARD_KEY)
        if kv is None or kv.value != value or kv.lease != self.membership.lease:
            await store.put(DASHBOARD_KEY, value, lease=self.membership.lease)
        self._published = value

    async def dashboard(self, wait_s: float = 5.0) -> dict[str, Any]:
        """Where the cluster's dashboard is (``dashboard_url`` None: no node serves one).

        While a node that offers one is live but none is published yet (an
        election, a start), waits for it up to ``wait_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            info = await read_dashboard(self.membership.store)
            offered = any(r.get("dashboard", True) for r in self.membership.table.live.values())
            if info.get("url") or not offered or loop.time() >= deadline:
                break
            await asyncio.sleep(0.1)  # polling etcd for the key, bounded by the deadline
        url = info.get("url")
        return {
            "dashboard_url": url,
            "dashboard_token": self.obs.token if url else None,
            "node_id": info.get("node_id"),
        }

    # --- logs -----------------------------------------------------------------------------

    def is_peer(self, conn_id: bytes | None) -> bool:
        return conn_id is not None and conn_id != self.me and conn_id in self.membership.table.live

    def on_log_subscribe(self, peer_id: bytes, wanted: bool) -> None:
        """A peer has drivers (``wanted``) or has none left. (A node may say so before
        this node's watch has seen it join: output goes only to live ones.)"""
        if wanted and peer_id != self.me:
            self._wanted_by.add(peer_id)
        else:
            self._wanted_by.discard(peer_id)

    def drivers_changed(self) -> None:
        """This node's first driver came or its last one left: tell the peers."""
        self._announce()

    def _announce(self) -> None:
        """Tell every live peer whether this node wants its workers' output (each
        is told again only when that changes, or when it joined since)."""
        live = self.membership.table.live
        for node in [n for n in self._told if n not in live]:
            del self._told[node]
        self._wanted_by -= set(self.membership.table.members) - set(live)  # dead ones
        want = bool(self.obs.daemon.drivers)
        for node in live:
            if node != self.me and node not in self._telling:
                if self._told.get(node, False) != want:
                    self._telling.add(node)
                    self.obs.daemon.spawn(self._tell(node, want))

    async def _tell(self, node: bytes, want: bool) -> None:
        try:
            await self.membership.send_node(node, P.LogSubscribeMsg(want))
            self._told[node] = want
        except (OSError, ConnectionError, TimeoutError, LookupError) as e:
            logger.debug("log subscription to %s not sent (next duty tick): %s", node.hex(), e)
        finally:
            self._telling.discard(node)
        if bool(self.obs.daemon.drivers) != want:  # changed meanwhile
            self._announce()

    def forward_logs(self, lines: list[Any]) -> None:
        """Send lines this node's workers printed to the drivers of other nodes."""
        if not self._wanted_by:
            return
        p = self._prefix
        self._logs.extend([k, str(label) + p, text] for k, label, text in lines)
        if not self._flushing:
            self._flushing = True
            self.obs.daemon.spawn(self._flush_logs())

    async def _flush_logs(self) -> None:
        try:
            while self._logs:
                lines, self._logs = self._logs, []
                msg = P.LogBatchMsg(lines)
                live = self.membership.table.live
                for node in [n for n in self._wanted_by if n in live]:
                    try:
                        await self.membership.send_node(node, msg)
                        self.obs.counters["log_batches_forwarded"] += 1
                    except (OSError, ConnectionError, TimeoutError, LookupError) as e:
                        logger.debug("log lines to %s lost: %s", node.hex(), e)
        finally:
            self._flushing = False


async def read_dashboard(store: Any) -> dict[str, Any]:
    """The published ``{"url", "node_id"}`` of a cluster's dashboard (``{}``: none)."""
    kv = await store.get(DASHBOARD_KEY)
    if kv is None:
        return {}
    return dict(msgpack.unpackb(kv.value, raw=False))


def driver_dashboard(rt: Any, default: dict[str, Any]) -> dict[str, Any]:
    """The cluster's dashboard, as a driver's node knows it (``default`` if it cannot say)."""
    msg = P.StateQueryMsg(next_rid(), "dashboard", [], 0, {})
    try:
        found = rt.call_daemon(msg, timeout=10.0)
    except Exception as e:  # init() goes on without it
        logger.info("cannot ask for the cluster's dashboard: %s", e)
        return default
    d = dict(found[0]) if found else {}
    if not d.get("dashboard_url"):
        return default
    return {"dashboard_url": d["dashboard_url"], "dashboard_token": d.get("dashboard_token")}
