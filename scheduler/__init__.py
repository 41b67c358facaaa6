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

# --- two-level scheduling (issue 9): the global placer and the local spill policy ---
# Sans-IO pieces for the cluster integrator: events and instructions live in
# ``actorcore.scheduler.placer_msgs`` (their names overlap the local scheduler's).
from . import _placer_msgs as placer_msgs
from ._placer import Placer, PlacerConfig
from ._spill import Decision, LocalView, SpillConfig, SpillPolicy

__all__ += [
    "Decision",
    "LocalView",
    "Placer",
    "PlacerConfig",
    "SpillConfig",
    "SpillPolicy",
    "placer_msgs",
]
