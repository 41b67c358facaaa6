"""Scheduling: resource shapes, the node-local scheduler and placement groups.

Sans-IO state machines: they take events and return instructions; the node's
coordinator (:class:`actorcore._node.NodeState`) routes those instructions.
"""

from ._local import (
    GrantLease,
    HostActor,
    Infeasible,
    Instruction,
    LocalScheduler,
    RevokeLease,
    StartWorker,
    StopWorker,
    WorkerRole,
)
from ._placement import (
    GroupInfeasible,
    GroupState,
    PlacementGroupReady,
    PlacementGroups,
    ResourceChange,
    bundle_shape,
)
from ._resources import (
    NODE_AFFINITY_PREFIX,
    RUNTIME_ENV_PREFIX,
    node_affinity_shape,
    split_runtime_env,
)
from ._resources import normalize as normalize_shape

__all__ = [
    "NODE_AFFINITY_PREFIX",
    "RUNTIME_ENV_PREFIX",
    "GrantLease",
    "GroupInfeasible",
    "GroupState",
    "HostActor",
    "Infeasible",
    "Instruction",
    "LocalScheduler",
    "PlacementGroupReady",
    "PlacementGroups",
    "ResourceChange",
    "RevokeLease",
    "StartWorker",
    "StopWorker",
    "WorkerRole",
    "bundle_shape",
    "node_affinity_shape",
    "normalize_shape",
    "split_runtime_env",
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
