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
from ._placement import GroupState, PlacementGroupReady, bundle_shape

__all__ = [
    "GrantLease",
    "GroupState",
    "HostActor",
    "Infeasible",
    "LocalScheduler",
    "PlacementGroupReady",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
    "WorkerRole",
    "bundle_shape",
]
