"""The owner's side of tasks: a sans-IO core (:mod:`._tasks`) and its shell.

``TaskCore.handle(events, now) -> instructions`` holds leases, pipelining,
stealing, retries and cancellation; :class:`TaskSubmitter` feeds it on the
runtime's loop and carries its instructions out. Streaming generators have their own core
(:mod:`._streams`, fed by :class:`GeneratorStreams`), and so do the
objects (:mod:`._objects`: reference counts, borrowing, values and waiters,
fed by :class:`ObjectShell`). Argument resolution for tasks, actor calls and
actor creation is one function, :func:`resolve_deps`.
"""

from ._actor_shell import ActorClients
from ._actors import ActorCore
from ._deps import resolve_deps
from ._object_shell import ObjectShell
from ._objects import ObjectCore
from ._stream_shell import GeneratorStreams
from ._streams import StreamCore
from ._task_shell import TaskSubmitter
from ._task_state import Lease, ShapeQueue, TaskSpec
from ._tasks import TaskCore

__all__ = [
    "ActorClients",
    "ActorCore",
    "GeneratorStreams",
    "Lease",
    "ObjectCore",
    "ObjectShell",
    "ShapeQueue",
    "StreamCore",
    "TaskCore",
    "TaskSpec",
    "TaskSubmitter",
    "resolve_deps",
]
