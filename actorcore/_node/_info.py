"""The node daemon's information service: ``ac.nodes()``, resources, listings.

Read-only views of the node state for drivers and the ``actorcore`` command.
The node table comes from :meth:`~actorcore._node.NodeState.nodes`: this node
is alive while its daemon serves, and a cluster registry feeds the others
(:class:`~actorcore._node.NodesChanged`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _protocol as P
from .._rpc import RpcPeer, Service, handles
from ._actors import actor_row
from ._state import NodeState
from ._store import StoreService
from ._workers import WorkerRegistry

__all__ = ["InfoService"]


class InfoService(Service):
    """Answers CLUSTER_INFO and LIST_STATE."""

    def __init__(
        self,
        state: NodeState,
        workers: WorkerRegistry,
        store: StoreService,
        node_facts: Callable[[], dict[str, Any]],
        node_fields: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.state = state
        self.workers = workers
        self.store = store
        self.node_facts = node_facts
        self.node_fields = node_fields  # extra fields of this node's ac.nodes() row

    @handles(P.Tag.CLUSTER_INFO)
    def on_cluster_info(self, peer: RpcPeer, msg: P.ClusterInfoMsg, _b: list[bytes]) -> Any:
        if msg.what == "available":
            return dict(self.state.sched.available)
        if msg.what == "total":
            return dict(self.state.total)
        if msg.what == "nodes":
            rows = [n.row() for n in self.state.nodes()]
            if self.node_fields is not None:
                rows[0].update(self.node_fields())  # this node's
            return rows
        raise ValueError(f"unknown cluster information {msg.what!r}")

    @handles(P.Tag.LIST_STATE)
    def on_list_state(self, peer: RpcPeer, msg: P.ListStateMsg, _b: list[bytes]) -> Any:
        view = self._views.get(msg.kind)
        if view is None:
            raise ValueError(f"unknown state kind {msg.kind!r}")
        return view(self)

    def _actors(self) -> list[dict[str, Any]]:
        pid = self.workers.pid
        return [actor_row(a, pid(a.worker_id)) for a in self.state.actors.actors.values()]

    def _workers(self) -> list[dict[str, Any]]:
        out = []
        for wid, rec in self.workers.items():
            role, nactors = self.state.worker_view(wid)
            out.append({"worker_id": wid.hex(), "pid": rec.pid, "role": role, "actors": nactors})
        return out

    def _node(self) -> dict[str, Any]:
        return {
            **self.node_facts(),
            "resources_total": dict(self.state.total),
            "resources_available": dict(self.state.sched.available),
            "workers": self.state.sched.counts(),
        }

    _views: dict[str, Callable[[InfoService], Any]] = {
        "actors": _actors,
        "workers": _workers,
        "objects": lambda self: self.store.listing(),
        "placement_groups": lambda self: self.state.sched.placement.table(),
        "store": lambda self: self.store.stats(),
        "node": _node,
    }
