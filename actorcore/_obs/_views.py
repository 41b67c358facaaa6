"""What each dashboard page shows, as JSON-ready dicts built from state rows.

``await rows(kind, filters, limit, options)`` is the observer's query
(:meth:`NodeObserver.query`: this node now, a cluster's fan-out later), so
these builders do not care where the rows come from.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any

from ._query import summarize

__all__ = ["VIEWS", "view_payload"]

Rows = Callable[..., Awaitable[list[dict[str, Any]]]]
RECENT_TASKS = 200


async def _overview(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    actors = await rows("actors")
    tasks = await rows("tasks", options={"brief": True})
    return {
        "nodes": await rows("nodes"),
        "workers": await rows("workers"),
        "actors_by_state": dict(collections.Counter(a["state"] for a in actors)),
        "tasks_by_state": dict(collections.Counter(t["state"] for t in tasks)),
    }


async def _actors(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"actors": await rows("actors")}


async def _actor(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    found = await rows("actor", options={"id": arg})
    if not found:
        return {"actor": None, "calls": [], "logs": []}
    actor = found[0]
    calls = await rows("tasks", [("actor_id", "=", actor["actor_id"])], 50)
    prefix = actor["class_name"]
    logs = [
        line
        for line in await rows("logs", options={"tail": 5000})
        if line["pid"] == actor["pid"]
        and line.get("node_id") == actor.get("node_id")
        and str(line["label"]).startswith(prefix)
    ]
    return {"actor": actor, "calls": calls, "logs": logs[-200:]}


async def _tasks(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summarize("tasks", await rows("tasks", options={"brief": True})),
        "recent": await rows("tasks", limit=RECENT_TASKS),
        "failed": await rows("tasks", [("state", "=", "FAILED")], 50),
    }


async def _objects(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"objects": await rows("objects", limit=1000)}


async def _logs(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    after: dict[str, int] = state.setdefault("after", {})  # per node: its lines are numbered
    append = bool(after)
    lines = await rows("logs", options={"after": dict(after), "tail": 2000})
    for ln in lines:
        node = ln.get("node_id", "")
        after[node] = max(after.get(node, 0), ln["seq"])
    if arg:
        lines = [
            ln
            for ln in lines
            if str(ln["pid"]) == arg
            or str(ln["label"]).startswith(arg)
            or str(ln.get("node_id", "")).startswith(arg)
        ]
    return {"lines": lines, "append": append}


VIEWS: dict[str, Callable[[Rows, str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "overview": _overview,
    "actors": _actors,
    "actor": _actor,
    "tasks": _tasks,
    "objects": _objects,
    "logs": _logs,
}


async def view_payload(rows: Rows, view: str, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    """The data of page ``view`` (``arg``: an actor id, a log filter); ``state`` is per client.

    Raises:
        KeyError: an unknown page.
    """
    return {"view": view, "arg": arg, **(await VIEWS[view](rows, arg, state))}
