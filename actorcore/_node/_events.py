"""What the node state takes (events) and gives back (instructions): plain values.

Events come from the daemon's services: a request arrived, a worker started or
died, a process went away, a timer fired. Instructions are what only the
daemon can do: talk to a process, start or stop a worker, write a record,
arm a timer. Instructions the node's own machines give each other (place an
actor, the actor was placed, it left its worker) never leave
:class:`~actorcore._node.NodeState`.

A *waiter* is opaque here: the daemon passes whatever it needs to answer the
request later (its connection and request id) and gets it back in
:class:`Reply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actorcore.scheduler import GrantLease, RevokeLease, StartWorker, StopWorker
from actorcore.store import (
    Abort,
    ClientGone,
    DeleteFile,
    Free,
    Refused,
    RestoreDone,
    RevokePins,
    Seal,
    WakeReaders,
)

from ._lifecycle import ActorInfo, Persist, ReleaseName

__all__ = [
    "Abort",
    "ActorConstructed",
    "ActorConstructionFailed",
    "ActorCreated",
    "ActorKilled",
    "ActorWaited",
    "BundlesCommitted",
    "BundlesPrepared",
    "BundlesReleased",
    "ClientGone",
    "DeleteFile",
    "DropActor",
    "Free",
    "GrantFailed",
    "GrantLease",
    "GroupCreated",
    "GroupRemoved",
    "GroupWaited",
    "Later",
    "LeaseRequested",
    "LeaseReturned",
    "LeaseWithdrawn",
    "NodeEvent",
    "NodeInfo",
    "NodeInstruction",
    "NodeStarted",
    "NodeStopping",
    "NodesChanged",
    "Persist",
    "ProcessGone",
    "Refused",
    "ReleaseName",
    "Reply",
    "RestoreDone",
    "RevokeLease",
    "RevokePins",
    "Seal",
    "StartActor",
    "StartWorker",
    "StopWorker",
    "Tick",
    "UnknownActorExpired",
    "WakeReaders",
    "Warn",
    "WorkerBlocked",
    "WorkerDied",
    "WorkerStartFailed",
    "WorkerStarted",
]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as ``ac.nodes()`` shows it; ``alive`` comes from real state."""

    node_id: bytes
    host: str
    port: int
    resources: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    alive: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "NodeID": self.node_id.hex(),
            "Alive": self.alive,
            "NodeManagerAddress": self.host,
            "NodeManagerPort": self.port,
            "Resources": dict(self.resources),
            "Pid": self.pid,
        }


# --- events: the node ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """The daemon serves: keep workers warm; the node reports itself alive."""

    now: float


@dataclass(frozen=True, slots=True)
class NodeStopping:
    """The daemon stops: the node reports itself dead."""


@dataclass(frozen=True, slots=True)
class NodesChanged:
    """A cluster registry's view of the other nodes (replaces the previous one)."""

    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """Housekeeping, about once a second: stop long-idle workers, keep some warm."""

    now: float


# --- events: workers and leases ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerStarted:
    worker_id: bytes
    now: float = 0.0
    env: str = ""  # the runtime environment it was started with (its hash)


@dataclass(frozen=True, slots=True)
class WorkerStartFailed:
    """A worker died before it registered."""

    env: str = ""


@dataclass(frozen=True, slots=True)
class WorkerDied:
    worker_id: bytes
    why: str


@dataclass(frozen=True, slots=True)
class LeaseRequested:
    """``owner`` asks for a worker holding ``shape``; answered by :class:`GrantLease`."""

    key: Any
    shape: dict[str, float]
    owner: bytes


@dataclass(frozen=True, slots=True)
class LeaseWithdrawn:
    """A queued lease request leaves this node's queue unanswered (the cluster part
    sends it to another node); no-op if it was granted already."""

    key: Any


@dataclass(frozen=True, slots=True)
class LeaseReturned:
    """The holder gives a lease back (``kill``: its worker must not be reused)."""

    worker_id: bytes
    owner: bytes
    kill: bool = False
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class GrantFailed:
    """A granted lease could not be delivered (its requester is gone)."""

    worker_id: bytes
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerBlocked:
    worker_id: bytes
    blocked: bool


@dataclass(frozen=True, slots=True)
class ProcessGone:
    """Every connection of a process ended: its leases, actors, pins and objects go."""

    process_id: bytes


# --- events: actors and placement groups ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorCreated:
    info: ActorInfo


@dataclass(frozen=True, slots=True)
class ActorConstructed:
    actor_id: bytes
    worker_id: bytes
    address: list[Any]


@dataclass(frozen=True, slots=True)
class ActorConstructionFailed:
    actor_id: bytes
    worker_id: bytes
    cause: str


@dataclass(frozen=True, slots=True)
class ActorKilled:
    actor_id: bytes
    no_restart: bool


@dataclass(frozen=True, slots=True)
class ActorWaited:
    """A caller wants the actor's address once it is alive at ``min_epoch`` or later."""

    waiter: Any
    actor_id: bytes
    min_epoch: int


@dataclass(frozen=True, slots=True)
class UnknownActorExpired:
    """Callers of an actor this node never heard of stop waiting."""

    actor_id: bytes


@dataclass(frozen=True, slots=True)
class GroupCreated:
    pg_id: bytes
    bundles: list[dict[str, float]]
    strategy: str = "PACK"
    name: str = ""


@dataclass(frozen=True, slots=True)
class GroupWaited:
    waiter: Any
    pg_id: bytes


@dataclass(frozen=True, slots=True)
class GroupRemoved:
    pg_id: bytes


@dataclass(frozen=True, slots=True)
class BundlesPrepared:
    """A cluster group's coordinator asks this node to hold bundles (phase one);
    the waiter is answered ``[held, the node's available resources after]``."""

    waiter: Any
    pg_id: bytes
    attempt: int
    bundles: list[tuple[int, dict[str, float]]]
    coordinator: bytes


@dataclass(frozen=True, slots=True)
class BundlesCommitted:
    """Phase two: offer the bundles held for ``attempt``; answered like a prepare."""

    waiter: Any
    pg_id: bytes
    attempt: int


@dataclass(frozen=True, slots=True)
class BundlesReleased:
    """Give back bundles of a cluster group (``indexes`` empty: all of them); with
    ``coordinator`` set instead, the never-committed bundles it asked for."""

    pg_id: bytes
    indexes: tuple[int, ...] = ()
    coordinator: bytes | None = None


NodeEvent = (
    NodeStarted
    | NodeStopping
    | NodesChanged
    | Tick
    | WorkerStarted
    | WorkerStartFailed
    | WorkerDied
    | LeaseRequested
    | LeaseReturned
    | GrantFailed
    | WorkerBlocked
    | ProcessGone
    | ActorCreated
    | ActorConstructed
    | ActorConstructionFailed
    | ActorKilled
    | ActorWaited
    | UnknownActorExpired
    | GroupCreated
    | GroupWaited
    | GroupRemoved
    | BundlesPrepared
    | BundlesCommitted
    | BundlesReleased
    | Seal
    | Abort
    | Free
    | RestoreDone
    | ClientGone
)


# --- instructions (for the daemon) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartActor:
    """Ask worker ``worker_id`` to construct the actor; report back the outcome."""

    actor_id: bytes
    worker_id: bytes
    spec: dict[str, Any]
    epoch: int = 0  # its incarnation (the worker refuses calls meant for another)


@dataclass(frozen=True, slots=True)
class DropActor:
    """Take the actor off its shared worker (a dedicated worker is stopped instead)."""

    actor_id: bytes
    worker_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    waiter: Any
    value: Any


@dataclass(frozen=True, slots=True)
class Warn:
    """Tell the node's log and every driver."""

    text: str


@dataclass(frozen=True, slots=True)
class Later:
    """Hand ``event`` back to the node state after ``delay_s`` seconds."""

    delay_s: float
    event: Any


NodeInstruction = (
    StartWorker
    | StopWorker
    | GrantLease
    | RevokeLease
    | StartActor
    | DropActor
    | Persist
    | ReleaseName
    | Reply
    | Warn
    | Later
    | WakeReaders
    | DeleteFile
    | Refused
)
