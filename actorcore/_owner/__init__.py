"""The owner's side of tasks: a sans-IO core (:mod:`._tasks`) and its shell.

``TaskCore.handle(events, now) -> instructions`` holds leases, pipelining,
stealing, retries and cancellation; :class:`TaskSubmitter` feeds it on the
runtime's loop and carries its instructions out. Argument resolution for
tasks, actor calls and actor creation is one function, :func:`resolve_deps`.
"""

from ._actor_shell import ActorClients
from ._actors import ActorCore
from ._deps import resolve_deps
from ._task_shell import TaskSubmitter
from ._task_state import Lease, ShapeQueue, TaskSpec
from ._tasks import TaskCore

__all__ = [
    "ActorClients",
    "ActorCore",
    "Lease",
    "ShapeQueue",
    "TaskCore",
    "TaskSpec",
    "TaskSubmitter",
    "resolve_deps",
]
