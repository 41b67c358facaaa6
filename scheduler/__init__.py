"""Scheduling: resource shapes and the node-local scheduler (a sans-IO state machine)."""

from ._local import (
    GrantLease,
    HostActor,
    Infeasible,
    LocalScheduler,
    RevokeLease,
    StartWorker,
    StopWorker,
    WorkerRole,
)

__all__ = [
    "GrantLease",
    "HostActor",
    "Infeasible",
    "LocalScheduler",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
    "WorkerRole",
]
