"""State queries: one node's rows of a kind of state, and merging across nodes.

:func:`node_rows` answers for one node daemon (what ``STATE_QUERY`` runs);
a cluster asks every node the same and combines the answers with
:func:`merge_rows`. Rows are dicts with Ray's field names. Every accessor of a
daemon's internals is in this module, so a daemon restructure changes only
here.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

from .._task_events import STATE_NAMES

__all__ = ["KINDS", "apply_filters", "merge_rows", "node_rows", "parse_filters", "summarize"]

KINDS = (
    "nodes",
    "actors",
    "tasks",
    "objects",
    "workers",
    "placement_groups",
    "logs",
    "task",
    "actor",
    "node",
)
_TERMINAL = ("FINISHED", "FAILED")


def parse_filters(filters: Any) -> list[tuple[str, str, str]]:
    """``[("state", "=", "ALIVE")]``, ``{"state": "ALIVE"}`` or ``["state=ALIVE"]`` -> triples.

    Raises:
        ValueError: a filter that is none of these forms.
    """
    if not filters:
        return []
    if isinstance(filters, dict):
        return [(str(k), "=", str(v)) for k, v in filters.items()]
    out = []
    for f in filters:
        if isinstance(f, str):
            op = "!=" if "!=" in f else "="
            key, _, value = f.partition(op)
            if not key or not _:
                raise ValueError(f"a filter is key=value or key!=value, not {f!r}")
            out.append((key.strip(), op, value.strip()))
        elif len(f) == 3 and f[1] in ("=", "!="):
            out.append((str(f[0]), str(f[1]), str(f[2])))
        else:
            raise ValueError(f"a filter is (key, '=' or '!=', value), not {f!r}")
    return out


def _match(row: dict[str, Any], key: str, op: str, value: str) -> bool:
    have = row.get(key)
    same = str(have).lower() == value.lower() or (have is None and value.lower() in ("", "none"))
    return same if op == "=" else not same


def apply_filters(rows: list[dict[str, Any]], filters: Any, limit: int) -> list[dict[str, Any]]:
    """The rows matching every filter, at most ``limit`` (0 = all)."""
    triples = parse_filters(filters)
    out = [r for r in rows if all(_match(r, k, op, v) for k, op, v in triples)]
    return out[:limit] if limit > 0 else out


def node_rows(
    daemon: Any, kind: str, filters: Any = None, limit: int = 0, options: Any = None
) -> list[dict[str, Any]]:
    """This node's rows of ``kind`` (one of :data:`KINDS`), filtered.

    ``task``, ``actor`` and ``node`` take ``options["id"]`` (an id or a unique prefix of
    one) and return one row or none.

    Raises:
        ValueError: an unknown kind or a malformed filter.
    """
    options = dict(options or {})
    if kind in ("task", "actor", "node"):
        want = str(options.get("id", "")).lower()
        rows = _ROWS[kind + "s"](daemon, {"detail": True})
        key = {"task": "task_id", "actor": "actor_id", "node": "node_id"}[kind]
        exact = [r for r in rows if r.get(key) == want]
        found = exact or [r for r in rows if want and str(r.get(key, "")).startswith(want)]
        if len(found) > 1:
            raise ValueError(f"{len(found)} {kind}s have ids starting with {want!r}: give more")
        return found
    fn = _ROWS.get(kind)
    if fn is None:
        raise ValueError(f"unknown kind of state {kind!r}: one of {', '.join(KINDS)}")
    return apply_filters(fn(daemon, options), filters, limit)


def _obs(daemon: Any) -> Any:
    return daemon.obs


def _node_id(daemon: Any) -> str:
    return daemon.node_id.hex()


def _pid_of(daemon: Any, worker_id: bytes | None) -> int | None:
    rec = daemon.workers.get(worker_id) if worker_id else None
    return rec.pid if rec is not None else None


def _nodes(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _this_node(daemon)
    if options.get("scope") != "node":  # a fan-out asks each node for its own row only
        rows += _cluster_members(daemon, rows[0]["node_id"])
    return rows


def _cluster_members(daemon: Any, me: str) -> list[dict[str, Any]]:
    """The other nodes of this node's cluster, as its membership table knows them."""
    cluster = getattr(daemon, "cluster", None)
    if cluster is None:
        return []
    return [
        {
            "node_id": n["NodeID"],
            "state": "ALIVE" if n["Alive"] else "DEAD",
            "node_ip": n["NodeManagerAddress"],
            "node_manager_address": n["NodeManagerAddress"],
            "node_manager_port": n["NodeManagerPort"],
            "metrics_export_port": n.get("MetricsExportPort"),
            "is_head_node": False,
            "pid": n.get("Pid"),
            "resources_total": dict(n.get("Resources") or {}),
        }
        for n in cluster.membership.table.nodes()
        if n["NodeID"] != me
    ]


def _this_node(daemon: Any) -> list[dict[str, Any]]:
    obs = _obs(daemon)
    store = daemon.store.stats()
    sample = obs.sample
    return [
        {
            "node_id": _node_id(daemon),
            "state": "ALIVE",
            "node_ip": daemon.address[0],
            "node_manager_address": daemon.address[0],
            "node_manager_port": daemon.address[1],
            "metrics_export_port": obs.metrics_port,
            "dashboard_url": obs.dashboard_url,
            "is_head_node": True,
            "pid": os.getpid(),
            "session": daemon.dirs.session,
            "uptime_s": round(time.time() - daemon.started_at, 1),
            "resources_total": dict(daemon.total),
            "resources_available": dict(daemon.sched.available),
            "workers": daemon.sched.counts(),
            "cpu_percent": sample.get("cpu_percent"),
            "mem_used": sample.get("mem_used"),
            "mem_total": sample.get("mem_total"),
            "store_used": store["used"],
            "store_capacity": store["capacity"],
            "store_objects": store["objects"],
            "store_spilled": store["spilled"],
        }
    ]


def _actors(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    node = _node_id(daemon)
    return [
        {
            "actor_id": a.actor_id.hex(),
            "class_name": a.class_name,
            "name": a.name or "",
            "namespace": a.namespace,
            "state": a.phase.value,
            "node_id": node,
            "pid": _pid_of(daemon, a.worker_id),
            "worker_id": a.worker_id.hex() if a.worker_id else None,
            "num_restarts": a.restarts,
            "max_restarts": a.max_restarts,
            "is_detached": a.detached,
            "required_resources": dict(a.shape),
            "death_cause": a.death_cause,
        }
        for a in daemon.actors.actors.values()
    ]


def _tasks(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    history = _obs(daemon).history.newest()
    if options.get("brief"):  # what counting by name and state needs (pages that push often)
        return [r.brief() for r in history]
    detail = bool(options.get("detail"))
    return [r.row(detail) for r in history]


def _objects(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    node = _node_id(daemon)
    return [
        {
            "object_id": o["object_id"],
            "object_size": o["size"],
            "state": o["state"],
            "owner_id": o["owner"],
            "pins": o["pins"],
            "spilled": o["spilled"],
            "node_id": node,
            "locations": [node],
        }
        for o in daemon.store.listing()
    ]


def _workers(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    node = _node_id(daemon)
    procs = _obs(daemon).sample.get("workers", {})
    out = []
    for wid, rec in daemon.workers.items():
        w = daemon.sched.workers.get(wid)
        p = procs.get(rec.pid, {})
        out.append(
            {
                "worker_id": wid.hex(),
                "pid": rec.pid,
                "node_id": node,
                "worker_type": "WORKER",
                "is_alive": True,
                "role": w.role.value if w is not None else "?",
                "actors": len(w.actors) if w is not None else 0,
                "cpu_percent": p.get("cpu_percent"),
                "rss": p.get("rss"),
            }
        )
    return out


def _placement_groups(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = getattr(daemon, "cluster", None)
    if cluster is not None:  # the cluster's groups, as this node knows them now
        return list(cluster.groups.rows())
    rows = daemon.sched.placement.table()
    for r in rows:
        r["bundles"] = (
            list(r["bundles"].values()) if isinstance(r["bundles"], dict) else r["bundles"]
        )
    return rows


def _logs(daemon: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    node = _node_id(daemon)
    after = options.get("after", 0)  # one number, or {node_id: seq} (a cluster's cursor)
    after = int(after.get(node, 0) if isinstance(after, dict) else after or 0)
    rows = _obs(daemon).logs.rows(after, int(options.get("tail", 1000)))
    for r in rows:
        r["node_id"] = node
    return rows


_ROWS = {
    "nodes": _nodes,
    "actors": _actors,
    "tasks": _tasks,
    "objects": _objects,
    "workers": _workers,
    "placement_groups": _placement_groups,
    "logs": _logs,
}


def merge_rows(
    kind: str, per_node: list[list[dict[str, Any]]], limit: int = 0
) -> list[dict[str, Any]]:
    """Combine the answers of several nodes to one query (a cluster's fan-out).

    Tasks seen by two nodes (an owner's pending event on one, the run on
    another) become one row: the one furthest along, with the other's times.
    """
    if kind != "tasks":
        rows = [r for rows in per_node for r in rows]
        return rows[:limit] if limit > 0 else rows
    by_id: dict[str, dict[str, Any]] = {}
    for rows in per_node:
        for r in rows:
            have = by_id.get(r["task_id"])
            if have is None or _progress(r) > _progress(have):
                if have is not None:
                    r = {**r, "creation_time_ms": _first(have, r, "creation_time_ms")}
                by_id[r["task_id"]] = r
            else:
                have["creation_time_ms"] = _first(have, r, "creation_time_ms")
    out = sorted(by_id.values(), key=lambda r: r.get("creation_time_ms") or 0, reverse=True)
    return out[:limit] if limit > 0 else out


def _progress(row: dict[str, Any]) -> int:
    state = row.get("state", "NIL")
    return STATE_NAMES.index(state) if state in STATE_NAMES else -1


def _first(a: dict[str, Any], b: dict[str, Any], key: str) -> Any:
    vals = [v for v in (a.get(key), b.get(key)) if v is not None]
    return min(vals) if vals else None


def summarize(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by name and state: ``{"total": N, "by_name": {name: {state: n}}, "by_state"}``."""
    key = "name" if kind == "tasks" else "class_name"
    by_name: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_state: collections.Counter[str] = collections.Counter()
    for r in rows:
        by_name[r.get(key) or "?"][r.get("state", "?")] += 1
        by_state[r.get("state", "?")] += 1
    return {
        "total": len(rows),
        "by_state": dict(by_state),
        "by_name": {n: dict(c) for n, c in sorted(by_name.items())},
    }
