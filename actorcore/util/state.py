"""The state API: what runs where, as lists of dicts with Ray's field names.

Works in a driver after ``ac.init()`` (asks its node) and in any process on
a machine that runs ``actorcore start`` (asks that node)::

    from actorcore.util import state
    state.list_actors(filters=[("state", "=", "ALIVE")])
    state.list_tasks(filters={"name": "f"}, limit=10)
    state.summarize_tasks()

Filters are ``(key, "=" | "!=", value)`` triples, a ``{key: value}`` dict,
or ``"key=value"`` strings; values compare as text, case-insensitively.

In a cluster the node asked asks every live node (in parallel, a few seconds
at most each) and merges the answers; nodes that did not answer are named in
a :class:`UnreachableNodesWarning` (and dead nodes are ``DEAD`` rows of
``list_nodes``), so a dead or stuck node never hangs a query
(``query(kind, options={"timeout": 2.0})`` changes the 5 s).
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import _global as G
from .. import _protocol as P
from .._obs._query import merge_rows, parse_filters, summarize
from .._rpc import next_rid
from ..errors import BlockingCallError

__all__ = [
    "UnreachableNodesWarning",
    "get_actor",
    "get_node",
    "get_task",
    "list_actors",
    "list_logs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "list_workers",
    "query",
    "summarize_actors",
    "summarize_tasks",
]

DEFAULT_LIMIT = 100


class UnreachableNodesWarning(RuntimeWarning):
    """Some live nodes did not answer a state query in time: the answer lacks their rows."""

    def __init__(self, kind: str, unreachable: list[dict[str, Any]]) -> None:
        self.unreachable = unreachable
        who = ", ".join(f"{u['node_id'][:12]} ({u['error']})" for u in unreachable)
        super().__init__(f"list {kind}: {len(unreachable)} node(s) did not answer: {who}")


def query(
    kind: str,
    filters: Any = None,
    limit: int = DEFAULT_LIMIT,
    options: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``kind`` from the node (``node``: a node.json dict, for tools without init),
    in a cluster from every live node.

    Raises:
        ValueError: an unknown kind or a malformed filter.
        ConnectionError: no node to ask.
    """
    opts = {**(options or {}), "partial": True}
    msg = P.StateQueryMsg(
        next_rid(), kind, [list(f) for f in parse_filters(filters)], int(limit), opts
    )
    rt = G.runtime
    if node is None and rt is not None:
        if rt.on_loop_thread():
            raise BlockingCallError("the state API blocks; call it off the runtime's loop thread")
        rows = rt.call_daemon(msg)
    else:
        rows = _ask_node(node, msg)
    if isinstance(rows, dict):
        if rows.get("unreachable"):
            warnings.warn(UnreachableNodesWarning(kind, rows["unreachable"]), stacklevel=3)
        rows = rows["rows"]
    return merge_rows(kind, [list(rows)], limit)


def _ask_node(node: dict[str, Any] | None, msg: Any) -> Any:
    from .._cli import _ask
    from .._driver import find_local_node

    return _ask(node or find_local_node(), msg)


def list_nodes(filters: Any = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Nodes: ``node_id``, ``state``, ``node_ip``, resources, CPU/memory/store use."""
    return query("nodes", filters, limit)


def list_actors(filters: Any = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Actors: ``actor_id``, ``class_name``, ``name``, ``state``, ``node_id``, ``pid``, ..."""
    return query("actors", filters, limit)


def list_tasks(
    filters: Any = None, limit: int = DEFAULT_LIMIT, detail: bool = False
) -> list[dict[str, Any]]:
    """Recent tasks and actor calls, newest first: ``task_id``, ``name``, ``state``,
    ``node_id``, ``worker_pid``, ``error_message``, times; ``detail`` adds ``events``."""
    return query("tasks", filters, limit, {"detail": detail})


def list_objects(filters: Any = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Objects in the stores: ``object_id``, ``object_size``, ``owner_id``, ``locations``, ..."""
    return query("objects", filters, limit)


def list_workers(filters: Any = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Worker processes: ``worker_id``, ``pid``, ``node_id``, role, CPU and memory."""
    return query("workers", filters, limit)


def list_placement_groups(filters: Any = None, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Placement groups: ``placement_group_id``, ``name``, ``state``, ``bundles``, ..."""
    return query("placement_groups", filters, limit)


def list_logs(after: int = 0, tail: int = 1000) -> list[dict[str, Any]]:
    """Recent lines printed by workers (numbered by ``seq``), oldest first."""
    return query("logs", None, 0, {"after": after, "tail": tail})


def _one(kind: str, id_: str) -> dict[str, Any] | None:
    rows = query(kind, None, 1, {"id": id_})
    return rows[0] if rows else None


def get_actor(actor_id: str) -> dict[str, Any] | None:
    """One actor by id (or a unique prefix of it); None when unknown."""
    return _one("actor", actor_id)


def get_task(task_id: str) -> dict[str, Any] | None:
    """One task by id (or prefix), with its state changes in ``events``; None when unknown."""
    return _one("task", task_id)


def get_node(node_id: str) -> dict[str, Any] | None:
    """One node by id (or prefix); None when unknown."""
    return _one("node", node_id)


def summarize_tasks() -> dict[str, Any]:
    """Tasks counted by name and state: ``{"total", "by_state", "by_name": {name: {state: n}}}``."""
    return summarize("tasks", query("tasks", None, 0))


def summarize_actors() -> dict[str, Any]:
    """Actors counted by class and state."""
    return summarize("actors", query("actors", None, 0))
