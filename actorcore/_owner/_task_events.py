"""Events and instructions of the owner's task core (:mod:`._tasks`).

Events are what happened (a task was submitted, a lease was granted, a worker
replied, a timer fired, a node died); instructions are what the shell must do
(ask a daemon for a lease, push a task, complete a task's objects, start a
timer). The core never touches a socket or a clock.

Both are slotted dataclasses, made once and never changed; not ``frozen``,
because a frozen dataclass costs about four times as much to create and a few
are made per task on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._task_state import Lease, TaskSpec

__all__ = [
    "ArgsLost",
    "CancelChildren",
    "CancelTask",
    "Close",
    "DaemonLost",
    "DepsFailed",
    "DepsReady",
    "DiscardResults",
    "ForceKill",
    "LeaseFailed",
    "LeaseGranted",
    "LeaseRedirected",
    "LeaseRevoked",
    "LeaseUnreachable",
    "LingerOver",
    "NodeDied",
    "NotATask",
    "PeerClosed",
    "PushFailed",
    "PushTask",
    "RequestLease",
    "ResolveAgain",
    "ResolveDeps",
    "RetryLease",
    "ReturnLease",
    "SendCancel",
    "StallCheck",
    "StartTimer",
    "StealTasks",
    "SubmitTask",
    "TaskDone",
    "TaskFailed",
    "TaskRejected",
    "TaskReplied",
    "TasksReturned",
]

# --- events --------------------------------------------------------------------------------


@dataclass(slots=True)
class SubmitTask:
    """A new task: resolve its arguments, then run it."""

    spec: TaskSpec


@dataclass(slots=True)
class DepsReady:
    """Every top-level ObjectRef argument of ``spec`` is ready: ``[i, kind, data, oid]`` each."""

    spec: TaskSpec
    resolved: list[Any]


@dataclass(slots=True)
class DepsFailed:
    """A top-level argument of ``spec`` failed: so does the task."""

    spec: TaskSpec
    error: BaseException


@dataclass(slots=True)
class LeaseGranted:
    """A worker (reachable through ``peer``) is ours; ``node_id`` is where it runs.

    The node may be another than the one whose daemon was asked (a spill).
    """

    rid: int
    worker_id: bytes
    peer: Any
    node_id: bytes | None = None


@dataclass(slots=True)
class LeaseUnreachable:
    """A worker was granted but died before it could be reached."""

    rid: int
    worker_id: bytes
    node_id: bytes | None = None


@dataclass(slots=True)
class LeaseRedirected:
    """The daemon asked says: ask the daemon of ``node_id`` (at ``daemon``) instead."""

    rid: int
    node_id: bytes
    daemon: Any


@dataclass(slots=True)
class LeaseFailed:
    """A lease request was refused (an impossible shape) or its daemon is gone."""

    rid: int
    error: BaseException


@dataclass(slots=True)
class TaskReplied:
    """The worker of ``lease`` ran the task pushed as ``rid``: ``[kind, data, nested]`` each."""

    lease: Lease
    rid: int
    results: list[Any]


@dataclass(slots=True)
class ArgsLost:
    """The worker could not get an argument of ``rid`` (every copy it was told of is
    gone with a node): resolve the arguments again, after a pause."""

    lease: Lease
    rid: int
    error: BaseException


@dataclass(slots=True)
class ResolveAgain:
    """The pause after :class:`ArgsLost` is over: resolve ``spec``'s arguments again."""

    spec: TaskSpec


@dataclass(slots=True)
class TaskRejected:
    """The worker answered ``rid`` with a system error (not a task exception)."""

    lease: Lease
    rid: int
    error: BaseException


@dataclass(slots=True)
class PushFailed:
    """The connection to the worker of ``lease`` broke before ``rid`` was answered."""

    lease: Lease
    rid: int
    error: BaseException


@dataclass(slots=True)
class TasksReturned:
    """A worker handed back tasks it had not started (it blocked, or we stole them)."""

    peer: Any
    rids: list[int]
    blocked: bool


@dataclass(slots=True)
class PeerClosed:
    """A connection ended; leases behind it are gone (their tasks fail separately)."""

    peer: Any


@dataclass(slots=True)
class LeaseRevoked:
    """The daemon wants this worker back: push no more, return it once idle."""

    worker_id: bytes


@dataclass(slots=True)
class CancelTask:
    """``ac.cancel`` of the ref ``oid``."""

    oid: bytes
    force: bool
    recursive: bool


@dataclass(slots=True)
class ForceKill:
    """A forced cancel's grace is over: if ``spec`` still runs on ``lease``, its worker
    did not end itself (a loop starved by a C call holding the GIL, or blocked by an
    async task): the daemon kills it."""

    spec: TaskSpec
    lease: Lease


@dataclass(slots=True)
class CancelChildren:
    """The task ``parent`` (running in this process) was cancelled: cancel what it submitted."""

    parent: bytes
    force: bool


@dataclass(slots=True)
class RetryLease:
    """Ask again for a lease of ``key``'s shape (a node asked before could not be reached)."""

    key: Any


@dataclass(slots=True)
class LingerOver:
    """A lease's linger timer fired; return it if it has been idle for ``linger_s``."""

    lease: Lease


@dataclass(slots=True)
class StallCheck:
    """The stall timer fired: look for pipelines stuck behind a long task."""


@dataclass(slots=True)
class NodeDied:
    """A node is gone: its leases are lost, a lease request sent to it is asked again."""

    node_id: bytes


@dataclass(slots=True)
class DaemonLost:
    """The local node daemon is gone: every waiting task fails."""

    error: BaseException


@dataclass(slots=True)
class Close:
    """The runtime stops: return every lease."""


# --- instructions ------------------------------------------------------------------------


@dataclass(slots=True)
class ResolveDeps:
    """Wait for the top-level ObjectRef arguments of ``spec``; answer DepsReady/DepsFailed."""

    spec: TaskSpec


@dataclass(slots=True)
class RequestLease:
    """Ask a daemon for a worker of ``shape`` (the local one when ``node_id`` is None)."""

    rid: int
    shape: dict[str, float]
    node_id: bytes | None = None
    daemon: Any = None
    args: dict[bytes, int] | None = None  # {node: bytes} of the first task's store args


@dataclass(slots=True)
class ReturnLease:
    """Give a worker back (``kill``: it could not be reached, the daemon should end it)."""

    worker_id: bytes
    kill: bool
    node_id: bytes | None = None


@dataclass(slots=True)
class PushTask:
    """Send ``spec`` to the worker of ``lease`` as request ``spec.rid``."""

    lease: Lease
    spec: TaskSpec


@dataclass(slots=True)
class StealTasks:
    """Ask the worker behind ``peer`` to hand back the tasks it has not started."""

    peer: Any


@dataclass(slots=True)
class SendCancel:
    """Tell the worker behind ``peer`` to cancel a task it runs."""

    peer: Any
    task_id: bytes
    force: bool
    recursive: bool


@dataclass(slots=True)
class StartTimer:
    """Feed ``event`` back after ``delay`` seconds."""

    delay: float
    event: Any


@dataclass(slots=True)
class TaskDone:
    """The task's results are final: complete its objects, release its arguments."""

    spec: TaskSpec
    results: list[Any]
    node_id: bytes | None


@dataclass(slots=True)
class TaskFailed:
    """The task failed for good with ``error``: so do its objects; release its arguments."""

    spec: TaskSpec
    error: BaseException


@dataclass(slots=True)
class DiscardResults:
    """An attempt's results are dropped (it is retried): release the refs nested inside."""

    results: list[Any]


@dataclass(slots=True)
class NotATask:
    """``oid`` is not a pending task of this process (maybe an actor call): pass the cancel on."""

    oid: bytes
    force: bool
    recursive: bool
