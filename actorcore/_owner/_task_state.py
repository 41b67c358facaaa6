"""What the owner's task core holds: tasks, leases, and a queue per resource shape."""

from __future__ import annotations

import collections
from typing import Any

from .._args import FunctionDescriptor, PreparedArgs
from .._ids import new_id

__all__ = ["Lease", "ShapeQueue", "TaskSpec"]


class TaskSpec:
    """One task as its owner knows it."""

    __slots__ = (
        "arg_losses",
        "args",
        "cancelled",
        "fn",
        "key",
        "lease",
        "lineage_deps",
        "name",
        "opts",
        "parent",
        "resolved",
        "retries_left",
        "return_ids",
        "rid",
        "shape",
        "stream",
        "task_id",
    )

    def __init__(
        self,
        fn: FunctionDescriptor,
        name: str,
        args: PreparedArgs,
        shape: dict[str, float],
        retries: int,
        opts: int,
        num_returns: int,
        parent: bytes | None = None,
    ) -> None:
        self.task_id = new_id()
        self.fn = fn
        self.name = name
        self.args = args
        self.shape = shape
        self.key: Any = tuple(sorted(shape.items()))
        self.retries_left = retries
        self.opts = opts
        self.return_ids = [new_id() for _ in range(num_returns)]
        self.parent = parent  # the task (running here) that submitted this one
        self.rid = 0
        self.lease: Lease | None = None
        self.cancelled = False
        self.resolved: list[Any] = []
        self.lineage_deps: list[Any] | None = None  # its ObjectRef arguments, for lineage
        self.arg_losses = 0  # times a worker could not get its arguments
        self.stream = 0  # a streaming generator: its back-pressure + 1

    def __repr__(self) -> str:
        return f"<TaskSpec {self.name} {self.task_id.hex()[:8]}>"


class Lease:
    """A worker leased for one shape, with the tasks pushed to it."""

    __slots__ = (
        "idle_since",
        "in_flight",
        "key",
        "lingering",
        "node_id",
        "paused",
        "peer",
        "progress",
        "revoked",
        "worker_id",
    )

    def __init__(
        self, worker_id: bytes, peer: Any, node_id: bytes | None, now: float, key: Any = None
    ) -> None:
        self.worker_id = worker_id
        self.key = key  # of the shape it was leased for
        self.peer = peer
        self.node_id = node_id
        self.in_flight: dict[int, TaskSpec] = {}
        self.revoked = False
        self.paused = False
        self.idle_since = now  # when it last ran out of tasks
        self.lingering = False  # a linger timer is running
        self.progress = now  # when it last started being busy or finished a task

    def stalled(self, now: float, stall_s: float) -> bool:
        return bool(self.in_flight) and now - self.progress >= stall_s

    def __repr__(self) -> str:
        return f"<Lease {self.worker_id.hex()[:8]} in_flight={len(self.in_flight)}>"


class ShapeQueue:
    """Tasks of one resource shape waiting for a worker, and the leases for that shape."""

    __slots__ = ("key", "leases", "pending", "requesting", "requesting_node", "shape")

    def __init__(self, key: Any, shape: dict[str, float]) -> None:
        self.key = key
        self.shape = shape
        self.pending: collections.deque[TaskSpec] = collections.deque()
        self.leases: list[Lease] = []
        self.requesting = 0  # rid of the lease request in flight, 0 if none
        self.requesting_node: bytes | None = None  # the node it went to (None: local)
