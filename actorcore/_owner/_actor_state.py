"""What the owner's actor core holds: one client per actor called, and its calls."""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Any

from .._args import PreparedArgs
from .._ids import new_id

__all__ = ["ActorClient", "ActorState", "CallSpec", "Creation"]


_NO_REFS: list[Any] = []  # (shared: one list fewer per call in flight; never changed)


class ActorState(enum.Enum):
    RESOLVING = "resolving"  # where it runs is not known (yet, or again)
    ALIVE = "alive"  # calls go to ``peer``
    DEAD = "dead"  # every call fails with ``death``


class CallSpec:
    """One actor call as its caller knows it."""

    __slots__ = (
        "actor_id",
        "args",
        "class_name",
        "client",
        "epoch",
        "label",
        "method",
        "peer",
        "resolved",
        "retries_left",
        "return_ids",
        "rid",
        "stream",
        "task_id",
        "waiting",
    )

    def __init__(self, method: str, args: PreparedArgs, retries: int, num_returns: int) -> None:
        self.method = method
        self.label = method  # "Class.method", for task events
        self.args = args
        self.task_id = new_id()
        self.return_ids = [new_id()] if num_returns == 1 else [new_id() for _ in range(num_returns)]
        self.resolved: list[Any] = _NO_REFS  # replaced (never changed) once refs are resolved
        self.waiting = False  # for its ref arguments: holds the calls behind it
        self.retries_left = retries
        self.rid = 0  # of its last send; 0 if never sent
        self.peer: Any = None  # where it was sent last
        self.epoch = -1  # the incarnation it was sent to last (its reply counts only from there)
        self.stream = 0  # a streaming generator: its back-pressure + 1
        # the actor called, as the handle named it (a spec posted bare is its submission)
        self.actor_id = b""
        self.class_name = ""
        # set by the core once it has the call (before anything reads it)
        self.client: ActorClient = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<CallSpec {self.method} rid={self.rid}>"


class Creation:
    """An actor creation on its way to the daemon; ``notify`` gets the daemon's answer."""

    __slots__ = ("actor_id", "notify", "spec")

    def __init__(
        self, actor_id: bytes, spec: dict[str, Any], notify: Callable[[Any], None]
    ) -> None:
        self.actor_id = actor_id
        self.spec = spec
        self.notify = notify


class ActorClient:
    """This process's view of one actor it calls: where it runs, and the calls in order."""

    __slots__ = (
        "actor_id",
        "class_name",
        "death",
        "direct",
        "epoch",
        "held",
        "in_flight",
        "kill_when_idle",
        "locating",
        "max_task_retries",
        "node_id",
        "peer",
        "queue",
        "state",
    )

    def __init__(self, actor_id: bytes, class_name: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.class_name = class_name
        self.max_task_retries = max_task_retries
        self.state = ActorState.RESOLVING
        self.peer: Any = None
        self.node_id: bytes | None = None
        self.epoch = -1
        self.queue: collections.deque[CallSpec] = collections.deque()
        self.in_flight: dict[int, CallSpec] = {}
        self.death: BaseException | None = None
        self.locating = False  # a creation or a locate request is in flight
        self.kill_when_idle = False
        self.held: list[bytes] = []  # constructor arguments, kept for restarts
        # Published by the core after each batch, read by callers' threads: the
        # peer a new call may be sent to at once (alive, nothing queued), else None.
        self.direct: Any = None

    def describe(self) -> str:
        return f"actor {self.class_name} ({self.actor_id.hex()})"

    def __repr__(self) -> str:
        return f"<ActorClient {self.class_name} {self.state.value} epoch={self.epoch}>"
