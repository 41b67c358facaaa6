"""What each dashboard page shows, as JSON-ready dicts built from state rows.

``rows(kind, filters, limit, options)`` is the observer's query function (one
node now; a cluster's fan-out later), so these builders do not care where the
rows come from.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ._query import summarize

__all__ = ["VIEWS", "view_payload"]

Rows = Callable[..., list[dict[str, Any]]]
RECENT_TASKS = 200


def _overview(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    actors = rows("actors")
    tasks = rows("tasks")
    return {
        "nodes": rows("nodes"),
        "workers": rows("workers"),
        "actors_by_state": dict(collections.Counter(a["state"] for a in actors)),
        "tasks_by_state": dict(collections.Counter(t["state"] for t in tasks)),
    }


def _actors(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"actors": rows("actors")}


def _actor(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    found = rows("actor", options={"id": arg})
    if not found:
        return {"actor": None, "calls": [], "logs": []}
    actor = found[0]
    calls = rows("tasks", [("actor_id", "=", actor["actor_id"])], 50)
    prefix = actor["class_name"]
    logs = [
        line
        for line in rows("logs", options={"tail": 5000})
        if line["pid"] == actor["pid"] and str(line["label"]).startswith(prefix)
    ]
    return {"actor": actor, "calls": calls, "logs": logs[-200:]}


def _tasks(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    tasks = rows("tasks")
    failed = [t for t in tasks if t["state"] == "FAILED"][:50]
    return {
        "summary": summarize("tasks", tasks),
        "recent": tasks[:RECENT_TASKS],
        "failed": failed,
    }


def _objects(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"objects": rows("objects", limit=1000)}


def _logs(rows: Rows, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    after = int(state.get("after", 0))
    lines = rows("logs", options={"after": after, "tail": 2000})
    if lines:
        state["after"] = lines[-1]["seq"]
    if arg:
        lines = [ln for ln in lines if str(ln["pid"]) == arg or str(ln["label"]).startswith(arg)]
    return {"lines": lines, "append": after > 0}


VIEWS: dict[str, Callable[[Rows, str, dict[str, Any]], dict[str, Any]]] = {
    "overview": _overview,
    "actors": _actors,
    "actor": _actor,
    "tasks": _tasks,
    "objects": _objects,
    "logs": _logs,
}


def view_payload(rows: Rows, view: str, arg: str, state: dict[str, Any]) -> dict[str, Any]:
    """The data of page ``view`` (``arg``: an actor id, a log filter); ``state`` is per client.

    Raises:
        KeyError: an unknown page.
    """
    return {"view": view, "arg": arg, **VIEWS[view](rows, arg, state)}
