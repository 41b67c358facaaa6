"""The node: its state machines under one coordinator, and the daemon around them.

``NodeState`` (sans-IO) composes the local scheduler, the actor lifecycle and
the store's accounting: ``handle(event) -> instructions``. ``NodeDaemon``
carries its instructions out, composed of services (store, actors,
information) that each declare their request handlers. ``WorkerPool`` is the
daemon's handle on its fork server.
"""

from ._daemon import NodeDaemon
from ._events import (
    ActorConstructed,
    ActorConstructionFailed,
    ActorCreated,
    ActorKilled,
    ActorWaited,
    DropActor,
    GrantFailed,
    GroupCreated,
    GroupRemoved,
    GroupWaited,
    Later,
    LeaseRequested,
    LeaseReturned,
    NodeEvent,
    NodeInfo,
    NodeInstruction,
    NodesChanged,
    NodeStarted,
    NodeStopping,
    ProcessGone,
    Reply,
    StartActor,
    Tick,
    UnknownActorExpired,
    Warn,
    WorkerBlocked,
    WorkerDied,
    WorkerStarted,
    WorkerStartFailed,
)
from ._lifecycle import ActorInfo, ActorLifecycle, ActorPhase
from ._pool import WorkerPool
from ._state import UNKNOWN_ACTOR_WAIT_S, NodeState
from ._store import StoreService

__all__ = [
    "UNKNOWN_ACTOR_WAIT_S",
    "ActorConstructed",
    "ActorConstructionFailed",
    "ActorCreated",
    "ActorInfo",
    "ActorKilled",
    "ActorLifecycle",
    "ActorPhase",
    "ActorWaited",
    "DropActor",
    "GrantFailed",
    "GroupCreated",
    "GroupRemoved",
    "GroupWaited",
    "Later",
    "LeaseRequested",
    "LeaseReturned",
    "NodeDaemon",
    "NodeEvent",
    "NodeInfo",
    "NodeInstruction",
    "NodeStarted",
    "NodeState",
    "NodeStopping",
    "NodesChanged",
    "ProcessGone",
    "Reply",
    "StartActor",
    "StoreService",
    "Tick",
    "UnknownActorExpired",
    "Warn",
    "WorkerBlocked",
    "WorkerDied",
    "WorkerPool",
    "WorkerStartFailed",
    "WorkerStarted",
]
