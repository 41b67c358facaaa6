"""Scheduling: resource shapes and the node-local scheduler (a sans-IO state machine)."""

from ._placement import GroupState, PlacementGroupReady, bundle_shape
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
    "GroupState",
    "PlacementGroupReady",
    "bundle_shape",
    "HostActor",
    "Infeasible",
    "LocalScheduler",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
    "WorkerRole",
]
