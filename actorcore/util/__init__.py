"""Utilities users of Ray expect: an actor pool, a cluster-wide queue, placement groups,
the state API (``util.state``), user metrics (``util.metrics``) and a progress bar."""

from . import metrics, scheduling_strategies, state
from ._actor_pool import ActorPool
from ._placement_group import (
    PlacementGroup,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ._progress import Progress, progress
from ._queue import Empty, Full, Queue

__all__ = [
    "ActorPool",
    "Empty",
    "Full",
    "PlacementGroup",
    "Progress",
    "Queue",
    "get_placement_group",
    "metrics",
    "placement_group",
    "placement_group_table",
    "progress",
    "remove_placement_group",
    "scheduling_strategies",
    "state",
]
